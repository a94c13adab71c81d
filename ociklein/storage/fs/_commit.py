"""
Group commit: the small durable writes of concurrent requests (manifests,
tags, links, catalog entries) share their fsyncs.

Each write is still a temp file, fsynced, renamed into place, with its
directory fsynced, and each request is answered only once all of that is
done for every file it wrote.  But while one batch is on its way to the
disk the next requests queue, and then go together: one pass writes and
fsyncs all their temp files, renames them, and fsyncs each directory
once, however many of the batch's files landed in it.  Eight concurrent
manifest PUTs into one repository then cost eight file fsyncs and one
fsync of C{_manifests/sha256/}, instead of sixteen fsyncs.

A caller may also give work to do in the batch's thread before its files
are written (computing and checking paths, checking that what it
references exists) and after they are durable (recording uses that fence
garbage collection): a manifest PUT then crosses to the thread pool once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure

from ociklein.storage._threads import inThread
from ociklein.storage.fs._durable import (
    createTemp,
    ensureDir,
    fsyncDir,
    linkTemp,
    removeQuietly,
    startWriteback,
    writeAll,
)


@dataclass(frozen=True)
class Put:
    """
    Replace C{path} with C{data}, or, if C{onlyIfMissing}, create it unless
    it is already there (an empty marker such as a link or catalog entry).
    With C{sameAs}, the path of a L{Put} of an earlier stage of the same
    request, C{path} becomes a hard link to that file instead (C{data} is
    then unused): it costs no write and no fsync of its own, since its
    data is the other file's, fsynced before any rename.
    """

    path: str
    data: bytes
    onlyIfMissing: bool = False
    sameAs: str | None = None


Stage = Sequence[Put]

_T = TypeVar("_T")


@dataclass
class _Temp:
    """
    A temp file written for one L{Put}, open until it is fsynced.
    """

    path: str
    target: str
    fd: int | None


@dataclass
class Shared:
    """
    What the requests of one batch share in its thread, so that work they
    have in common is done once per batch, not once per request: the
    directories found to be real directories (no symlink on the way), and
    the uses recorded since the batch's step began (C{path} to whether the
    use succeeded).  Uses are forgotten between the preparation and the
    finish: a use before the store never stands for one after it.
    """

    directories: set[str] = field(default_factory=set)
    uses: dict[str, bool] = field(default_factory=dict)


def _nothing(shared: Shared) -> None:
    return None


@dataclass
class _Request:
    """
    The writes of one caller: its stages in order, where each stage is on
    stable storage before the next one's files are renamed into place, so
    that a crash part-way never leaves a later file without an earlier.
    C{prepare} gives the stages, in the batch's thread; C{finish} runs there
    once they are all durable, and what it returns is the caller's result.
    """

    prepare: Callable[[Shared], Sequence[Stage]]
    finish: Callable[[Shared], object] = _nothing
    stages: Sequence[Stage] = ()
    temps: list[list[_Temp]] = field(default_factory=list)
    error: BaseException | None = None
    result: object = None

    def openTemps(self) -> list[_Temp]:
        return [temp for temps in self.temps for temp in temps if temp.fd is not None]

    def fail(self, error: BaseException) -> None:
        """
        Give up: remember why, and remove the temp files.
        """
        if self.error is None:
            self.error = error
        for temps in self.temps:
            for temp in temps:
                if temp.fd is not None:
                    os.close(temp.fd)
                    temp.fd = None
                removeQuietly(temp.path)
        self.temps = []


def _write(root: str, shared: Shared, request: _Request) -> None:
    """
    Write a temp file for each file the request will rename into place,
    skipping markers that already exist; a L{Put} C{sameAs} another is a
    second name (a hard link) of that one's temp file.
    """
    request.stages = request.prepare(shared)
    written: dict[str, str] = {}
    for stage in request.stages:
        temps: list[_Temp] = []
        request.temps.append(temps)
        for put in stage:
            if put.sameAs is not None:
                temps.append(_Temp(linkTemp(root, written[put.sameAs]), put.path, None))
                continue
            if put.onlyIfMissing and os.path.exists(put.path):
                continue
            fd, path = createTemp(root)
            temps.append(_Temp(path, put.path, fd))
            written[put.path] = path
            writeAll(fd, put.data)


def _sync(request: _Request) -> None:
    for temp in request.openTemps():
        fd, temp.fd = temp.fd, None
        try:
            os.fsync(fd)  # type: ignore[arg-type]
        finally:
            os.close(fd)  # type: ignore[arg-type]


def _rename(shared: Shared, request: _Request, stage: int, touched: dict[str, list[_Request]]) -> None:
    """
    Move the request's temp files of C{stage} into place, noting which
    directories now need an fsync for whom.  A directory the batch found
    already is not looked for again, unless the rename finds it gone.
    """
    for temp in request.temps[stage] if stage < len(request.temps) else []:
        parent = os.path.dirname(temp.target)
        if parent not in shared.directories:
            ensureDir(parent)
        try:
            os.rename(temp.path, temp.target)
        except FileNotFoundError:
            ensureDir(parent)
            os.rename(temp.path, temp.target)
        touched.setdefault(parent, []).append(request)


def _finish(shared: Shared, request: _Request) -> None:
    request.result = request.finish(shared)


def _each(requests: Sequence[_Request], step: Callable[[_Request], None]) -> None:
    for request in requests:
        if request.error is None:
            try:
                step(request)
            except Exception as e:
                request.fail(e)


def commitBatch(root: str, requests: Sequence[_Request]) -> None:
    """
    Make every request's files durable with as few fsyncs as the batch
    allows: all temp files written, then fsynced, then stage by stage the
    renames and one fsync per directory touched, then each request's
    C{finish}.  A request that fails is marked failed and its temp files
    removed; the others go on.
    """
    shared = Shared()
    _each(requests, partial(_write, root, shared))
    # Writeback of every temp file started before the first fsync: one
    # journal commit then carries them all (half the cost on ext4).
    for request in requests:
        for temp in request.openTemps():
            startWriteback(temp.fd, 0, 0)  # type: ignore[arg-type]
    _each(requests, _sync)
    for stage in range(max((len(r.stages) for r in requests), default=0)):
        touched: dict[str, list[_Request]] = {}
        _each(requests, partial(_rename, shared, stage=stage, touched=touched))
        for directory, writers in touched.items():
            try:
                fsyncDir(directory)
            except Exception as e:
                for request in writers:
                    request.fail(e)
    shared.uses.clear()
    _each(requests, partial(_finish, shared))


def atomicWrite(root: str, path: str, data: bytes) -> None:
    """
    Replace C{path} with C{data} so that a reader, another process or a
    crash sees the old file or the new one, never a torn or missing one:
    one write on its own, for a caller already in a thread.
    """
    stages = [[Put(path, data)]]
    request = _Request(lambda shared: stages)
    commitBatch(root, [request])
    if request.error is not None:
        raise request.error


class GroupCommitter:
    """
    Runs L{commitBatch} in the reactor's thread pool, one batch at a time:
    a request arriving while a batch is being written joins the next one.
    An idle committer starts a request's batch at once, so a lone request
    waits for nobody.  The thread that wrote a batch goes on with the next
    one itself, while the reactor answers the callers of the last: no
    batch waits for the reactor to hand it to a thread.
    """

    def __init__(self, root: str, reactor: IReactorThreads) -> None:
        self._root = root
        self._reactor = reactor
        # Shared by the reactor (adding requests) and the batches' thread.
        self._lock = threading.Lock()
        self._waiting: list[tuple[_Request, Deferred[Any]]] = []
        self._busy = False

    def write(self, *stages: Stage) -> Deferred[None]:
        """
        Write each stage's files durably, in order; fires once all of them
        and their directory entries are on stable storage.
        """
        return self.run(lambda shared: stages, _nothing)

    def run(
        self, prepare: Callable[[Shared], Sequence[Stage]], finish: Callable[[Shared], _T]
    ) -> Deferred[_T]:
        """
        In the thread of the next batch: C{prepare(shared)} for the stages
        to write (an exception fails this request alone, nothing written),
        then those writes as L{write} makes them, then C{finish(shared)};
        fires with what C{finish} returns.  Both block, so they run in the
        pool; C{shared} is the batch's L{Shared}.
        """
        done: Deferred[_T] = Deferred()
        with self._lock:
            self._waiting.append((_Request(prepare, finish), done))
            idle, self._busy = not self._busy, True
        if idle:
            inThread(self._reactor, self._drain)
        return done

    def _drain(self) -> None:
        """
        In a pool thread: write batches until none is waiting, each
        batch's callers answered through the reactor as it ends.
        """
        while True:
            with self._lock:
                batch, self._waiting = self._waiting, []
                if not batch:
                    self._busy = False
                    return
            failure = None
            try:
                commitBatch(self._root, [request for request, _ in batch])
            except BaseException:
                failure = Failure()
            self._reactor.callFromThread(_answer, batch, failure)  # type: ignore[attr-defined]


def _answer(batch: list[tuple[_Request, Deferred[Any]]], failure: Failure | None) -> None:
    """
    Fire each caller's Deferred with its result or why it failed.
    """
    for request, done in batch:
        if failure is not None:
            done.errback(failure)
        elif request.error is not None:
            done.errback(Failure(request.error))
        else:
            done.callback(request.result)
