"""
A bounded cache of sorted directory listings, for tags and the catalog.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable


class SortedListings:
    """
    The sorted entries of directories, read again only when a directory's
    mtime changes, so paging through 10,000 tags lists the directory once
    rather than once a page.

    A listing is kept only once its directory has been still for a second:
    two changes by different processes within one timestamp tick would
    otherwise leave the same mtime on different contents.
    """

    _SETTLED_NS = 1_000_000_000

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._cache: OrderedDict[str, tuple[int, list[str]]] = OrderedDict()

    def names(self, directory: str, select: Callable[[str], str | None]) -> list[str]:
        """
        The sorted names C{select} makes of the entries of C{directory}
        (skipping those it maps to L{None}); L{FileNotFoundError} if the
        directory does not exist.
        """
        mtime = os.stat(directory).st_mtime_ns
        cached = self._cache.get(directory)
        if cached is not None and cached[0] == mtime:
            self._cache.move_to_end(directory)
            return cached[1]
        names = sorted(name for name in map(select, os.listdir(directory)) if name is not None)
        if time.time_ns() - mtime > self._SETTLED_NS:
            self._cache[directory] = (mtime, names)
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return names
