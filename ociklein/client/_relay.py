"""
Blobs copied from one registry to another as a stream: the source's GET
body goes straight into the destination's upload, hashed on the way, with
no temporary file.  The last bytes are sent only once the whole blob has
been hashed, so bytes that do not match their digest never reach the
destination whole, and the upload session is then deleted.  Each side's
pace holds the other back: while the destination's connection cannot take
more, the source's is not read, so a copy holds a few socket reads in
memory whatever the blob's size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from ociklein.client._blobs import _RANGE, _location, _withDigest, finishUpload, newHasher, startUpload
from ociklein.client._errors import RegistryError
from ociklein.client._progress import Progress
from ociklein.client._transport import Transport, _describe, _Discard, _header, drain, raiseFor


class _Stream(Protocol):
    """
    The body of the source's answer, hashed as it arrives and written to
    the consumer of the current L{_Piece}; the source is paused while no
    piece wants bytes or the piece's consumer is full.
    """

    def __init__(self, response: IResponse, digest: str, size: int, progress: Progress) -> None:
        self.response = response
        self.digest = digest
        self.size = size
        self.progress = progress
        self.hasher = newHasher(digest)
        self.received = 0
        self.sent = 0
        self.pending: deque[bytes] = deque()
        self.consumer: IConsumer | None = None
        self.want = 0
        self.consumerPaused = False
        self.finished: Deferred[None] | None = None
        self.error: RegistryError | None = None
        self.ended = False
        self.delivering = False
        self.sourcePaused = False

    # -- the source's side ------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.error is not None:
            return
        self.received += len(data)
        if self.received > self.size:
            self.fail(RegistryError("SIZE_INVALID", f"{self.digest}: the source sent over {self.size} bytes"))
            return
        self.hasher.update(data)
        if self.received == self.size:
            # The whole blob has been hashed: check it before its last bytes
            # leave, so that a wrong blob never reaches the destination whole.
            actual = f"{self.digest.partition(':')[0]}:{self.hasher.hexdigest()}"
            if actual != self.digest:
                self.fail(RegistryError("DIGEST_MISMATCH", f"{self.digest}: the source sent {actual}"))
                return
        self.pending.append(data)
        self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.ended = True
        if self.error is None and self.received < self.size:
            cause = _describe(reason.value)
            self.fail(
                RegistryError(
                    "CONNECTION_FAILED",
                    f"{self.digest}: the source's answer ended at byte {self.received}"
                    f" of {self.size}: {cause}",
                )
            )

    def _steer(self) -> None:
        """
        Read the source only while what it sends can be passed on.
        """
        if self.transport is None or self.ended or self.error is not None:
            return
        hold = self.consumer is None or self.consumerPaused or bool(self.pending)
        if hold and not self.sourcePaused:
            self.sourcePaused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        elif not hold and self.sourcePaused:
            self.sourcePaused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _flush(self) -> None:
        while self.pending and self.consumer is not None and not self.consumerPaused:
            data = self.pending[0]
            if len(data) > self.want:
                data, self.pending[0] = data[: self.want], data[self.want :]
            else:
                self.pending.popleft()
            consumer = self.consumer
            self.want -= len(data)
            self.sent += len(data)
            done = None
            if self.want == 0:
                done, self.consumer, self.finished = self.finished, None, None
            # May call pause() before it returns.
            consumer.write(data)
            self.progress.advanced(self.digest, self.sent)
            if done is not None:
                done.callback(None)
        self._steer()

    def fail(self, error: RegistryError) -> None:
        """
        Give up: drop the source's connection, and fail the piece being
        sent, which aborts the destination's request without its last bytes.
        """
        if self.error is not None:
            return
        self.error = error
        self.pending.clear()
        if not self.ended and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
        finished, self.finished, self.consumer = self.finished, None, None
        if finished is not None:
            finished.errback(error)

    def close(self) -> None:
        """
        Stop reading the source, unless its whole answer has been read.
        """
        if not self.delivering:
            self.delivering = True
            self.ended = True
            self.response.deliverBody(_Discard())
        elif not self.ended and self.error is None:
            self.fail(RegistryError("CONNECTION_FAILED", f"{self.digest}: the copy stopped"))

    # -- the destination's side -----------------------------------------------

    def attach(self, consumer: IConsumer, length: int) -> Deferred[None]:
        """
        Write the next C{length} bytes to C{consumer}; fires when they are
        written.
        """
        if self.error is not None:
            return fail(self.error)
        self.consumer, self.want, self.consumerPaused = consumer, length, False
        finished: Deferred[None] = Deferred()
        self.finished = finished
        if not self.delivering:
            self.delivering = True
            # deliverBody hands over what was read with the headers, then
            # resumes the source's connection whatever was asked meanwhile:
            # steer from there.
            self.response.deliverBody(self)
            self.sourcePaused = False
        self._flush()
        return finished

    def pause(self) -> None:
        self.consumerPaused = True
        self._steer()

    def resume(self) -> None:
        self.consumerPaused = False
        self._flush()

    def detach(self) -> None:
        """
        The destination's request stopped reading its body (its connection
        was lost, or it answered early): nothing more can be sent.
        """
        self.finished, self.consumer = None, None
        self.fail(RegistryError("CONNECTION_FAILED", f"{self.digest}: the destination stopped reading"))


@implementer(IBodyProducer)
class _Piece:
    """
    The next C{length} bytes of a L{_Stream}, as one request's body.  It
    can be sent once only: the bytes it sent are gone.
    """

    def __init__(self, stream: _Stream, length: int) -> None:
        self.stream = stream
        self.length = length
        self.started = False
        self.done = False

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self.started = True

        def finished(result: object) -> object:
            self.done = True
            return result

        return self.stream.attach(consumer, self.length).addBoth(finished)

    def pauseProducing(self) -> None:
        if not self.done:
            self.stream.pause()

    def resumeProducing(self) -> None:
        if not self.done:
            self.stream.resume()

    def stopProducing(self) -> None:
        if not self.done:
            self.done = True
            self.stream.detach()

    def once(self) -> Callable[[], _Piece]:
        """
        The body factory of L{Transport.request}, which refuses to send
        this body a second time (after a 401 or a retry).
        """

        def body() -> _Piece:
            if self.started:
                raise RegistryError(
                    "CONNECTION_FAILED", f"{self.stream.digest}: the stream cannot be sent again"
                )
            return self

        return body


class _Watchdog:
    """
    Gives a streamed request up when nothing moved for C{seconds}: no byte
    read from the source nor written to the destination, nor (once its body
    is sent) an answer.  A slow stream lives as long as it moves, where a
    deadline for the whole request would cut a big blob from a slow source.
    """

    def __init__(self, clock: IReactorTime, seconds: float, stream: _Stream, request: Deferred[Any]) -> None:
        self.clock = clock
        self.seconds = seconds
        self.stream = stream
        self.request = request
        self.mark = self._progress()
        self.call = clock.callLater(seconds, self._check)

    def _progress(self) -> int:
        return self.stream.received + self.stream.sent

    def _check(self) -> None:
        mark = self._progress()
        if mark != self.mark:
            self.mark = mark
            self.call = self.clock.callLater(self.seconds, self._check)
            return
        self.stream.fail(
            RegistryError("CONNECTION_FAILED", f"{self.stream.digest}: nothing moved for {self.seconds:g} s")
        )
        self.request.cancel()

    def stop(self) -> None:
        if self.call.active():
            self.call.cancel()


async def _send(
    destination: Transport,
    stream: _Stream,
    method: str,
    location: str,
    length: int,
    headers: dict[str, str],
    scopes: tuple[str, ...],
    status: int,
) -> IResponse:
    """
    Send the next C{length} bytes of C{stream} to the destination; its
    answer, which must be C{status}.  When the stream failed, its error is
    the one raised.
    """
    piece = _Piece(stream, length)
    request = Deferred.fromCoroutine(
        destination.request(
            method, location, scopes=scopes, headers=headers, body=piece.once(), idempotent=False, timed=False
        )
    )
    watchdog = _Watchdog(destination.clock or destination.reactor, destination.timeout, stream, request)
    try:
        response = await request
    except Exception as e:
        if stream.error is not None:
            raise stream.error from None
        if isinstance(e, RegistryError):
            raise
        raise RegistryError("CONNECTION_FAILED", f"{method} {location}: {_describe(e)}") from e
    finally:
        watchdog.stop()
    if response.code != status:
        raise await raiseFor(response)
    if stream.error is not None:
        await drain(response)
        raise stream.error
    return response


async def relay(
    source: Transport,
    sourceRepository: str,
    destination: Transport,
    repository: str,
    digest: str,
    size: int,
    progress: Progress,
    chunkSize: int,
) -> None:
    """
    Copy blob C{digest} of C{size} bytes from the source registry's
    repository to the destination's, streamed: in one request when it fits
    in C{chunkSize}, else in chunks of it.  On any failure the destination's
    upload session is deleted, and nothing is committed.
    """
    scopes = (f"repository:{repository}:pull,push",)
    headers = {"Content-Type": "application/octet-stream"}
    location = await startUpload(destination, repository)
    try:
        response = await source.request(
            "GET", f"/v2/{sourceRepository}/blobs/{digest}", scopes=(f"repository:{sourceRepository}:pull",)
        )
        if response.code != 200:
            raise await raiseFor(response)
        stream = _Stream(response, digest, size, progress)
        try:
            if isinstance(response.length, int) and response.length != size:
                raise RegistryError(
                    "SIZE_INVALID", f"{digest}: the source has {response.length} bytes, not {size}"
                )
            if size <= chunkSize:
                await drain(
                    await _send(
                        destination, stream, "PUT", _withDigest(location, digest), size, headers, scopes, 201
                    )
                )
                return
            offset = 0
            while offset < size:
                end = min(offset + chunkSize, size)
                response = await _send(
                    destination,
                    stream,
                    "PATCH",
                    location,
                    end - offset,
                    {**headers, "Content-Range": f"{offset}-{end - 1}"},
                    scopes,
                    202,
                )
                match = _RANGE.search(_header(response, "Range") or "")
                location = await _location(response)
                if match and int(match.group(2)) + 1 != end:
                    raise RegistryError(
                        "BLOB_UPLOAD_INVALID", f"{digest}: the destination holds {match.group(0)}"
                    )
                offset = end
        finally:
            stream.close()
        await finishUpload(destination, repository, location, digest)
    except BaseException:
        await _abandon(destination, location, scopes)
        raise


async def _abandon(destination: Transport, location: str, scopes: tuple[str, ...]) -> None:
    """
    Delete an upload session that will not be finished; a registry that
    cannot is left to expire it.
    """
    try:
        await drain(await destination.request("DELETE", location, scopes=scopes, idempotent=False))
    except Exception:
        pass
