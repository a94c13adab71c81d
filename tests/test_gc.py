"""
Garbage collection through the maintenance contracts, on every backend:
what it removes, what keeps things alive, and the fences that keep a push
racing a collection from being acknowledged with something missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import StubClient

from ociklein import Registry
from ociklein.interfaces import IBlobMaintenance, IManifestMaintenance
from ociklein.maintenance import collect, scrub
from ociklein.storage.fs._maintenance import fencedRemove, storageNow
from ociklein.storage.fs._paths import blobPath, digestPath
from tests.helpers import OCI_INDEX, OCI_MANIFEST, digestOf, errorCode, pushBlob, pushImage, putManifest

BASE = b"base layer shared by every image " * 100


async def blobCode(stub: StubClient, name: str, digest: str) -> int:
    return int((await stub.request("GET", f"/v2/{name}/blobs/{digest}")).code)


async def manifestCode(stub: StubClient, name: str, reference: str) -> int:
    return int((await stub.request("GET", f"/v2/{name}/manifests/{reference}")).code)


async def pushIndex(stub: StubClient, name: str, reference: str, children: list[tuple[str, bytes]]) -> str:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": d, "size": len(c)} for d, c in children],
    }
    content = json.dumps(document).encode()
    response = await putManifest(stub, name, reference, content, OCI_INDEX)
    assert response.code == 201, response.body
    return digestOf(content)


def storeOf(registry: Registry) -> tuple[Any, Any]:
    return registry.core.manifests, registry.core.blobs


async def collectNow(registry: Registry, **options: Any) -> Any:
    """
    Collect with no grace once the storage clock has moved past every write
    so far: an object store's clock ticks by whole seconds, and a write in
    the cutoff's second counts as recent.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    clock = IBlobMaintenance(registry.core.blobs)
    written = await clock.now()
    for _ in range(100):
        if await clock.now() > written:
            break
        await deferLater(reactor, 0.05, lambda: None)
    return await collect(*storeOf(registry), grace=0, **options)


@pytest_twisted.ensureDeferred
async def test_deletedImageFreed(registry: Registry, stub: StubClient) -> None:
    """Deleting an image and collecting frees its own blobs and keeps the shared ones."""
    kept, _ = await pushImage(stub, "app", "v1", layers=(BASE, b"v1 only"))
    gone, _ = await pushImage(stub, "app", "v2", config=b'{"v": 2}', layers=(BASE, b"v2 only"))
    assert (await stub.request("DELETE", f"/v2/app/manifests/{gone}")).code == 202
    report = await collectNow(registry)
    removed = {(r.kind, r.digest) for r in report.removed}
    assert removed == {
        ("link", digestOf(b"v2 only")),
        ("link", digestOf(b'{"v": 2}')),
        ("blob", digestOf(b"v2 only")),
        ("blob", digestOf(b'{"v": 2}')),
    }
    assert report.freedBytes == len(b"v2 only") + len(b'{"v": 2}')
    for blob in (BASE, b"v1 only", b'{"architecture":"amd64","os":"linux"}'):
        assert await blobCode(stub, "app", digestOf(blob)) == 200
    assert await manifestCode(stub, "app", "v1") == 200
    assert await blobCode(stub, "app", digestOf(b"v2 only")) == 404
    # Pushed again after collection, it is whole again.
    await pushImage(stub, "app", "v2", config=b'{"v": 2}', layers=(BASE, b"v2 only"))
    assert await manifestCode(stub, "app", "v2") == 200
    assert kept


@pytest_twisted.ensureDeferred
async def test_sharedAcrossRepositories(registry: Registry, stub: StubClient) -> None:
    """A blob another repository's manifest needs stays; only this repository's link goes."""
    await pushImage(stub, "one", "v1", layers=(BASE,))
    digest, _ = await pushImage(stub, "two", "v1", layers=(BASE,))
    await stub.request("DELETE", f"/v2/two/manifests/{digest}")
    report = await collectNow(registry)
    assert {(r.kind, r.repository) for r in report.removed} == {("link", "two")}
    assert await blobCode(stub, "one", digestOf(BASE)) == 200
    assert await blobCode(stub, "two", digestOf(BASE)) == 404


@pytest_twisted.ensureDeferred
async def test_graceKeepsRecentWrites(registry: Registry, stub: StubClient) -> None:
    """Within the grace period an unreferenced blob and its link stay."""
    await pushBlob(stub, "app", b"uploaded, no manifest yet")
    report = await collect(*storeOf(registry), grace=3600)
    assert report.removed == []
    assert await blobCode(stub, "app", digestOf(b"uploaded, no manifest yet")) == 200
    report = await collectNow(registry)
    assert {r.kind for r in report.removed} == {"link", "blob"}
    assert await blobCode(stub, "app", digestOf(b"uploaded, no manifest yet")) == 404


@pytest_twisted.ensureDeferred
async def test_dryRunRemovesNothing(registry: Registry, stub: StubClient) -> None:
    """A dry run reports what would go, and everything stays."""
    digest, _ = await pushImage(stub, "app", None, layers=(b"untagged",))
    await pushBlob(stub, "app", b"orphan")
    report = await collectNow(registry, untagged=True, dryRun=True)
    assert {r.kind for r in report.removed} == {"manifest", "link", "blob"}
    assert report.freedBytes > len(b"orphan")
    assert report.storedAfter == report.storedBefore
    assert await manifestCode(stub, "app", digest) == 200
    assert await blobCode(stub, "app", digestOf(b"orphan")) == 200


@pytest_twisted.ensureDeferred
async def test_untagged(registry: Registry, stub: StubClient) -> None:
    """Untagged manifests stay by default; --untagged removes them with their blobs."""
    untagged, _ = await pushImage(stub, "app", None, config=b'{"u": 1}', layers=(BASE, b"untagged"))
    tagged, _ = await pushImage(stub, "app", "v1", layers=(BASE,))
    assert (await collectNow(registry)).removed == []
    report = await collectNow(registry, untagged=True)
    assert {(r.kind, r.digest) for r in report.removed if r.kind == "manifest"} == {("manifest", untagged)}
    assert await manifestCode(stub, "app", untagged) == 404
    assert await blobCode(stub, "app", digestOf(b"untagged")) == 404
    assert await manifestCode(stub, "app", "v1") == 200
    assert await blobCode(stub, "app", digestOf(BASE)) == 200
    assert tagged


@pytest_twisted.ensureDeferred
async def test_referrersKeptBySubject(registry: Registry, stub: StubClient) -> None:
    """An untagged referrer lives as long as its subject is kept."""
    subject, content = await pushImage(stub, "app", "v1")
    descriptor = {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(content)}
    signature, _ = await pushImage(
        stub, "app", None, config=b"{}", layers=(b"signature",), subject=descriptor
    )
    assert (await collectNow(registry, untagged=True)).removed == []
    assert await manifestCode(stub, "app", signature) == 200
    assert (await stub.request("DELETE", "/v2/app/manifests/v1")).code == 202  # untag only
    report = await collectNow(registry, untagged=True)
    assert {r.digest for r in report.removed if r.kind == "manifest"} == {subject, signature}
    assert await manifestCode(stub, "app", signature) == 404
    referrers = await stub.request("GET", f"/v2/app/referrers/{subject}")
    assert json.loads(referrers.body)["manifests"] == []


@pytest_twisted.ensureDeferred
async def test_indexKeepsChildren(registry: Registry, stub: StubClient) -> None:
    """A tagged multi-arch index keeps its untagged children and their blobs."""
    amd = await pushImage(stub, "app", None, config=b'{"arch": "amd64"}', layers=(b"amd64",))
    arm = await pushImage(stub, "app", None, config=b'{"arch": "arm64"}', layers=(b"arm64",))
    index = await pushIndex(stub, "app", "multi", [amd, arm])
    assert (await collectNow(registry, untagged=True)).removed == []
    for digest in (amd[0], arm[0], index):
        assert await manifestCode(stub, "app", digest) == 200
    assert await blobCode(stub, "app", digestOf(b"arm64")) == 200
    await stub.request("DELETE", "/v2/app/manifests/multi")
    report = await collectNow(registry, untagged=True)
    assert {r.digest for r in report.removed if r.kind == "manifest"} == {amd[0], arm[0], index}


@pytest_twisted.ensureDeferred
async def test_expiredUploadsSwept(tmp_path: Path) -> None:
    """Collection removes upload sessions past their time to live."""
    from twisted.internet.task import Clock

    from ociklein.storage.memory import MemoryBlobStore, MemoryManifestBackend

    clock = Clock()
    blobs = MemoryBlobStore(clock=clock, uploadTTL=100)
    upload = await blobs.startUpload("app")
    clock.advance(101)
    report = await collect(MemoryManifestBackend(clock=clock), blobs, grace=0)
    assert [(r.kind, r.digest) for r in report.removed] == [("upload", upload.uploadId)]


@pytest_twisted.ensureDeferred
async def test_unreadableManifestStopsCollection(tmp_path: Path) -> None:
    """A manifest that does not hash to its name stops the sweep; scrub names it."""
    from ociklein.storage.fs import FilesystemBlobStore, FilesystemManifestBackend

    root = tmp_path / "root"
    manifests, blobs = FilesystemManifestBackend(str(root)), FilesystemBlobStore(str(root))
    stub = StubClient(Registry(manifests, blobs))
    digest, _ = await pushImage(stub, "app", "v1")
    await pushBlob(stub, "app", b"orphan")
    path = root / "repositories" / "app" / "_manifests" / "sha256" / digest.partition(":")[2]
    path.write_bytes(path.read_bytes()[:-10])
    report = await collect(manifests, blobs, grace=0)
    assert len(report.unreadable) == 1 and digest in report.unreadable[0]
    assert report.removed == []
    assert await blobCode(stub, "app", digestOf(b"orphan")) == 200
    found = await scrub(manifests, blobs, repair=True)
    assert [(p.kind, p.digest, p.repaired) for p in found.problems] == [("corrupt manifest", digest, True)]
    assert (await collect(manifests, blobs, grace=0)).unreadable == []
    blobs.close()


# Fences: a collector that decides to remove something just as a push needs
# it.  Each wrapper removes it (as a collection that marked earlier would)
# at the worst moment: after the push checked it and stored its own write.


def committed(manifests: Any) -> bool:
    """
    Whether C{manifests} stores a push and its uses in one step of a
    committer's thread (fs), where L{collectingAfterStore} can step in.
    """
    return hasattr(manifests, "_committer")


def collectingAfterStore(manifests: Any, path: str) -> Callable[[], list[bool]]:
    """
    For a backend that stores a push and records its uses in one step of
    its committer's thread (fs): remove the file at C{path} (once, as a
    fenced deletion) after the store is durable and before the uses are
    recorded.  Returns what undoes that, telling whether it removed it.
    """
    root, committer = manifests._root, manifests._committer
    real, removed = committer.run, []

    def run(prepare: Callable[[Any], Any], finish: Callable[[Any], Any]) -> Any:
        def collectThenFinish(shared: Any) -> Any:
            if not removed:
                removed.append(fencedRemove(path, storageNow(root) + 1))
            return finish(shared)

        return real(prepare, collectThenFinish)

    committer.run = run

    def undo() -> list[bool]:
        del committer.run
        return removed

    return undo


@pytest_twisted.ensureDeferred
async def test_pushRacingBlobRemovalNotAcknowledged(registry: Registry, stub: StubClient) -> None:
    """A manifest whose blob a collector removed after the check is refused, not acknowledged."""
    blob = await pushBlob(stub, "app", b"old layer")
    config = await pushBlob(stub, "app", b"{}")
    blobs = IBlobMaintenance(registry.core.blobs)
    manifests = registry.core.manifests
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": blob, "size": 9}],
    }
    if committed(manifests):
        undo = collectingAfterStore(manifests, blobPath(manifests._root, blob))
        try:
            response = await putManifest(stub, "app", "v1", json.dumps(document).encode())
        finally:
            assert undo() == [True]
    else:
        # Whichever way the backend stores a tagged manifest, in one step or two.
        names = [n for n in ("putManifest", "putTaggedManifest") if hasattr(manifests, n)]

        def thenCollect(real: Any) -> Any:
            async def put(*args: Any) -> None:
                await real(*args)
                assert await blobs.deleteBlob(blob, await blobs.now() + 1)

            return put

        for name in names:
            setattr(manifests, name, thenCollect(getattr(manifests, name)))
        try:
            response = await putManifest(stub, "app", "v1", json.dumps(document).encode())
        finally:
            for name in names:
                delattr(manifests, name)
    assert response.code == 400, response.body
    assert errorCode(response) == "MANIFEST_BLOB_UNKNOWN"
    assert await blobCode(stub, "app", blob) == 404


@pytest_twisted.ensureDeferred
async def test_tagRacingManifestRemovalStoresAgain(registry: Registry, stub: StubClient) -> None:
    """A tag set while a collector removes its untagged manifest ends with the manifest stored."""
    digest, content = await pushImage(stub, "app", None)
    manifests = registry.core.manifests
    if committed(manifests):
        path = digestPath(os.path.join(manifests._root, "repositories", "app", "_manifests"), digest)
        undo = collectingAfterStore(manifests, path)
        try:
            response = await putManifest(stub, "app", "v1", content)
        finally:
            removed = undo()
    else:
        backend = IManifestMaintenance(manifests)
        realSetTag = manifests.setTag
        removed = []

        async def setTagThenCollect(repository: str, tag: str, target: str) -> None:
            await realSetTag(repository, tag, target)
            if not removed:
                before = await backend.now() + 1
                removed.append(await backend.deleteManifestBefore(repository, target, before))

        manifests.setTag = setTagThenCollect
        try:
            response = await putManifest(stub, "app", "v1", content)
        finally:
            del manifests.setTag
    assert removed == [True]
    assert response.code == 201, response.body
    assert await manifestCode(stub, "app", "v1") == 200
    assert await manifestCode(stub, "app", digest) == 200


@pytest_twisted.ensureDeferred
async def test_indexRacingChildRemovalNotAcknowledged(registry: Registry, stub: StubClient) -> None:
    """An index whose child manifest a collector removed after the check is refused, not acknowledged."""
    manifests = registry.core.manifests
    if not committed(manifests):
        pytest.skip("the fence in one step of a committer's thread (fs)")
    child, content = await pushImage(stub, "app", None)
    path = digestPath(os.path.join(manifests._root, "repositories", "app", "_manifests"), child)
    undo = collectingAfterStore(manifests, path)
    try:
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": len(content)}],
        }
        response = await putManifest(stub, "app", "multi", json.dumps(document).encode(), OCI_INDEX)
    finally:
        assert undo() == [True]
    assert response.code == 400, response.body
    assert errorCode(response) == "MANIFEST_BLOB_UNKNOWN"
    assert await manifestCode(stub, "app", child) == 404


@pytest_twisted.ensureDeferred
async def test_mountRacingRemovalNotAcknowledged(registry: Registry, stub: StubClient) -> None:
    """A mount of a blob a collector removes as it links answers 202 (upload), not 201."""
    digest = await pushBlob(stub, "source", b"mounted layer")
    blobs = registry.core.blobs
    maintained = IBlobMaintenance(blobs)
    realLink = blobs.link

    async def linkThenCollect(repository: str, target: str) -> None:
        await realLink(repository, target)
        if repository == "target":
            assert await maintained.deleteBlob(target, await maintained.now() + 1)

    blobs.link = linkThenCollect
    try:
        response = await stub.request("POST", f"/v2/target/blobs/uploads/?mount={digest}&from=source")
    finally:
        del blobs.link
    assert response.code == 202, response.body
    assert await blobCode(stub, "target", digest) == 404


@pytest.mark.parametrize("use", ["before", "during"])
def test_fsFencedRemoveAgainstUse(tmp_path: Path, use: str) -> None:
    """A use before a fenced removal keeps the file; a use during it is told the file is gone."""
    from ociklein.storage.fs._maintenance import fencedRemove, recordUse, storageNow

    (tmp_path / "tmp").mkdir()
    path = tmp_path / "blob"
    path.write_bytes(b"x")
    os.utime(path, (0, 0))
    cutoff = storageNow(str(tmp_path))
    uses: list[bool] = []
    if use == "before":
        uses.append(recordUse(str(path)))
        assert fencedRemove(str(path), cutoff) is False
        assert uses == [True] and path.exists()
    else:
        assert fencedRemove(str(path), cutoff, lambda hidden: uses.append(recordUse(str(path)))) is True
        assert uses == [False] and not path.exists()
    assert [p.name for p in tmp_path.iterdir() if ".gc-" in p.name] == []


def test_fsUsedFileNeverHidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A collector does not hide (and so make missing for a moment) a file used since its cutoff."""
    from ociklein.storage.fs._maintenance import fencedRemove, recordUse, storageNow

    (tmp_path / "tmp").mkdir()
    path = tmp_path / "manifest"
    path.write_bytes(b"x")
    os.utime(path, (0, 0))
    cutoff = storageNow(str(tmp_path))
    assert recordUse(str(path))
    renamed: list[str] = []
    realRename = os.rename

    def rename(source: Any, target: Any) -> None:
        renamed.append(str(source))
        realRename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    assert fencedRemove(str(path), cutoff) is False
    assert renamed == [] and path.exists()


def test_fsUseReachingRemovedInode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A use whose utime lands on an inode a collector already took is reported missing."""
    from ociklein.storage.fs import _maintenance

    (tmp_path / "tmp").mkdir()
    path = tmp_path / "blob"
    path.write_bytes(b"x")
    os.utime(path, (0, 0))
    cutoff = _maintenance.storageNow(str(tmp_path))
    realUtime = os.utime
    removed = []

    def lateUtime(target: Any, *args: Any) -> None:
        # The path is looked up, then the collector runs whole, then the
        # inode it found is stamped: the kernel may order a utime so.
        fd = os.open(target, os.O_RDONLY)
        try:
            removed.append(_maintenance.fencedRemove(str(path), cutoff))
            realUtime(fd, *args)
        finally:
            os.close(fd)

    monkeypatch.setattr(os, "utime", lateUtime)
    assert _maintenance.recordUse(str(path)) is False
    assert removed == [True]


@pytest_twisted.ensureDeferred
async def test_periodicCollection() -> None:
    """The registry's own collection runs every interval on its clock, and stops with it."""
    from twisted.internet.task import Clock

    from ociklein.maintenance._service import CollectionService
    from ociklein.storage.memory import MemoryBlobStore, MemoryManifestBackend

    clock = Clock()
    manifests, blobs = MemoryManifestBackend(clock=clock), MemoryBlobStore(clock=clock)
    stub = StubClient(Registry(manifests, blobs))
    await pushBlob(stub, "app", b"orphan")
    service = CollectionService(manifests, blobs, interval=600, grace=60, clock=clock)
    service.startService()
    clock.advance(30)
    assert await blobCode(stub, "app", digestOf(b"orphan")) == 200  # no collection yet
    clock.advance(570)
    assert await blobCode(stub, "app", digestOf(b"orphan")) == 404
    await pushBlob(stub, "app", b"orphan")
    await service.stopService()
    clock.advance(6000)
    assert await blobCode(stub, "app", digestOf(b"orphan")) == 200
    assert clock.getDelayedCalls() == []
