"""
Blobs streamed between a registry and files: downloads written as they
arrive, hashed on the way and resumed with C{Range} after a broken
connection; uploads read from a file, monolithic or in chunks, resumed from
the offset the registry reports after a broken connection.  No blob is ever
held in memory.
"""

from __future__ import annotations

import hashlib
import re
from typing import IO, Any
from urllib.parse import urlencode

import treq
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IResponse

from ociklein.client._errors import RegistryError
from ociklein.client._progress import Progress
from ociklein.client._transport import NETWORK_ERRORS, Transport, _describe, _header, drain, raiseFor

# Blobs up to this size go up in one request, bigger ones in chunks of it.
DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
# How many times one blob transfer resumes after a broken connection.
MAX_RESUMES = 8
_READ_SIZE = 256 * 1024
_RANGE = re.compile(r"(?:bytes[= ])?(\d+)-(\d+)")


def newHasher(digest: str) -> Any:
    algorithm = digest.partition(":")[0]
    if algorithm not in ("sha256", "sha512"):
        raise RegistryError("DIGEST_INVALID", f"unsupported digest algorithm in {digest}")
    return hashlib.new(algorithm)


class _Slice:
    """
    The bytes C{[start, start + length)} of an open file, as a file of their
    own for L{FileBodyProducer}, reporting each read; closing it leaves the
    file open.
    """

    def __init__(self, f: IO[bytes], start: int, length: int, onRead: Any) -> None:
        self._file = f
        self._start = start
        self._length = length
        self._position = 0
        self._onRead = onRead

    def read(self, n: int = -1) -> bytes:
        left = self._length - self._position
        if n < 0 or n > left:
            n = left
        self._file.seek(self._start + self._position)
        data = self._file.read(n)
        self._position += len(data)
        self._onRead(self._start + self._position)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self._length}[whence]
        self._position = max(0, min(self._length, base + offset))
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        pass


def _body(f: IO[bytes], start: int, length: int, onRead: Any) -> Any:
    return lambda: FileBodyProducer(_Slice(f, start, length, onRead), readSize=_READ_SIZE)


def _withDigest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + urlencode({"digest": digest})


async def download(
    transport: Transport,
    repository: str,
    digest: str,
    sink: IO[bytes],
    size: int | None = None,
    progress: Progress | None = None,
) -> int:
    """
    Write blob C{digest} to C{sink} (at its start), verifying its digest;
    resume with a C{Range} request when the connection breaks.  Its size.
    """
    progress = progress or Progress()
    scopes = (f"repository:{repository}:pull",)
    hasher = newHasher(digest)
    done = 0
    resumes = 0
    sink.seek(0)
    sink.truncate()

    def write(data: bytes) -> None:
        nonlocal done
        sink.write(data)
        hasher.update(data)
        done += len(data)
        progress.advanced(digest, done)

    while True:
        headers = {"Range": f"bytes={done}-"} if done else {}
        response = await transport.request(
            "GET", f"/v2/{repository}/blobs/{digest}", scopes=scopes, headers=headers
        )
        if done and response.code == 200:
            # The registry ignored the range: start again.
            sink.seek(0)
            sink.truncate()
            hasher = newHasher(digest)
            done = 0
            progress.advanced(digest, 0)
        elif response.code == 206:
            start = _rangeStart(response)
            if start != done:
                await drain(response)
                raise RegistryError("RANGE_INVALID", f"asked for bytes from {done}, got {start}")
        elif response.code != 200:
            raise await raiseFor(response)
        if size is None and response.code == 200 and isinstance(response.length, int):
            size = response.length
        try:
            await treq.collect(response, write)
        except NETWORK_ERRORS as e:
            resumes += 1
            if resumes > MAX_RESUMES:
                raise RegistryError("CONNECTION_FAILED", f"{digest}: {_describe(e)}") from e
            continue
        if size is not None and done < size:
            # A body without a length ended early.
            resumes += 1
            if resumes > MAX_RESUMES:
                raise RegistryError(
                    "CONNECTION_FAILED", f"{digest}: the answer ended at byte {done} of {size}"
                )
            continue
        break
    actual = f"{digest.partition(':')[0]}:{hasher.hexdigest()}"
    if actual != digest:
        sink.truncate(0)
        raise RegistryError("DIGEST_MISMATCH", f"{repository}@{digest}: the registry sent {actual}")
    sink.flush()
    return done


def _rangeStart(response: IResponse) -> int | None:
    value = _header(response, "Content-Range") or ""
    match = _RANGE.search(value)
    return int(match.group(1)) if match else None


async def mount(transport: Transport, repository: str, digest: str, source: str) -> str | None:
    """
    Ask the registry to link blob C{digest} from repository C{source}: L{None}
    when it did, else the upload session it opened instead.
    """
    scopes = (f"repository:{repository}:pull,push", f"repository:{source}:pull")
    query = urlencode({"mount": digest, "from": source})
    response = await transport.request(
        "POST", f"/v2/{repository}/blobs/uploads/?{query}", scopes=scopes, idempotent=True
    )
    if response.code == 201:
        await drain(response)
        return None
    if response.code == 202:
        return await _location(response)
    raise await raiseFor(response)


async def _location(response: IResponse) -> str:
    location = _header(response, "Location")
    await drain(response)
    if not location:
        raise RegistryError("BLOB_UPLOAD_INVALID", "the registry gave no upload Location")
    return location


async def startUpload(transport: Transport, repository: str) -> str:
    """
    Open an upload session; its location.
    """
    response = await transport.request(
        "POST",
        f"/v2/{repository}/blobs/uploads/",
        scopes=(f"repository:{repository}:pull,push",),
        idempotent=True,
    )
    if response.code != 202:
        raise await raiseFor(response)
    return await _location(response)


async def _uploadStatus(transport: Transport, repository: str, location: str) -> tuple[str, int]:
    """
    Where an upload session stands: its location and how many bytes it
    holds.  A session the registry cannot go on with (Distribution's,
    after a partial chunk) is replaced by a new one, from byte 0.
    """
    response = await transport.request("GET", location, scopes=(f"repository:{repository}:pull,push",))
    if response.code != 204:
        error = await raiseFor(response)
        if error.code not in ("BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN"):
            raise error
        return await startUpload(transport, repository), 0
    match = _RANGE.search(_header(response, "Range") or "")
    location = _header(response, "Location") or location
    await drain(response)
    # "0-0" is both one byte and none: sending that byte again is safe.
    offset = int(match.group(2)) + 1 if match and match.group(2) != "0" else 0
    return location, offset


async def upload(
    transport: Transport,
    repository: str,
    digest: str,
    size: int,
    source: IO[bytes],
    progress: Progress | None = None,
    chunkSize: int = DEFAULT_CHUNK_SIZE,
    location: str | None = None,
) -> None:
    """
    Upload C{size} bytes of C{source} as blob C{digest}: in one request when
    it fits in C{chunkSize}, else in chunks; after a broken connection, go
    on from the offset the registry reports instead of starting over.
    """
    progress = progress or Progress()
    scopes = (f"repository:{repository}:pull,push",)
    if location is None:
        location = await startUpload(transport, repository)

    def onRead(position: int) -> None:
        progress.advanced(digest, position)

    offset = 0
    resumes = 0
    headers = {"Content-Type": "application/octet-stream"}
    if size <= chunkSize:
        try:
            response = await transport.request(
                "PUT",
                _withDigest(location, digest),
                scopes=scopes,
                headers=headers,
                body=_body(source, 0, size, onRead),
                idempotent=False,
            )
        except RegistryError as e:
            if e.code != "CONNECTION_FAILED":
                raise
            resumes += 1
            location, offset = await _uploadStatus(transport, repository, location)
        else:
            if response.code != 201:
                raise await raiseFor(response)
            await drain(response)
            return
    while offset < size:
        end = min(offset + chunkSize, size)
        try:
            response = await transport.request(
                "PATCH",
                location,
                scopes=scopes,
                headers={**headers, "Content-Range": f"{offset}-{end - 1}"},
                body=_body(source, offset, end - offset, onRead),
                idempotent=False,
            )
        except RegistryError as e:
            if e.code != "CONNECTION_FAILED" or resumes >= MAX_RESUMES:
                raise
            resumes += 1
            await transport.pause(resumes)
            location, offset = await _uploadStatus(transport, repository, location)
            continue
        if (response.code == 416 or response.code >= 500) and resumes < MAX_RESUMES:
            # The registry holds other bytes than we thought, or is still
            # busy with the broken request: wait a little, then ask it.
            await drain(response)
            resumes += 1
            await transport.pause(resumes)
            location, offset = await _uploadStatus(transport, repository, location)
            continue
        if response.code != 202:
            raise await raiseFor(response)
        match = _RANGE.search(_header(response, "Range") or "")
        location = await _location(response)
        offset = int(match.group(2)) + 1 if match else end
    await finishUpload(transport, repository, location, digest)


async def finishUpload(transport: Transport, repository: str, location: str, digest: str) -> None:
    """
    Commit an upload session holding every byte of blob C{digest}.
    """
    response = await transport.request(
        "PUT",
        _withDigest(location, digest),
        scopes=(f"repository:{repository}:pull,push",),
        headers={"Content-Type": "application/octet-stream"},
        body=lambda: b"",
        idempotent=True,
    )
    if response.code != 201:
        raise await raiseFor(response)
    await drain(response)
