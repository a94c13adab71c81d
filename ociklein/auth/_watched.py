"""
A configuration file re-read when it changes, so that operators edit users
and policies without restarting the registry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

T = TypeVar("T")
log = Logger()


class WatchedFile(Generic[T]):
    """
    The parsed contents of a file, checked for changes at most once every
    C{interval} seconds; a change that does not parse is logged and the
    previous contents stay in force.
    """

    def __init__(
        self, path: str, parse: Callable[[str], T], clock: IReactorTime, interval: float = 1.0
    ) -> None:
        self.path = path
        self._parse = parse
        self._clock = clock
        self._interval = interval
        self._signature = self._stat()
        with open(path, encoding="utf-8") as f:
            self.value: T = parse(f.read())
        self._checked = clock.seconds()
        # Bumped on every successful reload: what was derived from an older
        # generation (a verified password) must be checked again.
        self.generation = 0

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> T:
        """
        The contents in force now, re-read first if the file has changed.
        """
        now = self._clock.seconds()
        if now - self._checked < self._interval:
            return self.value
        self._checked = now
        try:
            signature = self._stat()
        except OSError as e:
            if self._signature != (0, 0, 0):
                log.error(
                    "cannot read {path}: {error}; keeping its previous contents", path=self.path, error=e
                )
                self._signature = (0, 0, 0)
            return self.value
        if signature == self._signature:
            return self.value
        self._signature = signature
        try:
            with open(self.path, encoding="utf-8") as f:
                value = self._parse(f.read())
        except (OSError, ValueError) as e:
            log.error("{path} not reloaded, keeping its previous contents: {error}", path=self.path, error=e)
            return self.value
        self.value = value
        self.generation += 1
        log.info("reloaded {path}", path=self.path)
        return value
