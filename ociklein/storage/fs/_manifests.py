"""
Manifests, tags, the catalog and the referrers index on a filesystem.

Everything is a small file replaced by an atomic rename, laid out so that
each question is answered by one directory listing or one file read: no
listing ever opens a manifest.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorThreads
from zope.interface import implementer

from ociklein.interfaces import IManifestMaintenance, ITaggedManifestBackend, StoredItem
from ociklein.storage._threads import inThread, resolveReactor
from ociklein.storage.fs._cache import FileCache
from ociklein.storage.fs._commit import GroupCommitter, Put
from ociklein.storage.fs._durable import fsyncDir, removeDurably
from ociklein.storage.fs._listing import SortedListings
from ociklein.storage.fs._maintenance import fencedRemove, listItems, quarantine, recordUses, storageNow
from ociklein.storage.fs._paths import (
    catalogName,
    catalogPath,
    checkDigest,
    checkInside,
    checkRepository,
    checkTag,
    digestPath,
    isDigest,
    isRepository,
    isTag,
    page,
    repositoryPath,
)
from ociklein.storage.fs._root import prepareRoot

_REFERRER = re.compile(r"(sha256|sha512)-([a-f0-9]+)\.json")
_HEADER_LIMIT = 65536


def _encodeManifest(mediaType: str, subject: str | None, content: bytes) -> bytes:
    """
    One JSON header line, then the manifest's exact bytes: one file, so the
    media type and subject are replaced atomically with the content.
    """
    header = json.dumps({"mediaType": mediaType, "subject": subject})
    return header.encode() + b"\n" + content


def _readHeader(data: bytes) -> tuple[str, str | None, int]:
    """
    The media type, subject and content offset of a stored manifest.
    """
    end = data.index(b"\n")
    header = json.loads(data[:end])
    return header["mediaType"], header["subject"], end + 1


def _decodeManifest(data: bytes) -> tuple[str, bytes]:
    """
    The media type and content of a stored manifest file.
    """
    mediaType, _, offset = _readHeader(data)
    return mediaType, data[offset:]


def _readTag(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        text = os.read(fd, 256).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return text if isDigest(text) else None


class _Paths:
    """
    Where each thing of one repository lives; never through a symlink.
    Paths inside the repository are checked from its directory, which was
    checked once from the root.
    """

    def __init__(self, root: str, repository: str) -> None:
        self.root = root
        self.repository = repository
        self.directory = checkInside(root, repositoryPath(root, repository))

    @property
    def catalog(self) -> str:
        return checkInside(self.root, catalogPath(self.root, self.repository))

    @property
    def manifests(self) -> str:
        return os.path.join(self.directory, "_manifests")

    @property
    def tags(self) -> str:
        return checkInside(self.directory, os.path.join(self.directory, "_tags"))

    def manifest(self, digest: str) -> str:
        return checkInside(self.directory, digestPath(os.path.join(self.directory, "_manifests"), digest))

    def tag(self, tag: str) -> str:
        return checkInside(self.directory, os.path.join(self.directory, "_tags", tag))

    def referrers(self, subject: str) -> str:
        return checkInside(self.directory, digestPath(os.path.join(self.directory, "_referrers"), subject))

    def referrer(self, subject: str, digest: str) -> str:
        name = digest.replace(":", "-") + ".json"
        return checkInside(self.directory, os.path.join(self.referrers(subject), name))

    def registered(self) -> bool:
        """
        Whether the repository is in the catalog.
        """
        return os.path.exists(self.catalog)

    def register(self) -> Put:
        """
        Enter the repository in the catalog, once.
        """
        return Put(self.catalog, b"", onlyIfMissing=True)


def _subjectOf(path: str) -> str | None:
    """
    The subject recorded in a stored manifest's header; L{FileNotFoundError}
    if it is gone.
    """
    with open(path, "rb") as f:
        _, subject, _ = _readHeader(f.readline(_HEADER_LIMIT))
    return subject if subject is not None and isDigest(subject) else None


def _deleteManifest(paths: _Paths, digest: str) -> bool:
    path = paths.manifest(digest)
    try:
        subject = _subjectOf(path)
    except FileNotFoundError:
        return False
    # The manifest file goes last: a crash half way leaves it in place, so
    # deleting it again finishes the job.
    if subject is not None:
        removeDurably(paths.referrer(subject, digest))
    removedTag = False
    for tag in _listTags(paths):
        tagPath = paths.tag(tag)
        if _readTag(tagPath) == digest:
            try:
                os.unlink(tagPath)
            except FileNotFoundError:
                continue
            removedTag = True
    if removedTag:
        fsyncDir(paths.tags)
    return removeDurably(path)


def _collectManifest(paths: _Paths, digest: str, before: float) -> bool:
    """
    Remove a manifest unused since C{before}, then its referrers entry.  A
    crash between the two leaves an entry naming a missing manifest, which
    the referrers API may list until the subject is pushed to again.
    """
    subjects: list[str] = []

    def inspect(hidden: str) -> None:
        try:
            subject = _subjectOf(hidden)
        except (FileNotFoundError, ValueError, KeyError):
            return
        if subject is not None:
            subjects.append(subject)

    if not fencedRemove(paths.manifest(digest), before, inspect):
        return False
    for subject in subjects:
        removeDurably(paths.referrer(subject, digest))
    return True


def _tagName(entry: str) -> str | None:
    return entry if isTag(entry) else None


def _repositoryName(entry: str) -> str | None:
    name = catalogName(entry)
    return name if isRepository(name) else None


def _listTags(paths: _Paths) -> list[str]:
    try:
        return [name for name in os.listdir(paths.tags) if isTag(name)]
    except FileNotFoundError:
        return []


def _referrers(paths: _Paths, subject: str) -> list[dict[str, Any]]:
    directory = paths.referrers(subject)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if _REFERRER.fullmatch(name) is None:
            continue
        try:
            with open(os.path.join(directory, name), "rb") as f:
                found.append(json.loads(f.read()))
        except FileNotFoundError:
            continue
    return found


@implementer(ITaggedManifestBackend, IManifestMaintenance)
class FilesystemManifestBackend:
    """
    Manifests, tags and referrers under C{root/repositories}, the list of
    repositories under C{root/catalog}.
    """

    def __init__(self, root: str, reactor: IReactorThreads | None = None) -> None:
        prepareRoot(root)
        self._root = os.path.realpath(root)
        self._reactor = resolveReactor(reactor)
        self._listings = SortedListings(self._reactor)
        self._committer = GroupCommitter(self._root, self._reactor)
        self._cache = FileCache()

    def _paths(self, repository: str) -> _Paths:
        return _Paths(self._root, checkRepository(repository))

    def getManifest(self, repository: str, digest: str) -> Deferred[tuple[str, bytes] | None]:
        return maybeDeferred(self._getManifest, repository, digest)

    def _getManifest(self, repository: str, digest: str) -> tuple[str, bytes] | None:
        key = (repository, digest)
        try:
            # A key in the cache was checked when its file was first read.
            found: tuple[str, bytes] | None = self._cache.get(key)
            if found is None:
                path = self._paths(repository).manifest(checkDigest(digest))
                found = self._cache.read(key, path, _decodeManifest)
        except FileNotFoundError:
            return None
        return found

    def putManifest(
        self,
        repository: str,
        digest: str,
        mediaType: str,
        content: bytes,
        subject: str | None,
        descriptor: dict[str, Any],
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(
            self._putManifest(repository, digest, mediaType, content, subject, descriptor)
        )

    async def _putManifest(
        self,
        repository: str,
        digest: str,
        mediaType: str,
        content: bytes,
        subject: str | None,
        descriptor: dict[str, Any],
        tags: Sequence[str] = (),
    ) -> None:
        paths = self._paths(repository)
        checkDigest(digest)
        if subject is not None:
            checkDigest(subject)
        data = _encodeManifest(mediaType, subject, content)
        # Catalog entry, manifest, then its referrers entry and tag, each
        # stage durable before the next: after a crash the referrers index
        # may lag behind the manifests and a tag may not have moved yet, but
        # neither points at a missing manifest.
        after = []
        if subject is not None:
            after.append(Put(paths.referrer(subject, digest), json.dumps(descriptor).encode()))
        after += [Put(paths.tag(checkTag(tag)), digest.encode() + b"\n") for tag in tags]
        await self._committer.write([paths.register()], [Put(paths.manifest(digest), data)], after)

    def putTaggedManifest(
        self,
        repository: str,
        tags: Sequence[str],
        digest: str,
        mediaType: str,
        content: bytes,
        subject: str | None,
        descriptor: dict[str, Any],
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(
            self._putManifest(repository, digest, mediaType, content, subject, descriptor, tags)
        )

    def deleteManifest(self, repository: str, digest: str) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._deleteManifest(repository, digest))

    async def _deleteManifest(self, repository: str, digest: str) -> bool:
        paths = self._paths(repository)
        checkDigest(digest)
        return await inThread(self._reactor, _deleteManifest, paths, digest)

    def resolveTag(self, repository: str, tag: str) -> Deferred[str | None]:
        return maybeDeferred(self._resolveTag, repository, tag)

    def _resolveTag(self, repository: str, tag: str) -> str | None:
        return _readTag(self._paths(repository).tag(checkTag(tag)))

    def setTag(self, repository: str, tag: str, digest: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._setTag(repository, tag, digest))

    async def _setTag(self, repository: str, tag: str, digest: str) -> None:
        paths = self._paths(repository)
        path = paths.tag(checkTag(tag))
        data = checkDigest(digest).encode() + b"\n"
        # Renamed over the old target: readers see the old digest or the new.
        await self._committer.write([paths.register()], [Put(path, data)])

    def deleteTag(self, repository: str, tag: str) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._deleteTag(repository, tag))

    async def _deleteTag(self, repository: str, tag: str) -> bool:
        path = self._paths(repository).tag(checkTag(tag))
        return await inThread(self._reactor, removeDurably, path)

    def listTags(self, repository: str, last: str | None, limit: int) -> Deferred[list[str] | None]:
        return Deferred.fromCoroutine(self._listTags(repository, last, limit))

    async def _listTags(self, repository: str, last: str | None, limit: int) -> list[str] | None:
        paths = self._paths(repository)
        if not paths.registered():
            return None
        try:
            tags = await self._listings.names(paths.tags, _tagName)
        except FileNotFoundError:
            tags = []
        return page(tags, last, limit)

    def listRepositories(self, last: str | None, limit: int) -> Deferred[list[str]]:
        return Deferred.fromCoroutine(self._listRepositories(last, limit))

    async def _listRepositories(self, last: str | None, limit: int) -> list[str]:
        names = await self._listings.names(os.path.join(self._root, "catalog"), _repositoryName)
        return page(names, last, limit)

    def referrers(self, repository: str, subject: str) -> Deferred[list[dict[str, Any]]]:
        return Deferred.fromCoroutine(self._referrers(repository, subject))

    async def _referrers(self, repository: str, subject: str) -> list[dict[str, Any]]:
        paths = self._paths(repository)
        checkDigest(subject)
        return await inThread(self._reactor, _referrers, paths, subject)

    # -- maintenance ------------------------------------------------------

    def now(self) -> Deferred[float]:
        return inThread(self._reactor, storageNow, self._root)

    def listManifests(self, repository: str, last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        return maybeDeferred(self._listManifests, repository, last, limit)

    def _listManifests(self, repository: str, last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        return inThread(self._reactor, listItems, self._paths(repository).manifests, False, last, limit)

    def touchManifests(self, repository: str, digests: Sequence[str]) -> Deferred[list[str]]:
        return maybeDeferred(self._touchManifests, repository, digests)

    def _touchManifests(self, repository: str, digests: Sequence[str]) -> Deferred[list[str]]:
        paths = self._paths(repository)
        digests = [checkDigest(d) for d in digests]
        found = inThread(self._reactor, recordUses, [(paths.manifest(d),) for d in digests])
        return found.addCallback(lambda missing: [digests[i] for i in missing])

    def deleteManifestBefore(self, repository: str, digest: str, before: float) -> Deferred[bool]:
        return maybeDeferred(self._deleteManifestBefore, repository, digest, before)

    def _deleteManifestBefore(self, repository: str, digest: str, before: float) -> Deferred[bool]:
        paths = self._paths(repository)
        return inThread(self._reactor, _collectManifest, paths, checkDigest(digest), before)

    def quarantineManifest(self, repository: str, digest: str) -> Deferred[bool]:
        return maybeDeferred(self._quarantineManifest, repository, digest)

    def _quarantineManifest(self, repository: str, digest: str) -> Deferred[bool]:
        paths = self._paths(repository)
        path = paths.manifest(checkDigest(digest))
        where = os.path.join("repositories", repository.replace("/", "+"))
        return inThread(self._reactor, quarantine, self._root, path, where, digest)
