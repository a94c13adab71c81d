"""
Group commit on the fs backend: concurrent manifest PUTs share fsyncs, yet
each is acknowledged only once its files and directory entries are on
stable storage, proven from the recorded sequence of os calls.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import StubClient, makeBackends
from helpers import OCI_MANIFEST, digestOf, imageManifest, pushBlob
from osrecording import OSRecorder
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from ociklein import Registry
from ociklein.storage.fs._commit import GroupCommitter, Put, Shared

CLIENTS = 8


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


def manifests(count: int) -> list[bytes]:
    return [
        json.dumps(imageManifest(b"{}", [b"layer"], annotations={"n": str(i)})).encode() for i in range(count)
    ]


@pytest_twisted.ensureDeferred
async def test_everyAcknowledgedPutIsDurable(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each concurrent PUT's manifest, tag (after its manifest) and catalog entry are durable by its 201."""
    manifestBackend, blobs = makeBackends("fs", root)
    client = StubClient(Registry(manifestBackend, blobs))
    await pushBlob(client, "repo", b"{}")
    await pushBlob(client, "repo", b"layer")
    recorder = OSRecorder().install(monkeypatch)
    acks: dict[int, int] = {}

    async def put(i: int, body: bytes) -> None:
        response = await client.request(
            "PUT", f"/v2/repo/manifests/t{i}", data=body, headers={"Content-Type": OCI_MANIFEST}
        )
        assert response.code == 201
        acks[i] = recorder.mark("ack", f"t{i}")

    bodies = manifests(CLIENTS)
    await DeferredList(
        [Deferred.fromCoroutine(put(i, body)) for i, body in enumerate(bodies)], fireOnOneErrback=True
    )
    blobs.close()
    repo = root / "repositories" / "repo"
    for i, body in enumerate(bodies):
        hexdigest = digestOf(body).partition(":")[2]
        for path in [
            repo / "_manifests" / "sha256" / hexdigest,
            repo / "_tags" / f"t{i}",
            root / "catalog" / "repo",
        ]:
            assert recorder.durableBefore(str(path), acks[i]) == []
    events = recorder.events
    for i, body in enumerate(bodies):
        # The tag (a second name of the manifest file) is renamed into place
        # only after the manifest's own name is durable.
        manifest = str(repo / "_manifests" / "sha256" / digestOf(body).partition(":")[2])
        stored = next(n for n, e in enumerate(events) if e.kind == "rename" and e.target == manifest)
        synced = next(
            n
            for n, e in enumerate(events)
            if n > stored and e.kind == "fsync" and e.path == os.path.dirname(manifest)
        )
        tagged = next(
            n
            for n, e in enumerate(events)
            if e.kind == "rename" and e.target == str(repo / "_tags" / f"t{i}")
        )
        assert synced < tagged
        assert os.stat(repo / "_tags" / f"t{i}").st_ino == os.stat(manifest).st_ino
    # The tags went into one directory in fewer passes than there were PUTs.
    assert recorder.count("fsync", str(repo / "_tags")) < CLIENTS


@pytest_twisted.ensureDeferred
async def test_batchUsesEachBlobOncePerStep(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent PUTs of one batch record a shared blob's use once before and once after the store."""
    manifestBackend, blobs = makeBackends("fs", root)
    client = StubClient(Registry(manifestBackend, blobs))
    await pushBlob(client, "repo", b"{}")
    layer = await pushBlob(client, "repo", b"layer")
    hexdigest = layer.partition(":")[2]
    blob = str(root / "blobs" / "sha256" / hexdigest[:2] / hexdigest)
    uses: list[str] = []
    realUtime = os.utime

    def utime(path: Any, *args: Any, **kwargs: Any) -> None:
        uses.append(os.fspath(path))
        realUtime(path, *args, **kwargs)

    monkeypatch.setattr(os, "utime", utime)
    puts = [
        Deferred.fromCoroutine(
            client.request(
                "PUT", f"/v2/repo/manifests/t{i}", data=body, headers={"Content-Type": OCI_MANIFEST}
            )
        )
        for i, body in enumerate(manifests(CLIENTS))
    ]
    responses = await DeferredList(puts, fireOnOneErrback=True)
    assert [response.code for _, response in responses] == [201] * CLIENTS
    # Without sharing: two uses per PUT.  Batches form after the first one.
    assert 2 <= uses.count(blob) < CLIENTS


class _CountingReactor:
    """
    The real reactor, counting the jobs handed to its thread pool.
    """

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.real: Any = reactor
        self.jobs = 0

    def getThreadPool(self) -> Any:
        reactor, pool = self, self.real.getThreadPool()

        class Counting:
            def callInThreadWithCallback(self, *args: Any, **kwargs: Any) -> None:
                reactor.jobs += 1
                pool.callInThreadWithCallback(*args, **kwargs)

        return Counting()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest_twisted.ensureDeferred
async def test_taggedPutIsOneTripToThreads(root: Path) -> None:
    """A manifest PUT checks its blobs, stores, tags and records its uses in one thread-pool job."""
    from ociklein.storage.fs import FilesystemBlobStore, FilesystemManifestBackend

    reactor = _CountingReactor()
    blobs = FilesystemBlobStore(str(root), reactor=reactor)  # type: ignore[arg-type]
    client = StubClient(Registry(FilesystemManifestBackend(str(root), reactor=reactor), blobs))  # type: ignore[arg-type]
    await pushBlob(client, "repo", b"{}")
    await pushBlob(client, "repo", b"layer")
    for i, body in enumerate(manifests(2)):
        reactor.jobs = 0
        reference = f"t{i}" if i == 0 else f"{digestOf(body)}?tag=t{i}"
        response = await client.request(
            "PUT", f"/v2/repo/manifests/{reference}", data=body, headers={"Content-Type": OCI_MANIFEST}
        )
        assert response.code == 201
        assert reactor.jobs == 1
    blobs.close()
    assert sorted(os.listdir(root / "repositories" / "repo" / "_tags")) == ["t0", "t1"]


class _ManualPool:
    """
    A thread pool that runs nothing until the test says so: batches are
    then formed exactly as they would be while a slow disk is busy.
    """

    def __init__(self) -> None:
        self.jobs: list[Callable[[], None]] = []

    def callInThreadWithCallback(self, onResult: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        def job() -> None:
            try:
                result = f(*args, **kwargs)
            except BaseException as e:
                onResult(False, Failure(e))
            else:
                onResult(True, result)

        self.jobs.append(job)

    def runOne(self) -> None:
        self.jobs.pop(0)()


class _ManualReactor:
    def __init__(self) -> None:
        self.pool = _ManualPool()

    def getThreadPool(self) -> _ManualPool:
        return self.pool

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


def _fired(d: Deferred[Any]) -> list[Any]:
    results: list[Any] = []
    d.addBoth(results.append)
    return results


def test_waitingWritesGoTogether(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes queued behind a running batch form the next, same thread: one fsync per file and directory."""
    target = root / "dir"
    (root / "tmp").mkdir(parents=True)
    reactor = _ManualReactor()
    committer = GroupCommitter(str(root), reactor)  # type: ignore[arg-type]
    rest: list[list[Any]] = []
    recorder = OSRecorder()

    def arriveMeanwhile(shared: Shared) -> list[list[Put]]:
        rest.extend(_fired(committer.write([Put(str(target / f"f{i}"), b"x")])) for i in range(5))
        return [[Put(str(target / "first"), b"1")]]

    def thenRecord(shared: Shared) -> str:
        recorder.install(monkeypatch)
        return "first"

    first = _fired(committer.run(arriveMeanwhile, thenRecord))
    assert len(reactor.pool.jobs) == 1  # the lone first write started at once
    reactor.pool.runOne()
    assert first == ["first"]
    assert rest == [[None]] * 5
    assert reactor.pool.jobs == []  # the next batch needed no new trip to the pool
    assert recorder.count("fsync") == 5 + 1
    assert recorder.count("fsync", str(target)) == 1
    assert sorted(os.listdir(target)) == ["f0", "f1", "f2", "f3", "f4", "first"]


def test_stagesInOrder(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A later stage's file is renamed into place only after the earlier stage's directory is fsynced."""
    (root / "tmp").mkdir(parents=True)
    reactor = _ManualReactor()
    committer = GroupCommitter(str(root), reactor)  # type: ignore[arg-type]
    recorder = OSRecorder().install(monkeypatch)
    done = _fired(
        committer.write([Put(str(root / "a" / "manifest"), b"m")], [Put(str(root / "b" / "tag"), b"t")])
    )
    reactor.pool.runOne()
    assert done == [None]
    kinds = [(e.kind, e.target or e.path) for e in recorder.events if e.kind in ("rename", "fsync")]
    assert kinds.index(("fsync", str(root / "a"))) < kinds.index(("rename", str(root / "b" / "tag")))


def test_oneFailureFailsOnlyItsWriter(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write failing in a batch fails its own caller and leaves no temp file; the others are stored."""
    (root / "tmp").mkdir(parents=True)
    reactor = _ManualReactor()
    committer = GroupCommitter(str(root), reactor)  # type: ignore[arg-type]
    _fired(committer.write([Put(str(root / "d" / "first"), b"1")]))
    real = os.write

    def failing(fd: int, data: Any) -> int:
        if bytes(data) == b"doomed":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", failing)
    good = _fired(committer.write([Put(str(root / "d" / "good"), b"fine")]))
    bad = _fired(committer.write([Put(str(root / "d" / "bad"), b"doomed")]))
    reactor.pool.runOne()
    assert good == [None]
    assert isinstance(bad[0], Failure) and bad[0].value.errno == errno.ENOSPC
    assert sorted(os.listdir(root / "d")) == ["first", "good"]
    assert os.listdir(root / "tmp") == []


def test_directoryGoneSinceCheckedIsMadeAgain(root: Path) -> None:
    """A directory the batch found already, gone by its file's rename, is made again, the write kept."""
    (root / "tmp").mkdir(parents=True)
    reactor = _ManualReactor()
    committer = GroupCommitter(str(root), reactor)  # type: ignore[arg-type]
    target = root / "gone" / "file"

    def prepare(shared: Shared) -> list[list[Put]]:
        # As if checked by an earlier request of the batch, then removed.
        shared.directories.add(str(target.parent))
        return [[Put(str(target), b"kept")]]

    done = _fired(committer.run(prepare, lambda shared: "stored"))
    reactor.pool.runOne()
    assert done == ["stored"]
    assert target.read_bytes() == b"kept"


def test_failedFsyncFailsOnlyItsWriter(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Of a batch's files, one whose fsync fails fails its caller alone, leaving no temp file."""
    (root / "tmp").mkdir(parents=True)
    reactor = _ManualReactor()
    committer = GroupCommitter(str(root), reactor)  # type: ignore[arg-type]
    _fired(committer.write([Put(str(root / "d" / "first"), b"1")]))
    doomed: set[int] = set()
    realWrite, realFsync = os.write, os.fsync

    def write(fd: int, data: Any) -> int:
        if bytes(data) == b"doomed":
            doomed.add(fd)
        return realWrite(fd, data)

    def fsync(fd: int) -> None:
        if fd in doomed:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        realFsync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    good = [_fired(committer.write([Put(str(root / "d" / f"good{i}"), b"fine")])) for i in range(3)]
    bad = _fired(committer.write([Put(str(root / "d" / "bad"), b"doomed")]))
    reactor.pool.runOne()
    assert good == [[None]] * 3
    assert isinstance(bad[0], Failure) and bad[0].value.errno == errno.EIO
    assert sorted(os.listdir(root / "d")) == ["first", "good0", "good1", "good2"]
    assert os.listdir(root / "tmp") == []
