"""
Manifests, tags, the catalog and the referrers index as objects.

S3 is strongly consistent, so what one node wrote is what every node reads
as soon as the write was answered: tags, listings and manifests read by
digest are always asked of the bucket.  Only immutable manifest bytes are
kept, and served only after a tag read from the bucket named them
(L{ManifestCache}).  Listings are one C{ListObjectsV2} page per page
asked, never a read of everything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from zope.interface import implementer

from ociklein.interfaces import (
    FencedStore,
    IFencedManifestBackend,
    IManifestBackend,
    IManifestMaintenance,
    ITagReadingManifestBackend,
    StoredItem,
)
from ociklein.names import isSupportedDigest, isTag
from ociklein.storage._checks import checkDigest, checkRepository
from ociklein.storage.s3._cache import ManifestCache
from ociklein.storage.s3._client import S3Client, allOf
from ociklein.storage.s3._lease import LEASE_SECONDS, LeaseObject
from ociklein.storage.s3._uses import Uses, digestFromKey, touchAll

_REGISTERED = 10000
# Object metadata (x-amz-meta-subject) of a manifest that has a subject.
_SUBJECT = "subject"


def _tagBody(digest: str) -> bytes:
    return digest.encode() + b"\n"


def _readDigest(data: bytes) -> str | None:
    text = data[:256].decode("ascii", "replace").strip()
    return text if isSupportedDigest(text) else None


def _plainETag(etag: str) -> str | None:
    """
    The MD5 hex an ETag carries, for objects written in one PUT without
    server-side encryption; L{None} when the ETag is something else.
    """
    etag = etag.strip('"')
    return etag if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag) else None


@implementer(IManifestBackend, IManifestMaintenance, ITagReadingManifestBackend, IFencedManifestBackend)
class S3ManifestBackend:
    """
    Manifests (their media type as the object's Content-Type, their subject
    in its metadata), tags holding a digest, empty catalog entries and one
    small JSON object per referrer.
    """

    def __init__(self, client: S3Client) -> None:
        self._client = client
        self._keys = client.keys
        self._uses = Uses(client)
        self._cache = ManifestCache()
        self._registered: set[str] = set()
        self._lease = LeaseObject(client, LEASE_SECONDS)

    def getManifest(self, repository: str, digest: str) -> Deferred[tuple[str, bytes] | None]:
        key = self._keys.manifest(repository, digest)

        def found(result: tuple[bytes, dict[str, Any]] | None) -> tuple[str, bytes] | None:
            if result is None:
                return None
            content, response = result
            return response.get("ContentType", "application/octet-stream"), content

        return self._client.getObject(key).addCallback(found)

    def getTaggedManifest(self, repository: str, tag: str) -> Deferred[tuple[str, str, bytes] | None]:
        return Deferred.fromCoroutine(self._getTaggedManifest(repository, tag))

    async def _getTaggedManifest(self, repository: str, tag: str) -> tuple[str, str, bytes] | None:
        """
        Read the tag; the manifest it names from this node's cache, else
        from the bucket (and keep it).
        """
        digest = await self.resolveTag(repository, tag)
        if digest is None:
            return None
        kept = self._cache.get(repository, digest)
        if kept is None:
            found = await self.getManifest(repository, digest)
            if found is None:
                return None
            self._cache.keep(repository, digest, *found)
            kept = found
        return digest, kept[0], kept[1]

    def putManifest(
        self,
        repository: str,
        digest: str,
        mediaType: str,
        content: bytes,
        subject: str | None,
        descriptor: dict[str, Any],
    ) -> Deferred[None]:
        return self.putTaggedManifest(repository, (), digest, mediaType, content, subject, descriptor)

    async def _storeManifest(
        self,
        repository: str,
        digest: str,
        mediaType: str,
        content: bytes,
        subject: str | None,
        descriptor: dict[str, Any],
        tags: Sequence[str],
    ) -> None:
        """
        The catalog entry and the manifest at once; then, together, the
        referrers entry and C{tags}: only after the manifest, so that
        neither the index nor a tag ever names a missing one.
        """
        key = self._keys.manifest(repository, digest)
        metadata = {} if subject is None else {_SUBJECT: checkDigest(subject)}
        await allOf(
            [
                self._register(repository),
                self._client.run(self._client.put, key, content, ContentType=mediaType, Metadata=metadata),
            ]
        )
        after = [self._putTag(repository, tag, digest) for tag in tags]
        if subject is not None:
            encoded = json.dumps(descriptor).encode()
            referrer = self._keys.referrer(repository, subject, digest)
            put = self._client.put
            after.append(self._client.run(put, referrer, encoded, ContentType="application/json"))
        await allOf(after)

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
            self._storeManifest(repository, digest, mediaType, content, subject, descriptor, tags)
        )

    def fencesBlobsOf(self, blobs: object) -> bool:
        from ociklein.storage.s3._blobs import S3BlobStore

        if not isinstance(blobs, S3BlobStore):
            return False
        other = blobs._client
        return (other.config.endpoint, other.bucket, other.keys.prefix) == (
            self._client.config.endpoint,
            self._client.bucket,
            self._keys.prefix,
        )

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
        """
        The core's check, store and uses of a manifest PUT, with the
        requests of each step in parallel (docs/storage.md, "Maintenance"):

        1. if C{check}: L{touchAll} of every link, blob and child (uses,
           the lease, fences if it exists, HEADs), and meanwhile a HEAD of
           the manifest (is it stored already?);
        2. the manifest (unless stored), then its tags; for a manifest
           stored already, its tags and a use of it;
        3. the lease, then, if there is none, a HEAD of every link, blob,
           child and the manifest; else L{touchAll} of them all.

        With no lease in step 3, no collection is between taking the lease
        and its last deletion; one that deletes later takes the lease
        after this store was durable, so it lists the manifest and its
        tags, keeps it and what it references (its time is now: written
        now, or its use recorded in step 2).  One that deleted before is
        seen by the HEADs.  So the uses of step 1 (which keep the times of
        what the push used) need not be written again.
        """

        async def store() -> FencedStore:
            client, keys = self._client, self._keys
            references = [key for d in blobs for key in (keys.link(repository, d), keys.blob(d))]
            references += [keys.manifest(repository, c) for c in children]
            named = [d for d in blobs for _ in (0, 1)] + list(children)
            key = keys.manifest(repository, digest)
            stored: Deferred[Any] = client.run(client.head, key)
            if check:
                touched = Deferred.fromCoroutine(touchAll(client, self._uses, references))
                found, head = await allOf([touched, stored])
                missing = [d for d, ok in zip(named, found, strict=True) if not ok]
                if missing:
                    return FencedStore(missing[0], [])
            else:
                head = await stored
            if head is None:
                await self.putTaggedManifest(
                    repository, tags, digest, mediaType, content, subject, descriptor
                )
            else:
                await allOf(
                    [ensureDeferred(self.setTag(repository, tag, digest)) for tag in tags]
                    + [client.run(self._uses.recordUse, key)]
                )
            everything = [*references, key]
            if check and not await client.run(self._uses.collecting):
                heads = await allOf([client.run(client.head, k) for k in everything])
                found = [h is not None for h in heads]
            else:
                found = await touchAll(client, self._uses, everything)
            lost = [d for d, ok in zip([*named, digest], found, strict=True) if not ok]
            return FencedStore(None, list(dict.fromkeys(lost)))

        return Deferred.fromCoroutine(store())

    def _register(self, repository: str) -> Deferred[None]:
        """
        Enter the repository in the catalog: an empty object, written once
        per node.  Catalog entries are never removed (a repository stays
        known, as on memory and fs), so a node that wrote one need not
        write it again; it remembers up to L{_REGISTERED} names.
        """
        if repository in self._registered:
            return succeed(None)

        def written(_: object) -> None:
            if len(self._registered) >= _REGISTERED:
                self._registered.clear()
            self._registered.add(repository)

        return self._client.run(self._client.put, self._keys.catalogEntry(repository), b"").addCallback(
            written
        )

    def deleteManifest(self, repository: str, digest: str) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._deleteManifest(repository, digest))

    async def _deleteManifest(self, repository: str, digest: str) -> bool:
        self._cache.drop(repository, digest)
        client, key = self._client, self._keys.manifest(repository, digest)
        head = await client.run(client.head, key)
        if head is None:
            return False
        subject = head.get("Metadata", {}).get(_SUBJECT)
        if subject is not None and isSupportedDigest(subject):
            await client.run(client.delete, self._keys.referrer(repository, subject, digest))
        tags = await client.run(self._tagsOn, repository, digest)
        if tags:
            await client.run(client.deleteMany, tags)
        # The manifest goes last: a failure half way leaves it in place, so
        # deleting it again finishes the job.
        await client.run(client.delete, key)
        return True

    def _tagsOn(self, repository: str, digest: str) -> list[str]:
        """
        The keys of the tags pointing at C{digest}.  A tag object written in
        one PUT has the MD5 of its body as ETag, so the listing alone tells
        which tags to remove; a store with other ETags costs a GET per tag.
        """
        body = _tagBody(digest)
        wanted = hashlib.md5(body, usedforsecurity=False).hexdigest()
        found = []
        for entry in self._client.listObjects(self._keys.tags(repository)):
            etag = _plainETag(entry.get("ETag", ""))
            if etag is not None:
                if etag == wanted:
                    found.append(entry["Key"])
                continue
            got = self._client.get(entry["Key"])
            if got is not None and _readDigest(got[0]) == digest:
                found.append(entry["Key"])
        return found

    def resolveTag(self, repository: str, tag: str) -> Deferred[str | None]:
        key = self._keys.tag(repository, tag)

        def found(result: tuple[bytes, dict[str, Any]] | None) -> str | None:
            return None if result is None else _readDigest(result[0])

        return self._client.getObject(key).addCallback(found)

    def setTag(self, repository: str, tag: str, digest: str) -> Deferred[None]:
        return allOf([self._register(repository), self._putTag(repository, tag, digest)]).addCallback(
            lambda _: None
        )

    def _putTag(self, repository: str, tag: str, digest: str) -> Deferred[None]:
        # One PUT replaces the object whole: concurrent writers of a tag
        # leave the last one's digest, never a mix.
        key = self._keys.tag(repository, tag)
        return self._client.run(self._client.put, key, _tagBody(checkDigest(digest)))

    def deleteTag(self, repository: str, tag: str) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._deleteTag(repository, tag))

    async def _deleteTag(self, repository: str, tag: str) -> bool:
        key = self._keys.tag(repository, tag)
        # S3 answers a DELETE alike whether the key was there or not.
        if await self._client.run(self._client.head, key) is None:
            return False
        await self._client.run(self._client.delete, key)
        return True

    def listTags(self, repository: str, last: str | None, limit: int) -> Deferred[list[str] | None]:
        return self._client.run(self._listTags, checkRepository(repository), last, limit)

    def _listTags(self, repository: str, last: str | None, limit: int) -> list[str] | None:
        prefix = self._keys.tags(repository)
        tags: list[str] = []
        if limit > 0:
            # Tags are ASCII, so key order (by bytes) is the order of names.
            entries = self._client.listObjects(prefix, None if last is None else prefix + last, limit)
            tags = [name for name in (e["Key"][len(prefix) :] for e in entries) if isTag(name)]
        if not tags and self._client.head(self._keys.catalogEntry(repository)) is None:
            return None
        return tags

    def listRepositories(self, last: str | None, limit: int) -> Deferred[list[str]]:
        return self._client.run(self._client.listNames, self._keys.catalog, last, limit)

    def referrers(self, repository: str, subject: str) -> Deferred[list[dict[str, Any]]]:
        return self._client.run(self._referrers, repository, subject)

    def _referrers(self, repository: str, subject: str) -> list[dict[str, Any]]:
        found = []
        for entry in self._client.listObjects(self._keys.referrers(repository, subject)):
            got = self._client.get(entry["Key"])
            if got is not None:
                found.append(json.loads(got[0]))
        return found

    # -- maintenance --------------------------------------------------------

    def now(self) -> Deferred[float]:
        return self._client.run(self._uses.now)

    def listManifests(self, repository: str, last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        prefix = self._keys.manifests(repository)
        start = None if last is None else self._keys.manifest(repository, last)
        return self._client.run(self._uses.listWithUses, prefix, start, limit, digestFromKey)

    def touchManifests(self, repository: str, digests: Sequence[str]) -> Deferred[list[str]]:
        keys = [self._keys.manifest(repository, d) for d in digests]

        def missing(results: list[bool]) -> list[str]:
            return [d for d, found in zip(digests, results, strict=True) if not found]

        return Deferred.fromCoroutine(touchAll(self._client, self._uses, keys)).addCallback(missing)

    def _referrerOf(self, repository: str, digest: str) -> Any:
        def related(head: dict[str, Any]) -> list[str]:
            subject = head.get("Metadata", {}).get(_SUBJECT)
            if subject is None or not isSupportedDigest(subject):
                return []
            return [self._keys.referrer(repository, subject, digest)]

        return related

    def deleteManifestBefore(self, repository: str, digest: str, before: float) -> Deferred[bool]:
        self._cache.drop(repository, digest)
        key = self._keys.manifest(repository, digest)
        related = self._referrerOf(repository, digest)
        return self._lease.fencedDelete(key, before, related)

    def quarantineManifest(self, repository: str, digest: str) -> Deferred[bool]:
        self._cache.drop(repository, digest)
        return self._client.run(self._quarantine, repository, digest)

    def _quarantine(self, repository: str, digest: str) -> bool:
        key = self._keys.manifest(repository, digest)
        head = self._client.head(key)
        if head is None:
            return False
        self._client.deleteMany(self._referrerOf(repository, digest)(head))
        return self._uses.quarantine(key, self._uses.now())
