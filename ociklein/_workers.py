"""
Several processes serving one filesystem root on the same TCP ports.

Each process binds its own listening socket with C{SO_REUSEPORT}, so the
kernel spreads new connections across them; the filesystem backend is built
for processes sharing a root.  The first process (the one twistd started)
supervises the others: it starts them once it listens, restarts one that
dies, and stops them when it stops.  A worker exits if its parent dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

_PR_SET_PDEATHSIG = 1
_RESTART_DELAY = 1.0
_STOP_GRACE = 10.0


def isReusableTCP(reactor: Any, description: str) -> bool:
    """
    Whether C{description} is a plain TCP endpoint, which workers can share.
    """
    return isinstance(serverFromString(reactor, description), TCP4ServerEndpoint | TCP6ServerEndpoint)


def listenReusingPort(reactor: Any, description: str, factory: IProtocolFactory) -> IListeningPort:
    """
    Listen on the TCP endpoint C{description} with C{SO_REUSEPORT} set, so
    that other processes may listen on the same address and port.
    """
    endpoint = serverFromString(reactor, description)
    if not isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        raise ValueError(f"{description!r} is not a TCP endpoint")
    family = socket.AF_INET6 if isinstance(endpoint, TCP6ServerEndpoint) else socket.AF_INET
    interface = endpoint._interface or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, endpoint._port))
        sock.listen(endpoint._backlog)
        sock.setblocking(False)
        return reactor.adoptStreamPort(sock.fileno(), family, factory)  # type: ignore[no-any-return]
    finally:
        sock.close()  # the reactor holds its own copy of the descriptor


def dieWithParent() -> None:
    """
    Ask Linux to send this worker SIGTERM when its parent dies, even by
    SIGKILL; exit now if the parent is already gone.
    """
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warn("cannot arrange for this worker to stop with its parent")
    if os.getppid() != parent or parent == 1:
        os._exit(0)


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: WorkersService, number: int) -> None:
        self._supervisor = supervisor
        self.number = number
        self.ended: Deferred[None] = Deferred()
        self.killer: Any = None
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            log.info("worker {number}: {line}", number=self.number, line=line.decode("utf-8", "replace"))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if self.killer is not None and self.killer.active():
            self.killer.cancel()
        self.ended.callback(None)
        self._supervisor._ended(self, reason)


class WorkersService(Service):
    """
    Runs C{count} more registry processes beside this one, each started as
    C{python -m twisted ociregistry ARGS --listen ... --worker}.
    """

    def __init__(self, reactor: Any, count: int, args: list[str], listening: Deferred[list[IListeningPort]]):
        self._reactor = reactor
        self._count = count
        self._args = args
        self._listening = listening
        self._listen: list[str] = []
        self._workers: dict[int, tuple[_Worker, Any]] = {}

    def startService(self) -> None:
        super().startService()
        self._listening.addCallback(self._spawnAll)

    def _spawnAll(self, ports: list[IListeningPort]) -> list[IListeningPort]:
        # Workers listen on the ports this process got, even where it was
        # asked for port 0.
        addresses: list[Any] = [port.getHost() for port in ports]
        self._listen = [f"tcp:{a.port}:interface={a.host}" for a in addresses]
        for number in range(1, self._count + 1):
            self._spawn(number)
        return ports

    def _spawn(self, number: int) -> None:
        if not self.running:
            return
        worker = _Worker(self, number)
        listen = [arg for description in self._listen for arg in ("--listen", description)]
        runner = [sys.executable, "-m", "twisted", "--log-format=text", "ociregistry"]
        argv = [*runner, *self._args, *listen, "--worker"]
        process = self._reactor.spawnProcess(worker, sys.executable, argv, env=os.environ)
        self._workers[number] = (worker, process)
        log.info("ociklein worker {number} started (pid {pid})", number=number, pid=process.pid)

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if self._workers.get(worker.number, (None,))[0] is worker:
            del self._workers[worker.number]
        if self.running:
            log.warn(
                "ociklein worker {number} ended ({reason}); restarting",
                number=worker.number,
                reason=reason.getErrorMessage(),
            )
            self._reactor.callLater(_RESTART_DELAY, self._spawn, worker.number)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        ending = []
        for worker, process in list(self._workers.values()):
            ending.append(worker.ended)
            try:
                process.signalProcess("TERM")
            except Exception:  # already gone
                continue
            worker.killer = self._reactor.callLater(_STOP_GRACE, self._kill, process)
        return DeferredList(ending)

    @staticmethod
    def _kill(process: Any) -> None:
        try:
            process.signalProcess("KILL")
        except Exception:  # already gone
            pass
