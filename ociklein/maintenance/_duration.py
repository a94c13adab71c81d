"""
Durations as operators write them: C{0}, C{90s}, C{15m}, C{1h}, C{2d}.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parseDuration(text: str) -> float:
    """
    Seconds in C{text}; L{ValueError} if it is not a duration.
    """
    match = _DURATION.fullmatch(str(text).strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 0, 90s, 15m, 1h or 2d")
    return float(match.group(1)) * _UNITS[match.group(2)]
