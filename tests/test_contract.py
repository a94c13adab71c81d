"""
The storage contract: every backend must pass this same suite, which pins
the behaviour the memory backend defines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from seaweedfixture import S3Backends
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from ociklein.interfaces import (
    IBlobMaintenance,
    IBlobReader,
    IBlobStore,
    IManifestBackend,
    IManifestMaintenance,
    IUpload,
)
from ociklein.storage.fs import FilesystemBlobStore, FilesystemManifestBackend
from ociklein.storage.memory import MemoryBlobStore, MemoryManifestBackend

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(content: bytes, artifactType: str = "application/example") -> dict[str, Any]:
    return {
        "mediaType": MANIFEST,
        "digest": sha256(content),
        "size": len(content),
        "artifactType": artifactType,
    }


@dataclass
class Backends:
    blobs: IBlobStore
    manifests: IManifestBackend


@pytest.fixture(params=["memory", "fs", "s3"])
def backends(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backends]:
    if request.param == "memory":
        yield Backends(MemoryBlobStore(), MemoryManifestBackend())
        return
    if request.param == "s3":
        s3 = S3Backends(request.getfixturevalue("seaweedfs"))
        try:
            yield Backends(s3.blobs, s3.manifests)
        finally:
            s3.close()
        return
    root = str(tmp_path / "root")
    store = FilesystemBlobStore(root)
    try:
        yield Backends(store, FilesystemManifestBackend(root))
    finally:
        store.close()


@pytest.fixture(params=["memory", "fs", "s3"])
def expiring(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[IBlobStore, Clock]]:
    """
    A blob store whose upload sessions live 100 s on a fake clock.
    """
    clock = Clock()
    if request.param == "memory":
        yield MemoryBlobStore(clock=clock, uploadTTL=100), clock
        return
    if request.param == "s3":
        s3 = S3Backends(request.getfixturevalue("seaweedfs"), clock=clock, uploadTTL=100)
        try:
            yield s3.blobs, clock
        finally:
            s3.close()
        return
    store = FilesystemBlobStore(str(tmp_path / "root"), clock=clock, uploadTTL=100)
    try:
        yield store, clock
    finally:
        store.close()


async def storeBlob(blobs: IBlobStore, data: bytes, repository: str = "library/ubuntu") -> str:
    upload = await blobs.startUpload(repository)
    await upload.write(data)
    digest = sha256(data)
    await upload.commit(digest)
    return digest


async def readAll(reader: IBlobReader) -> bytes:
    return await reader.read(0, reader.size)


# Interfaces


@pytest_twisted.ensureDeferred
async def test_blobStoreProvidesInterface(backends: Backends) -> None:
    """The blob store provides IBlobStore."""
    assert verifyObject(IBlobStore, backends.blobs)


@pytest_twisted.ensureDeferred
async def test_manifestBackendProvidesInterface(backends: Backends) -> None:
    """The manifest backend provides IManifestBackend."""
    assert verifyObject(IManifestBackend, backends.manifests)


@pytest_twisted.ensureDeferred
async def test_uploadProvidesInterface(backends: Backends) -> None:
    """Upload sessions, new and found again, provide IUpload."""
    upload = await backends.blobs.startUpload("library/ubuntu")
    assert verifyObject(IUpload, upload)
    found = await backends.blobs.getUpload(upload.uploadId)
    assert found is not None
    assert verifyObject(IUpload, found)
    await upload.abort()


@pytest_twisted.ensureDeferred
async def test_readerProvidesInterface(backends: Backends) -> None:
    """Blob readers provide IBlobReader."""
    digest = await storeBlob(backends.blobs, b"hello")
    reader = await backends.blobs.open(digest)
    assert reader is not None
    assert verifyObject(IBlobReader, reader)
    reader.close()
    reader.close()  # a second close is harmless: the response and its sender may both close


# Blobs


@pytest_twisted.ensureDeferred
async def test_unknownBlob(backends: Backends) -> None:
    """stat and open answer None for a blob that is not stored."""
    digest = sha256(b"nothing")
    assert await backends.blobs.stat(digest) is None
    assert await backends.blobs.open(digest) is None


@pytest_twisted.ensureDeferred
async def test_writeWhileWritingIsRefusedAsBusy(backends: Backends) -> None:
    """A write while an earlier one is under way fails as busy and writes nothing."""
    upload = await backends.blobs.startUpload("library/alpine")
    first = upload.write(b"a" * (8 * 1024 * 1024))
    outcomes: list[object] = []
    second = upload.write(b"b")
    second.addBoth(outcomes.append)
    if not first.called:
        assert len(outcomes) == 1 and isinstance(outcomes[0], Failure)
        assert outcomes[0].check(BlockingIOError)
    await first
    if outcomes and isinstance(outcomes[0], Failure):
        assert upload.size == 8 * 1024 * 1024
    else:
        await second
        assert upload.size == 8 * 1024 * 1024 + 1
    await upload.abort()


@pytest_twisted.ensureDeferred
async def test_committedBlobIsStored(backends: Backends) -> None:
    """A committed upload becomes a blob of the right size and bytes."""
    data = b"layer data " * 1000
    digest = await storeBlob(backends.blobs, data)
    assert await backends.blobs.stat(digest) == len(data)
    reader = await backends.blobs.open(digest)
    assert reader is not None
    assert reader.size == len(data)
    assert await readAll(reader) == data
    reader.close()


@pytest_twisted.ensureDeferred
async def test_emptyBlob(backends: Backends) -> None:
    """An empty upload commits to an empty blob."""
    digest = await storeBlob(backends.blobs, b"")
    assert await backends.blobs.stat(digest) == 0
    reader = await backends.blobs.open(digest)
    assert reader is not None
    assert await reader.read(0, 10) == b""
    reader.close()


@pytest_twisted.ensureDeferred
async def test_readRanges(backends: Backends) -> None:
    """read returns the asked range, shorter only at the end, empty past it."""
    data = bytes(range(256)) * 4
    digest = await storeBlob(backends.blobs, data)
    reader = await backends.blobs.open(digest)
    assert reader is not None
    assert await reader.read(0, 10) == data[:10]
    assert await reader.read(100, 50) == data[100:150]
    assert await reader.read(1000, 100) == data[1000:]
    assert await reader.read(len(data), 10) == b""
    assert await reader.read(len(data) + 5, 10) == b""
    assert await reader.read(5, 0) == b""
    reader.close()


@pytest_twisted.ensureDeferred
async def test_readersAreIndependent(backends: Backends) -> None:
    """Closing one reader leaves another reader of the same blob working."""
    data = b"shared blob"
    digest = await storeBlob(backends.blobs, data)
    first = await backends.blobs.open(digest)
    second = await backends.blobs.open(digest)
    assert first is not None and second is not None
    first.close()
    assert await second.read(0, 6) == b"shared"
    second.close()


@pytest_twisted.ensureDeferred
async def test_commitExistingBlobKeepsIt(backends: Backends) -> None:
    """Committing data already stored keeps one blob and ends the session."""
    data = b"twice pushed"
    digest = await storeBlob(backends.blobs, data)
    upload = await backends.blobs.startUpload("other/repo")
    await upload.write(data)
    await upload.commit(digest)
    assert await backends.blobs.getUpload(upload.uploadId) is None
    assert await backends.blobs.stat(digest) == len(data)
    reader = await backends.blobs.open(digest)
    assert reader is not None
    assert await readAll(reader) == data
    reader.close()


# Links


@pytest_twisted.ensureDeferred
async def test_linkMakesBlobVisible(backends: Backends) -> None:
    """A blob is linked in a repository only after link, and only there."""
    digest = await storeBlob(backends.blobs, b"linked")
    assert not await backends.blobs.isLinked("library/ubuntu", digest)
    await backends.blobs.link("library/ubuntu", digest)
    assert await backends.blobs.isLinked("library/ubuntu", digest)
    assert not await backends.blobs.isLinked("library/debian", digest)
    assert not await backends.blobs.isLinked("library", digest)


@pytest_twisted.ensureDeferred
async def test_linkIsIdempotent(backends: Backends) -> None:
    """Linking twice is the same as linking once; one unlink removes it."""
    digest = await storeBlob(backends.blobs, b"twice linked")
    await backends.blobs.link("repo", digest)
    await backends.blobs.link("repo", digest)
    assert await backends.blobs.unlink("repo", digest) is True
    assert not await backends.blobs.isLinked("repo", digest)


@pytest_twisted.ensureDeferred
async def test_unlink(backends: Backends) -> None:
    """unlink answers True when it removed a link, False when none was there."""
    digest = await storeBlob(backends.blobs, b"unlinked")
    assert await backends.blobs.unlink("repo", digest) is False
    await backends.blobs.link("repo", digest)
    await backends.blobs.link("other", digest)
    assert await backends.blobs.unlink("repo", digest) is True
    assert await backends.blobs.unlink("repo", digest) is False
    assert not await backends.blobs.isLinked("repo", digest)
    assert await backends.blobs.isLinked("other", digest)
    assert await backends.blobs.stat(digest) == len(b"unlinked")


@pytest_twisted.ensureDeferred
async def test_linkWithoutBlob(backends: Backends) -> None:
    """A link to a blob that is not stored does not count as linked."""
    missing = sha256(b"never uploaded")
    await backends.blobs.link("repo", missing)
    assert not await backends.blobs.isLinked("repo", missing)
    assert await backends.blobs.unlink("repo", missing) is True


@pytest_twisted.ensureDeferred
async def test_linkBeforeBlobArrives(backends: Backends) -> None:
    """A link made before its blob is stored counts once the blob arrives."""
    data = b"late blob"
    digest = sha256(data)
    await backends.blobs.link("repo", digest)
    await storeBlob(backends.blobs, data)
    assert await backends.blobs.isLinked("repo", digest)


@pytest_twisted.ensureDeferred
async def test_repositoriesHolding(backends: Backends) -> None:
    """repositoriesHolding lists the repositories a blob is linked in, sorted, once each."""
    digest = await storeBlob(backends.blobs, b"held")
    assert await backends.blobs.repositoriesHolding(digest, None, 10) == []
    for repository in ("b/c", "a", "b", "a"):
        await backends.blobs.link(repository, digest)
    other = await storeBlob(backends.blobs, b"held elsewhere")
    await backends.blobs.link("z", other)
    assert await backends.blobs.repositoriesHolding(digest, None, 10) == ["a", "b", "b/c"]
    assert await backends.blobs.repositoriesHolding(other, None, 10) == ["z"]


@pytest_twisted.ensureDeferred
async def test_repositoriesHoldingPaging(backends: Backends) -> None:
    """repositoriesHolding pages with last and limit, as the tag listings do."""
    digest = await storeBlob(backends.blobs, b"paged")
    names = [f"repo{i:02d}" for i in range(7)]
    for name in reversed(names):
        await backends.blobs.link(name, digest)
    assert await backends.blobs.repositoriesHolding(digest, None, 3) == names[:3]
    assert await backends.blobs.repositoriesHolding(digest, names[2], 3) == names[3:6]
    assert await backends.blobs.repositoriesHolding(digest, names[5], 3) == names[6:]
    assert await backends.blobs.repositoriesHolding(digest, names[6], 3) == []
    assert await backends.blobs.repositoriesHolding(digest, None, 0) == []


@pytest_twisted.ensureDeferred
async def test_repositoriesHoldingFollowUnlink(backends: Backends) -> None:
    """An unlinked repository leaves repositoriesHolding; linking again brings it back."""
    digest = await storeBlob(backends.blobs, b"coming and going")
    await backends.blobs.link("one", digest)
    await backends.blobs.link("two", digest)
    await backends.blobs.unlink("one", digest)
    assert await backends.blobs.repositoriesHolding(digest, None, 10) == ["two"]
    await backends.blobs.unlink("two", digest)
    assert await backends.blobs.repositoriesHolding(digest, None, 10) == []
    await backends.blobs.link("one", digest)
    assert await backends.blobs.repositoriesHolding(digest, None, 10) == ["one"]


@pytest_twisted.ensureDeferred
async def test_repositoriesHoldingFollowDeleteLink(backends: Backends) -> None:
    """A link removed by maintenance (deleteLink) leaves repositoriesHolding too."""
    digest = await storeBlob(backends.blobs, b"collected")
    await backends.blobs.link("kept", digest)
    await backends.blobs.link("collected", digest)
    later = await backends.blobs.now() + 3600  # type: ignore[attr-defined]
    assert await backends.blobs.deleteLink("collected", digest, later) is True  # type: ignore[attr-defined]
    assert await backends.blobs.repositoriesHolding(digest, None, 10) == ["kept"]


# Uploads


@pytest_twisted.ensureDeferred
async def test_newUpload(backends: Backends) -> None:
    """A new session is empty, belongs to its repository, and has its own id."""
    first = await backends.blobs.startUpload("library/ubuntu")
    second = await backends.blobs.startUpload("library/ubuntu")
    assert first.size == 0
    assert first.repository == "library/ubuntu"
    assert isinstance(first.uploadId, str) and len(first.uploadId) >= 16
    assert first.uploadId != second.uploadId
    await first.abort()
    await second.abort()


@pytest_twisted.ensureDeferred
async def test_uploadSizeGrows(backends: Backends) -> None:
    """size counts every byte written so far."""
    upload = await backends.blobs.startUpload("repo")
    await upload.write(b"abc")
    assert upload.size == 3
    await upload.write(b"defgh")
    assert upload.size == 8
    await upload.abort()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
async def test_uploadDigest(backends: Backends, algorithm: str) -> None:
    """digest hashes everything written so far, before and after more writes."""
    upload = await backends.blobs.startUpload("repo")
    assert await upload.digest(algorithm) == hashlib.new(algorithm, b"").hexdigest()
    await upload.write(b"first ")
    assert await upload.digest(algorithm) == hashlib.new(algorithm, b"first ").hexdigest()
    await upload.write(b"second")
    expected = hashlib.new(algorithm, b"first second").hexdigest()
    assert await upload.digest(algorithm) == expected
    await upload.abort()


@pytest_twisted.ensureDeferred
async def test_sha512Blob(backends: Backends) -> None:
    """A blob may be committed under a sha512 digest."""
    data = b"sha512 content"
    upload = await backends.blobs.startUpload("repo")
    await upload.write(data)
    digest = "sha512:" + await upload.digest("sha512")
    assert digest == "sha512:" + hashlib.sha512(data).hexdigest()
    await upload.commit(digest)
    assert await backends.blobs.stat(digest) == len(data)
    assert await backends.blobs.stat(sha256(data)) is None


@pytest_twisted.ensureDeferred
async def test_getUpload(backends: Backends) -> None:
    """getUpload finds a live session, with its size, and it can continue."""
    upload = await backends.blobs.startUpload("library/ubuntu")
    await upload.write(b"part one, ")
    found = await backends.blobs.getUpload(upload.uploadId)
    assert found is not None
    assert found.uploadId == upload.uploadId
    assert found.repository == "library/ubuntu"
    assert found.size == 10
    await found.write(b"part two")
    data = b"part one, part two"
    assert await found.digest("sha256") == hashlib.sha256(data).hexdigest()
    await found.commit(sha256(data))
    reader = await backends.blobs.open(sha256(data))
    assert reader is not None
    assert await readAll(reader) == data
    reader.close()


@pytest_twisted.ensureDeferred
async def test_getUnknownUpload(backends: Backends) -> None:
    """getUpload answers None for an id that names no session."""
    assert await backends.blobs.getUpload("A" * 32) is None


@pytest_twisted.ensureDeferred
async def test_commitEndsSession(backends: Backends) -> None:
    """After commit the session is gone."""
    upload = await backends.blobs.startUpload("repo")
    await upload.write(b"done")
    await upload.commit(sha256(b"done"))
    assert await backends.blobs.getUpload(upload.uploadId) is None


@pytest_twisted.ensureDeferred
async def test_abortDiscards(backends: Backends) -> None:
    """abort ends the session and stores nothing."""
    upload = await backends.blobs.startUpload("repo")
    await upload.write(b"discarded")
    await upload.abort()
    assert await backends.blobs.getUpload(upload.uploadId) is None
    assert await backends.blobs.stat(sha256(b"discarded")) is None


@pytest_twisted.ensureDeferred
async def test_sessionsAreIndependent(backends: Backends) -> None:
    """Two sessions hold their own data; aborting one leaves the other."""
    first = await backends.blobs.startUpload("repo")
    second = await backends.blobs.startUpload("repo")
    await first.write(b"one")
    await second.write(b"two!")
    await first.abort()
    found = await backends.blobs.getUpload(second.uploadId)
    assert found is not None and found.size == 4
    await second.commit(sha256(b"two!"))
    assert await backends.blobs.stat(sha256(b"two!")) == 4


# Manifests


@pytest_twisted.ensureDeferred
async def test_unknownManifest(backends: Backends) -> None:
    """getManifest answers None for an unknown manifest or repository."""
    digest = sha256(b"{}")
    assert await backends.manifests.getManifest("repo", digest) is None
    await backends.manifests.putManifest("repo", digest, MANIFEST, b"{}", None, {})
    assert await backends.manifests.getManifest("other", digest) is None
    assert await backends.manifests.getManifest("repo", sha256(b"[]")) is None


@pytest_twisted.ensureDeferred
async def test_manifestBytesKept(backends: Backends) -> None:
    """A manifest comes back byte for byte with its media type."""
    content = b'{\n  "schemaVersion": 2,\r\n\t"x": "\xc3\xa9"  }\n\n'
    digest = sha256(content)
    await backends.manifests.putManifest("library/ubuntu", digest, MANIFEST, content, None, {})
    assert await backends.manifests.getManifest("library/ubuntu", digest) == (MANIFEST, content)


@pytest_twisted.ensureDeferred
async def test_manifestPutAgain(backends: Backends) -> None:
    """Putting a manifest again replaces its media type."""
    content = b'{"schemaVersion": 2}'
    digest = sha256(content)
    await backends.manifests.putManifest("repo", digest, MANIFEST, content, None, {})
    await backends.manifests.putManifest("repo", digest, INDEX, content, None, {})
    assert await backends.manifests.getManifest("repo", digest) == (INDEX, content)


@pytest_twisted.ensureDeferred
async def test_deleteManifest(backends: Backends) -> None:
    """deleteManifest answers True once, then False, and the manifest is gone."""
    content = b'{"a": 1}'
    digest = sha256(content)
    assert await backends.manifests.deleteManifest("repo", digest) is False
    await backends.manifests.putManifest("repo", digest, MANIFEST, content, None, {})
    assert await backends.manifests.deleteManifest("other", digest) is False
    assert await backends.manifests.deleteManifest("repo", digest) is True
    assert await backends.manifests.deleteManifest("repo", digest) is False
    assert await backends.manifests.getManifest("repo", digest) is None


@pytest_twisted.ensureDeferred
async def test_deleteManifestRemovesItsTags(backends: Backends) -> None:
    """Deleting a manifest removes the tags on it and keeps the others."""
    one, two = b'{"n": 1}', b'{"n": 2}'
    m = backends.manifests
    await m.putManifest("repo", sha256(one), MANIFEST, one, None, {})
    await m.putManifest("repo", sha256(two), MANIFEST, two, None, {})
    await m.setTag("repo", "a", sha256(one))
    await m.setTag("repo", "b", sha256(one))
    await m.setTag("repo", "c", sha256(two))
    assert await m.deleteManifest("repo", sha256(one)) is True
    assert await m.resolveTag("repo", "a") is None
    assert await m.resolveTag("repo", "b") is None
    assert await m.resolveTag("repo", "c") == sha256(two)
    assert await m.listTags("repo", None, 100) == ["c"]


@pytest_twisted.ensureDeferred
async def test_deleteManifestRemovesItsReferrer(backends: Backends) -> None:
    """Deleting a referrer removes its entry from its subject's index only."""
    m = backends.manifests
    subject = sha256(b"subject")
    one, two = b'{"sig": 1}', b'{"sig": 2}'
    await m.putManifest("repo", sha256(one), MANIFEST, one, subject, descriptor(one))
    await m.putManifest("repo", sha256(two), MANIFEST, two, subject, descriptor(two))
    assert await m.deleteManifest("repo", sha256(one)) is True
    assert await m.referrers("repo", subject) == [descriptor(two)]


@pytest_twisted.ensureDeferred
async def test_manifestsPerRepository(backends: Backends) -> None:
    """Repositories a, a/b and b hold their manifests apart."""
    m = backends.manifests
    content = b'{"shared": true}'
    digest = sha256(content)
    await m.putManifest("a", digest, MANIFEST, content, None, {})
    await m.putManifest("a/b", digest, INDEX, content, None, {})
    assert await m.deleteManifest("a", digest) is True
    assert await m.getManifest("a", digest) is None
    assert await m.getManifest("a/b", digest) == (INDEX, content)
    assert await m.getManifest("b", digest) is None


# Tags


@pytest_twisted.ensureDeferred
async def test_tags(backends: Backends) -> None:
    """setTag points a tag at a digest; resolveTag answers it, None if unknown."""
    m = backends.manifests
    digest = sha256(b"x")
    assert await m.resolveTag("repo", "latest") is None
    await m.setTag("repo", "latest", digest)
    assert await m.resolveTag("repo", "latest") == digest
    assert await m.resolveTag("repo", "other") is None
    assert await m.resolveTag("other", "latest") is None


@pytest_twisted.ensureDeferred
async def test_tagMoves(backends: Backends) -> None:
    """Setting a tag again replaces its target and keeps one tag."""
    m = backends.manifests
    await m.setTag("repo", "latest", sha256(b"old"))
    await m.setTag("repo", "latest", sha256(b"new"))
    assert await m.resolveTag("repo", "latest") == sha256(b"new")
    assert await m.listTags("repo", None, 10) == ["latest"]


@pytest_twisted.ensureDeferred
async def test_tagsAreCaseSensitive(backends: Backends) -> None:
    """Tags differing only in case are different tags."""
    m = backends.manifests
    await m.setTag("repo", "Latest", sha256(b"upper"))
    await m.setTag("repo", "latest", sha256(b"lower"))
    assert await m.resolveTag("repo", "Latest") == sha256(b"upper")
    assert await m.resolveTag("repo", "latest") == sha256(b"lower")


@pytest_twisted.ensureDeferred
async def test_deleteTag(backends: Backends) -> None:
    """deleteTag answers True once, then False; the tag no longer resolves."""
    m = backends.manifests
    assert await m.deleteTag("repo", "latest") is False
    await m.setTag("repo", "latest", sha256(b"x"))
    await m.setTag("repo", "stable", sha256(b"x"))
    assert await m.deleteTag("repo", "latest") is True
    assert await m.deleteTag("repo", "latest") is False
    assert await m.resolveTag("repo", "latest") is None
    assert await m.resolveTag("repo", "stable") == sha256(b"x")
    assert await m.listTags("repo", None, 10) == ["stable"]


@pytest_twisted.ensureDeferred
async def test_listTagsUnknownRepository(backends: Backends) -> None:
    """listTags answers None for a repository never given a manifest or tag."""
    assert await backends.manifests.listTags("nowhere", None, 10) is None


@pytest_twisted.ensureDeferred
async def test_listTagsLinkedBlobsOnly(backends: Backends) -> None:
    """Linking blobs alone makes no repository known to the manifest backend."""
    digest = await storeBlob(backends.blobs, b"blob only", "blobs/only")
    await backends.blobs.link("blobs/only", digest)
    assert await backends.manifests.listTags("blobs/only", None, 10) is None
    assert await backends.manifests.listRepositories(None, 10) == []


@pytest_twisted.ensureDeferred
async def test_listTagsNoTags(backends: Backends) -> None:
    """A repository with manifests but no tags lists no tags, not None."""
    content = b"{}"
    await backends.manifests.putManifest("repo", sha256(content), MANIFEST, content, None, {})
    assert await backends.manifests.listTags("repo", None, 10) == []


@pytest_twisted.ensureDeferred
async def test_listTagsPaging(backends: Backends) -> None:
    """listTags sorts, and pages with last and limit."""
    m = backends.manifests
    tags = ["v10", "v2", "latest", "Z", "_x", "a.b", "a-b", "a_b", "v1"]
    for tag in tags:
        await m.setTag("repo", tag, sha256(tag.encode()))
    expected = sorted(tags)
    assert await m.listTags("repo", None, 100) == expected
    assert await m.listTags("repo", None, 3) == expected[:3]
    assert await m.listTags("repo", expected[2], 3) == expected[3:6]
    assert await m.listTags("repo", expected[-1], 3) == []
    assert await m.listTags("repo", "b", 100) == [t for t in expected if t > "b"]
    assert await m.listTags("repo", None, 0) == []


@pytest_twisted.ensureDeferred
async def test_listTagsAfterDeletingAll(backends: Backends) -> None:
    """A repository whose tags and manifests are all deleted stays known."""
    m = backends.manifests
    content = b"{}"
    await m.putManifest("repo", sha256(content), MANIFEST, content, None, {})
    await m.setTag("repo", "latest", sha256(content))
    await m.deleteManifest("repo", sha256(content))
    assert await m.listTags("repo", None, 10) == []
    assert await m.listRepositories(None, 10) == ["repo"]


# Repositories


@pytest_twisted.ensureDeferred
async def test_listRepositories(backends: Backends) -> None:
    """Repositories given a manifest or a tag are listed, sorted, paged."""
    m = backends.manifests
    assert await m.listRepositories(None, 10) == []
    names = ["a/b", "a-b", "a.b", "a", "a_b", "ab", "library/ubuntu", "a/b/c", "z9"]
    for i, name in enumerate(names):
        content = name.encode()
        if i % 2:
            await m.setTag(name, "latest", sha256(content))
        else:
            await m.putManifest(name, sha256(content), MANIFEST, content, None, {})
    await m.putManifest("a", sha256(b"again"), MANIFEST, b"again", None, {})
    expected = sorted(names)
    assert await m.listRepositories(None, 100) == expected
    assert await m.listRepositories(None, 4) == expected[:4]
    assert await m.listRepositories(expected[3], 4) == expected[4:8]
    assert await m.listRepositories(expected[-1], 4) == []
    assert await m.listRepositories("b", 100) == ["library/ubuntu", "z9"]


# Referrers


@pytest_twisted.ensureDeferred
async def test_referrersEmpty(backends: Backends) -> None:
    """referrers is empty for a subject nothing refers to."""
    assert await backends.manifests.referrers("repo", sha256(b"lonely")) == []


@pytest_twisted.ensureDeferred
async def test_referrers(backends: Backends) -> None:
    """referrers lists the descriptors recorded for a subject, per repository."""
    m = backends.manifests
    subject, otherSubject = sha256(b"image"), sha256(b"other image")
    sig, sbom, plain, elsewhere = b'{"sig": 1}', b'{"sbom": 1}', b'{"plain": 1}', b'{"e": 1}'
    await m.putManifest("repo", sha256(sig), MANIFEST, sig, subject, descriptor(sig, "sig"))
    await m.putManifest("repo", sha256(sbom), MANIFEST, sbom, subject, descriptor(sbom, "sbom"))
    await m.putManifest("repo", sha256(plain), MANIFEST, plain, None, descriptor(plain))
    await m.putManifest("repo", sha256(elsewhere), MANIFEST, elsewhere, otherSubject, descriptor(elsewhere))
    found = await m.referrers("repo", subject)
    expected = [descriptor(sig, "sig"), descriptor(sbom, "sbom")]
    assert sorted(found, key=lambda d: d["digest"]) == sorted(expected, key=lambda d: d["digest"])
    assert await m.referrers("repo", otherSubject) == [descriptor(elsewhere)]
    assert await m.referrers("other", subject) == []


@pytest_twisted.ensureDeferred
async def test_referrerPutAgain(backends: Backends) -> None:
    """Putting a referrer again replaces its descriptor, listed once."""
    m = backends.manifests
    subject = sha256(b"image")
    sig = b'{"sig": 1}'
    await m.putManifest("repo", sha256(sig), MANIFEST, sig, subject, descriptor(sig, "v1"))
    await m.putManifest("repo", sha256(sig), MANIFEST, sig, subject, descriptor(sig, "v2"))
    assert await m.referrers("repo", subject) == [descriptor(sig, "v2")]


@pytest_twisted.ensureDeferred
async def test_referrerDescriptorKept(backends: Backends) -> None:
    """A descriptor with annotations and nested values comes back equal."""
    m = backends.manifests
    subject = sha256(b"image")
    sig = b'{"sig": true}'
    desc = descriptor(sig) | {"annotations": {"org.example/é": "x", "n": "1"}}
    await m.putManifest("repo", sha256(sig), MANIFEST, sig, subject, desc)
    assert await m.referrers("repo", subject) == [desc]


# Maintenance


async def cutoffPassed(store: IBlobMaintenance | IManifestMaintenance) -> float:
    """
    A cutoff the storage clock has just passed (it may tick coarsely), so
    that whatever is used from now on is at or after it.
    """
    cutoff = await store.now() + 0.000001
    while await store.now() < cutoff:
        pass
    return cutoff


def maintained(backends: Backends) -> tuple[IBlobMaintenance, IManifestMaintenance]:
    return IBlobMaintenance(backends.blobs), IManifestMaintenance(backends.manifests)


@pytest_twisted.ensureDeferred
async def test_maintenanceInterfaces(backends: Backends) -> None:
    """Both backends provide the maintenance interfaces."""
    assert verifyObject(IBlobMaintenance, backends.blobs)
    assert verifyObject(IManifestMaintenance, backends.manifests)


@pytest_twisted.ensureDeferred
async def test_listBlobs(backends: Backends) -> None:
    """listBlobs pages through stored blobs sorted, with size and write time."""
    blobs, _ = maintained(backends)
    start = await blobs.now()
    contents = [f"blob {i}".encode() * (i + 1) for i in range(5)]
    digests = [await storeBlob(backends.blobs, data) for data in contents]
    end = await blobs.now()
    listed = await blobs.listBlobs(None, 100)
    assert [item.digest for item in listed] == sorted(digests)
    sizes = {sha256(data): len(data) for data in contents}
    for item in listed:
        assert item.size == sizes[item.digest]
        assert start <= item.modified <= end
    ordered = sorted(digests)
    assert [i.digest for i in await blobs.listBlobs(None, 2)] == ordered[:2]
    assert [i.digest for i in await blobs.listBlobs(ordered[1], 2)] == ordered[2:4]
    assert await blobs.listBlobs(ordered[-1], 2) == []


@pytest_twisted.ensureDeferred
async def test_listLinks(backends: Backends) -> None:
    """Repositories with links are listed (also without manifests), and their links."""
    blobs, _ = maintained(backends)
    one = await storeBlob(backends.blobs, b"one")
    two = await storeBlob(backends.blobs, b"two")
    missing = sha256(b"not stored")
    for repository, digest in [("a", one), ("a/b", one), ("a/b", two), ("z", missing)]:
        await backends.blobs.link(repository, digest)
    assert await blobs.listLinkedRepositories(None, 10) == ["a", "a/b", "z"]
    assert await blobs.listLinkedRepositories("a", 1) == ["a/b"]
    links = await blobs.listLinks("a/b", None, 10)
    assert [item.digest for item in links] == sorted([one, two])
    assert {item.size for item in links} == {0}
    assert [item.digest for item in await blobs.listLinks("z", None, 10)] == [missing]
    assert await blobs.listLinks("nowhere", None, 10) == []


@pytest_twisted.ensureDeferred
async def test_deleteBlobBefore(backends: Backends) -> None:
    """deleteBlob removes a blob unused since the cutoff, and only such a blob."""
    blobs, _ = maintained(backends)
    before = await blobs.now()
    digest = await storeBlob(backends.blobs, b"old enough?")
    assert await blobs.deleteBlob(digest, before) is False
    assert await backends.blobs.stat(digest) == len(b"old enough?")
    assert await blobs.deleteBlob(digest, await blobs.now() + 1) is True
    assert await backends.blobs.stat(digest) is None
    assert await blobs.listBlobs(None, 10) == []
    assert await blobs.deleteBlob(digest, await blobs.now() + 1) is False


@pytest_twisted.ensureDeferred
async def test_touchFencesDeletion(backends: Backends) -> None:
    """A recorded use at or after the cutoff keeps the blob and its link."""
    blobs, _ = maintained(backends)
    digest = await storeBlob(backends.blobs, b"reused")
    await backends.blobs.link("repo", digest)
    cutoff = await cutoffPassed(blobs)
    assert await blobs.touch("repo", [digest]) == []
    assert await blobs.deleteBlob(digest, cutoff) is False
    assert await blobs.deleteLink("repo", digest, cutoff) is False
    assert await backends.blobs.isLinked("repo", digest)


@pytest_twisted.ensureDeferred
async def test_touchReportsMissing(backends: Backends) -> None:
    """touch names the digests whose blob or link is missing, in order."""
    blobs, _ = maintained(backends)
    linked = await storeBlob(backends.blobs, b"linked")
    unlinked = await storeBlob(backends.blobs, b"unlinked")
    absent = sha256(b"absent")
    await backends.blobs.link("repo", linked)
    await backends.blobs.link("repo", absent)
    assert await blobs.touch("repo", [absent, linked, unlinked]) == [absent, unlinked]
    assert await blobs.touch("repo", []) == []
    await blobs.deleteBlob(linked, await blobs.now() + 1)
    assert await blobs.touch("repo", [linked]) == [linked]


@pytest_twisted.ensureDeferred
async def test_linkAgainRecordsUse(backends: Backends) -> None:
    """Linking again (a mount) records a use of the link and the blob."""
    blobs, _ = maintained(backends)
    digest = await storeBlob(backends.blobs, b"mounted")
    await backends.blobs.link("repo", digest)
    cutoff = await cutoffPassed(blobs)
    await backends.blobs.link("repo", digest)
    assert await blobs.deleteLink("repo", digest, cutoff) is False
    assert await blobs.deleteBlob(digest, cutoff) is False


@pytest_twisted.ensureDeferred
async def test_commitExistingRecordsUse(backends: Backends) -> None:
    """Committing a blob already stored records a use of it."""
    blobs, _ = maintained(backends)
    digest = await storeBlob(backends.blobs, b"pushed twice")
    cutoff = await cutoffPassed(blobs)
    await storeBlob(backends.blobs, b"pushed twice")
    assert await blobs.deleteBlob(digest, cutoff) is False


@pytest_twisted.ensureDeferred
async def test_deleteLinkLeavesBlob(backends: Backends) -> None:
    """deleteLink removes one link; the blob and other links stay."""
    blobs, _ = maintained(backends)
    digest = await storeBlob(backends.blobs, b"shared")
    await backends.blobs.link("a", digest)
    await backends.blobs.link("b", digest)
    assert await blobs.deleteLink("a", digest, await blobs.now() + 1) is True
    assert not await backends.blobs.isLinked("a", digest)
    assert await backends.blobs.isLinked("b", digest)
    assert await blobs.deleteLink("a", digest, await blobs.now() + 1) is False


@pytest_twisted.ensureDeferred
async def test_quarantineBlob(backends: Backends) -> None:
    """A quarantined blob is unknown and can be pushed again."""
    blobs, _ = maintained(backends)
    digest = await storeBlob(backends.blobs, b"suspect")
    await backends.blobs.link("repo", digest)
    assert await blobs.quarantineBlob(digest) is True
    assert await backends.blobs.stat(digest) is None
    assert not await backends.blobs.isLinked("repo", digest)
    assert await blobs.quarantineBlob(digest) is False
    await storeBlob(backends.blobs, b"suspect")
    assert await backends.blobs.isLinked("repo", digest)


@pytest_twisted.ensureDeferred
async def test_expireUploads(expiring: tuple[IBlobStore, Clock]) -> None:
    """expireUploads removes the sessions past their time to live, only those."""
    store, clock = expiring
    old = await store.startUpload("repo")
    await old.write(b"stale")
    clock.advance(60)
    young = await store.startUpload("repo")
    clock.advance(50)
    # A store may also sweep on its own schedule: the old session is gone either way.
    assert set(await IBlobMaintenance(store).expireUploads()) <= {old.uploadId}
    assert await store.getUpload(old.uploadId) is None
    assert await store.getUpload(young.uploadId) is not None
    await young.abort()


@pytest_twisted.ensureDeferred
async def test_storedBytes(backends: Backends) -> None:
    """storedBytes counts at least every stored blob byte."""
    blobs, _ = maintained(backends)
    empty = await blobs.storedBytes()
    await storeBlob(backends.blobs, b"x" * 10000)
    assert await blobs.storedBytes() >= empty + 10000


@pytest_twisted.ensureDeferred
async def test_listManifests(backends: Backends) -> None:
    """listManifests pages through a repository's manifests with write times."""
    _, manifests = maintained(backends)
    start = await manifests.now()
    contents = [f'{{"n": {i}}}'.encode() for i in range(4)]
    for content in contents:
        await backends.manifests.putManifest("a/b", sha256(content), MANIFEST, content, None, {})
    await backends.manifests.putManifest("a", sha256(b"{}"), MANIFEST, b"{}", None, {})
    end = await manifests.now()
    ordered = sorted(sha256(c) for c in contents)
    listed = await manifests.listManifests("a/b", None, 10)
    assert [item.digest for item in listed] == ordered
    assert all(start <= item.modified <= end and item.size >= 8 for item in listed)
    assert [i.digest for i in await manifests.listManifests("a/b", ordered[0], 2)] == ordered[1:3]
    assert [i.digest for i in await manifests.listManifests("a", None, 10)] == [sha256(b"{}")]
    assert await manifests.listManifests("nowhere", None, 10) == []


@pytest_twisted.ensureDeferred
async def test_deleteManifestBefore(backends: Backends) -> None:
    """A manifest unused since the cutoff goes with its referrers entry; its tags stay."""
    _, manifests = maintained(backends)
    m = backends.manifests
    subject = sha256(b"image")
    sig = b'{"sig": 1}'
    before = await manifests.now()
    await m.putManifest("repo", sha256(sig), MANIFEST, sig, subject, descriptor(sig))
    await m.setTag("repo", "t", sha256(sig))
    assert await manifests.deleteManifestBefore("repo", sha256(sig), before) is False
    assert await manifests.deleteManifestBefore("repo", sha256(sig), await manifests.now() + 1) is True
    assert await m.getManifest("repo", sha256(sig)) is None
    assert await m.referrers("repo", subject) == []
    assert await m.resolveTag("repo", "t") == sha256(sig)
    assert await manifests.deleteManifestBefore("repo", sha256(sig), await manifests.now() + 1) is False


@pytest_twisted.ensureDeferred
async def test_touchManifests(backends: Backends) -> None:
    """touchManifests fences deletion and names missing manifests."""
    _, manifests = maintained(backends)
    content = b'{"kept": true}'
    await backends.manifests.putManifest("repo", sha256(content), MANIFEST, content, None, {})
    cutoff = await cutoffPassed(manifests)
    absent = sha256(b"absent")
    assert await manifests.touchManifests("repo", [absent, sha256(content)]) == [absent]
    assert await manifests.deleteManifestBefore("repo", sha256(content), cutoff) is False
    assert await manifests.touchManifests("other", [sha256(content)]) == [sha256(content)]


@pytest_twisted.ensureDeferred
async def test_quarantineManifest(backends: Backends) -> None:
    """A quarantined manifest is unknown and can be put again."""
    _, manifests = maintained(backends)
    content = b'{"suspect": 1}'
    digest = sha256(content)
    await backends.manifests.putManifest("repo", digest, MANIFEST, content, None, {})
    assert await manifests.quarantineManifest("repo", digest) is True
    assert await backends.manifests.getManifest("repo", digest) is None
    assert await manifests.quarantineManifest("repo", digest) is False
    await backends.manifests.putManifest("repo", digest, MANIFEST, content, None, {})
    assert await backends.manifests.getManifest("repo", digest) == (MANIFEST, content)
