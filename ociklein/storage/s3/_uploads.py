"""
Upload sessions kept in the bucket, so that any node can continue a session
another node started.

A session is a "directory" C{uploads/<id>/} holding:

- C{info}: JSON with the repository, start time, part size, the number of
  full parts, the size so far and the key of the tail;
- C{part-00001}, …: full parts of exactly C{partSize} bytes, written as
  they fill up while data streams in;
- C{tail-<size>}: the bytes after the last full part (fewer than a part),
  written when a PATCH ends, so the next PATCH, on any node, starts from it.

The node writing a session hashes the data as it arrives.  A node that
continues a session another node wrote has no hash of it, and reads the
session's parts once, at the digest check before commit.  Commit turns the
parts into the blob by server-side copies (C{UploadPartCopy}) into one
multipart upload: the data never comes back through the node.
"""

from __future__ import annotations

import errno
import hashlib
import json
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredSemaphore, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ociklein.interfaces import IDigestFirst, IUpload
from ociklein.storage._checks import checkDigest
from ociklein.storage.s3._client import allOf

_log = Logger()

if TYPE_CHECKING:
    from hashlib import _Hash

    from ociklein.storage.s3._blobs import S3BlobStore

_ALGORITHMS = ("sha256", "sha512")
_HASH_READ = 1024 * 1024
# Part copies a commit runs at once: the store copies on several cores
# while the node waits, without taking the whole pool.
_COPIES = 4
# Parts a node stores while their sessions fill the next ones: each costs a
# part of memory beside the one filling (4 clients pushing at once with one
# part each reach about 140 MB of RSS; see tests/test_s3_nodes.py).
SPARE_PARTS = 1


class SessionInfo:
    """
    The C{info} object of a session: what another node needs to continue it.
    """

    def __init__(
        self,
        repository: str,
        started: float,
        partSize: int,
        resumable: bool = True,
        parts: int = 0,
        size: int = 0,
        tail: str | None = None,
    ) -> None:
        self.repository = repository
        self.started = started
        self.partSize = partSize
        self.resumable = resumable
        self.parts = parts
        self.size = size
        self.tail = tail

    def encode(self) -> bytes:
        return json.dumps(vars(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> SessionInfo | None:
        """
        The info in C{data}, or L{None} if it is damaged.
        """
        try:
            fields = json.loads(data)
            info = cls(**fields)
        except (ValueError, TypeError):
            return None
        if not (
            isinstance(info.repository, str)
            and isinstance(info.started, int | float)
            and isinstance(info.partSize, int)
            and info.partSize > 0
            and isinstance(info.parts, int)
            and isinstance(info.size, int)
            and 0 <= info.parts * info.partSize <= info.size
            and (info.tail is None or isinstance(info.tail, str))
        ):
            return None
        return info


@implementer(IUpload, IDigestFirst)
class S3Upload:
    """
    One session as this node sees it: the parts in the bucket, the tail in
    memory (at most one part), and the running sha256 when this node has
    seen every byte.
    """

    def __init__(
        self,
        store: S3BlobStore,
        uploadId: str,
        info: SessionInfo,
        tail: bytes,
        sha256: _Hash | None,
        stored: bool,
    ) -> None:
        self._store = store
        self._client = store._client
        self._keys = store._client.keys
        self.uploadId = uploadId
        self.repository = info.repository
        self._info = info  # as last written to the bucket
        self.size = info.size
        self._parts = info.parts
        self._partSize = info.partSize
        self._buffer = bytearray(tail)
        self._sha256 = sha256
        # Whether anything of this session may be in the bucket.
        self._stored = stored
        self._busy = False
        self._ended = False
        self._error: Exception | None = None
        # The part being stored while the next one fills, and its failure.
        self._sending: Deferred[None] | None = None
        self._sendFailure: Failure | None = None
        # With a digest told first: the blob's key, and the multipart upload
        # of it that the parts go to (the tail joins it at the commit).
        self._direct: str | None = None
        self._multipart: str | None = None
        self._etags: list[str] = []

    def _refuse(self) -> Exception | None:
        if self._error is not None:
            return self._error
        if self._ended:
            return ValueError(f"upload {self.uploadId} has ended")
        if self._busy:
            return BlockingIOError(errno.EAGAIN, f"upload {self.uploadId} is being written")
        return None

    def _guarded(self, d: Deferred[Any]) -> Deferred[Any]:
        """
        Mark the session busy until C{d} fires; a failure leaves it unusable
        on this node (its memory no longer matches the bucket).
        """
        self._busy = True

        def done(result: object) -> object:
            self._busy = False
            if isinstance(result, Failure):
                self._error = result.value if isinstance(result.value, Exception) else None
                self._store._forget(self)
            return result

        return d.addBoth(done)

    def expectDigest(self, digest: str) -> None:
        """
        Send the parts straight to a multipart upload of the blob, which
        the commit completes: the data is written once in the store, not
        once as parts and again by the copies that assemble them.  Only
        for sha256, which this node then hashes as the data arrives.
        """
        if (
            digest.startswith("sha256:")
            and self.size == 0
            and self._sha256 is not None
            and self._refuse() is None
            and self._direct is None
        ):
            self._direct = self._keys.blob(digest)

    def write(self, data: bytes) -> Deferred[None]:
        """
        Hash and stage C{data} in a thread; a part that fills up is sent
        to the bucket while the next one fills.  A write completes only
        once the part before the one it filled is stored: at most two
        parts per session in memory, and a client streaming faster than
        the store is slowed down, not buffered.
        """
        refused = self._refuse()
        if refused is not None:
            return fail(refused)
        return self._guarded(Deferred.fromCoroutine(self._write(data)))

    async def _write(self, data: bytes) -> None:
        parts = await self._client.run(self._absorb, data)
        self.size += len(data)
        for part in parts:
            await self._settled()
            self._send(part)
            if self._store._partsSending > SPARE_PARTS:
                # The node's memory holds no more parts: store this one
                # before taking more data, as the next would fill beside it.
                await self._settled()

    def _absorb(self, data: bytes) -> list[bytearray]:
        """
        Hash and append C{data}; cut off and return the parts it filled.
        """
        if self._sha256 is not None:
            self._sha256.update(data)
        self._buffer += data
        parts = []
        while len(self._buffer) >= self._partSize:
            # The buffer itself becomes the part (cut to size in place), not
            # a copy beside it.
            part, self._buffer = self._buffer, self._buffer[self._partSize :]
            del part[self._partSize :]
            parts.append(part)
        return parts

    def _send(self, part: bytearray) -> None:
        """
        Start storing C{part} as the next part; L{_settled} waits for it.
        """
        number = self._parts + 1
        store = self._store
        store._partsSending += 1

        def stored(_: None) -> None:
            self._parts = number

        def failed(failure: Failure) -> None:
            self._sendFailure = failure

        def sent(_: None) -> None:
            store._partsSending -= 1

        sending = self._client.run(self._storePart, number, part)
        self._sending = sending.addCallbacks(stored, failed).addCallback(sent)

    def _storePart(self, number: int, part: bytearray) -> None:
        if self._direct is not None:
            s3, bucket = self._client.s3, self._client.bucket
            if self._multipart is None:
                created = s3.create_multipart_upload(Bucket=bucket, Key=self._direct)
                self._multipart = created["UploadId"]
            sent = s3.upload_part(
                Bucket=bucket, Key=self._direct, UploadId=self._multipart, PartNumber=number, Body=part
            )
            self._etags.append(sent["ETag"])
            return
        if not self._stored:
            # A session no client can resume records itself before its
            # first part, so that expiry finds the part if we crash.
            self._client.put(self._keys.uploadInfo(self.uploadId), self._info.encode())
            self._stored = True
        self._putLarge(self._keys.uploadPart(self.uploadId, number), part)

    def _putLarge(self, key: str, body: bytearray) -> None:
        """
        Store up to a part through boto3, whose client signs no payload:
        not through a path meant for small objects.
        """
        self._client.s3.put_object(Bucket=self._client.bucket, Key=key, Body=body)

    async def _settled(self) -> None:
        """
        Wait for the part being sent, if any; raise its failure.
        """
        sending = self._sending
        if sending is not None:
            await sending
            self._sending = None
        failure, self._sendFailure = self._sendFailure, None
        if failure is not None:
            failure.raiseException()

    def flush(self) -> Deferred[None]:
        """
        Write the tail and the info, so any node continues from here.  A
        session no client can resume has no other node to tell.
        """
        if not self._info.resumable or self.size == self._info.size:
            return succeed(None)
        refused = self._refuse()
        if refused is not None:
            return fail(refused)
        if self._direct is not None:
            return fail(ValueError(f"upload {self.uploadId} expects its digest: it cannot be flushed"))
        return self._guarded(Deferred.fromCoroutine(self._flushAfterParts()))

    async def _flushAfterParts(self) -> None:
        await self._settled()
        await self._client.run(self._flush)

    def _flush(self) -> None:
        old = self._info.tail
        tail = self._keys.uploadTail(self.uploadId, self.size) if self._buffer else None
        if tail is not None:
            self._client.put(tail, self._buffer)
        info = SessionInfo(
            self.repository, self._info.started, self._partSize, True, self._parts, self.size, tail
        )
        self._client.put(self._keys.uploadInfo(self.uploadId), info.encode())
        self._info = info
        if old is not None and old != tail:
            self._client.delete(old)

    def digest(self, algorithm: str) -> Deferred[str]:
        if algorithm not in _ALGORITHMS:
            return fail(ValueError(f"unsupported digest algorithm {algorithm!r}"))
        if algorithm == "sha256" and self._sha256 is not None:
            return succeed(self._sha256.hexdigest())
        refused = self._refuse()
        if refused is not None:
            return fail(refused)
        size = self.size

        def hashed(result: _Hash) -> str:
            if algorithm == "sha256" and self.size == size and not self._ended:
                self._sha256 = result.copy()
            return result.hexdigest()

        return self._guarded(Deferred.fromCoroutine(self._rehashAfterParts(algorithm))).addCallback(hashed)

    async def _rehashAfterParts(self, algorithm: str) -> _Hash:
        await self._settled()
        return await self._client.run(self._rehash, algorithm)

    def _rehash(self, algorithm: str) -> _Hash:
        """
        Hash the session by reading its parts back: once per commit, on a
        node that did not see every byte arrive.
        """
        hashed = hashlib.new(algorithm)
        s3, bucket = self._client.s3, self._client.bucket
        for number in range(1, self._parts + 1):
            body = s3.get_object(Bucket=bucket, Key=self._keys.uploadPart(self.uploadId, number))["Body"]
            try:
                for chunk in body.iter_chunks(_HASH_READ):
                    hashed.update(chunk)
            finally:
                body.close()
        hashed.update(self._buffer)
        return hashed

    def commit(self, digest: str) -> Deferred[None]:
        checkDigest(digest)
        refused = self._refuse()
        if refused is not None:
            return fail(refused)
        self._end()
        return Deferred.fromCoroutine(self._publish(digest))

    async def _publish(self, digest: str) -> None:
        """
        Make the session the blob C{digest}, unless it is already stored
        (then the commit records a use of it), and remove the session.  A
        blob a collector is removing is stored again.
        """
        await self._settled()
        client, key = self._client, self._keys.blob(digest)
        if self._direct is not None and self._direct != key:
            raise ValueError(f"upload {self.uploadId} expected another digest than {digest}")
        if await client.run(self._isStored, key):
            await client.run(self._abortMultipart)
        elif self._multipart is not None:
            await client.run(self._completeMultipart)
        elif self._parts == 0:
            await client.run(self._putLarge, key, self._buffer)
        else:
            await self._assemble(key)
        await client.run(self._discard)

    def _completeMultipart(self) -> None:
        """
        Complete the multipart upload of the blob the parts went to, with
        the tail (possibly short, as only the last part may be) last.
        """
        s3, bucket = self._client.s3, self._client.bucket
        target = {"Bucket": bucket, "Key": self._direct, "UploadId": self._multipart}
        if self._buffer:
            sent = s3.upload_part(PartNumber=self._parts + 1, Body=self._buffer, **target)
            self._etags.append(sent["ETag"])
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(self._etags, 1)]
        s3.complete_multipart_upload(MultipartUpload={"Parts": parts}, **target)
        self._multipart = None

    def _abortMultipart(self) -> None:
        """
        Abort the multipart upload the parts went to, if any (blocking);
        expiry aborts it later if this fails.
        """
        multipart, self._multipart = self._multipart, None
        if multipart is not None:
            self._client.s3.abort_multipart_upload(
                Bucket=self._client.bucket, Key=self._direct, UploadId=multipart
            )

    def _isStored(self, key: str) -> bool:
        """
        Whether the blob is stored, recording a use of it if so (blocking).
        """
        return self._client.head(key) is not None and self._store._uses.touch(key)

    async def _assemble(self, key: str) -> None:
        """
        One multipart upload of the blob: each full part copied server-side
        (L{_COPIES} at a time), the tail (possibly short, as only the last
        part may be) sent along.
        """
        client = self._client
        s3, bucket = client.s3, client.bucket
        created = await client.run(s3.create_multipart_upload, Bucket=bucket, Key=key)
        multipart = created["UploadId"]
        target = {"Bucket": bucket, "Key": key, "UploadId": multipart}
        try:
            limit = DeferredSemaphore(_COPIES)

            def copy(number: int) -> Deferred[str]:
                source = {"Bucket": bucket, "Key": self._keys.uploadPart(self.uploadId, number)}
                copied = client.run(s3.upload_part_copy, PartNumber=number, CopySource=source, **target)
                return copied.addCallback(lambda r: r["CopyPartResult"]["ETag"])

            def send(number: int) -> Deferred[str]:
                sent = client.run(s3.upload_part, PartNumber=number, Body=self._buffer, **target)
                return sent.addCallback(lambda r: r["ETag"])

            calls = [limit.run(copy, number) for number in range(1, self._parts + 1)]
            if self._buffer:
                calls.append(limit.run(send, self._parts + 1))
            etags = await allOf(calls)
            parts = [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, 1)]
            await client.run(s3.complete_multipart_upload, MultipartUpload={"Parts": parts}, **target)
        except BaseException:
            try:
                await client.run(s3.abort_multipart_upload, **target)
            except Exception:
                pass  # expiry aborts it later
            raise

    def close(self) -> None:
        """
        Nothing to release: a session holds no descriptor or lock, only its
        tail and running hash in this node's memory, which the store bounds.

        A session told its digest whose request ended without a commit or
        an abort (a client gone mid-body) went on into the blob's multipart
        upload, not into the session: this node forgets it, so that the
        session continues from what the bucket holds, and aborts that
        upload.
        """
        if self._direct is None or self._ended:
            return
        self._error = ValueError(f"upload {self.uploadId} was left unfinished")
        self._store._forget(self)

        def aborted(_: None) -> Deferred[None]:
            return self._client.run(self._abortMultipart)

        def logged(failure: Failure) -> None:
            _log.failure(
                "upload {uploadId}: aborting its blob's upload failed", failure, uploadId=self.uploadId
            )

        self._settledQuietly().addCallback(aborted).addErrback(logged)

    def _settledQuietly(self) -> Deferred[None]:
        """
        L{_settled}, its failure ignored: for ending the session anyway.
        """
        return Deferred.fromCoroutine(self._settled()).addErrback(lambda _: None)

    def abort(self) -> Deferred[None]:
        if self._ended and not self._stored and self._sending is None and self._multipart is None:
            return succeed(None)
        self._end()
        return Deferred.fromCoroutine(self._abort())

    async def _abort(self) -> None:
        await self._settledQuietly()  # whatever was stored is removed all the same
        await self._client.run(self._abortMultipart)
        await self._client.run(self._discard)

    def _end(self) -> None:
        self._ended = True
        self._sha256 = None
        self._store._forget(self)

    def _discard(self) -> None:
        self._buffer = bytearray()
        if self._stored:
            self._store._removeSession(self.uploadId)
            self._stored = False
