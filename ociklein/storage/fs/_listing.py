"""
A bounded cache of sorted directory listings, for tags and the catalog.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure

from ociklein.storage._threads import inThread, resolveReactor

Select = Callable[[str], "str | None"]


def _read(directory: str, select: Select) -> tuple[int, list[str]]:
    """
    The directory's mtime, then its sorted selected names: read after the
    mtime, so the names are at least as new as it says.
    """
    mtime = os.stat(directory).st_mtime_ns
    return mtime, sorted(name for name in map(select, os.listdir(directory)) if name is not None)


class SortedListings:
    """
    The sorted entries of directories, read again only when a directory's
    mtime changes, so paging through 10,000 tags lists the directory once
    rather than once a page.

    Reading and sorting a directory is proportional to its size, so it runs
    in a thread: a repository of 100,000 tags being listed while tags are
    added does not stall the reactor.  Callers that find the same directory
    (at the same mtime) already being read share that read.

    A listing is kept only once its directory has been still for a second:
    two changes by different processes within one timestamp tick would
    otherwise leave the same mtime on different contents.
    """

    _SETTLED_NS = 1_000_000_000

    def __init__(self, reactor: IReactorThreads | None = None, size: int = 256) -> None:
        self._reactor = resolveReactor(reactor)
        self._size = size
        self._cache: OrderedDict[str, tuple[int, list[str]]] = OrderedDict()
        self._reading: dict[tuple[str, int], list[Deferred[list[str]]]] = {}

    def names(self, directory: str, select: Select) -> Deferred[list[str]]:
        """
        The sorted names C{select} makes of the entries of C{directory}
        (skipping those it maps to L{None}); L{FileNotFoundError} if the
        directory does not exist.  C{select} must not change between calls
        for one directory.
        """
        mtime = os.stat(directory).st_mtime_ns
        cached = self._cache.get(directory)
        if cached is not None and cached[0] == mtime:
            self._cache.move_to_end(directory)
            return succeed(cached[1])
        waiting: Deferred[list[str]] = Deferred()
        key = (directory, mtime)
        readers = self._reading.get(key)
        if readers is not None:
            readers.append(waiting)
            return waiting
        self._reading[key] = [waiting]
        inThread(self._reactor, _read, directory, select).addBoth(self._read, key)
        return waiting

    def _read(self, result: tuple[int, list[str]] | Failure, key: tuple[str, int]) -> None:
        readers = self._reading.pop(key)
        if not isinstance(result, Failure):
            mtime, names = result
            if time.time_ns() - mtime > self._SETTLED_NS:
                directory = key[0]
                self._cache[directory] = (mtime, names)
                self._cache.move_to_end(directory)
                if len(self._cache) > self._size:
                    self._cache.popitem(last=False)
            for d in readers:
                d.callback(names)
        else:
            for d in readers:
                d.errback(result)
