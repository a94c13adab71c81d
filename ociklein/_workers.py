"""
Several processes serving one filesystem root (C{--workers N}).

The process twistd started binds every listening socket once, serves on it,
and hands the sockets to N-1 worker processes as inherited descriptors;
every process polls them and accepts one connection at a time, so that
they take turns (L{ociklein._listening.acceptOneAtATime}).  No other process
can join the port, as it could with C{SO_REUSEPORT}.  A
L{twisted.runner.procmon.ProcessMonitor} starts the workers, restarts one
that dies and stops them with the parent; a worker also exits if its parent
dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.interfaces import IProcessProtocol, IProcessTransport, IReactorProcess, IReactorTime
from twisted.logger import Logger
from twisted.runner.procmon import ProcessMonitor
from zope.interface import implementer

from ociklein._logging import WORKER_NAMESPACE

log = Logger()

_PR_SET_PDEATHSIG = 1
# Inherited sockets are descriptors 3, 4, ... of a worker, in --listen order.
FIRST_INHERITED = 3


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


@implementer(IReactorProcess, IReactorTime)
class _HandingSockets:
    """
    The reactor as L{ProcessMonitor} sees it: each process it spawns also
    gets the listening sockets, as descriptors 3, 4, ...
    """

    def __init__(self, reactor: IReactorProcess, descriptors: Callable[[], Sequence[int]]) -> None:
        self._reactor = reactor
        self._descriptors = descriptors

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Any = None,
        path: Any = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> IProcessTransport:
        fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for offset, fd in enumerate(self._descriptors()):
            fds[FIRST_INHERITED + offset] = fd
        return self._reactor.spawnProcess(  # type: ignore[no-any-return]
            processProtocol, executable, args, env=env, path=path, uid=uid, gid=gid, childFDs=fds
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)  # callLater, seconds, getDelayedCalls


class WorkersService(MultiService):
    """
    Runs C{count} worker processes, C{python -m twisted ociregistry ARGS},
    each given the descriptors C{descriptors()} names (the parent's
    listening sockets) and told which they are by C{args}.
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        count: int,
        args: Sequence[str],
        descriptors: Callable[[], Sequence[int]],
    ) -> None:
        super().__init__()
        self.monitor = ProcessMonitor(reactor=_HandingSockets(reactor, descriptors))
        # Worker lines arrive stamped by the worker: the ociklein observer
        # writes them as they are.
        self.monitor.log = Logger(namespace=WORKER_NAMESPACE)
        self.monitor.setServiceParent(self)
        for number in range(1, count + 1):
            argv = [sys.executable, "-m", "twisted", "ociregistry", *args, f"--worker={number}"]
            self.monitor.addProcess(f"worker-{number}", argv, env=dict(os.environ))
