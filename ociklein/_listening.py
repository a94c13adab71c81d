"""
Listening ports: endpoint strings checked before anything starts, a
restartable service that listens the way twistd's C{strports} services do
(in C{privilegedStartService}, a failure raised there and then), and the
sockets a parent process hands to its workers.
"""

from __future__ import annotations

import socket
import sys
from types import TracebackType
from typing import Any

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorSocket,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


class StartupError(Exception):
    """
    The registry cannot start (it cannot listen); the message is one line
    for the operator.
    """


# A daemonizing twistd shows the launcher at most 100 characters of
# "module.Class: message": a short module name leaves them to the message.
StartupError.__module__ = "ociklein"


def exitOnStartupError(prog: str, echo: bool = True) -> None:
    """
    Print a L{StartupError} that reaches the top of the program as one line
    (or, unless C{echo}, nothing more than the log said) instead of a
    traceback.  twistd in the foreground lets the exception out; in daemon
    mode it reports it through its status pipe, and a C{SystemExit} there
    would leave the launcher waiting forever.
    """
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if isinstance(value, StartupError):
            if not echo:
                return
            # twistd has made sys.stderr a log file: the operator's terminal is this one.
            (sys.__stderr__ or sys.stderr).write(f"{prog}: {value}\n")
        else:
            previous(kind, value, tb)

    sys.excepthook = hook


def parseEndpoint(description: str) -> IStreamServerEndpoint:
    """
    The endpoint C{description} names; a L{ValueError} with a one-line
    reason when it names none.
    """
    try:
        # The reactor is used only when listening: a check needs none, and
        # twist has not installed its own yet.
        return serverFromString(None, description)  # type: ignore[arg-type]
    except TypeError:
        # Too many ':'-separated fields: the parser's own message is about
        # Python function arguments.
        raise ValueError(
            "too many ':'-separated fields; escape the colons of an IPv6 address, "
            r"as in tcp6:5000:interface=\:\:1"
        ) from None
    except Exception as e:  # a missing or unreadable TLS key is an OSError or an SSL error
        raise ValueError(str(e) or type(e).__name__) from None


def shareableFamily(endpoint: IStreamServerEndpoint) -> str | None:
    """
    The address family name of a plain TCP or UNIX endpoint, whose
    listening socket can be handed to another process; L{None} for others.
    """
    if isinstance(endpoint, TCP6ServerEndpoint):
        return "INET6"
    if isinstance(endpoint, TCP4ServerEndpoint):
        return "INET"
    if isinstance(endpoint, UNIXServerEndpoint):
        return "UNIX"
    return None


def acceptOneAtATime(port: object) -> None:
    """
    Make C{port}, whose listening socket other processes share, accept one
    connection each time the reactor finds it ready, not a batch.

    Every process polling a shared socket is woken by a new connection,
    and Twisted's port accepts as many as are waiting (up to 100, more
    next time): an idle process took all 32 connections of a benchmark
    client that opened them at once, and served them alone while the
    other process had none.  One at a time, the processes take turns, and
    a busy one, which comes back to its poll later, takes fewer.
    """
    if not isinstance(port, tcp.Port) or getattr(port, "_oneAtATime", False):
        return
    accept = port.doRead

    def doRead() -> object:
        port.numberAccepts = 1
        return accept()

    # The reactor looks doRead up on the port at each event.
    setattr(port, "doRead", doRead)  # noqa: B010
    setattr(port, "_oneAtATime", True)  # noqa: B010


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """
    A listening socket inherited from the parent process as descriptor
    C{fileno}.  Unlike L{twisted.internet.endpoints.AdoptedStreamServerEndpoint}
    it keeps the descriptor, so that the service listening on it can stop
    and start again.
    """

    def __init__(self, reactor: IReactorSocket, fileno: int, family: str) -> None:
        self._reactor = reactor
        self.fileno = fileno
        self.family = FAMILIES[family]

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        adopt: Any = self._reactor.adoptStreamPort

        def adopted(port: IListeningPort) -> IListeningPort:
            acceptOneAtATime(port)  # the parent polls the same socket
            return port

        return maybeDeferred(adopt, self.fileno, self.family, factory).addCallback(adopted)

    def __str__(self) -> str:
        return f"inherited socket {self.fileno}"


def _reason(failure: Failure) -> str:
    """
    Why listening failed, in a few words: C{Address already in use}.
    """
    error = getattr(failure.value, "socketError", None)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error or failure.getErrorMessage())


class ListeningService(Service):
    """
    Listens on one endpoint while running.  Like
    L{twisted.application.strports.service}, it listens in
    L{privilegedStartService} and raises a failure at once (here as a
    one-line L{StartupError}), so that twistd exits instead of serving
    nothing; unlike it, it can be stopped and started again.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        description: str,
        admin: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.admin = admin
        self.factory = factory
        self.description = description
        self.port: IListeningPort | None = None
        self._waiting: Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self.port is None and self._waiting is None:
            self._listen()

    def _listen(self) -> None:
        outcome: list[Any] = []
        waiting = self.endpoint.listen(self.factory)
        waiting.addBoth(outcome.append)
        if not outcome:  # an endpoint that listens later
            self._waiting = waiting
            waiting.addCallback(lambda _: self._listened(outcome[0]))
            return
        if isinstance(outcome[0], Failure):
            reason = _reason(outcome[0])
            log.critical(
                "ociklein cannot listen on {description}: {reason}",
                description=self.description,
                reason=reason,
            )
            raise StartupError(f"cannot listen on {self.description}: {reason}")
        self._listened(outcome[0])

    def _listened(self, port: Any) -> None:
        self._waiting = None
        if isinstance(port, Failure):
            log.critical(
                "ociklein cannot listen on {description}: {reason}",
                description=self.description,
                reason=_reason(port),
            )
            return
        self.port = port
        address = port.getHost()
        log.info(
            "ociklein listening on {description} ({host}:{port})",
            description=self.description,
            host=getattr(address, "host", getattr(address, "name", "?")),
            port=getattr(address, "port", "-"),
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopping: Any = port.stopListening
        return maybeDeferred(stopping)
