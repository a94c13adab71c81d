"""
Bounds on what clients can hold: open connections, the time to send the
request headers, and the time a connection may sit without progress while
a body is sent to it.

A registry on a network meets clients that open connections and trickle
one header byte at a time (slowloris), or ask for a blob and stop reading.
Without bounds, a thousand of them exhaust the process's descriptors and
every honest client is refused.
"""

from __future__ import annotations

import resource
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_IDLE_TIMEOUT = 60.0

# Descriptors kept for what is not a client connection: blob files being
# sent, upload files, temp files, the thread pool's work, log files.
_RESERVED_FILES = 256


def raiseFileLimit() -> int:
    """
    Raise this process's soft limit on open files to its hard limit, and
    return the new soft limit: a registry's capacity is its descriptors.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def defaultMaxConnections(fileLimit: int | None = None) -> int:
    """
    The most connections to keep open under C{fileLimit} (by default, the
    current soft limit on open files), keeping a quarter of it (at most
    256) for files.
    """
    if fileLimit is None:
        fileLimit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(8, fileLimit - min(fileLimit // 4, _RESERVED_FILES))


@dataclass(frozen=True)
class Limits:
    """
    The operator's bounds; C{maxConnections} of L{None} is derived from the
    open-files limit when the listener starts.
    """

    maxConnections: int | None = None
    headerTimeout: float = DEFAULT_HEADER_TIMEOUT
    idleTimeout: float = DEFAULT_IDLE_TIMEOUT


class Guarded(Protocol):
    """
    What L{ConnectionGuard} needs of a connection.
    """

    def evict(self) -> None:
        """
        Drop the connection at once: it is waiting, and another needs room.
        """


class ConnectionGuard:
    """
    The open connections of one site.

    Past C{maxConnections}, a new connection takes the place of the one
    that has waited longest for its next request's headers (a trickling
    client, or an idle keep-alive): a client being served is never
    dropped for a newcomer.  When every connection is being served, the
    newcomer is refused with 503.
    """

    def __init__(self, limits: Limits, clock: IReactorTime) -> None:
        self.limits = limits
        self.clock = clock
        self.maxConnections = limits.maxConnections or defaultMaxConnections()
        self._open: set[Guarded] = set()
        self._waiting: OrderedDict[Guarded, None] = OrderedDict()
        self.evicted = 0
        self.refused = 0

    @property
    def open(self) -> int:
        return len(self._open)

    def admit(self, connection: Guarded) -> bool:
        """
        Whether C{connection} may stay open, evicting a waiting one if full.
        """
        if len(self._open) >= self.maxConnections:
            if not self._waiting:
                self.refused += 1
                return False
            oldest, _ = self._waiting.popitem(last=False)
            self._open.discard(oldest)
            self.evicted += 1
            oldest.evict()
        self._open.add(connection)
        self._waiting[connection] = None
        return True

    def waiting(self, connection: Guarded) -> None:
        """
        C{connection} waits for the headers of its next request.
        """
        if connection in self._open:
            self._waiting[connection] = None
            self._waiting.move_to_end(connection)

    def serving(self, connection: Guarded) -> None:
        """
        C{connection} has sent its headers and is being served.
        """
        self._waiting.pop(connection, None)

    def gone(self, connection: Guarded) -> None:
        self._open.discard(connection)
        self._waiting.pop(connection, None)


class Deadline:
    """
    One timer that can be (re)started and stopped, calling C{expired}.
    """

    def __init__(self, clock: IReactorTime, seconds: float, expired: Any) -> None:
        self._clock = clock
        self._seconds = seconds
        self._expired = expired
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        self.stop()
        self._call = self._clock.callLater(self._seconds, self._fire)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fire(self) -> None:
        self._call = None
        self._expired()
