"""
The grammars of the OCI Distribution Specification for repository names, tags
and digests.  Nothing from a request reaches storage before passing these.
"""

from __future__ import annotations

import re

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([A-Za-z0-9=_-]+)")
_ENCODED = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}

MAX_NAME_LENGTH = 255
SUPPORTED_ALGORITHMS = tuple(_ENCODED)


def isName(name: str) -> bool:
    """
    Whether C{name} is a repository name of the spec's grammar.
    """
    return len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name) is not None


def isTag(tag: str) -> bool:
    """
    Whether C{tag} is a tag of the spec's grammar.
    """
    return _TAG.fullmatch(tag) is not None


def isDigestShaped(digest: str) -> bool:
    """
    Whether C{digest} has the general C{algorithm:encoded} form.
    """
    return _DIGEST.fullmatch(digest) is not None


def isSupportedDigest(digest: str) -> bool:
    """
    Whether C{digest} is a well-formed sha256 or sha512 digest.
    """
    algorithm, _, encoded = digest.partition(":")
    pattern = _ENCODED.get(algorithm)
    return pattern is not None and pattern.fullmatch(encoded) is not None


# Past this many digits a number is larger than any size, offset or count
# the registry handles; Python refuses to convert 4,300 digits and more.
_MAX_DIGITS = 18


def decimal(text: str) -> int:
    """
    The value of a string of ASCII digits, saturated at 10**18: a number
    too long to convert is simply larger than anything stored.
    """
    digits = text.lstrip("0")
    if len(digits) > _MAX_DIGITS:
        return 10**_MAX_DIGITS
    return int(digits or "0")
