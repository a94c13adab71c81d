"""
L{RegistryClient}: the registry API in Python calls, on treq: catalog and
tags, manifests, blobs streamed to and from files, mounts and referrers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlencode

from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.web.iweb import IResponse

from ociklein.client._blobs import DEFAULT_CHUNK_SIZE, download, mount, newHasher, upload
from ociklein.client._errors import RegistryError
from ociklein.client._progress import Progress
from ociklein.client._transport import Transport, _header, drain, raiseFor, readSmall
from ociklein.manifests import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from ociklein.names import isDigestShaped

# Every manifest kind, so that a registry never converts or hides one.
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
# Pages followed by one listing, at most.
_MAX_PAGES = 100_000


def digestOf(data: bytes, algorithm: str = "sha256") -> str:
    """
    The OCI digest of C{data}.
    """
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


@dataclass(frozen=True)
class Manifest:
    """
    A manifest as the registry stored it: its exact bytes, media type and
    digest.
    """

    content: bytes
    mediaType: str
    digest: str

    def document(self) -> dict[str, Any]:
        document = json.loads(self.content)
        if not isinstance(document, dict):
            raise RegistryError("MANIFEST_INVALID", f"{self.digest} is not a JSON object")
        return document

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.mediaType, "digest": self.digest, "size": len(self.content)}


def _mediaType(response: IResponse, content: bytes) -> str:
    value = (_header(response, "Content-Type") or "").split(";", 1)[0].strip()
    if value and value != "application/json":
        return value
    try:
        declared = json.loads(content).get("mediaType")
    except (ValueError, AttributeError):
        declared = None
    return declared if isinstance(declared, str) else OCI_MANIFEST


def referrersTag(digest: str) -> str:
    """
    The tag the OCI spec's fallback keeps a subject's referrers index at.
    """
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}-{encoded}"[:128]


def _openForReading(path: str | os.PathLike[str]) -> IO[bytes]:
    return open(path, "rb")


def hashFile(path: str | os.PathLike[str], algorithm: str = "sha256") -> tuple[str, int]:
    """
    The digest and size of a file, read in blocks.
    """
    hasher = hashlib.new(algorithm)
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            hasher.update(block)
            size += len(block)
    return f"{algorithm}:{hasher.hexdigest()}", size


class RegistryClient:
    """
    One registry, spoken to with treq.

    @param url: C{host[:port]} or C{http(s)://host[:port]}; without a
        scheme HTTPS is tried first, and plain HTTP for a loopback host or
        when C{tlsVerify} is false (as skopeo does).
    @param credentials: (user, password), for Basic authentication or to
        obtain bearer tokens.
    @param caFile: a PEM file of the certificates to trust for this registry.
    @param chunkSize: blobs up to this size are pushed in one request,
        bigger ones in chunks of it (each resumable).
    @param retries: how many times an idempotent request is tried again
        after a connection failure, a 429 or a 5xx, waiting C{backoff}
        seconds, then twice that, and so on (or as C{Retry-After} says).
    @param timeout: how long an answer may take to start, and how long a
        streamed copy may go without a byte moving.
    @param clock: what token lifetimes and stalled streams are measured on
        (the reactor).
    """

    def __init__(
        self,
        url: str,
        credentials: tuple[str, str] | None = None,
        reactor: Any = None,
        *,
        tlsVerify: bool = True,
        caFile: str | None = None,
        retries: int = 4,
        backoff: float = 0.25,
        timeout: float = 60.0,
        connections: int = 8,
        chunkSize: int = DEFAULT_CHUNK_SIZE,
        clock: IReactorTime | None = None,
    ) -> None:
        self.transport = Transport(
            url,
            credentials,
            reactor,
            tlsVerify=tlsVerify,
            caFile=caFile,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            connections=connections,
            clock=clock,
        )
        self.chunkSize = chunkSize

    @property
    def registry(self) -> str:
        """
        C{host[:port]}.
        """
        return self.transport.host

    async def close(self) -> None:
        await self.transport.close()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _expect(self, response: IResponse, *codes: int) -> IResponse:
        if response.code not in codes:
            raise await raiseFor(response)
        return response

    # -- listings -----------------------------------------------------------------

    async def ping(self) -> None:
        """
        Check that the registry answers C{/v2/} (authenticating if it asks).
        """
        await drain(await self._expect(await self.transport.request("GET", "/v2/"), 200))

    async def _pages(self, path: str, key: str, scopes: tuple[str, ...], pageSize: int | None) -> list[str]:
        names: list[str] = []
        url: str | None = path + (f"?{urlencode({'n': pageSize})}" if pageSize else "")
        pages = 0
        while url is not None and pages < _MAX_PAGES:
            response = await self._expect(await self.transport.request("GET", url, scopes=scopes), 200)
            link = _NEXT.search(", ".join(response.headers.getRawHeaders("Link") or []))
            try:
                document = json.loads(await readSmall(response))
            except ValueError:
                raise RegistryError("INVALID_ANSWER", f"{path} did not answer JSON") from None
            names.extend(document.get(key) or [])
            url = link.group(1) if link else None
            pages += 1
        return names

    async def catalog(self, pageSize: int | None = None) -> list[str]:
        """
        Every repository, following C{Link} pages.
        """
        return await self._pages("/v2/_catalog", "repositories", ("registry:catalog:*",), pageSize)

    async def tags(self, repository: str, pageSize: int | None = None) -> list[str]:
        """
        Every tag of C{repository}, following C{Link} pages.
        """
        scopes = (f"repository:{repository}:pull",)
        return await self._pages(f"/v2/{repository}/tags/list", "tags", scopes, pageSize)

    # -- manifests -------------------------------------------------------------------

    async def getManifest(self, repository: str, reference: str) -> Manifest:
        """
        The manifest at a tag or digest, its digest checked.
        """
        response = await self._expect(
            await self.transport.request(
                "GET",
                f"/v2/{repository}/manifests/{reference}",
                scopes=(f"repository:{repository}:pull",),
                headers={"Accept": ACCEPT},
            ),
            200,
        )
        content = await readSmall(response)
        expected = reference if isDigestShaped(reference) else _header(response, "Docker-Content-Digest")
        algorithm = expected.partition(":")[0] if expected else "sha256"
        try:
            actual = digestOf(content, algorithm)
        except ValueError:
            actual = digestOf(content)
        if expected is not None and expected != actual:
            raise RegistryError(
                "DIGEST_MISMATCH", f"{repository}:{reference}: got {actual}, expected {expected}"
            )
        return Manifest(content, _mediaType(response, content), actual)

    async def headManifest(self, repository: str, reference: str) -> dict[str, Any] | None:
        """
        The descriptor of the manifest at a tag or digest, or L{None}.
        """
        response = await self.transport.request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            scopes=(f"repository:{repository}:pull",),
            headers={"Accept": ACCEPT},
        )
        if response.code == 404:
            return None
        await self._expect(response, 200)
        digest = _header(response, "Docker-Content-Digest")
        if digest is None:
            if isDigestShaped(reference):
                digest = reference
            else:
                # No digest in the headers: only the content can tell.
                return (await self.getManifest(repository, reference)).descriptor()
        length = _header(response, "Content-Length")
        return {
            "mediaType": (_header(response, "Content-Type") or OCI_MANIFEST).split(";", 1)[0],
            "digest": digest,
            "size": int(length) if length and length.isdigit() else 0,
        }

    async def putManifest(self, repository: str, reference: str, content: bytes, mediaType: str) -> str:
        """
        Store a manifest at a tag (or at its digest); its digest.  A
        manifest with a C{subject} pushed to a registry without the
        referrers API is also added to the subject's fallback tag.
        """
        response = await self._expect(
            await self.transport.request(
                "PUT",
                f"/v2/{repository}/manifests/{reference}",
                scopes=(f"repository:{repository}:pull,push",),
                headers={"Content-Type": mediaType},
                body=lambda: content,
            ),
            201,
        )
        subjectHeader = _header(response, "OCI-Subject")
        await drain(response)
        digest = digestOf(content)
        try:
            subject = json.loads(content).get("subject")
        except (ValueError, AttributeError):
            subject = None
        if isinstance(subject, dict) and isinstance(subject.get("digest"), str) and subjectHeader is None:
            await self._addToReferrersTag(repository, subject["digest"], content, mediaType, digest)
        return digest

    async def _addToReferrersTag(
        self, repository: str, subject: str, content: bytes, mediaType: str, digest: str
    ) -> None:
        document = json.loads(content)
        descriptor: dict[str, Any] = {"mediaType": mediaType, "digest": digest, "size": len(content)}
        config = document.get("config")
        artifactType = document.get("artifactType") or (config or {}).get("mediaType")
        if artifactType:
            descriptor["artifactType"] = artifactType
        if document.get("annotations"):
            descriptor["annotations"] = document["annotations"]
        tag = referrersTag(subject)
        try:
            index = (await self.getManifest(repository, tag)).document()
        except RegistryError as e:
            if e.status != 404:
                raise
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        manifests = [m for m in index.get("manifests", []) if m.get("digest") != digest]
        index["manifests"] = [*manifests, descriptor]
        await self.putManifest(repository, tag, json.dumps(index).encode(), OCI_INDEX)

    async def deleteManifest(self, repository: str, reference: str) -> None:
        """
        Delete a manifest; a tag a registry will not delete by name is
        resolved, and its manifest deleted (with every tag of it).
        """
        scopes = (f"repository:{repository}:pull,push,delete",)
        path = f"/v2/{repository}/manifests/{reference}"
        response = await self.transport.request("DELETE", path, scopes=scopes)
        if response.code == 202:
            await drain(response)
            return
        error = await raiseFor(response)
        # Distribution 2.8 answers a tag with 400 DIGEST_INVALID.
        if isDigestShaped(reference) or error.status not in (400, 405):
            raise error
        descriptor = await self.headManifest(repository, reference)
        if descriptor is None:
            raise error
        await self.deleteManifest(repository, descriptor["digest"])

    # -- blobs --------------------------------------------------------------------

    async def headBlob(self, repository: str, digest: str) -> int | None:
        """
        The size of a blob the repository holds, or L{None}.
        """
        response = await self.transport.request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", scopes=(f"repository:{repository}:pull",)
        )
        if response.code == 404:
            return None
        await self._expect(response, 200)
        length = _header(response, "Content-Length")
        return int(length) if length and length.isdigit() else 0

    async def pullBlob(
        self,
        repository: str,
        digest: str,
        sink: IO[bytes],
        size: int | None = None,
        progress: Progress | None = None,
    ) -> int:
        """
        Stream a blob into the binary file C{sink}, verifying its digest and
        resuming with C{Range} after a broken connection; its size.
        """
        return await download(self.transport, repository, digest, sink, size, progress)

    async def pushBlob(
        self,
        repository: str,
        source: str | os.PathLike[str],
        digest: str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """
        Upload the file C{source} as a blob (hashed first, in a thread,
        unless C{digest} is given); its digest.  Big files go in resumable
        chunks.
        """
        if digest is None:
            threads = getattr(self.transport.reactor, "getThreadPool", None)
            if threads is None:
                digest, _ = hashFile(source)
            else:
                digest, _ = await deferToThreadPool(self.transport.reactor, threads(), hashFile, source)
        assert digest is not None
        f = _openForReading(source)
        with f:
            size = os.fstat(f.fileno()).st_size
            await upload(self.transport, repository, digest, size, f, progress, self.chunkSize)
        return digest

    async def copyBlob(
        self,
        repository: str,
        digest: str,
        size: int,
        source: RegistryClient,
        sourceRepository: str,
        progress: Progress | None = None,
    ) -> None:
        """
        Copy a blob of C{size} bytes from a repository of another registry,
        streamed from its download into the upload with no file between,
        its digest checked before its last bytes are sent; on failure the
        upload is deleted and nothing is stored.
        """
        from ociklein.client._relay import relay

        await relay(
            source.transport,
            sourceRepository,
            self.transport,
            repository,
            digest,
            size,
            progress or Progress(),
            self.chunkSize,
        )

    async def pushBytes(self, repository: str, data: bytes) -> str:
        """
        Upload a small blob (a config, an annotation) from memory; its digest.
        """
        import io

        digest = digestOf(data)
        await upload(self.transport, repository, digest, len(data), io.BytesIO(data), None, self.chunkSize)
        return digest

    async def mountBlob(self, repository: str, digest: str, fromRepository: str) -> bool:
        """
        Link a blob of another repository of this registry into
        C{repository}; whether the registry did (else nothing changed).
        """
        location = await mount(self.transport, repository, digest, fromRepository)
        if location is None:
            return True
        response = await self.transport.request(
            "DELETE", location, scopes=(f"repository:{repository}:pull,push",)
        )
        await drain(response)
        return False

    # -- referrers -----------------------------------------------------------------

    async def referrers(
        self, repository: str, digest: str, artifactType: str | None = None
    ) -> list[dict[str, Any]]:
        """
        The descriptors of the manifests whose C{subject} is C{digest}, of
        one C{artifactType} if given; from the referrers API, or from the
        spec's fallback tag where a registry has no such API.
        """
        path = f"/v2/{repository}/referrers/{digest}"
        if artifactType:
            path += "?" + urlencode({"artifactType": artifactType})
        response = await self.transport.request(
            "GET", path, scopes=(f"repository:{repository}:pull",), headers={"Accept": OCI_INDEX}
        )
        if response.code == 200:
            document = json.loads(await readSmall(response))
            filtered = _header(response, "OCI-Filters-Applied") is not None
        elif response.code == 404:
            await drain(response)
            try:
                document = (await self.getManifest(repository, referrersTag(digest))).document()
            except RegistryError as e:
                if e.status == 404:
                    return []
                raise
            filtered = False
        else:
            raise await raiseFor(response)
        manifests: Sequence[dict[str, Any]] = document.get("manifests") or []
        if artifactType and not filtered:
            manifests = [m for m in manifests if m.get("artifactType") == artifactType]
        return list(manifests)


__all__ = ["ACCEPT", "Manifest", "RegistryClient", "digestOf", "hashFile", "newHasher"]
