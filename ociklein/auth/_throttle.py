"""
Slowing down password guessing: an address that keeps failing to log in is
refused for a while, without affecting any other address.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from ociklein import errors
from ociklein.auth._lru import BoundedCache


@dataclass
class _Failures:
    count: int
    last: float
    blockedUntil: float


class LoginThrottle:
    """
    After C{allowed} failed logins from one address (within C{window}
    seconds of each other), each further failure blocks logins from it for
    twice as long as the previous one: 1 s, 2 s, 4 s … up to C{maxDelay}.
    A successful login clears the address.
    """

    def __init__(
        self,
        clock: IReactorTime,
        allowed: int = 5,
        window: float = 600,
        maxDelay: float = 300,
        addresses: int = 10000,
    ) -> None:
        self._clock = clock
        self.allowed = allowed
        self._window = window
        self._maxDelay = maxDelay
        self._failures: BoundedCache[str, _Failures] = BoundedCache(addresses)

    @property
    def watching(self) -> bool:
        """
        Whether any address has failed lately (else nobody is blocked).
        """
        return len(self._failures) > 0

    def check(self, address: str) -> None:
        """
        Refuse with 429 and C{Retry-After} while C{address} is blocked.
        """
        entry = self._failures.get(address)
        if entry is None:
            return
        wait = entry.blockedUntil - self._clock.seconds()
        if wait > 0:
            raise errors.tooManyRequests(math.ceil(wait))

    def failed(self, address: str) -> None:
        now = self._clock.seconds()
        entry = self._failures.get(address)
        if entry is None or now - entry.last > self._window:
            entry = _Failures(0, now, 0.0)
            self._failures.put(address, entry)
        entry.count += 1
        entry.last = now
        if entry.count >= self.allowed:
            entry.blockedUntil = now + min(2.0 ** (entry.count - self.allowed), self._maxDelay)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address)
