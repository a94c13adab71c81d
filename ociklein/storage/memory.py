"""
In-memory storage: fast, complete, and gone when the process exits.
"""

from __future__ import annotations

import bisect
import hashlib
import secrets
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from ociklein.interfaces import IBlobReader, IBlobStore, IManifestBackend, IUpload


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
        self._chunks = bytearray()
        self._sha256 = hashlib.sha256()

    @property
    def size(self) -> int:
        return len(self._chunks)

    def write(self, data: bytes) -> Deferred[None]:
        self._chunks += data
        self._sha256.update(data)
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
        return self.abort()

    def abort(self) -> Deferred[None]:
        self._store._uploads.pop(self.uploadId, None)
        self._chunks = bytearray()
        return succeed(None)

    def close(self) -> None:
        pass  # nothing is held between requests


@implementer(IBlobStore)
class MemoryBlobStore:
    """
    Blobs in a dict keyed by digest; per-repository links in sets.
    """

    def __init__(self) -> None:
        self._blobs: dict[str, bytes | bytearray] = {}
        self._links: dict[str, set[str]] = {}
        self._uploads: dict[str, _MemoryUpload] = {}

    def stat(self, digest: str) -> Deferred[int | None]:
        data = self._blobs.get(digest)
        return succeed(None if data is None else len(data))

    def open(self, digest: str) -> Deferred[IBlobReader | None]:
        data = self._blobs.get(digest)
        return succeed(None if data is None else _MemoryReader(data))

    def link(self, repository: str, digest: str) -> Deferred[None]:
        self._links.setdefault(repository, set()).add(digest)
        return succeed(None)

    def unlink(self, repository: str, digest: str) -> Deferred[bool]:
        links = self._links.get(repository, set())
        found = digest in links
        links.discard(digest)
        return succeed(found)

    def isLinked(self, repository: str, digest: str) -> Deferred[bool]:
        return succeed(digest in self._links.get(repository, ()) and digest in self._blobs)

    def startUpload(self, repository: str, resumable: bool = True) -> Deferred[IUpload]:
        upload = _MemoryUpload(self, repository)
        if resumable:
            self._uploads[upload.uploadId] = upload
        return succeed(upload)

    def getUpload(self, uploadId: str) -> Deferred[IUpload | None]:
        return succeed(self._uploads.get(uploadId))


class _Repository:
    def __init__(self) -> None:
        self.manifests: dict[str, tuple[str, bytes, str | None]] = {}
        self.tags: dict[str, str] = {}
        self.sortedTags: list[str] = []
        self.referrers: dict[str, dict[str, dict[str, Any]]] = {}


@implementer(IManifestBackend)
class MemoryManifestBackend:
    """
    Manifests, tags and the referrers index in dicts, with sorted lists
    kept beside them so paging costs a bisect.
    """

    def __init__(self) -> None:
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
        if subject is not None:
            repo.referrers.setdefault(subject, {})[digest] = descriptor
        return succeed(None)

    def deleteManifest(self, repository: str, digest: str) -> Deferred[bool]:
        repo = self._repos.get(repository)
        if repo is None or digest not in repo.manifests:
            return succeed(False)
        _, _, subject = repo.manifests.pop(digest)
        if subject is not None:
            repo.referrers.get(subject, {}).pop(digest, None)
        for tag in [t for t, d in repo.tags.items() if d == digest]:
            self._dropTag(repo, tag)
        return succeed(True)

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


def _page(names: list[str], last: str | None, limit: int) -> list[str]:
    start = 0 if last is None else bisect.bisect_right(names, last)
    return names[start : start + limit]
