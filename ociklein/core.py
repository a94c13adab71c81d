"""
The registry core: every rule of the OCI Distribution Specification, written
once, between the HTTP routes and the storage contracts.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from twisted.logger import Logger

from ociklein import errors
from ociklein._body import Body, readAtMost
from ociklein.interfaces import (
    IBlobMaintenance,
    IBlobReader,
    IBlobStore,
    IDigestFirst,
    IFencedManifestBackend,
    IManifestBackend,
    IManifestMaintenance,
    ITaggedManifestBackend,
    ITagReadingManifestBackend,
    IUpload,
)
from ociklein.manifests import OCI_INDEX, Manifest, parseManifest
from ociklein.names import SUPPORTED_ALGORITHMS, decimal, isDigestShaped, isName, isSupportedDigest, isTag

DEFAULT_MAX_MANIFEST_BYTES = 4 * 1024 * 1024
DEFAULT_PAGE_SIZE = 1000
# How often a manifest push is stored again when a garbage collector took
# something it needs meanwhile (then usually only hidden for a moment).
_FENCE_ATTEMPTS = 3
MAX_PAGE_SIZE = 10000
# Repositories looked at to mount a blob named without a source, and how
# many are asked of the store at once.
MAX_MOUNT_CANDIDATES = 1000
_MOUNT_PAGE = 100
# Tags one manifest PUT may apply with ?tag= (the spec asks for at least 10;
# 100 tags of 128 characters still fit the request line twisted.web takes).
MAX_TAGS_PER_PUSH = 100

_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?")

# What holds an upload session (see RegistryCore._claim).
_WRITING = "PATCH"
_FINISHING = "PUT"
_CANCELLING = "DELETE"

# Failures that leave a session as it was: no byte of the chunk was written.
_NOTHING_WRITTEN = frozenset({errno.EMFILE, errno.ENFILE})

log = Logger()

MayPull = Callable[[str], bool]
"""
Whether the caller of a request may pull a repository: how access control
tells the core what a mount may reveal.
"""


def everyRepository(repository: str) -> bool:
    """
    The caller's pull right without access control: every repository.
    """
    return True


@dataclass
class StoredManifest:
    """
    A manifest as it is served: its exact bytes, media type and digest.
    """

    mediaType: str
    content: bytes
    digest: str


@dataclass
class PushedManifest:
    """
    What a manifest PUT stored: the digest, the subject it names, and the
    tags the C{tag} query parameters pointed at it.
    """

    digest: str
    subject: str | None
    tags: list[str]


@dataclass
class Page:
    """
    One page of a sorted listing, with where the next page starts.
    """

    items: list[str]
    nextLast: str | None
    limit: int


def _busyElsewhere() -> errors.OCIError:
    return errors.blobUploadInvalid("another process is writing to this upload", 416)


def computeDigest(content: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, content).hexdigest()}"


class RegistryCore:
    """
    Validates every request against the spec and drives the storage.
    """

    def __init__(
        self,
        manifests: IManifestBackend,
        blobs: IBlobStore,
        maxManifestBytes: int = DEFAULT_MAX_MANIFEST_BYTES,
        defaultPageSize: int = DEFAULT_PAGE_SIZE,
        allowSparseManifests: bool = False,
        automaticMount: bool = False,
    ) -> None:
        self.manifests = manifests
        self.blobs = blobs
        self.maxManifestBytes = maxManifestBytes
        self.defaultPageSize = defaultPageSize
        # Mirrors copy an index without its children (skopeo's
        # --multi-arch index-only): the spec lets a registry accept
        # manifests that reference content it does not hold.
        self.allowSparseManifests = allowSparseManifests
        # The spec lets a mount name no source repository: the blob is then
        # found in any repository the caller may pull.
        self.automaticMount = automaticMount
        self._claims: dict[str, str] = {}
        # A backend that stores a push and records its uses in one step.
        fenced = IFencedManifestBackend(manifests, None)
        self._fenced = fenced if fenced is not None and fenced.fencesBlobsOf(blobs) else None

    # -- validation -------------------------------------------------------

    @staticmethod
    def checkName(name: str) -> None:
        if not isName(name):
            raise errors.nameInvalid(name)

    @staticmethod
    def checkDigest(digest: str) -> None:
        if not isDigestShaped(digest):
            raise errors.digestInvalid("malformed digest", digest)
        if not isSupportedDigest(digest):
            raise errors.OCIError(
                400, "DIGEST_INVALID", "unsupported digest algorithm or encoding", {"digest": digest}
            )

    @staticmethod
    def checkAlgorithm(algorithm: str | None) -> None:
        """
        Refuse an upload announcing (C{?digest-algorithm=}) a digest
        algorithm this registry does not store, before any byte is sent.
        """
        if algorithm is not None and algorithm not in SUPPORTED_ALGORITHMS:
            raise errors.OCIError(
                400, "DIGEST_INVALID", "unsupported digest algorithm", {"algorithm": algorithm[:100]}
            )

    @staticmethod
    def _readable(name: str, reference: str) -> bool:
        """
        Whether a read of C{reference} in C{name} can possibly succeed.
        """
        return isName(name) and (isTag(reference) or isSupportedDigest(reference))

    # -- blobs ------------------------------------------------------------

    async def blobSize(self, name: str, digest: str) -> int:
        """
        The size of a blob visible in C{name}; BLOB_UNKNOWN otherwise.
        """
        await self._checkVisible(name, digest)
        size = await self.blobs.stat(digest)
        if size is None:
            raise errors.blobUnknown(digest)
        return size

    async def openBlob(self, name: str, digest: str) -> IBlobReader:
        """
        A reader of a blob visible in C{name}; its C{size} is the blob's.
        """
        await self._checkVisible(name, digest)
        reader = await self.blobs.open(digest)
        if reader is None:
            raise errors.blobUnknown(digest)
        return reader

    async def _checkVisible(self, name: str, digest: str) -> None:
        if not isName(name) or not isSupportedDigest(digest) or not await self.blobs.isLinked(name, digest):
            raise errors.blobUnknown(digest)

    async def deleteBlob(self, name: str, digest: str) -> None:
        if not isName(name) or not isSupportedDigest(digest):
            raise errors.blobUnknown(digest)
        if not await self.blobs.unlink(name, digest):
            raise errors.blobUnknown(digest)

    async def mountBlob(
        self, name: str, digest: str, source: str | None, mayPull: MayPull | None = None
    ) -> bool:
        """
        Link blob C{digest} into C{name} from C{source}, or (with automatic
        mounts on and no C{source}) from any repository holding it; L{False}
        when no repository the caller may pull has it, so that the client
        uploads it instead.  C{mayPull} is the caller's pull right as access
        control gives it; L{None} (no access control) allows every repository.
        """
        self.checkName(name)
        mayPull = mayPull or everyRepository
        if source is None and not self.automaticMount:
            return False
        self.checkDigest(digest)
        if source is not None:
            found = isName(source) and mayPull(source) and await self.blobs.isLinked(source, digest)
        else:
            found = await self._findHolder(digest, mayPull)
        if not found:
            return False
        await self.blobs.link(name, digest)
        # Linking records a use, but of a blob a collector may be removing:
        # only a use recorded after the link is written proves it is there.
        blobs = IBlobMaintenance(self.blobs, None)
        return blobs is None or not await blobs.touch(name, [digest])

    async def _findHolder(self, digest: str, mayPull: MayPull) -> bool:
        """
        Whether a repository the caller may pull holds blob C{digest}.  The
        store's index may be stale, so each candidate is checked; at most
        L{MAX_MOUNT_CANDIDATES} are looked at, after which the client
        uploads the blob as it would anywhere else.
        """
        last = None
        seen = 0
        while seen < MAX_MOUNT_CANDIDATES:
            limit = min(_MOUNT_PAGE, MAX_MOUNT_CANDIDATES - seen)
            candidates = await self.blobs.repositoriesHolding(digest, last, limit)
            for candidate in candidates:
                if mayPull(candidate) and await self.blobs.isLinked(candidate, digest):
                    return True
            if len(candidates) < limit:
                return False
            seen += len(candidates)
            last = candidates[-1]
        return False

    # -- uploads ----------------------------------------------------------

    def _claim(self, uploadId: str, what: str) -> None:
        """
        Reserve session C{uploadId} for one request, or refuse at once.

        Taken before the request's first await and held until it ends, so
        that nothing appends to a session whose finishing PUT has checked
        its digest, and no two requests ever write one session.
        """
        busy = self._claims.get(uploadId)
        if busy == _WRITING:
            raise errors.blobUploadInvalid("another request is writing to this upload", 416)
        if busy is not None:
            raise errors.blobUploadUnknown(uploadId)  # being finished or cancelled
        self._claims[uploadId] = what

    async def startUpload(self, name: str, resumable: bool = True) -> IUpload:
        self.checkName(name)
        upload = await self.blobs.startUpload(name, resumable)
        if resumable:
            upload.close()  # a session holds nothing between requests
        return upload

    async def getUpload(self, name: str, uploadId: str) -> IUpload:
        """
        The session C{uploadId}, which must belong to C{name}.
        """
        self.checkName(name)
        try:
            upload = await self.blobs.getUpload(uploadId)
        except BlockingIOError:
            raise _busyElsewhere() from None
        if upload is None or upload.repository != name:
            raise errors.blobUploadUnknown(uploadId)
        return upload

    async def uploadSize(self, name: str, uploadId: str) -> int:
        """
        How many bytes session C{uploadId} holds.
        """
        return (await self.getUpload(name, uploadId)).size

    async def appendChunk(self, name: str, uploadId: str, body: Body, contentRange: str | None = None) -> int:
        """
        A PATCH: stream C{body} into session C{uploadId}; its new size.
        """
        self._claim(uploadId, _WRITING)
        upload = None
        try:
            upload = await self.getUpload(name, uploadId)
            return await self._append(upload, body, contentRange, flush=True)
        except BlockingIOError:
            raise _busyElsewhere() from None
        finally:
            self._release(uploadId, upload)

    async def finishChunked(
        self, name: str, uploadId: str, digest: str | None, body: Body, contentRange: str | None = None
    ) -> None:
        """
        The finishing PUT: append its body, verify C{digest}, publish.  The
        session is locked from the start, so no PATCH can slip in between
        the digest check and the publication.
        """
        self._claim(uploadId, _FINISHING)
        upload = None
        try:
            upload = await self.getUpload(name, uploadId)
            if digest is None:
                raise errors.digestInvalid("the digest query parameter is required")
            self._expectDigest(upload, digest)
            await self._append(upload, body, contentRange)
            await self._finish(name, upload, digest)
        except BlockingIOError:
            raise _busyElsewhere() from None
        finally:
            self._release(uploadId, upload)

    async def cancelUpload(self, name: str, uploadId: str) -> None:
        """
        A DELETE of session C{uploadId}: its data is discarded.
        """
        self._claim(uploadId, _CANCELLING)
        upload = None
        try:
            upload = await self.getUpload(name, uploadId)
            await upload.abort()
        finally:
            self._release(uploadId, upload)

    def _release(self, uploadId: str, upload: IUpload | None) -> None:
        del self._claims[uploadId]
        if upload is not None:
            upload.close()

    async def _append(
        self, upload: IUpload, body: Body, contentRange: str | None = None, flush: bool = False
    ) -> int:
        """
        Stream C{body} into C{upload}; return the session's new size.  With
        C{flush}, the data is durable and shared before this returns: the
        client may continue the session through another node.

        A chunk that does not start where the session ends is refused (416).
        A failed write ends the session, whose data may be torn.
        """
        if contentRange is not None:
            match = _CONTENT_RANGE.fullmatch(contentRange.strip())
            if match is None:
                raise errors.blobUploadInvalid(f"malformed Content-Range {contentRange!r}", 416)
            start, end = decimal(match.group(1)), decimal(match.group(2))
            if start != upload.size or end < start:
                raise errors.blobUploadInvalid(
                    f"chunk {start}-{end} does not follow {upload.size} bytes already received", 416
                )
        try:
            await body.deliverTo(upload.write)
            if flush:
                await upload.flush()
        except BlockingIOError:
            raise  # another process holds the session: nothing was written
        except OSError as e:
            await self._storeFailed(upload, e, "store")
        return upload.size

    async def _storeFailed(self, upload: IUpload, e: OSError, what: str, keep: bool = True) -> NoReturn:
        """
        The store failed to write C{upload}'s data (or to hash or publish
        it): end the session, unless C{keep} and the failure wrote nothing
        (out of descriptors), and answer what the failure means.
        """
        log.failure("upload {uploadId} failed to {what}", uploadId=upload.uploadId, what=what)
        if not keep or e.errno not in _NOTHING_WRITTEN:
            await self._abortQuietly(upload)
        raise errors.forOSError(e) from None

    async def _finish(self, name: str, upload: IUpload, digest: str) -> None:
        """
        Verify the session's data against C{digest}, then publish the blob in
        C{name}.  On a mismatch nothing is stored and the session is ended.
        """
        try:
            self.checkDigest(digest)
        except errors.OCIError:
            await upload.abort()
            raise
        algorithm, _, expected = digest.partition(":")
        try:
            # A store that writes behind (fs) reports the last append's
            # failure here.
            actual = await upload.digest(algorithm)
        except BlockingIOError:
            raise
        except OSError as e:
            await self._storeFailed(upload, e, "store")
        if actual != expected:
            await upload.abort()
            raise errors.digestInvalid(f"content hashes to {algorithm}:{actual}", digest)
        try:
            await upload.commit(digest)
        except BlockingIOError:
            raise
        except OSError as e:
            await self._storeFailed(upload, e, "publish", keep=False)
        await self.blobs.link(name, digest)

    def _expectDigest(self, upload: IUpload, digest: str) -> None:
        """
        Tell an empty session that can use it the digest its one request
        will commit: it may then store the data as the blob at once.
        """
        if upload.size == 0 and IDigestFirst.providedBy(upload):
            try:
                self.checkDigest(digest)
            except errors.OCIError:
                return  # refused at the digest check, before any commit
            IDigestFirst(upload).expectDigest(digest)

    @staticmethod
    async def _abortQuietly(upload: IUpload) -> None:
        try:
            await upload.abort()
        except OSError:
            log.failure("upload {uploadId} could not be discarded", uploadId=upload.uploadId)

    async def uploadBlob(self, name: str, digest: str, body: Body) -> None:
        """
        A monolithic upload: the whole blob in one request.  Its session
        has an id no client knows; it ends with the request, however that
        ends.
        """
        self.checkDigest(digest)
        upload = await self.startUpload(name, resumable=False)
        try:
            self._expectDigest(upload, digest)
            await self._append(upload, body)
            await self._finish(name, upload, digest)
        except BaseException:
            await self._abortQuietly(upload)
            raise
        finally:
            upload.close()

    # -- manifests --------------------------------------------------------

    async def resolve(self, name: str, reference: str) -> str:
        """
        The digest C{reference} names in C{name}; MANIFEST_UNKNOWN otherwise.
        """
        if not self._readable(name, reference):
            raise errors.manifestUnknown(reference)
        if isSupportedDigest(reference):
            return reference
        digest = await self.manifests.resolveTag(name, reference)
        if digest is None:
            raise errors.manifestUnknown(reference)
        return digest

    async def getManifest(self, name: str, reference: str) -> StoredManifest:
        byTag = ITagReadingManifestBackend(self.manifests, None)
        if byTag is not None and not isSupportedDigest(reference) and self._readable(name, reference):
            tagged = await byTag.getTaggedManifest(name, reference)
            if tagged is None:
                raise errors.manifestUnknown(reference)
            return StoredManifest(tagged[1], tagged[2], tagged[0])
        digest = await self.resolve(name, reference)
        found = await self.manifests.getManifest(name, digest)
        if found is None:
            raise errors.manifestUnknown(reference)
        return StoredManifest(found[0], found[1], digest)

    @staticmethod
    def _checkTags(isDigest: bool, tags: Sequence[str]) -> list[str]:
        """
        The distinct tags of a push's C{tag} query parameters, in order; any
        invalid one refuses the whole push before anything is read or stored.
        """
        if not tags:
            return []
        if not isDigest:
            raise errors.tagInvalid(tags[0], "tag parameters need a digest reference")
        distinct = list(dict.fromkeys(tags))
        if len(distinct) > MAX_TAGS_PER_PUSH:
            raise errors.tagsTooMany(len(distinct), MAX_TAGS_PER_PUSH)
        for tag in distinct:
            if not isTag(tag):
                raise errors.tagInvalid(tag)
        return distinct

    async def putManifest(
        self, name: str, reference: str, contentType: str | None, body: Body, tags: Sequence[str] = ()
    ) -> PushedManifest:
        """
        Validate and store a manifest, then point C{tags} (only with a
        digest C{reference}) at it.
        """
        self.checkName(name)
        isDigest = ":" in reference
        if isDigest:
            self.checkDigest(reference)
        elif not isTag(reference):
            raise errors.tagInvalid(reference)
        tags = self._checkTags(isDigest, tags)
        content = await readAtMost(body, self.maxManifestBytes)
        digest = computeDigest(content, reference.partition(":")[0] if isDigest else "sha256")
        if isDigest and digest != reference:
            raise errors.digestInvalid(f"manifest hashes to {digest}", reference)
        manifest = parseManifest(content, contentType)
        if manifest.subject is not None and not isSupportedDigest(manifest.subject):
            raise errors.manifestInvalid(f"subject.digest {manifest.subject!r} is not a supported digest")
        if not self.allowSparseManifests:
            self._checkSupported(manifest)
        descriptor: dict[str, Any] = {
            "mediaType": manifest.mediaType,
            "digest": digest,
            "size": len(content),
        }
        if manifest.artifactType is not None:
            descriptor["artifactType"] = manifest.artifactType
        if manifest.annotations:
            descriptor["annotations"] = manifest.annotations
        tagged = list(tags) if isDigest else [reference]
        lost = None
        for _ in range(_FENCE_ATTEMPTS):
            # On a retry: a garbage collector removed what this manifest
            # needs while it was stored; check again (a lost blob is then
            # unknown) and store again, rather than acknowledge a manifest
            # that is not whole.
            if (fenced := self._fenced) is not None:
                lost = await self._storeFenced(fenced, name, digest, content, manifest, descriptor, tagged)
            else:
                if not self.allowSparseManifests:
                    await self._checkReferenced(name, manifest)
                lost = await self._storeManifest(name, digest, content, manifest, descriptor, tagged)
            if lost is None:
                return PushedManifest(digest, manifest.subject, tags)
        raise errors.manifestBlobUnknown(lost or digest)

    async def _storeFenced(
        self,
        backend: IFencedManifestBackend,
        name: str,
        digest: str,
        content: bytes,
        manifest: Manifest,
        descriptor: dict[str, Any],
        tags: list[str],
    ) -> str | None:
        """
        L{_checkReferenced} and L{_storeManifest} in one step of the
        backend; the first digest found missing after the store, or
        L{None}.
        """
        outcome = await backend.storeFenced(
            name,
            digest,
            tags,
            manifest.mediaType,
            content,
            manifest.subject,
            descriptor,
            [d for d in manifest.blobs if isSupportedDigest(d)],
            [d for d in manifest.children if isSupportedDigest(d)],
            not self.allowSparseManifests,
        )
        if outcome.unknown is not None:
            raise errors.manifestBlobUnknown(outcome.unknown)
        # A sparse manifest's references may be missing; never the manifest.
        lost = [d for d in outcome.lost if d == digest or not self.allowSparseManifests]
        return lost[0] if lost else None

    async def _storeManifest(
        self,
        name: str,
        digest: str,
        content: bytes,
        manifest: Manifest,
        descriptor: dict[str, Any],
        tags: list[str],
    ) -> str | None:
        """
        Store a manifest and its tags, then record a use of everything it
        references and of itself, after they are durable and before the
        push is acknowledged; the first digest found missing, or L{None}.
        Recording the use after the write is what fences garbage
        collection (docs/storage.md).
        """
        # Content-addressed: pushing the same bytes again (another tag for
        # one image, a retry) has nothing new to store.
        stored = await self.manifests.getManifest(name, digest) is not None
        if not stored and tags and ITaggedManifestBackend.providedBy(self.manifests):
            # Manifest and tags in one step: one durable commit, not one each.
            await self.manifests.putTaggedManifest(
                name, tags, digest, manifest.mediaType, content, manifest.subject, descriptor
            )
            tags = []
        elif not stored:
            await self.manifests.putManifest(
                name, digest, manifest.mediaType, content, manifest.subject, descriptor
            )
        # A sparse manifest may name digests no store keeps (say sha384):
        # there is nothing of theirs to fence.
        referenced = [d for d in manifest.blobs if isSupportedDigest(d)]
        children = [d for d in manifest.children if isSupportedDigest(d)]
        blobs = IBlobMaintenance(self.blobs, None)
        if blobs is not None and referenced:
            lost = await blobs.touch(name, referenced)
            if lost and not self.allowSparseManifests:
                return lost[0]
        backend = IManifestMaintenance(self.manifests, None)
        if backend is not None and children:
            lost = await backend.touchManifests(name, children)
            if lost and not self.allowSparseManifests:
                return lost[0]
        for tag in tags:
            await self.manifests.setTag(name, tag, digest)
        if backend is not None and await backend.touchManifests(name, [digest]):
            return digest
        return None

    @staticmethod
    def _checkSupported(manifest: Manifest) -> None:
        """
        Refuse a manifest that references a digest no store keeps.
        """
        for digest in (*manifest.blobs, *manifest.children):
            if not isSupportedDigest(digest):
                raise errors.manifestBlobUnknown(digest)

    async def _checkReferenced(self, name: str, manifest: Manifest) -> None:
        """
        Refuse a manifest whose blobs or child manifests C{name} lacks.

        With a store that records uses, the check is one: a collection
        that starts after it will not remove them, which keeps the window
        in which a stored manifest (and its tags) can lose a blob to one
        that started earlier down to the push itself.
        """
        blobs = IBlobMaintenance(self.blobs, None)
        if blobs is not None:
            if manifest.blobs and (lost := await blobs.touch(name, manifest.blobs)):
                raise errors.manifestBlobUnknown(lost[0])
        else:
            for blob in manifest.blobs:
                if not await self.blobs.isLinked(name, blob):
                    raise errors.manifestBlobUnknown(blob)
        for child in manifest.children:
            if await self.manifests.getManifest(name, child) is None:
                raise errors.manifestBlobUnknown(child)

    async def deleteManifest(self, name: str, reference: str) -> None:
        """
        By tag: untag only.  By digest: remove the manifest and its tags.
        """
        if not self._readable(name, reference):
            raise errors.manifestUnknown(reference)
        if isSupportedDigest(reference):
            found = await self.manifests.deleteManifest(name, reference)
        else:
            found = await self.manifests.deleteTag(name, reference)
        if not found:
            raise errors.manifestUnknown(reference)

    # -- listings ---------------------------------------------------------

    def _limit(self, n: str | None) -> int:
        if n is None or n == "":
            return self.defaultPageSize
        if not (n.isascii() and n.isdigit()):
            raise errors.paginationInvalid(f"n={n!r} is not a non-negative integer")
        return min(decimal(n), MAX_PAGE_SIZE)

    @staticmethod
    def _page(items: list[str], limit: int) -> Page:
        if len(items) > limit:
            items = items[:limit]
            return Page(items, items[-1] if items else None, limit)
        return Page(items, None, limit)

    async def listTags(self, name: str, n: str | None, last: str | None) -> Page:
        limit = self._limit(n)
        if not isName(name):
            raise errors.nameUnknown(name)
        found = await self.manifests.listTags(name, last or None, limit + 1)
        if found is None:
            raise errors.nameUnknown(name)
        return self._page(found, limit)

    async def catalog(
        self, n: str | None, last: str | None, visible: Callable[[str], bool] | None = None
    ) -> Page:
        """
        One page of repository names, only those C{visible} to the caller.
        """
        limit = self._limit(n)
        found = await self.manifests.listRepositories(last or None, limit + 1)
        if visible is None:
            return self._page(found, limit)
        # Fill the page from successive batches: hidden names do not count.
        batch = limit + 1
        shown = [name for name in found if visible(name)]
        while len(shown) <= limit and len(found) == batch:
            batch = max(limit + 1, 256)
            found = await self.manifests.listRepositories(found[-1], batch)
            shown.extend(name for name in found if visible(name))
        return self._page(shown, limit)

    async def referrers(self, name: str, digest: str, artifactType: str | None) -> bytes:
        """
        The image index of manifests whose subject is C{digest}.
        """
        self.checkDigest(digest)
        descriptors = await self.manifests.referrers(name, digest) if isName(name) else []
        if artifactType is not None:
            descriptors = [d for d in descriptors if d.get("artifactType") == artifactType]
        descriptors.sort(key=lambda d: d["digest"])
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
        return json.dumps(index, separators=(",", ":")).encode()
