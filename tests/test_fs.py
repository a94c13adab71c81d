"""
What only the filesystem backend promises: its layout, persistence across
restarts, expiry, crash and error handling, path safety and sharing a root.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers import waitFor
from twisted.application.internet import TimerService
from twisted.internet import defer, threads
from twisted.internet.task import Clock

import ociklein.storage.fs._blobs
import ociklein.storage.fs._durable
from ociklein.interfaces import IBlobStore, IUpload
from ociklein.storage.fs import FilesystemBlobStore, FilesystemManifestBackend, prepareRoot

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TTL = 100.0


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def files(top: Path) -> set[str]:
    """Every file and directory under C{top}, relative to it."""
    return {str(p.relative_to(top)) for p in top.rglob("*")}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def makeStore(root: Path, clock: Clock) -> Iterator[Callable[[], FilesystemBlobStore]]:
    """Open blob stores on the shared root, as separate processes would."""
    stores: list[FilesystemBlobStore] = []

    def make() -> FilesystemBlobStore:
        store = FilesystemBlobStore(str(root), clock=clock, uploadTTL=TTL)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(makeStore: Callable[[], FilesystemBlobStore]) -> FilesystemBlobStore:
    return makeStore()


@pytest.fixture
def manifests(root: Path) -> FilesystemManifestBackend:
    return FilesystemManifestBackend(str(root))


async def push(blobs: IBlobStore, data: bytes, repository: str = "repo") -> str:
    upload = await blobs.startUpload(repository)
    await upload.write(data)
    await upload.commit(sha256(data))
    return sha256(data)


async def found(blobs: IBlobStore, uploadId: str) -> IUpload:
    upload = await blobs.getUpload(uploadId)
    assert upload is not None
    return upload


# Layout


@pytest_twisted.ensureDeferred
async def test_layout(root: Path, store: FilesystemBlobStore, manifests: FilesystemManifestBackend) -> None:
    """Each thing lives at the path docs/storage.md describes."""
    digest = await push(store, b"blob", "library/ubuntu")
    await store.link("library/ubuntu", digest)
    hexdigest = digest.split(":")[1]
    assert (root / "blobs" / "sha256" / hexdigest[:2] / hexdigest).read_bytes() == b"blob"
    ubuntu = root / "repositories" / "library" / "ubuntu"
    assert (ubuntu / "_links" / "sha256" / hexdigest).read_bytes() == b""
    assert (root / "holders" / "sha256" / hexdigest / "library+ubuntu").read_bytes() == b""

    content, subject = b'{"m": 1}', sha256(b"subject")
    mdigest = sha256(content)
    await manifests.putManifest("library/ubuntu", mdigest, MANIFEST, content, subject, {"a": 1})
    await manifests.setTag("library/ubuntu", "latest", mdigest)
    stored = (ubuntu / "_manifests" / "sha256" / mdigest.split(":")[1]).read_bytes()
    header, _, body = stored.partition(b"\n")
    assert json.loads(header) == {"digest": mdigest, "mediaType": MANIFEST, "subject": subject}
    assert body == content
    assert (ubuntu / "_tags" / "latest").read_text() == mdigest + "\n"
    # A tag stored with its manifest is a second name of the manifest file.
    tagged = b'{"m": 2}'
    await manifests.putTaggedManifest("library/ubuntu", ["v2"], sha256(tagged), MANIFEST, tagged, None, {})
    manifestFile = ubuntu / "_manifests" / "sha256" / sha256(tagged).split(":")[1]
    assert (ubuntu / "_tags" / "v2").stat().st_ino == manifestFile.stat().st_ino
    assert await manifests.resolveTag("library/ubuntu", "v2") == sha256(tagged)
    referrer = ubuntu / "_referrers" / "sha256" / subject.split(":")[1]
    assert json.loads((referrer / f"sha256-{mdigest.split(':')[1]}.json").read_text()) == {"a": 1}
    assert (root / "catalog" / "library+ubuntu").exists()
    assert sorted(os.listdir(root)) == ["blobs", "catalog", "holders", "repositories", "tmp", "uploads"]
    assert os.listdir(root / "tmp") == []
    assert os.listdir(root / "uploads") == []


@pytest_twisted.ensureDeferred
async def test_rootsOfEarlierVersionsRead(root: Path, manifests: FilesystemManifestBackend) -> None:
    """A manifest header without a digest and a tag file holding one are read, retagged, deleted."""
    content = b'{"old": 1}'
    digest = sha256(content)
    repo = root / "repositories" / "repo"
    (repo / "_manifests" / "sha256").mkdir(parents=True)
    (repo / "_tags").mkdir()
    header = json.dumps({"mediaType": MANIFEST, "subject": None}).encode()
    (repo / "_manifests" / "sha256" / digest.split(":")[1]).write_bytes(header + b"\n" + content)
    (repo / "_tags" / "old").write_text(digest + "\n")
    (root / "catalog" / "repo").write_bytes(b"")
    assert await manifests.resolveTag("repo", "old") == digest
    assert await manifests.getManifest("repo", digest) == (MANIFEST, content)
    await manifests.setTag("repo", "new", digest)
    assert (repo / "_tags" / "new").read_text() == digest + "\n"
    # Stored again with a tag: rewritten with the digest in its header, the tag a link to it.
    await manifests.putTaggedManifest("repo", ["newer"], digest, MANIFEST, content, None, {})
    assert await manifests.resolveTag("repo", "newer") == digest
    assert await manifests.getManifest("repo", digest) == (MANIFEST, content)
    assert await manifests.deleteManifest("repo", digest)
    assert await manifests.listTags("repo", None, 10) == []


@pytest_twisted.ensureDeferred
async def test_linkRepairsMissingHolder(root: Path, store: FilesystemBlobStore) -> None:
    """A link made before holders were kept is missed by repositoriesHolding until linked again."""
    upload = await store.startUpload("old/repo")
    await upload.write(b"old blob")
    digest = sha256(b"old blob")
    await upload.commit(digest)
    hexdigest = digest.split(":")[1]
    link = root / "repositories" / "old" / "repo" / "_links" / "sha256" / hexdigest
    link.parent.mkdir(parents=True)
    link.write_bytes(b"")
    assert await store.isLinked("old/repo", digest)
    assert await store.repositoriesHolding(digest, None, 10) == []
    await store.link("old/repo", digest)
    assert await store.repositoriesHolding(digest, None, 10) == ["old/repo"]
    assert await store.unlink("old/repo", digest) is True
    assert not (root / "holders" / "sha256" / hexdigest / "old+repo").exists()


@pytest_twisted.ensureDeferred
async def test_holdersNeverFollowSymlinks(root: Path, store: FilesystemBlobStore, tmp_path: Path) -> None:
    """A symlink planted as a blob's holders directory is refused (ELOOP); nothing is written through it."""
    digest = await push(store, b"planted", "library/ubuntu")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil").write_bytes(b"")
    holders = root / "holders" / "sha256" / digest.split(":")[1]
    holders.parent.mkdir(parents=True, exist_ok=True)
    holders.symlink_to(outside)
    for call in (
        lambda: store.link("library/ubuntu", digest),
        lambda: store.unlink("library/ubuntu", digest),
        lambda: store.repositoriesHolding(digest, None, 10),
    ):
        with pytest.raises(OSError) as raised:
            await call()
        assert raised.value.errno == errno.ELOOP
    assert os.listdir(outside) == ["evil"]


@pytest_twisted.ensureDeferred
async def test_nestedRepositoriesDoNotClash(root: Path, manifests: FilesystemManifestBackend) -> None:
    """Repositories a and a/b share a directory without mixing their tags."""
    await manifests.setTag("a", "one", sha256(b"1"))
    await manifests.setTag("a/b", "two", sha256(b"2"))
    assert await manifests.listTags("a", None, 10) == ["one"]
    assert await manifests.listTags("a/b", None, 10) == ["two"]
    assert sorted(os.listdir(root / "repositories" / "a")) == ["_tags", "b"]


@pytest_twisted.ensureDeferred
async def test_blobStoredOnce(root: Path, store: FilesystemBlobStore) -> None:
    """The same blob pushed to two repositories is one file."""
    await push(store, b"common layer", "one")
    await push(store, b"common layer", "two")
    blobs = [p for p in (root / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1


# Restarts


@pytest_twisted.ensureDeferred
async def test_restartKeepsEverything(root: Path, clock: Clock) -> None:
    """New instances on the same root see blobs, links, manifests, tags, referrers, repos."""
    store = FilesystemBlobStore(str(root), clock=clock)
    manifests = FilesystemManifestBackend(str(root))
    digest = await push(store, b"layer", "library/ubuntu")
    await store.link("library/ubuntu", digest)
    content, subject = b'{"x": 1}', sha256(b"img")
    await manifests.putManifest("library/ubuntu", sha256(content), MANIFEST, content, subject, {})
    await manifests.setTag("library/ubuntu", "latest", sha256(content))
    await manifests.setTag("other", "v1", sha256(content))
    store.close()

    store = FilesystemBlobStore(str(root), clock=clock)
    manifests = FilesystemManifestBackend(str(root))
    try:
        assert await store.stat(digest) == 5
        assert await store.isLinked("library/ubuntu", digest)
        got = await manifests.getManifest("library/ubuntu", sha256(content))
        assert got == (MANIFEST, content)
        assert await manifests.resolveTag("library/ubuntu", "latest") == sha256(content)
        assert await manifests.referrers("library/ubuntu", subject) == [{}]
        assert await manifests.listRepositories(None, 10) == ["library/ubuntu", "other"]
        assert await manifests.listTags("other", None, 10) == ["v1"]
    finally:
        store.close()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
async def test_uploadSurvivesRestart(makeStore: Callable[[], FilesystemBlobStore], algorithm: str) -> None:
    """A live session is found by a new instance, with its size, and resumes."""
    first = makeStore()
    upload = await first.startUpload("library/ubuntu")
    await upload.write(b"before restart, ")
    await upload.flush()
    first.close()

    second = makeStore()
    resumed = await found(second, upload.uploadId)
    assert resumed.size == 16
    assert resumed.repository == "library/ubuntu"
    await resumed.write(b"after")
    data = b"before restart, after"
    assert await resumed.digest(algorithm) == hashlib.new(algorithm, data).hexdigest()
    assert await resumed.digest("sha256") == hashlib.sha256(data).hexdigest()
    await resumed.commit(sha256(data))
    assert await second.stat(sha256(data)) == len(data)


@pytest_twisted.ensureDeferred
async def test_sessionAppendedElsewhere(makeStore: Callable[[], FilesystemBlobStore]) -> None:
    """A session continued by another process is seen with its new size and hash."""
    one, two = makeStore(), makeStore()
    upload = await one.startUpload("repo")
    await upload.write(b"from one; ")
    await upload.flush()
    upload.close()
    elsewhere = await found(two, upload.uploadId)
    await elsewhere.write(b"from two")
    await elsewhere.flush()
    elsewhere.close()
    again = await found(one, upload.uploadId)
    data = b"from one; from two"
    assert again.size == len(data)
    assert await again.digest("sha256") == hashlib.sha256(data).hexdigest()


@pytest_twisted.ensureDeferred
async def test_sessionInUseElsewhereIsRefused(makeStore: Callable[[], FilesystemBlobStore]) -> None:
    """While one process writes a session, another process's write fails with BlockingIOError
    and appends nothing; once the first closes it, the second can go on."""
    one, two = makeStore(), makeStore()
    upload = await one.startUpload("repo")
    await upload.write(b"one")
    await upload.flush()
    elsewhere = await found(two, upload.uploadId)
    with pytest.raises(BlockingIOError):
        await elsewhere.write(b"two")
    upload.close()
    await elsewhere.write(b"two")
    assert elsewhere.size == 6


@pytest_twisted.ensureDeferred
async def test_idleSessionHoldsNoDescriptor(store: FilesystemBlobStore) -> None:
    """A session between requests holds no open descriptor: 200 idle sessions leave the count unchanged."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        upload = await store.startUpload("repo")
        await upload.write(b"x")
        upload.close()
    assert len(os.listdir("/proc/self/fd")) <= before + 2


# Expiry


@pytest_twisted.ensureDeferred
async def test_uploadExpires(root: Path, store: FilesystemBlobStore, clock: Clock) -> None:
    """getUpload finds a session until uploadTTL seconds after its start, then removes it."""
    store.expireUploads = lambda: defer.succeed([])  # type: ignore[method-assign]
    upload = await store.startUpload("repo")
    await upload.write(b"stale")
    clock.advance(TTL - 1)
    assert await store.getUpload(upload.uploadId) is upload
    clock.advance(1)
    assert await store.getUpload(upload.uploadId) is None
    assert os.listdir(root / "uploads") == []
    assert os.listdir(root / "tmp") == []


@pytest_twisted.ensureDeferred
async def test_expiredAtStartup(
    root: Path, clock: Clock, makeStore: Callable[[], FilesystemBlobStore]
) -> None:
    """Sessions expired while no process ran are removed at startup."""
    first = makeStore()
    await first.startUpload("repo")
    clock.advance(TTL / 2)
    young = await first.startUpload("repo")
    first.close()
    clock.advance(TTL / 2)
    makeStore()
    assert os.listdir(root / "uploads") == [young.uploadId]


@pytest_twisted.ensureDeferred
async def test_expireUploads(root: Path, store: FilesystemBlobStore, clock: Clock) -> None:
    """expireUploads removes expired sessions only, and answers their ids."""
    old = await store.startUpload("repo")
    clock.advance(TTL / 2)
    young = await store.startUpload("repo")
    store.close()  # no periodic run racing the one under test
    clock.advance(TTL / 2)
    assert await store.expireUploads() == [old.uploadId]
    assert os.listdir(root / "uploads") == [young.uploadId]
    assert await store.getUpload(old.uploadId) is None
    assert await store.getUpload(young.uploadId) is not None


@pytest_twisted.ensureDeferred
async def test_periodicExpiry(store: FilesystemBlobStore, clock: Clock) -> None:
    """A TimerService running sweep expires sessions every expiryInterval, from its start until its stop."""
    calls: list[float] = []

    def spy() -> defer.Deferred[list[str]]:
        calls.append(clock.seconds())
        return defer.succeed([])

    store.expireUploads = spy  # type: ignore[method-assign]
    assert clock.getDelayedCalls() == []  # the store alone schedules nothing
    sweeper = TimerService(store.expiryInterval, store.sweep)
    sweeper.clock = clock
    sweeper.startService()
    clock.advance(TTL / 2)
    clock.advance(TTL / 2)
    assert calls == [0, TTL / 2, TTL]
    await sweeper.stopService()
    assert clock.getDelayedCalls() == []
    clock.advance(TTL)
    assert calls == [0, TTL / 2, TTL]


# Crash leftovers and failures


def test_tmpCleanedAtStartup(root: Path, clock: Clock) -> None:
    """Startup removes temp files left by a crash, not a live writer's fresh ones."""
    prepareRoot(str(root))
    tmp = root / "tmp"
    stale = time.time() - 2 * 3600
    (tmp / "old.tmp").write_bytes(b"x")
    os.utime(tmp / "old.tmp", (stale, stale))
    (tmp / "old.upload").mkdir()
    (tmp / "old.upload" / "data").write_bytes(b"x")
    os.utime(tmp / "old.upload", (stale, stale))
    (tmp / "gone.del").mkdir()
    (tmp / "gone.del" / "data").write_bytes(b"x")
    (tmp / "fresh.tmp").write_bytes(b"x")
    FilesystemBlobStore(str(root), clock=clock).close()
    assert os.listdir(tmp) == ["fresh.tmp"]


@pytest_twisted.ensureDeferred
async def test_abortRemovesData(root: Path, store: FilesystemBlobStore) -> None:
    """abort removes the partial data and the session directory."""
    upload = await store.startUpload("repo")
    await upload.write(b"partial" * 1000)
    assert len(os.listdir(root / "uploads")) == 1
    await upload.abort()
    assert files(root / "uploads") == set()
    assert files(root / "tmp") == set()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
async def test_writeError(
    root: Path, store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """A failing append fails the flush after it (its write was only queued), the session
    refuses more writes, digest and commit, and abort cleans up."""
    upload = await store.startUpload("repo")
    await upload.write(b"fine ")

    def failing(fd: int, parts: list[bytes]) -> None:
        os.write(fd, parts[0][:4])  # part of the chunk lands, then the disk fails
        raise OSError(code, os.strerror(code))

    # Not os.write itself: the reactor's thread waker writes with it too.
    monkeypatch.setattr(ociklein.storage.fs._blobs, "writeParts", failing)
    await upload.write(b"this does not fit")
    with pytest.raises(OSError) as raised:
        await upload.flush()
    assert raised.value.errno == code
    monkeypatch.undo()
    with pytest.raises(OSError):
        await upload.write(b"more")
    with pytest.raises(OSError):
        await upload.digest("sha256")
    with pytest.raises(OSError):
        await upload.commit(sha256(b"fine this does not fit"))
    await upload.abort()
    assert files(root / "uploads") == set()
    assert files(root / "blobs") == set()


@pytest_twisted.ensureDeferred
async def test_endedSessionRefusesWrites(store: FilesystemBlobStore) -> None:
    """Writing to or committing a session after it ended fails."""
    upload = await store.startUpload("repo")
    await upload.abort()
    with pytest.raises(ValueError):
        await upload.write(b"late")
    with pytest.raises(ValueError):
        await upload.commit(sha256(b""))


# Path safety

BAD_REPOSITORIES = [
    "",
    ".",
    "..",
    "a/..",
    "a/../../b",
    "../etc",
    "/etc",
    "a/",
    "a//b",
    "a%2Fb",
    "a\x00b",
    "a\nb",
    "repo\n",
    "A",
    "_a",
    "a/_tags",
    "a\\b",
    "a" * 300,
    "/".join(["a"] * 129),
]
BAD_DIGESTS = [
    "",
    "sha256:",
    "sha256:" + "a" * 63,
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 32 + "/" + "a" * 31,
    "sha256:../../../../etc/passwd",
    "sha256/" + "a" * 64,
    "md5:" + "a" * 32,
    "sha512:" + "a" * 64,
    "sha256:" + "a" * 64 + "\n",
    "../" + "a" * 64,
]
BAD_TAGS = ["", ".", "..", ".hidden", "-x", "a/b", "../x", "a\x00", "a" * 129, "x\n"]
GOOD = sha256(b"good")


def refusals(
    blobs: FilesystemBlobStore, manifests: FilesystemManifestBackend
) -> list[tuple[str, Callable[[str], defer.Deferred[Any]]]]:
    """Every method that takes a name, as (kind of name, call)."""
    return [
        ("repository", lambda r: blobs.link(r, GOOD)),
        ("repository", lambda r: blobs.unlink(r, GOOD)),
        ("repository", lambda r: blobs.isLinked(r, GOOD)),
        ("repository", blobs.startUpload),
        ("repository", lambda r: manifests.getManifest(r, GOOD)),
        ("repository", lambda r: manifests.putManifest(r, GOOD, MANIFEST, b"{}", None, {})),
        ("repository", lambda r: manifests.deleteManifest(r, GOOD)),
        ("repository", lambda r: manifests.resolveTag(r, "latest")),
        ("repository", lambda r: manifests.setTag(r, "latest", GOOD)),
        ("repository", lambda r: manifests.deleteTag(r, "latest")),
        ("repository", lambda r: manifests.listTags(r, None, 10)),
        ("repository", lambda r: manifests.referrers(r, GOOD)),
        ("digest", blobs.stat),
        ("digest", blobs.open),
        ("digest", lambda d: blobs.link("repo", d)),
        ("digest", lambda d: blobs.unlink("repo", d)),
        ("digest", lambda d: blobs.isLinked("repo", d)),
        ("digest", lambda d: manifests.getManifest("repo", d)),
        ("digest", lambda d: manifests.putManifest("repo", d, MANIFEST, b"{}", None, {})),
        ("digest", lambda d: manifests.putManifest("repo", GOOD, MANIFEST, b"{}", d, {})),
        ("digest", lambda d: manifests.deleteManifest("repo", d)),
        ("digest", lambda d: manifests.setTag("repo", "latest", d)),
        ("digest", lambda d: manifests.referrers("repo", d)),
        ("tag", lambda t: manifests.resolveTag("repo", t)),
        ("tag", lambda t: manifests.setTag("repo", t, GOOD)),
        ("tag", lambda t: manifests.deleteTag("repo", t)),
    ]


@pytest_twisted.ensureDeferred
async def test_badNamesRefused(
    tmp_path: Path, root: Path, store: FilesystemBlobStore, manifests: FilesystemManifestBackend
) -> None:
    """Every method refuses bad names with ValueError and writes nothing anywhere."""
    outside = files(tmp_path)
    bad = {"repository": BAD_REPOSITORIES, "digest": BAD_DIGESTS, "tag": BAD_TAGS}
    count = 0
    for kind, call in refusals(store, manifests):
        for name in bad[kind]:
            with pytest.raises(ValueError):
                await call(name)
            count += 1
    assert count > 300
    assert files(tmp_path) == outside


@pytest_twisted.ensureDeferred
async def test_badDigestOnCommitRefused(root: Path, store: FilesystemBlobStore) -> None:
    """commit refuses a digest that would be a path outside blobs/."""
    upload = await store.startUpload("repo")
    await upload.write(b"data")
    for digest in BAD_DIGESTS:
        with pytest.raises(ValueError):
            await upload.commit(digest)
    assert files(root / "blobs") == set()
    assert (await found(store, upload.uploadId)).size == 4


@pytest_twisted.ensureDeferred
async def test_badUploadIdsRefused(root: Path, store: FilesystemBlobStore) -> None:
    """getUpload answers None for an id outside its grammar, even if such a path exists."""
    decoy = root / "uploads" / "short"
    decoy.mkdir()
    (decoy / "info").write_text(json.dumps({"repository": "repo", "started": 0}))
    (decoy / "data").write_bytes(b"")
    for uploadId in ["short", "../uploads/short", "a" * 65, "a" * 20 + "\n", "a" * 16 + "/.."]:
        assert await store.getUpload(uploadId) is None
    assert await store.getUpload("../" + "a" * 20) is None


@pytest_twisted.ensureDeferred
async def test_nothingWrittenOutsideRoot(
    tmp_path: Path, store: FilesystemBlobStore, manifests: FilesystemManifestBackend
) -> None:
    """A full workflow creates files only under the root."""
    outside = files(tmp_path)
    digest = await push(store, b"layer", "a/b/c")
    await store.link("a/b/c", digest)
    upload = await store.startUpload("a/b/c")
    await upload.write(b"x")
    await upload.digest("sha512")
    await upload.abort()
    content = b"{}"
    await manifests.putManifest("a/b/c", sha256(content), MANIFEST, content, digest, {})
    await manifests.setTag("a/b/c", "latest", sha256(content))
    await manifests.deleteManifest("a/b/c", sha256(content))
    created = files(tmp_path) - outside
    assert created and all(name.startswith("root") for name in created)


# Threads


@pytest_twisted.ensureDeferred
async def test_slowCallsOffReactorThread(
    store: FilesystemBlobStore,
    manifests: FilesystemManifestBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fsync, rename and rehashing never run on the reactor thread."""
    onReactor: list[str] = []
    mainThread = threading.main_thread()

    def watch(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is mainThread:
                onReactor.append(name)
            return real(*args, **kwargs)

        return watched

    for name in ["fsync", "rename", "pread"]:
        monkeypatch.setattr(os, name, watch(name, getattr(os, name)))
    upload = await store.startUpload("repo")
    await upload.write(b"data")
    upload._sha256 = None  # type: ignore[attr-defined]
    assert await upload.digest("sha256") == hashlib.sha256(b"data").hexdigest()
    assert await upload.digest("sha512") == hashlib.sha512(b"data").hexdigest()
    await upload.commit(sha256(b"data"))
    await store.link("repo", sha256(b"data"))
    await store.unlink("repo", sha256(b"data"))
    await (await store.startUpload("repo")).abort()
    content = b"{}"
    await manifests.putManifest("repo", sha256(content), MANIFEST, content, GOOD, {})
    await manifests.setTag("repo", "latest", sha256(content))
    await manifests.deleteTag("repo", "latest")
    await manifests.deleteManifest("repo", sha256(content))
    assert onReactor == []


@pytest_twisted.ensureDeferred
async def test_listingsReadNoFiles(
    manifests: FilesystemManifestBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing tags and repositories lists directories and opens no file."""
    for i in range(50):
        await manifests.setTag(f"repo{i % 5}", f"t{i:03}", sha256(b"%d" % i))

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a listing opened a file")

    monkeypatch.setattr(os, "open", forbidden)
    monkeypatch.setattr("builtins.open", forbidden)
    assert await manifests.listRepositories(None, 100) == [f"repo{i}" for i in range(5)]
    tags = await manifests.listTags("repo3", "t010", 3)
    assert tags == ["t013", "t018", "t023"]


# Sharing a root


@pytest_twisted.ensureDeferred
async def test_sameBlobPushedConcurrently(root: Path, makeStore: Callable[[], FilesystemBlobStore]) -> None:
    """Two processes committing the same blob at once both succeed, leaving one blob."""
    data = os.urandom(3 * 1024 * 1024)
    stores = [makeStore(), makeStore()] * 4
    uploads = [await s.startUpload(f"repo{i}") for i, s in enumerate(stores)]
    for upload in uploads:
        await upload.write(data)
    await defer.gatherResults([u.commit(sha256(data)) for u in uploads])
    assert [await s.stat(sha256(data)) for s in stores] == [len(data)] * len(stores)
    reader = await stores[1].open(sha256(data))
    assert reader is not None
    assert await reader.read(0, reader.size) == data
    reader.close()
    assert files(root / "uploads") == set()
    assert files(root / "tmp") == set()


@pytest_twisted.ensureDeferred
async def test_tagOverwrittenConcurrently(root: Path) -> None:
    """Tags rewritten by two processes at once always resolve, last writer wins."""
    one, two = FilesystemManifestBackend(str(root)), FilesystemManifestBackend(str(root))
    targets = [sha256(b"%d" % i) for i in range(40)]
    await one.setTag("repo", "latest", targets[0])
    path = root / "repositories" / "repo" / "_tags" / "latest"
    stop = threading.Event()

    def readWhileWriting() -> set[str]:
        seen = set()
        while not stop.is_set():
            seen.add(path.read_text())
        return seen

    reading = threads.deferToThread(readWhileWriting)
    writes = [(one if i % 2 else two).setTag("repo", "latest", t) for i, t in enumerate(targets)]
    await defer.gatherResults(writes)
    stop.set()
    seen = await reading
    assert seen <= {t + "\n" for t in targets}
    assert await one.resolveTag("repo", "latest") in targets
    await two.setTag("repo", "latest", targets[7])
    assert await one.resolveTag("repo", "latest") == targets[7]
    assert os.listdir(root / "repositories" / "repo" / "_tags") == ["latest"]
    assert os.listdir(root / "tmp") == []


@pytest_twisted.ensureDeferred
async def test_readerOutlivesDeletedBlob(root: Path, store: FilesystemBlobStore) -> None:
    """A reader keeps reading a blob whose file was deleted meanwhile."""
    data = os.urandom(100_000)
    digest = await push(store, data)
    reader = await store.open(digest)
    assert reader is not None
    first = await reader.read(0, 1000)
    hexdigest = digest.split(":")[1]
    os.unlink(root / "blobs" / "sha256" / hexdigest[:2] / hexdigest)
    assert await store.stat(digest) is None
    rest = await reader.read(1000, len(data))
    assert first + rest == data
    reader.close()
    assert await reader.read(0, 10) == b""


@pytest_twisted.ensureDeferred
async def test_largeReadsInThreads(store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A piece of a download bigger than 64 KiB is read in a pool thread; a small one at once."""
    data = os.urandom(3 * 1024 * 1024)
    digest = await push(store, data)
    threadsOfReads: dict[int, bool] = {}
    real = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        threadsOfReads[n] = threading.current_thread() is threading.main_thread()
        return real(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    reader = await store.open(digest)
    assert reader is not None
    assert await reader.read(0, 1000) == data[:1000]
    assert await reader.read(1000, 1024 * 1024) == data[1000 : 1000 + 1024 * 1024]
    reader.close()
    assert threadsOfReads == {1000: True, 1024 * 1024: False}


@pytest_twisted.ensureDeferred
async def test_readsOnePieceAhead(store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading on from where the last read stopped finds the next piece read already, and no more."""
    piece = 1024 * 1024
    data = os.urandom(4 * piece + 100_000)
    digest = await push(store, data)
    offsets: list[int] = []
    real = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        offsets.append(offset)
        return real(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    reader = await store.open(digest)
    assert reader is not None
    got = [await reader.read(0, piece)]
    # The read ahead runs in a pool thread of its own: wait until it has run.
    await waitFor(lambda: len(offsets) >= 2, 30, "the read ahead")
    assert sorted(offsets) == [0, piece]
    offset = piece
    while offset < len(data):
        got.append(await reader.read(offset, piece))
        offset += len(got[-1])
        assert max(offsets) <= offset + piece
    assert b"".join(got) == data
    assert sorted(offsets) == [0, piece, 2 * piece, 3 * piece, 4 * piece]
    # A jump elsewhere reads what was asked, not the stale piece ahead.
    assert await reader.read(10, piece) == data[10 : 10 + piece]
    reader.close()


@pytest_twisted.ensureDeferred
async def test_closeWaitsForRunningReads(store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing a reader while a read runs closes its descriptor only after that read."""
    data = os.urandom(2 * 1024 * 1024)
    digest = await push(store, data)
    started = threading.Event()
    release = threading.Event()
    real, realClose = os.pread, os.close
    fds: list[int] = []
    closed: list[int] = []

    def pread(fd: int, n: int, offset: int) -> bytes:
        fds.append(fd)
        started.set()
        assert release.wait(30)
        return real(fd, n, offset)

    def close(fd: int) -> None:
        closed.append(fd)
        realClose(fd)

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(os, "close", close)
    reader = await store.open(digest)
    assert reader is not None
    reading = reader.read(0, 1024 * 1024)
    assert await threads.deferToThread(started.wait, 30)
    reader.close()
    assert fds[0] not in closed
    os.fstat(fds[0])  # still open: a reused number would be read otherwise
    release.set()
    assert await reading == data[: 1024 * 1024]
    # The piece read ahead finishes too; then the descriptor is closed, once.
    await waitFor(lambda: fds[0] in closed, 30, "the descriptor closed")
    assert closed.count(fds[0]) == 1


# Preparing the root


def test_prepareRootCreates(tmp_path: Path) -> None:
    """prepareRoot creates a missing root, parents included, and is idempotent."""
    root = tmp_path / "a" / "b" / "root"
    prepareRoot(str(root))
    prepareRoot(str(root))
    assert sorted(os.listdir(root)) == ["blobs", "catalog", "holders", "repositories", "tmp", "uploads"]
    assert os.listdir(root / "tmp") == []


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_prepareRootRefusesFile(tmp_path: Path, where: str, clock: Clock) -> None:
    """A root that is a file, or under one, fails with a one-line ValueError."""
    plain = tmp_path / "plain"
    plain.write_text("not a directory")
    root = str(plain if where == "file" else plain / "root")
    makers: list[Callable[[str], object]] = [
        prepareRoot,
        FilesystemManifestBackend,
        lambda r: FilesystemBlobStore(r, clock=clock),
    ]
    for make in makers:
        with pytest.raises(ValueError) as raised:
            make(root)
        message = str(raised.value)
        assert "\n" not in message
        assert root in message and "not a directory" in message
    assert plain.read_text() == "not a directory"


def test_prepareRootRefusesUnwritable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A root where no file can be created fails with a one-line ValueError."""

    def readOnly(*args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    prepareRoot(str(tmp_path / "root"))
    monkeypatch.setattr(os, "open", readOnly)
    with pytest.raises(ValueError, match=r"not writable: Read-only file system$"):
        prepareRoot(str(tmp_path / "root"))


@pytest_twisted.ensureDeferred
async def test_unresumableUploadLeftByADeadWriterIsRemovedAtStartup(
    root: Path, makeStore: Callable[[], FilesystemBlobStore]
) -> None:
    """A monolithic (unresumable) upload is never found by id, kept while its writer lives,
    and removed by the next start once its writer is gone."""
    first = makeStore()
    upload = await first.startUpload("repo", resumable=False)
    await upload.write(b"x" * 4096)
    await upload.flush()
    assert await first.getUpload(upload.uploadId) is None
    makeStore()  # a second process starting meanwhile leaves the live upload alone
    assert any(name.endswith(".upload") for name in os.listdir(root / "tmp"))
    upload._release()  # type: ignore[attr-defined]  # the writer dies: its lock goes
    makeStore()
    assert not any(name.endswith(".upload") for name in os.listdir(root / "tmp"))


@pytest_twisted.ensureDeferred
async def test_unresumableUploadCommits(root: Path, store: FilesystemBlobStore) -> None:
    """An unresumable upload publishes its blob like any other and leaves nothing in tmp/."""
    data = b"monolithic" * 1000
    upload = await store.startUpload("repo", resumable=False)
    await upload.write(data)
    await upload.commit(sha256(data))
    reader = await store.open(sha256(data))
    assert reader is not None
    assert await reader.read(0, len(data)) == data
    reader.close()
    assert os.listdir(root / "tmp") == []


@pytest_twisted.ensureDeferred
async def test_sortedListingsReadAStillDirectoryOnce(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory that has not changed for a second is listed once, however many pages are read."""
    from ociklein.storage.fs import _listing as _fsutil

    directory = tmp_path / "tags"
    directory.mkdir()
    for name in ("b", "a", "c"):
        (directory / name).touch()
    old = time.time() - 10
    os.utime(directory, (old, old))
    calls: list[str] = []
    realListdir = os.listdir

    def countingListdir(path: Any) -> list[str]:
        calls.append(str(path))
        return realListdir(path)

    monkeypatch.setattr(_fsutil.os, "listdir", countingListdir)
    listings = _fsutil.SortedListings()
    for _ in range(5):
        assert await listings.names(str(directory), lambda n: n) == ["a", "b", "c"]
    assert len(calls) == 1
    (directory / "d").touch()
    assert await listings.names(str(directory), lambda n: n) == ["a", "b", "c", "d"]
    assert len(calls) == 2


@pytest_twisted.ensureDeferred
async def test_sortedListingsDoNotKeepARecentlyChangedDirectory(tmp_path: Path) -> None:
    """A directory changed within the last second is listed afresh each time, so a second change
    in the same timestamp tick by another process is never hidden."""
    from ociklein.storage.fs import _listing as _fsutil

    directory = tmp_path / "tags"
    directory.mkdir()
    (directory / "a").touch()
    listings = _fsutil.SortedListings()
    assert await listings.names(str(directory), lambda n: n) == ["a"]
    stamp = directory.stat().st_mtime_ns
    (directory / "b").touch()
    os.utime(directory, ns=(stamp, stamp))  # the same tick as before
    assert await listings.names(str(directory), lambda n: n) == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_sortedListingsReadInAThreadOnce(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory is read and sorted off the reactor thread, and callers asking for it at once
    share one read."""
    import threading

    from ociklein.storage.fs import _listing as _fsutil

    directory = tmp_path / "tags"
    directory.mkdir()
    (directory / "a").touch()
    threads: list[str] = []
    realListdir = os.listdir

    def recordingListdir(path: Any) -> list[str]:
        threads.append(threading.current_thread().name)
        return realListdir(path)

    monkeypatch.setattr(_fsutil.os, "listdir", recordingListdir)
    listings = _fsutil.SortedListings()
    pending = [listings.names(str(directory), lambda n: n) for _ in range(3)]
    assert [await d for d in pending] == [["a"]] * 3
    assert len(threads) == 1
    assert threads[0] != threading.main_thread().name


@pytest_twisted.ensureDeferred
async def test_startupDoesNotScanBlobsOrRepositories(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a root lists only tmp/ and uploads/: startup does not grow with blobs or repositories."""
    store = FilesystemBlobStore(str(root))
    manifests = FilesystemManifestBackend(str(root))
    for i in range(20):
        digest = await push(store, f"blob {i}".encode(), f"repo{i}")
        await manifests.putManifest(f"repo{i}", digest, MANIFEST, b"{}", None, {})
    store.close()
    listed: list[str] = []
    for name in ("listdir", "scandir", "walk"):
        real = getattr(os, name)

        def recording(path: Any = ".", *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            listed.append(os.path.relpath(os.fspath(path), root))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, recording)
    FilesystemBlobStore(str(root)).close()
    FilesystemManifestBackend(str(root))
    assert "tmp" in listed  # the recording works
    assert set(listed) <= {"tmp", "uploads"}, listed


@pytest_twisted.ensureDeferred
async def test_uploadWritesRunOffTheReactorThread(
    store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appending and hashing upload data happen in a thread, never on the reactor thread."""
    threadsSeen: list[bool] = []
    realAppend = ociklein.storage.fs._blobs._append

    def recording(fd: int, parts: list[bytes], size: int, sha: Any) -> None:
        threadsSeen.append(threading.current_thread() is threading.main_thread())
        realAppend(fd, parts, size, sha)

    monkeypatch.setattr(ociklein.storage.fs._blobs, "_append", recording)
    upload = await store.startUpload("repo")
    await upload.write(b"a" * 100_000)
    await upload.write(b"b" * 100_000)
    assert upload.size == 200_000
    await upload.flush()
    assert threadsSeen and not any(threadsSeen)
    assert await upload.digest("sha256") == hashlib.sha256(b"a" * 100_000 + b"b" * 100_000).hexdigest()


@pytest_twisted.ensureDeferred
async def test_abortWaitsForAWriteInFlight(
    root: Path, store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Aborting while a write runs in a thread closes the file only after that write ends."""
    started, release = threading.Event(), threading.Event()
    realAppend = ociklein.storage.fs._blobs._append

    def slow(fd: int, parts: list[bytes], size: int, sha: Any) -> None:
        started.set()
        release.wait(10)
        realAppend(fd, parts, size, sha)

    monkeypatch.setattr(ociklein.storage.fs._blobs, "_append", slow)
    upload = await store.startUpload("repo")
    await upload.write(b"late data")
    writing = upload.flush()  # less than a batch: written when waited for
    await threads.deferToThread(started.wait, 10)
    aborting = upload.abort()
    assert not aborting.called
    release.set()
    await writing
    await aborting
    assert files(root / "uploads") == set()


def _gatedAppends(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, list[list[bytes]]]:
    """
    Make the writer thread wait for the returned event before each append,
    and record the parts each append is given.
    """
    release = threading.Event()
    batches: list[list[bytes]] = []
    realAppend = ociklein.storage.fs._blobs._append

    def gated(fd: int, parts: list[bytes], size: int, sha: Any) -> None:
        release.wait(10)
        batches.append(list(parts))
        realAppend(fd, parts, size, sha)

    monkeypatch.setattr(ociklein.storage.fs._blobs, "_append", gated)
    return release, batches


@pytest_twisted.ensureDeferred
async def test_writesAreQueuedAndAppendedTogether(
    store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes return once queued, while the thread is busy, and what queued meanwhile is
    appended in one system call, hashed as it was written."""
    release, batches = _gatedAppends(monkeypatch)
    upload = await store.startUpload("repo")
    pieces = [bytes([n]) * 10_000 for n in range(8)]
    for piece in pieces:
        assert upload.write(piece).called
    assert upload.size == 80_000
    release.set()
    await upload.flush()
    # The thread took the first piece, or all of them if it started late.
    assert len(batches) <= 2
    assert [part for batch in batches for part in batch] == pieces
    assert await upload.digest("sha256") == hashlib.sha256(b"".join(pieces)).hexdigest()


@pytest_twisted.ensureDeferred
async def test_writeWaitsWhileTheQueueIsFull(
    store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that takes the queue past its bound fires only once the thread has caught up,
    and another write meanwhile is refused as busy: a slow disk slows the client down."""
    release, batches = _gatedAppends(monkeypatch)
    upload = await store.startUpload("repo")
    limit = ociklein.storage.fs._blobs._QUEUED
    assert upload.write(b"a" * limit).called
    full = upload.write(b"b")
    assert not full.called
    with pytest.raises(BlockingIOError):
        await upload.write(b"c")
    release.set()
    await full
    await upload.flush()
    assert upload.size == limit + 1
    assert sum(len(part) for batch in batches for part in batch) == limit + 1


@pytest_twisted.ensureDeferred
async def test_waitingWriteResumesOnceHalfTheQueueIsFree(
    store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write waiting for room fires once half the queue is free, not after the first
    batch: the pipe then hands over megabytes as they come instead of joining one per batch."""
    batch = ociklein.storage.fs._blobs._BATCH
    limit = ociklein.storage.fs._blobs._QUEUED
    gate = threading.Semaphore(0)
    realAppend = ociklein.storage.fs._blobs._append

    def oneBatchPerRelease(fd: int, parts: list[bytes], size: int, sha: Any) -> None:
        gate.acquire(timeout=10)
        realAppend(fd, parts, size, sha)

    monkeypatch.setattr(ociklein.storage.fs._blobs, "_append", oneBatchPerRelease)
    upload = await store.startUpload("repo")
    for _ in range(limit // batch):
        assert upload.write(b"m" * batch).called
    waiting = upload.write(b"!")
    queued = [limit + 1 - n * batch for n in range(1, limit // batch + 1)]
    for left in queued:
        gate.release()
        await waitFor(lambda left=left: upload._queued <= left, 10, f"{left} bytes queued")  # type: ignore[attr-defined]
        assert waiting.called == (left <= limit // 2), left
    gate.release()
    await waiting
    await upload.flush()
    assert upload.size == limit + 1


def test_partsAreWrittenWholeAfterShortWrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writev that writes less than asked (mid-part or at a part's end) is continued from
    the first byte it did not write, until every part is written."""
    realWritev = os.writev
    calls: list[int] = []

    def short(fd: int, buffers: list[Any]) -> int:
        calls.append(len(buffers))
        return realWritev(fd, [memoryview(buffers[0])[:3]]) if len(calls) < 3 else realWritev(fd, buffers)

    monkeypatch.setattr(os, "writev", short)
    parts = [b"abcdef", b"ghi", b"", b"jklmnop"]
    path = tmp_path / "parts"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        ociklein.storage.fs._durable.writeParts(fd, parts)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(parts)
    assert calls == [3, 3, 2]


@pytest_twisted.ensureDeferred
async def test_writerThreadStartsForABatchOrWhenWaitedFor(store: FilesystemBlobStore) -> None:
    """Writes start the writer thread only once a batch has queued, and a flush starts it for
    less: one trip to the pool per MiB at most, not one per network read."""
    upload = await store.startUpload("repo")
    piece = b"p" * 65536
    for _ in range(ociklein.storage.fs._blobs._BATCH // len(piece) - 1):
        await upload.write(piece)
        assert upload._draining is None  # type: ignore[attr-defined]
    await upload.write(piece)
    assert upload._draining is not None  # type: ignore[attr-defined]
    await upload.flush()
    await upload.write(b"a little more")
    assert upload._draining is None  # type: ignore[attr-defined]
    await upload.flush()
    assert upload.size == ociklein.storage.fs._blobs._BATCH + len(b"a little more")
    assert await upload.digest("sha256") == hashlib.sha256(piece * 16 + b"a little more").hexdigest()


def test_writerThreadTakesTurns() -> None:
    """One turn of an upload's writer thread appends about a turn's worth and leaves the
    rest queued, so that one long upload does not hold a pool thread throughout."""
    turn = ociklein.storage.fs._blobs._TURN
    piece = b"x" * (1024 * 1024)
    queue = collections.deque([piece] * (turn // len(piece) + 3))
    wrote: list[int] = []
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        ociklein.storage.fs._blobs._drainQueue(fd, queue, hashlib.sha256(), wrote.append)
    finally:
        os.close(fd)
    assert sum(wrote) == turn and len(queue) == 3


@pytest_twisted.ensureDeferred
async def test_emptySessionOpenedElsewhereHashesAsItGoes(
    makeStore: Callable[[], FilesystemBlobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session started by one process and filled by another is hashed as it arrives, not read again."""
    first, second = makeStore(), makeStore()
    started = await first.startUpload("repo")
    started.close()
    resumed = await found(second, started.uploadId)
    data = b"whole blob in one PUT" * 1000
    await resumed.write(data)

    def noRehash(*args: Any) -> Any:
        raise AssertionError("the upload was read back to hash it")

    monkeypatch.setattr(ociklein.storage.fs._blobs, "_hashFile", noRehash)
    assert await resumed.digest("sha256") == hashlib.sha256(data).hexdigest()
