"""
Copying images between registries and OCI image layouts: a manifest or an
index with all its children (and optionally their referrers), blobs first,
each manifest after what it references, the tag last.  Blobs the
destination has are skipped, blobs of the same registry are mounted, and
up to C{jobs} blobs move at once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore

from ociklein.client._authfile import lookupCredentials
from ociklein.client._client import Manifest, RegistryClient, digestOf
from ociklein.client._errors import RegistryError
from ociklein.client._layout import ImageLayout
from ociklein.client._progress import Progress
from ociklein.client._reference import LayoutReference, Reference, parseLocation
from ociklein.manifests import IMAGE_TYPES, INDEX_TYPES
from ociklein.names import isDigestShaped

# Referrers of referrers are followed this deep, at most.
_MAX_REFERRER_DEPTH = 4
# Nested indexes are followed this deep, at most.
_MAX_INDEX_DEPTH = 8


class Clients:
    """
    One L{RegistryClient} per registry, created on first use with the
    credentials of the auth files (or of C{credentials}), and closed together.
    """

    def __init__(
        self,
        reactor: Any = None,
        *,
        tlsVerify: bool = True,
        caFile: str | None = None,
        credentials: Mapping[str, tuple[str, str]] | None = None,
        env: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        self.reactor = reactor
        self.tlsVerify = tlsVerify
        self.caFile = caFile
        self.credentials = dict(credentials or {})
        self.env = env
        self.options = options
        self._clients: dict[str, RegistryClient] = {}

    def get(self, registry: str) -> RegistryClient:
        client = self._clients.get(registry)
        if client is None:
            credentials = self.credentials.get(registry) or lookupCredentials(registry, self.env)
            client = RegistryClient(
                registry,
                credentials,
                self.reactor,
                tlsVerify=self.tlsVerify,
                caFile=self.caFile,
                **self.options,
            )
            self._clients[registry] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


@dataclass
class CopyResult:
    """
    What a copy did: the top manifest's descriptor, and the blobs by outcome.
    """

    digest: str
    mediaType: str
    size: int
    manifests: list[str] = field(default_factory=list)
    blobs: dict[str, str] = field(default_factory=dict)
    bytes: int = 0

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.blobs.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts


class _RegistryEnd:
    def __init__(self, client: RegistryClient, reference: Reference) -> None:
        self.client = client
        self.reference = reference
        self.repository = reference.repository

    async def manifest(self, reference: str) -> Manifest:
        return await self.client.getManifest(self.repository, reference)

    async def hasBlob(self, digest: str) -> bool:
        return await self.client.headBlob(self.repository, digest) is not None

    async def referrers(self, digest: str) -> list[dict[str, Any]]:
        return await self.client.referrers(self.repository, digest)

    async def putManifest(self, manifest: Manifest, tag: str | None) -> None:
        await self.client.putManifest(
            self.repository, tag or manifest.digest, manifest.content, manifest.mediaType
        )


class _LayoutEnd:
    def __init__(self, reference: LayoutReference) -> None:
        self.layout = ImageLayout(reference.path)
        self.reference = reference

    async def manifest(self, reference: str) -> Manifest:
        if isDigestShaped(reference):
            entries = self.layout.index().get("manifests", [])
            descriptor = next((e for e in entries if e.get("digest") == reference), {"digest": reference})
        else:
            descriptor = self.layout.resolve(reference)
        digest = str(descriptor["digest"])
        content = self.layout.readSmall(digest)
        mediaType = descriptor.get("mediaType")
        if not mediaType:
            mediaType = json.loads(content).get("mediaType") or "application/vnd.oci.image.manifest.v1+json"
        return Manifest(content, str(mediaType), digest)

    async def hasBlob(self, digest: str) -> bool:
        return self.layout.hasBlob(digest)

    async def referrers(self, digest: str) -> list[dict[str, Any]]:
        return self.layout.referrers(digest)

    async def putManifest(self, manifest: Manifest, tag: str | None) -> None:
        self.layout.writeSmall(manifest.digest, manifest.content)


_End = _RegistryEnd | _LayoutEnd


def _blobsOf(document: dict[str, Any]) -> list[dict[str, Any]]:
    """
    The descriptors of the blobs an image manifest needs copied: its config
    and every layer not stored elsewhere.
    """
    found = []
    config = document.get("config")
    if isinstance(config, dict):
        found.append(config)
    for layer in document.get("layers") or []:
        if isinstance(layer, dict) and not layer.get("urls"):
            found.append(layer)
    return found


class _Copier:
    def __init__(
        self, source: _End, destination: _End, jobs: int, progress: Progress, referrers: bool
    ) -> None:
        self.source = source
        self.destination = destination
        self.semaphore = DeferredSemaphore(max(1, jobs))
        self.progress = progress
        self.withReferrers = referrers
        self.blobs: dict[str, Deferred[str]] = {}
        # The first blob that failed: the blobs still waiting for their
        # turn give up at once instead of starting.
        self.failed: BaseException | None = None
        self.manifests: set[str] = set()
        self.result = CopyResult("", "", 0)
        self.temporary = tempfile.TemporaryDirectory(prefix="ociklein-copy-")

    # -- blobs --------------------------------------------------------------------

    def copyBlob(self, descriptor: dict[str, Any]) -> Deferred[str]:
        digest = str(descriptor["digest"])
        if digest not in self.blobs:
            size = int(descriptor.get("size") or 0)
            self.blobs[digest] = self.semaphore.run(
                lambda: Deferred.fromCoroutine(self._copyBlob(digest, size))
            )
        return self.blobs[digest]

    async def _copyBlob(self, digest: str, size: int) -> str:
        if self.failed is not None:
            raise self.failed
        try:
            return await self._moveBlob(digest, size)
        except BaseException as e:
            self.failed = self.failed or e
            raise

    async def _moveBlob(self, digest: str, size: int) -> str:
        source, destination = self.source, self.destination
        if await destination.hasBlob(digest):
            outcome = "skipped"
        elif (
            isinstance(source, _RegistryEnd)
            and isinstance(destination, _RegistryEnd)
            and source.client is destination.client
            and source.repository != destination.repository
            and await destination.client.mountBlob(destination.repository, digest, source.repository)
        ):
            outcome = "mounted"
        else:
            outcome = await self._transfer(digest, size)
        self.result.blobs[digest] = outcome
        self.progress.finished(digest, size, outcome)
        return outcome

    async def _transfer(self, digest: str, size: int) -> str:
        source, destination = self.source, self.destination
        progress = self.progress
        if isinstance(destination, _LayoutEnd):
            progress.started(digest, size, "pull")
            f = destination.layout.openTemporary(digest)
            try:
                if isinstance(source, _RegistryEnd):
                    await source.client.pullBlob(source.repository, digest, f, size, progress)
                else:
                    _copyFile(source.layout.blobPath(digest), f)
                destination.layout.commit(f, digest)
            except BaseException:
                destination.layout.discard(f)
                raise
            f.close()
            self.result.bytes += size
            return "pulled"
        if isinstance(source, _LayoutEnd):
            progress.started(digest, size, "push")
            await destination.client.pushBlob(
                destination.repository, source.layout.blobPath(digest), digest, progress
            )
            self.result.bytes += size
            return "pushed"
        # Registry to registry: streamed from the download into the upload.
        progress.started(digest, size, "copy")
        if size > 0:
            try:
                await destination.client.copyBlob(
                    destination.repository, digest, size, source.client, source.repository, progress
                )
            except RegistryError as e:
                if e.code != "CONNECTION_FAILED":
                    raise
                # A stream cannot resume: copy again through a file, whose
                # download and upload each resume where they broke.
                progress.advanced(digest, 0)
            else:
                self.result.bytes += size
                return "pushed"
        halves = _Halves(progress, size)
        path = os.path.join(self.temporary.name, digest.replace(":", "-"))
        f = _openForWriting(path)
        with f:
            await source.client.pullBlob(source.repository, digest, f, size, halves.first)
        try:
            await destination.client.pushBlob(destination.repository, path, digest, halves.second)
        finally:
            os.unlink(path)
        self.result.bytes += size
        return "pushed"

    # -- manifests ------------------------------------------------------------------

    async def copyManifest(self, manifest: Manifest, tag: str | None, depth: int = 0) -> None:
        """
        Copy what C{manifest} references, then the manifest itself (at
        C{tag}, or at its digest).
        """
        if depth > _MAX_INDEX_DEPTH:
            raise RegistryError("MANIFEST_INVALID", "indexes nested too deep")
        document = manifest.document()
        if manifest.mediaType in INDEX_TYPES or "manifests" in document:
            children = [c for c in document.get("manifests") or [] if isinstance(c, dict)]
            await _all([Deferred.fromCoroutine(self._copyChild(child, depth)) for child in children])
        elif manifest.mediaType in IMAGE_TYPES or "config" in document or "layers" in document:
            await _all([self.copyBlob(blob) for blob in _blobsOf(document)])
        await self.destination.putManifest(manifest, tag)
        self.manifests.add(manifest.digest)
        self.result.manifests.append(manifest.digest)
        self.progress.manifest(manifest.digest, manifest.mediaType, tag or manifest.digest)

    async def _copyChild(self, child: dict[str, Any], depth: int) -> None:
        digest = str(child.get("digest"))
        if digest in self.manifests:
            return
        manifest = await self.source.manifest(digest)
        await self.copyManifest(manifest, None, depth + 1)

    async def copyReferrers(self, digests: list[str], depth: int = 0) -> None:
        """
        Copy the referrers of every manifest in C{digests} (and theirs).
        """
        if depth >= _MAX_REFERRER_DEPTH:
            return
        found = []
        for digest in digests:
            for descriptor in await self.source.referrers(digest):
                referrer = str(descriptor.get("digest"))
                if referrer in self.manifests:
                    continue
                manifest = await self.source.manifest(referrer)
                await self.copyManifest(manifest, None)
                if isinstance(self.destination, _LayoutEnd):
                    self.destination.layout.addManifest(
                        {**manifest.descriptor(), **_artifactType(descriptor)}, None
                    )
                found.append(referrer)
        if found:
            await self.copyReferrers(found, depth + 1)


async def _all(work: list[Deferred[Any]]) -> None:
    """
    Wait for every one of C{work}, then raise the first failure: nothing
    a copy started is still running when it ends.
    """
    for ok, value in await DeferredList(work, consumeErrors=True):
        if not ok:
            value.raiseException()


def _copyFile(path: str | os.PathLike[str], f: IO[bytes]) -> None:
    with open(path, "rb") as original:
        shutil.copyfileobj(original, f)


def _openForWriting(path: str) -> IO[bytes]:
    return open(path, "w+b")


def _artifactType(descriptor: dict[str, Any]) -> dict[str, Any]:
    return {"artifactType": descriptor["artifactType"]} if descriptor.get("artifactType") else {}


class _Halves:
    """
    A registry-to-registry copy reported as one transfer: the download is
    the first half of the bar, the upload the second.
    """

    def __init__(self, progress: Progress, size: int) -> None:
        self.first = _Scaled(progress, 0)
        self.second = _Scaled(progress, size // 2)


class _Scaled(Progress):
    def __init__(self, progress: Progress, base: int) -> None:
        self.progress = progress
        self.base = base

    def advanced(self, digest: str, done: int) -> None:
        self.progress.advanced(digest, self.base + done // 2)


async def _withClients(
    clients: Clients | None, reactor: Any, work: Callable[[Clients], Awaitable[CopyResult]]
) -> CopyResult:
    owned = clients is None
    clients = clients or Clients(reactor)
    try:
        return await work(clients)
    finally:
        if owned:
            await clients.close()


async def copy(
    source: str | Reference | LayoutReference,
    destination: str | Reference | LayoutReference,
    *,
    clients: Clients | None = None,
    reactor: Any = None,
    referrers: bool = False,
    jobs: int = 4,
    progress: Progress | None = None,
) -> CopyResult:
    """
    Copy an image (a manifest, or an index with all its children) from
    C{source} to C{destination}, each a registry reference
    (C{host[:port]/repository[:tag|@digest]}) or an OCI layout
    (C{oci:DIR[:TAG]}); with C{referrers}, also every manifest that refers
    to them.  The destination's tag is its own, else the source's, else the
    image is stored by digest (in a registry) or as C{latest} (in a layout).
    """
    if isinstance(source, str):
        source = parseLocation(source)
    if isinstance(destination, str):
        destination = parseLocation(destination)
    src, dst = source, destination

    async def work(clients: Clients) -> CopyResult:
        sourceEnd: _End = (
            _RegistryEnd(clients.get(src.registry), src) if isinstance(src, Reference) else _LayoutEnd(src)
        )
        destinationEnd: _End = (
            _RegistryEnd(clients.get(dst.registry), dst) if isinstance(dst, Reference) else _LayoutEnd(dst)
        )
        sourceTag = (
            src.tag if isinstance(src, LayoutReference) else (src.tag or (None if src.digest else "latest"))
        )
        if isinstance(src, Reference):
            top = await sourceEnd.manifest(src.reference)
        else:
            top = await sourceEnd.manifest(src.tag or _onlyTag(sourceEnd))
        if isinstance(dst, Reference):
            tag = dst.tag or (None if dst.digest else sourceTag)
            if dst.digest and dst.digest != top.digest:
                raise RegistryError("DIGEST_MISMATCH", f"{src} is {top.digest}, not {dst.digest}")
        else:
            tag = (
                dst.tag
                or sourceTag
                or ("latest" if not isinstance(src, Reference) or not src.digest else None)
            )
            destinationEnd.layout.create()  # type: ignore[union-attr]
        copier = _Copier(sourceEnd, destinationEnd, jobs, progress or Progress(), referrers)
        try:
            await copier.copyManifest(top, tag)
            if isinstance(destinationEnd, _LayoutEnd):
                destinationEnd.layout.addManifest(top.descriptor(), tag)
            if referrers:
                await copier.copyReferrers(list(copier.manifests))
        finally:
            copier.temporary.cleanup()
        result = copier.result
        result.digest, result.mediaType, result.size = top.digest, top.mediaType, len(top.content)
        return result

    return await _withClients(clients, reactor, work)


def _onlyTag(end: _End) -> str:
    assert isinstance(end, _LayoutEnd)
    return str(end.layout.resolve(None)["digest"])


async def push(
    layout: str | os.PathLike[str],
    reference: str | Reference,
    tag: str | None = None,
    **options: Any,
) -> CopyResult:
    """
    Push the image at C{tag} of an OCI layout (its only image when C{tag}
    is L{None}) to a registry reference; options as for L{copy}.
    """
    return await copy(LayoutReference(os.fspath(layout), tag), reference, **options)


async def pull(
    reference: str | Reference,
    layout: str | os.PathLike[str],
    tag: str | None = None,
    **options: Any,
) -> CopyResult:
    """
    Pull an image into an OCI layout, at C{tag} (by default the
    reference's own); options as for L{copy}.
    """
    return await copy(reference, LayoutReference(os.fspath(layout), tag), **options)


__all__ = ["Clients", "CopyResult", "copy", "digestOf", "pull", "push"]
