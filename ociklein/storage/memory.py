"""
In-memory storage: fast, complete, and gone when the process exits.
"""

from __future__ import annotations

import bisect
import hashlib
import secrets
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from ociklein.interfaces import (
    IBlobMaintenance,
    IBlobReader,
    IBlobStore,
    IManifestBackend,
    IManifestMaintenance,
    IUpload,
    StoredItem,
)


class _Clock:
    """
    Seconds from an injected L{IReactorTime}, or wall time: what stamps
    writes and uses for the garbage collector's grace period.
    """

    def __init__(self, clock: IReactorTime | None) -> None:
        self._clock = clock

    def seconds(self) -> float:
        return time.time() if self._clock is None else self._clock.seconds()


@implementer(IBlobReader)
class _MemoryReader:
    def __init__(self, data: bytes | bytearray) -> None:
        self._data = memoryview(data)
        self.size = len(data)

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        return succeed(bytes(self._data[offset : offset + length]))

    def close(self) -> None:
        self._data = memoryview(b"")


@implementer(IUpload)
class _MemoryUpload:
    def __init__(self, store: MemoryBlobStore, repository: str) -> None:
        self._store = store
        self.uploadId = secrets.token_urlsafe(24)
        self.repository = repository
        self.started = store._clock.seconds()
        self._chunks = bytearray()
        self._sha256 = hashlib.sha256()

    @property
    def size(self) -> int:
        return len(self._chunks)

    def write(self, data: bytes) -> Deferred[None]:
        self._chunks += data
        self._sha256.update(data)
        return succeed(None)

    def flush(self) -> Deferred[None]:
        return succeed(None)

    def digest(self, algorithm: str) -> Deferred[str]:
        if algorithm == "sha256":
            return succeed(self._sha256.hexdigest())
        # Hashing the whole blob again: off the reactor thread.  The caller
        # holds the session, so nothing appends to the buffer meanwhile.
        data = self._chunks
        return deferToThread(lambda: hashlib.new(algorithm, data).hexdigest())

    def commit(self, digest: str) -> Deferred[None]:
        # The session's buffer becomes the blob: no copy of it on the reactor.
        # A stored blob of another size cannot hold these verified bytes.
        blobs = self._store._blobs
        existing = blobs.get(digest)
        if existing is None or len(existing) != len(self._chunks):
            blobs[digest] = self._chunks
        self._store._used[digest] = self._store._clock.seconds()
        return self.abort()

    def abort(self) -> Deferred[None]:
        self._store._uploads.pop(self.uploadId, None)
        self._chunks = bytearray()
        return succeed(None)

    def close(self) -> None:
        pass  # nothing is held between requests


@implementer(IBlobStore, IBlobMaintenance)
class MemoryBlobStore:
    """
    Blobs in a dict keyed by digest; per-repository links in dicts, with
    the time each blob and link was last written or used.
    """

    def __init__(self, clock: IReactorTime | None = None, uploadTTL: float = 86400.0) -> None:
        self._clock = _Clock(clock)
        self._ttl = uploadTTL
        self._blobs: dict[str, bytes | bytearray] = {}
        self._used: dict[str, float] = {}
        self._links: dict[str, dict[str, float]] = {}
        # digest -> sorted names of the repositories it is linked in
        self._holders: dict[str, list[str]] = {}
        self._uploads: dict[str, _MemoryUpload] = {}

    def openUploadCount(self) -> int:
        """
        How many upload sessions are open (the metrics' gauge).
        """
        return len(self._uploads)

    def stat(self, digest: str) -> Deferred[int | None]:
        data = self._blobs.get(digest)
        return succeed(None if data is None else len(data))

    def open(self, digest: str) -> Deferred[IBlobReader | None]:
        data = self._blobs.get(digest)
        return succeed(None if data is None else _MemoryReader(data))

    def link(self, repository: str, digest: str) -> Deferred[None]:
        now = self._clock.seconds()
        links = self._links.setdefault(repository, {})
        if digest not in links:
            bisect.insort(self._holders.setdefault(digest, []), repository)
        links[digest] = now
        if digest in self._blobs:
            self._used[digest] = now
        return succeed(None)

    def unlink(self, repository: str, digest: str) -> Deferred[bool]:
        links = self._links.get(repository, {})
        found = links.pop(digest, None) is not None
        if found:
            self._dropHolder(repository, digest)
        return succeed(found)

    def _dropHolder(self, repository: str, digest: str) -> None:
        holders = self._holders[digest]
        del holders[bisect.bisect_left(holders, repository)]
        if not holders:
            del self._holders[digest]

    def isLinked(self, repository: str, digest: str) -> Deferred[bool]:
        return succeed(digest in self._links.get(repository, ()) and digest in self._blobs)

    def repositoriesHolding(self, digest: str, last: str | None, limit: int) -> Deferred[list[str]]:
        return succeed(_page(self._holders.get(digest, []), last, limit))

    def startUpload(self, repository: str, resumable: bool = True) -> Deferred[IUpload]:
        upload = _MemoryUpload(self, repository)
        if resumable:
            self._uploads[upload.uploadId] = upload
        return succeed(upload)

    def getUpload(self, uploadId: str) -> Deferred[IUpload | None]:
        return succeed(self._uploads.get(uploadId))

    # -- maintenance ------------------------------------------------------

    def now(self) -> Deferred[float]:
        return succeed(self._clock.seconds())

    def listBlobs(self, last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        digests = _page(sorted(self._blobs), last, limit)
        return succeed([StoredItem(d, len(self._blobs[d]), self._used[d]) for d in digests])

    def listLinkedRepositories(self, last: str | None, limit: int) -> Deferred[list[str]]:
        return succeed(_page(sorted(self._links), last, limit))

    def listLinks(self, repository: str, last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        links = self._links.get(repository, {})
        return succeed([StoredItem(d, 0, links[d]) for d in _page(sorted(links), last, limit)])

    def touch(self, repository: str, digests: Sequence[str]) -> Deferred[list[str]]:
        now = self._clock.seconds()
        links = self._links.get(repository, {})
        missing = []
        for digest in digests:
            if digest in links and digest in self._blobs:
                links[digest] = self._used[digest] = now
            else:
                missing.append(digest)
        return succeed(missing)

    def deleteLink(self, repository: str, digest: str, before: float) -> Deferred[bool]:
        links = self._links.get(repository, {})
        if links.get(digest, before) >= before:
            return succeed(False)
        del links[digest]
        self._dropHolder(repository, digest)
        return succeed(True)

    def deleteBlob(self, digest: str, before: float) -> Deferred[bool]:
        if self._used.get(digest, before) >= before:
            return succeed(False)
        del self._blobs[digest], self._used[digest]
        return succeed(True)

    def quarantineBlob(self, digest: str) -> Deferred[bool]:
        # Nowhere to keep it aside in memory: the bytes are dropped.
        self._used.pop(digest, None)
        return succeed(self._blobs.pop(digest, None) is not None)

    def expireUploads(self) -> Deferred[list[str]]:
        now = self._clock.seconds()
        expired = [u for u in self._uploads.values() if now >= u.started + self._ttl]
        for upload in expired:
            upload.abort()
        return succeed([u.uploadId for u in expired])

    def storedBytes(self) -> Deferred[int]:
        return succeed(
            sum(len(b) for b in self._blobs.values()) + sum(u.size for u in self._uploads.values())
        )


class _Repository:
    def __init__(self) -> None:
        self.manifests: dict[str, tuple[str, bytes, str | None]] = {}
        self.used: dict[str, float] = {}
        self.tags: dict[str, str] = {}
        self.sortedTags: list[str] = []
        self.referrers: dict[str, dict[str, dict[str, Any]]] = {}


@implementer(IManifestBackend, IManifestMaintenance)
class MemoryManifestBackend:
    """
    Manifests, tags and the referrers index in dicts, with sorted lists
    kept beside them so paging costs a bisect.
    """

    def __init__(self, clock: IReactorTime | None = None) -> None:
        self._clock = _Clock(clock)
        self._repos: dict[str, _Repository] = {}
        self._sortedRepos: list[str] = []

    def _repo(self, repository: str) -> _Repository:
        repo = self._repos.get(repository)
        if repo is None:
            repo = self._repos[repository] = _Repository()
            bisect.insort(self._sortedRepos, repository)
        return repo

    def getManifest(self, repository: str, digest: str) -> Deferred[tuple[str, bytes] | None]:
        repo = self._repos.get(repository)
        entry = None if repo is None else repo.manifests.get(digest)
        return succeed(None if entry is None else (entry[0], entry[1]))

    def putManifest(
        self,
        repository: str,
        digest: str,
        mediaType: str,
        content: bytes,
        subject: str | None,
        descriptor: dict[str, Any],
    ) -> Deferred[None]:
        repo = self._repo(repository)
        repo.manifests[digest] = (mediaType, content, subject)
        repo.used[digest] = self._clock.seconds()
        if subject is not None:
            repo.referrers.setdefault(subject, {})[digest] = descriptor
        return succeed(None)

    def deleteManifest(self, repository: str, digest: str) -> Deferred[bool]:
        repo = self._repos.get(repository)
        if repo is None or digest not in repo.manifests:
            return succeed(False)
        self._drop(repo, digest)
        for tag in [t for t, d in repo.tags.items() if d == digest]:
            self._dropTag(repo, tag)
        return succeed(True)

    @staticmethod
    def _drop(repo: _Repository, digest: str) -> None:
        _, _, subject = repo.manifests.pop(digest)
        del repo.used[digest]
        if subject is not None:
            repo.referrers.get(subject, {}).pop(digest, None)

    def resolveTag(self, repository: str, tag: str) -> Deferred[str | None]:
        repo = self._repos.get(repository)
        return succeed(None if repo is None else repo.tags.get(tag))

    def setTag(self, repository: str, tag: str, digest: str) -> Deferred[None]:
        repo = self._repo(repository)
        if tag not in repo.tags:
            bisect.insort(repo.sortedTags, tag)
        repo.tags[tag] = digest
        return succeed(None)

    def deleteTag(self, repository: str, tag: str) -> Deferred[bool]:
        repo = self._repos.get(repository)
        if repo is None or tag not in repo.tags:
            return succeed(False)
        self._dropTag(repo, tag)
        return succeed(True)

    @staticmethod
    def _dropTag(repo: _Repository, tag: str) -> None:
        del repo.tags[tag]
        del repo.sortedTags[bisect.bisect_left(repo.sortedTags, tag)]

    def listTags(self, repository: str, last: str | None, limit: int) -> Deferred[list[str] | None]:
        repo = self._repos.get(repository)
        if repo is None:
            return succeed(None)
        return succeed(_page(repo.sortedTags, last, limit))

    def listRepositories(self, last: str | None, limit: int) -> Deferred[list[str]]:
        return succeed(_page(self._sortedRepos, last, limit))

    def referrers(self, repository: str, subject: str) -> Deferred[list[dict[str, Any]]]:
        repo = self._repos.get(repository)
        found = {} if repo is None else repo.referrers.get(subject, {})
        return succeed(list(found.values()))

    # -- maintenance ------------------------------------------------------

    def now(self) -> Deferred[float]:
        return succeed(self._clock.seconds())

    def listManifests(self, repository: str, last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        repo = self._repos.get(repository)
        if repo is None:
            return succeed([])
        return succeed(
            [
                StoredItem(d, len(repo.manifests[d][1]), repo.used[d])
                for d in _page(sorted(repo.manifests), last, limit)
            ]
        )

    def touchManifests(self, repository: str, digests: Sequence[str]) -> Deferred[list[str]]:
        repo = self._repos.get(repository)
        now = self._clock.seconds()
        missing = []
        for digest in digests:
            if repo is not None and digest in repo.manifests:
                repo.used[digest] = now
            else:
                missing.append(digest)
        return succeed(missing)

    def deleteManifestBefore(self, repository: str, digest: str, before: float) -> Deferred[bool]:
        repo = self._repos.get(repository)
        if repo is None or repo.used.get(digest, before) >= before:
            return succeed(False)
        self._drop(repo, digest)
        return succeed(True)

    def quarantineManifest(self, repository: str, digest: str) -> Deferred[bool]:
        repo = self._repos.get(repository)
        if repo is None or digest not in repo.manifests:
            return succeed(False)
        self._drop(repo, digest)
        return succeed(True)


def _page(names: list[str], last: str | None, limit: int) -> list[str]:
    start = 0 if last is None else bisect.bisect_right(names, last)
    return names[start : start + limit]
