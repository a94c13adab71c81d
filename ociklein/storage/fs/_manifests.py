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
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure
from zope.interface import implementer

from ociklein.interfaces import FencedStore, IFencedManifestBackend, StoredItem
from ociklein.storage._threads import inThread, resolveReactor
from ociklein.storage.fs._blobs import FilesystemBlobStore
from ociklein.storage.fs._cache import FileCache
from ociklein.storage.fs._commit import GroupCommitter, Put, Shared, Stage
from ociklein.storage.fs._durable import fsyncDir, removeDurably
from ociklein.storage.fs._listing import SortedListings
from ociklein.storage.fs._maintenance import (
    fencedRemove,
    listItems,
    quarantine,
    recordUses,
    storageNow,
)
from ociklein.storage.fs._paths import (
    blobPath,
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
    linkPath,
    page,
    repositoryPath,
)
from ociklein.storage.fs._root import prepareRoot

_REFERRER = re.compile(r"(sha256|sha512)-([a-f0-9]+)\.json")
_HEADER_LIMIT = 65536


# A stored manifest starts with its digest, so that a tag can be a hard link
# to it (see _Push.stages) and read like a tag file.
_DIGEST_FIRST = b'{"digest": "'


def _encodeManifest(digest: str, mediaType: str, subject: str | None, content: bytes) -> bytes:
    """
    One JSON header line, then the manifest's exact bytes: one file, so the
    media type and subject are replaced atomically with the content.  The
    digest comes first in the header (files written before it have none).
    """
    header = json.dumps({"digest": digest, "mediaType": mediaType, "subject": subject})
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
    """
    The digest a tag names: the tag file holds it, or the tag is a second
    name of the manifest file itself, whose header starts with it.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, 256)
    finally:
        os.close(fd)
    if data.startswith(_DIGEST_FIRST):
        data = data[len(_DIGEST_FIRST) :].partition(b'"')[0]
    text = data.decode("ascii", "replace").strip()
    return text if isDigest(text) else None


class _Paths:
    """
    Where each thing of one repository lives; never through a symlink.
    Paths inside the repository are checked from its directory, which was
    checked once from the root.  With C{directories} (a batch's L{Shared}),
    a directory already checked in the batch is not checked again.
    """

    def __init__(self, root: str, repository: str, directories: set[str] | None = None) -> None:
        self.root = root
        self.repository = repository
        self._directories = directories
        self.directory = checkInside(root, repositoryPath(root, repository), directories)

    def _inside(self, path: str) -> str:
        return checkInside(self.directory, path, self._directories)

    @property
    def catalog(self) -> str:
        return checkInside(self.root, catalogPath(self.root, self.repository), self._directories)

    @property
    def manifests(self) -> str:
        return os.path.join(self.directory, "_manifests")

    @property
    def tags(self) -> str:
        return self._inside(os.path.join(self.directory, "_tags"))

    def manifest(self, digest: str) -> str:
        return self._inside(digestPath(os.path.join(self.directory, "_manifests"), digest))

    def tag(self, tag: str) -> str:
        return self._inside(os.path.join(self.directory, "_tags", tag))

    def link(self, digest: str) -> str:
        return self._inside(linkPath(self.directory, digest))

    def referrers(self, subject: str) -> str:
        return self._inside(digestPath(os.path.join(self.directory, "_referrers"), subject))

    def referrer(self, subject: str, digest: str) -> str:
        name = digest.replace(":", "-") + ".json"
        return self._inside(os.path.join(self.referrers(subject), name))

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


class _Unknown(Exception):
    """
    A digest a manifest references is missing: nothing was stored.
    """

    def __init__(self, digest: str) -> None:
        super().__init__(digest)
        self.digest = digest


@dataclass(frozen=True)
class _Push:
    """
    The files of one manifest push, from checked names.
    """

    digest: str
    data: bytes
    subject: str | None
    referrer: bytes
    tags: Sequence[str]

    @classmethod
    def checked(
        cls,
        repository: str,
        digest: str,
        tags: Sequence[str],
        mediaType: str,
        content: bytes,
        subject: str | None,
        descriptor: dict[str, Any],
    ) -> _Push:
        checkRepository(repository)
        checkDigest(digest)
        if subject is not None:
            checkDigest(subject)
        tags = [checkTag(tag) for tag in tags]
        data = _encodeManifest(digest, mediaType, subject, content)
        return cls(digest, data, subject, json.dumps(descriptor).encode(), tags)

    def stages(self, paths: _Paths, manifest: str | None) -> list[list[Put]]:
        """
        Catalog entry, manifest (at C{manifest}, unless L{None}), then its
        referrers entry and tags, each stage durable before the next: after
        a crash the referrers index may lag behind the manifests and a tag
        may not have moved yet, but neither points at a missing manifest.
        A tag stored with its manifest is a hard link to the manifest file:
        one file fewer to write and fsync per PUT.
        """
        stored, after = [], []
        tag = self.digest.encode() + b"\n"
        if manifest is not None:
            stored.append(Put(manifest, self.data))
            if self.subject is not None:
                after.append(Put(paths.referrer(self.subject, self.digest), self.referrer))
        after += [Put(paths.tag(name), tag, sameAs=manifest) for name in self.tags]
        return [[paths.register()], stored, after]


class _Uses:
    """
    What a push records a use of: each blob with its link, as the blob
    store's C{touch} does, then each child manifest.  Paths are checked
    once, for the use before the store and the one after.
    """

    def __init__(self, paths: _Paths, blobs: Sequence[str], children: Sequence[str]) -> None:
        self.digests = [*blobs, *children]
        self.groups: list[tuple[str, ...]] = [(paths.link(d), blobPath(paths.root, d)) for d in blobs]
        self.groups += [(paths.manifest(d),) for d in children]

    def record(self, shared: Shared) -> list[str]:
        """
        Record them, once per batch step; the digests missing.
        """
        return [self.digests[i] for i in recordUses(self.groups, shared.uses)]


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


@implementer(IFencedManifestBackend)
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

    def _paths(self, repository: str, directories: set[str] | None = None) -> _Paths:
        return _Paths(self._root, checkRepository(repository), directories)

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
        push = _Push.checked(repository, digest, tags, mediaType, content, subject, descriptor)

        # Path checks too in the committer's thread: nothing here on the reactor touches the disk.
        def prepare(shared: Shared) -> Sequence[Stage]:
            paths = self._paths(repository, shared.directories)
            return push.stages(paths, paths.manifest(digest))

        await self._committer.run(prepare, lambda shared: None)

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

    def fencesBlobsOf(self, blobs: object) -> bool:
        return isinstance(blobs, FilesystemBlobStore) and blobs.root == self._root

    def storeFenced(
        self,
        repository: str,
        digest: str,
        tags: Sequence[str],
        mediaType: str,
        content: bytes,
        subject: str | None,
        descriptor: dict[str, Any],
        blobs: Sequence[str],
        children: Sequence[str],
        check: bool,
    ) -> Deferred[FencedStore]:
        # Everything, the checks of names and paths included, happens in the
        # committer's thread: one trip to the pool for the whole push.
        found: list[tuple[_Uses, str]] = []

        def prepare(shared: Shared) -> Sequence[Stage]:
            push = _Push.checked(repository, digest, tags, mediaType, content, subject, descriptor)
            for d in (*blobs, *children):
                checkDigest(d)
            paths = self._paths(repository, shared.directories)
            uses, manifest = _Uses(paths, blobs, children), paths.manifest(digest)
            found.append((uses, manifest))
            if check and (missing := uses.record(shared)):
                raise _Unknown(missing[0])
            # Content-addressed: the same bytes again (another tag for one
            # image, a retry) have nothing new to store.
            return push.stages(paths, None if os.path.exists(manifest) else manifest)

        def finish(shared: Shared) -> FencedStore:
            # After the manifest and its tags are durable: what it references
            # first, then the manifest itself (docs/storage.md, "The fence").
            # A use another request of the batch made in this step, after
            # every store of the batch was durable, counts for this one too.
            uses, manifest = found[0]
            lost = uses.record(shared)
            if recordUses([(manifest,)], shared.uses):
                lost.append(digest)
            return FencedStore(None, lost)

        def unknown(failure: Failure) -> FencedStore:
            failure.trap(_Unknown)
            return FencedStore(failure.value.digest, ())

        return self._committer.run(prepare, finish).addErrback(unknown)

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
