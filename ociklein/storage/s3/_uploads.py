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

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from ociklein.interfaces import IUpload
from ociklein.storage._checks import checkDigest

if TYPE_CHECKING:
    from hashlib import _Hash

    from ociklein.storage.s3._blobs import S3BlobStore

_ALGORITHMS = ("sha256", "sha512")
_HASH_READ = 1024 * 1024


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


@implementer(IUpload)
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

    def write(self, data: bytes) -> Deferred[None]:
        """
        Hash and stage C{data} in a thread; every part that fills up is
        written to the bucket before the write completes, so a client
        streaming faster than the store is slowed down, not buffered.
        """
        refused = self._refuse()
        if refused is not None:
            return fail(refused)

        def grown(_: None) -> None:
            self.size += len(data)

        return self._guarded(self._client.run(self._absorb, data)).addCallback(grown)

    def _absorb(self, data: bytes) -> None:
        if self._sha256 is not None:
            self._sha256.update(data)
        self._buffer += data
        while len(self._buffer) >= self._partSize:
            if not self._stored:
                # A session no client can resume records itself before its
                # first part, so that expiry finds the part if we crash.
                self._client.put(self._keys.uploadInfo(self.uploadId), self._info.encode())
                self._stored = True
            # The buffer itself becomes the part (cut to size in place): one
            # part in memory per session, not a copy beside it.
            part, self._buffer = self._buffer, self._buffer[self._partSize :]
            del part[self._partSize :]
            self._client.put(self._keys.uploadPart(self.uploadId, self._parts + 1), part)
            self._parts += 1

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
        return self._guarded(self._client.run(self._flush))

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

        return self._guarded(self._client.run(self._rehash, algorithm)).addCallback(hashed)

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
        return self._client.run(self._publish, digest)

    def _publish(self, digest: str) -> None:
        """
        Make the session the blob C{digest}, unless it is already stored
        (then the commit records a use of it), and remove the session.  A
        blob a collector is removing is stored again.
        """
        client, key = self._client, self._keys.blob(digest)
        if client.head(key) is None or not self._store._uses.touch(key):
            if self._parts == 0:
                client.put(key, self._buffer)
            else:
                self._assemble(key)
        self._discard()

    def _assemble(self, key: str) -> None:
        """
        One multipart upload of the blob: each full part copied server-side,
        the tail (possibly short, as only the last part may be) sent along.
        """
        s3, bucket = self._client.s3, self._client.bucket
        multipart = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        try:
            parts = []
            for number in range(1, self._parts + 1):
                source = {"Bucket": bucket, "Key": self._keys.uploadPart(self.uploadId, number)}
                copied = s3.upload_part_copy(
                    Bucket=bucket, Key=key, UploadId=multipart, PartNumber=number, CopySource=source
                )
                parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
            if self._buffer:
                number = self._parts + 1
                sent = s3.upload_part(
                    Bucket=bucket, Key=key, UploadId=multipart, PartNumber=number, Body=self._buffer
                )
                parts.append({"PartNumber": number, "ETag": sent["ETag"]})
            s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=multipart, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            try:
                s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=multipart)
            except Exception:
                pass  # expiry aborts it later
            raise

    def close(self) -> None:
        """
        Nothing to release: a session holds no descriptor or lock, only its
        tail and running hash in this node's memory, which the store bounds.
        """

    def abort(self) -> Deferred[None]:
        if self._ended and not self._stored:
            return succeed(None)
        self._end()
        return self._client.run(self._discard)

    def _end(self) -> None:
        self._ended = True
        self._sha256 = None
        self._store._forget(self)

    def _discard(self) -> None:
        self._buffer = bytearray()
        if self._stored:
            self._store._removeSession(self.uploadId)
            self._stored = False
