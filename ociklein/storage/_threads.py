"""
Blocking storage work off the reactor: every backend that touches a disk or
a network client runs it in a thread pool through these two helpers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool

_P = ParamSpec("_P")
_R = TypeVar("_R")


def resolveReactor(reactor: IReactorThreads | None) -> IReactorThreads:
    """
    The given reactor, or the installed one, imported only when needed.
    """
    if reactor is not None:
        return reactor
    from twisted.internet import reactor as installed

    return cast(IReactorThreads, installed)


def inThread(
    reactor: IReactorThreads, f: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
) -> Deferred[_R]:
    """
    Run blocking disk work in the reactor's thread pool.
    """
    return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)
