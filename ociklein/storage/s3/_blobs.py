"""
Blobs, links and upload sessions in a bucket, and their maintenance.

A blob is one object named by its digest.  Nothing about blobs, links or
listings is cached: a collector on another node may remove a blob, and
every node must then answer it as unknown.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ociklein.interfaces import (
    IBlobMaintenance,
    IBlobReader,
    IBlobStore,
    ICollectorLease,
    IHeldLease,
    IUpload,
    StoredItem,
)
from ociklein.storage._checks import checkRepository
from ociklein.storage.s3._client import S3Client, allOf
from ociklein.storage.s3._keys import UPLOAD_ID
from ociklein.storage.s3._lease import LEASE_SECONDS, HeldLease, LeaseObject
from ociklein.storage.s3._uploads import S3Upload, SessionInfo
from ociklein.storage.s3._uses import Uses, digestFromKey, touchAll

_log = Logger()

DEFAULT_PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part but the last
MAX_PART_SIZE = 64 * 1024 * 1024
_SESSIONS = 16


_CHUNK = 1024 * 1024
DEFAULT_READ_AHEAD = 4 * _CHUNK
_TRIP = 32 * _CHUNK


class _Chunks:
    """
    Bytes read ahead, as the chunks they were read in: taking a whole
    chunk (what a download asks for, 1 MiB at a time) copies nothing.
    """

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def append(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._length += len(data)

    def take(self, n: int) -> bytes:
        """
        The first C{n} bytes (or all there are), removed.
        """
        parts = []
        while n > 0 and self._chunks:
            first = self._chunks[0]
            if len(first) <= n:
                parts.append(self._chunks.popleft())
            else:
                parts.append(first[:n])
                self._chunks[0] = first[n:]
            n -= len(parts[-1])
            self._length -= len(parts[-1])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def clear(self) -> None:
        self._chunks.clear()
        self._length = 0


@implementer(IBlobReader)
class _S3Reader:
    """
    A blob read through one streaming GET from the first offset asked: a
    download reads on from where it stopped, and only a jump (a second
    Range) opens another GET.

    A thread of the S3 pool streams the GET's body, handing each 1 MiB
    chunk to the reactor as it arrives, for as long as what the client has
    not yet taken stays under C{readAhead} (or under what a waiting read
    asks, if more): a client faster than the store never waits for a trip
    to the pool to end, and one slower stops the streaming, releasing the
    thread, until half the read-ahead is taken.  Memory is bounded by
    C{readAhead} plus a chunk plus what a client asked for, per reader.
    A trip brings at most L{_TRIP} bytes, so that a fast download takes
    its turn in the pool with the other work queued there.
    """

    def __init__(self, client: S3Client, key: str, size: int, readAhead: int = DEFAULT_READ_AHEAD) -> None:
        self._client = client
        self._key = key
        self.size = size
        self._readAhead = readAhead
        # The pool thread's: the GET's body, and the offset of its next byte.
        self._body: Any = None
        self._bodyAt = 0
        # The reactor's: bytes arrived, from self._bufferAt on; the thread
        # reads self._bufferAt and self._window to know when to stop.
        self._buffer = _Chunks()
        self._bufferAt = 0
        self._window = readAhead
        self._stop = False
        self._fetching: Deferred[None] | None = None
        self._failure: Failure | None = None
        self._waiting: Deferred[None] | None = None
        self._closed = False
        self._reading = False

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        if offset < 0:
            return fail(ValueError(f"negative offset {offset}"))
        want = min(length, self.size - offset)
        if self._closed or want <= 0:
            return succeed(b"")
        if self._reading:
            return fail(RuntimeError("a read is already running"))
        if offset == self._bufferAt and len(self._buffer) >= want:
            # What a download mostly sees: the data is there already.
            data = self._buffer.take(want)
            self._bufferAt += len(data)
            self._fill()
            return succeed(data)
        self._reading = True

        def done(result: object) -> object:
            self._reading = False
            return result

        return Deferred.fromCoroutine(self._read(offset, want)).addBoth(done)

    async def _read(self, offset: int, want: int) -> bytes:
        if offset != self._bufferAt:
            # A jump: what was read ahead is of no use.  Stop the streaming
            # at its next chunk, then start over there.
            self._stop = True
            while self._fetching is not None:
                await self._progress()
            self._stop = False
            self._buffer.clear()
            self._bufferAt = offset
            self._failure = None
        while len(self._buffer) < want and not self._closed:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                failure.raiseException()
            self._fill(want)
            await self._progress()
        self._window = self._readAhead
        data = self._buffer.take(want)
        self._bufferAt += len(data)
        self._fill()
        return data

    def _progress(self) -> Deferred[None]:
        """
        Fires when a chunk arrives or the streaming stops (at once if it
        is not running).
        """
        if self._fetching is None:
            return succeed(None)
        if self._waiting is None:
            self._waiting = Deferred()
        return self._waiting

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def _arrived(self, chunk: bytes) -> None:
        """
        A chunk streamed (called in the reactor thread).
        """
        if not self._closed and not self._stop:
            self._buffer.append(chunk)
        self._wake()

    def _fill(self, need: int = 0) -> None:
        """
        Start streaming if it is not running: for what a waiting client
        needs, else once no more than half the read-ahead is left.
        """
        end = self._bufferAt + len(self._buffer)
        if self._closed or self._fetching is not None or self._failure is not None or end >= self.size:
            return
        buffered = len(self._buffer)
        if buffered < need:
            self._window = max(self._readAhead, need)
        elif not buffered <= self._readAhead // 2 or buffered >= self._readAhead:
            return

        def failed(failure: Failure) -> None:
            self._failure = failure

        def finished(_: object) -> None:
            self._fetching = None
            if self._closed:
                self._drop()
            elif self._failure is None and not self._stop:
                self._fill()
            self._wake()

        fetching = self._client.run(self._stream, end)
        self._fetching = fetching.addErrback(failed).addBoth(finished)

    def _stream(self, offset: int) -> None:
        """
        Stream from C{offset} (blocking, in the pool) while the client's
        backlog is under the window, at most L{_TRIP} bytes this trip.
        """
        if self._body is None or self._bodyAt != offset:
            self._drop()
            response = self._client.s3.get_object(
                Bucket=self._client.bucket, Key=self._key, Range=f"bytes={offset}-{self.size - 1}"
            )
            self._body = response["Body"]
            self._bodyAt = offset
        reactor, tripEnd = self._client.reactor, offset + _TRIP
        try:
            while (
                not self._stop
                and not self._closed
                and self._bodyAt < min(self.size, tripEnd)
                and self._bodyAt - self._bufferAt < self._window
            ):
                chunk = self._body.read(min(_CHUNK, self.size - self._bodyAt))
                if not chunk:
                    break
                self._bodyAt += len(chunk)
                reactor.callFromThread(self._arrived, chunk)
        except BaseException:
            self._drop()  # a broken stream: the next trip opens another GET
            raise

    def _drop(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()

    def close(self) -> None:
        self._closed = True
        self._buffer.clear()
        if self._fetching is None:
            self._drop()


@implementer(IBlobStore, IBlobMaintenance, ICollectorLease)
class S3BlobStore:
    """
    Blobs under C{blobs/}, links under C{repositories/}, upload sessions
    under C{uploads/} of the client's prefix; sessions expire C{uploadTTL}
    seconds (by C{clock}, which every node must agree on) after they start.
    """

    def __init__(
        self,
        client: S3Client,
        clock: IReactorTime | None = None,
        uploadTTL: float = 86400.0,
        partSize: int = DEFAULT_PART_SIZE,
        leaseSeconds: float = LEASE_SECONDS,
        readAhead: int = DEFAULT_READ_AHEAD,
    ) -> None:
        if not MIN_PART_SIZE <= partSize <= MAX_PART_SIZE:
            raise ValueError(f"part size must be from {MIN_PART_SIZE} to {MAX_PART_SIZE} bytes")
        self._client = client
        self._keys = client.keys
        self._clock = clock if clock is not None else cast(IReactorTime, client.reactor)
        self._ttl = uploadTTL
        self._partSize = partSize
        self._readAhead = readAhead
        self._uses = Uses(client)
        self._lease = LeaseObject(client, leaseSeconds)
        # Sessions this node wrote last, with their tail and running hash;
        # bounded, since each holds up to a part in memory.
        self._sessions: OrderedDict[str, S3Upload] = OrderedDict()
        # Parts being stored, across sessions (see L{S3Upload.write}).
        self._partsSending = 0

    @property
    def expiryInterval(self) -> float:
        """
        How often L{sweep} should run: often enough that a session outlives
        its TTL by at most half of it, and at least hourly.
        """
        return max(1.0, min(self._ttl / 2, 3600.0))

    def close(self) -> None:
        """
        Forget the sessions held in memory; they stay in the bucket.
        """
        self._sessions.clear()

    # -- blobs --------------------------------------------------------------

    def stat(self, digest: str) -> Deferred[int | None]:
        key = self._keys.blob(digest)

        def found(head: dict[str, Any] | None) -> int | None:
            return None if head is None else int(head["ContentLength"])

        return self._client.run(self._client.head, key).addCallback(found)

    def open(self, digest: str) -> Deferred[IBlobReader | None]:
        key = self._keys.blob(digest)

        def opened(size: int | None) -> IBlobReader | None:
            return None if size is None else _S3Reader(self._client, key, size, self._readAhead)

        return self.stat(digest).addCallback(opened)

    def link(self, repository: str, digest: str) -> Deferred[None]:
        """
        Write the link (again: that records a use of it), enter the
        repository among those with links and among the blob's holders,
        record a use of the blob.
        """
        client, keys = self._client, self._keys
        writes: list[Deferred[Any]] = [
            client.run(client.put, keys.link(repository, digest), b""),
            client.run(client.put, keys.linkedEntry(repository), b""),
            client.run(client.put, keys.holder(digest, repository), b""),
            client.run(self._uses.recordUse, keys.blob(digest)),
        ]
        return allOf(writes).addCallback(lambda _: None)

    def unlink(self, repository: str, digest: str) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._unlink(repository, digest))

    async def _unlink(self, repository: str, digest: str) -> bool:
        key = self._keys.link(repository, digest)
        if await self._client.run(self._client.head, key) is None:
            return False
        await self._client.run(self._client.deleteMany, [key, self._keys.holder(digest, repository)])
        return True

    def repositoriesHolding(self, digest: str, last: str | None, limit: int) -> Deferred[list[str]]:
        """
        One page of the C{holders/<digest>/} index that L{link} and
        L{unlink} keep, in the catalog's encoding.
        """
        return self._client.run(self._client.listNames, self._keys.holders(digest), last, limit)

    def isLinked(self, repository: str, digest: str) -> Deferred[bool]:
        key = self._keys.link(repository, digest)
        linked: Deferred[Any] = self._client.run(self._client.head, key)
        sized: Deferred[Any] = self.stat(digest)
        return allOf([linked, sized]).addCallback(lambda both: both[0] is not None and both[1] is not None)

    # -- upload sessions ----------------------------------------------------

    def startUpload(self, repository: str, resumable: bool = True) -> Deferred[IUpload]:
        checkRepository(repository)
        uploadId = secrets.token_urlsafe(24)
        info = SessionInfo(repository, self._clock.seconds(), self._partSize, resumable)
        upload = S3Upload(self, uploadId, info, b"", hashlib.sha256(), stored=resumable)
        if not resumable:
            # Nothing in the bucket until a first part fills up: a small
            # monolithic push costs no session objects at all.
            return succeed(upload)
        self._remember(upload)
        written = self._client.run(self._client.put, self._keys.uploadInfo(uploadId), info.encode())
        return written.addCallback(lambda _: upload)

    def getUpload(self, uploadId: str) -> Deferred[IUpload | None]:
        if not isinstance(uploadId, str) or UPLOAD_ID.fullmatch(uploadId) is None:
            return succeed(None)
        return Deferred.fromCoroutine(self._getUpload(uploadId))

    async def _getUpload(self, uploadId: str) -> IUpload | None:
        client = self._client
        found = await client.run(client.get, self._keys.uploadInfo(uploadId))
        info = None if found is None else SessionInfo.decode(found[0])
        cached = self._sessions.get(uploadId)
        if info is None or not info.resumable:
            if cached is not None:
                self._forget(cached)
            return None
        if self._clock.seconds() >= info.started + self._ttl:
            if cached is not None:
                self._forget(cached)
            await client.run(self._removeSession, uploadId)
            return None
        # This node's view holds the tail and the running hash; it is right
        # unless another node wrote the session since this one last did.
        if cached is not None and (cached._busy or cached._info.encode() == info.encode()):
            self._sessions.move_to_end(uploadId)
            return cached
        tail = b""
        if info.tail is not None:
            got = await client.run(client.get, info.tail)
            tail = b"" if got is None else got[0]
        if len(tail) != info.size - info.parts * info.partSize:
            _log.warn("upload {uploadId}: tail does not match its info", uploadId=uploadId)
            return None
        upload = S3Upload(self, uploadId, info, tail, hashlib.sha256() if info.size == 0 else None, True)
        self._remember(upload)
        return upload

    def _remember(self, upload: S3Upload) -> None:
        self._sessions[upload.uploadId] = upload
        self._sessions.move_to_end(upload.uploadId)
        if len(self._sessions) > _SESSIONS:
            self._sessions.popitem(last=False)

    def _forget(self, upload: S3Upload) -> None:
        if self._sessions.get(upload.uploadId) is upload:
            del self._sessions[upload.uploadId]

    def _removeSession(self, uploadId: str) -> bool:
        """
        Delete every object of a session, C{info} last: a failure half way
        leaves a session that expiry still finds.  L{False} if none was
        left (some stores list an emptied "directory" for a while).
        (Blocking.)
        """
        info = self._keys.uploadInfo(uploadId)
        keys = [e["Key"] for e in self._client.listObjects(self._keys.upload(uploadId))]
        self._client.deleteMany([k for k in keys if k != info])
        if info in keys:
            self._client.delete(info)
        return bool(keys)

    # -- maintenance --------------------------------------------------------

    def now(self) -> Deferred[float]:
        return self._client.run(self._uses.now)

    def listBlobs(self, last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        start = None if last is None else self._keys.blob(last)
        return self._client.run(self._uses.listWithUses, self._keys.blobs, start, limit, digestFromKey)

    def listLinkedRepositories(self, last: str | None, limit: int) -> Deferred[list[str]]:
        return self._client.run(self._client.listNames, self._keys.linked, last, limit)

    def listLinks(self, repository: str, last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        prefix = self._keys.links(repository)
        start = None if last is None else self._keys.link(repository, last)
        return self._client.run(self._uses.listWithUses, prefix, start, limit, digestFromKey)

    def touch(self, repository: str, digests: Sequence[str]) -> Deferred[list[str]]:
        keys = self._keys
        pairs = [(d, keys.link(repository, d), keys.blob(d)) for d in digests]

        def touched(results: list[bool]) -> list[str]:
            return [
                d for (d, _, _), a, b in zip(pairs, results[::2], results[1::2], strict=True) if not (a and b)
            ]

        flat = [key for _, link, blob in pairs for key in (link, blob)]
        return Deferred.fromCoroutine(touchAll(self._client, self._uses, flat)).addCallback(touched)

    def deleteLink(self, repository: str, digest: str, before: float) -> Deferred[bool]:
        key, holder = self._keys.link(repository, digest), self._keys.holder(digest, repository)
        return self._lease.fencedDelete(key, before, lambda head: [holder])

    def deleteBlob(self, digest: str, before: float) -> Deferred[bool]:
        key = self._keys.blob(digest)
        return self._lease.fencedDelete(key, before, lambda head: [])

    def quarantineBlob(self, digest: str) -> Deferred[bool]:
        key = self._keys.blob(digest)
        return self._client.run(self._uses.quarantine, key, self._clock.seconds())

    def acquireCollectorLease(self, owner: str) -> Deferred[IHeldLease]:
        """
        Take C{collector-lease} (docs/storage.md, "Maintenance"): one
        collection at a time per bucket and prefix.
        """

        def held(etag: str) -> IHeldLease:
            return HeldLease(self._client, self._lease, owner, etag)

        return self._client.run(self._lease.acquire, owner).addCallback(held)

    def storedBytes(self) -> Deferred[int]:
        return self._client.run(self._uses.storedBytes)

    # -- expiry -------------------------------------------------------------

    def expireUploads(self) -> Deferred[list[str]]:
        """
        Remove expired sessions, and abandoned multipart uploads of blobs,
        now; fires with the ids of the sessions removed.
        """
        return self._client.run(self._expire, self._clock.seconds())

    def _expire(self, now: float) -> list[str]:
        client, removed = self._client, []
        for prefix in client.listPrefixes(self._keys.uploads):
            uploadId = prefix[len(self._keys.uploads) :].rstrip("/")
            if UPLOAD_ID.fullmatch(uploadId) is None:
                continue
            found = client.get(self._keys.uploadInfo(uploadId))
            info = None if found is None else SessionInfo.decode(found[0])
            if (info is None or now >= info.started + self._ttl) and self._removeSession(uploadId):
                removed.append(uploadId)
        # A node killed while assembling a blob leaves its multipart upload.
        paginator = client.s3.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=client.bucket, Prefix=self._keys.blobs):
            for multipart in page.get("Uploads", []):
                if now >= multipart["Initiated"].timestamp() + self._ttl:
                    client.s3.abort_multipart_upload(
                        Bucket=client.bucket, Key=multipart["Key"], UploadId=multipart["UploadId"]
                    )
        return removed

    def sweep(self) -> Deferred[None]:
        """
        L{expireUploads}, with a failure logged rather than raised: what a
        L{twisted.application.internet.TimerService} runs every
        L{expiryInterval} seconds (on every node: sweeping is idempotent).
        """

        def logged(failure: Any) -> None:
            _log.failure("Expiring upload sessions failed", failure)

        return self.expireUploads().addCallbacks(lambda _: None, logged)
