"""
Request bodies as streams: delivered chunk by chunk to a writer, the next
chunk only after the previous write has finished, so that nothing is held
whole in memory and a slow store slows the client down instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import IO, Protocol

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.python.failure import Failure

from ociklein.errors import sizeInvalid

Writer = Callable[[bytes], "Deferred[None] | None"]

CHUNK_SIZE = 1024 * 1024
# What a body may hold while its consumer is busy: the next chunk and one
# more.  Every upload holds this beside its own buffer (an s3 part, the fs
# write-behind queue), so it counts per client in a node's memory; the
# kernel's socket buffers keep the data flowing meanwhile.
_HIGH_WATER = 2 * CHUNK_SIZE


class Body(Protocol):
    """
    A request body that can be read once, as a stream.
    """

    def deliverTo(self, write: Writer) -> Deferred[int]:
        """
        Send every chunk to C{write}; fire with the number of bytes sent.
        """


class BodyPipe:
    """
    A body still arriving from the network, fed by L{StreamingRequest}.

    While the consumer is busy and more than two MiB are waiting, the
    transport is paused: the client's TCP window does the buffering.
    """

    def __init__(self, transport: IPushProducer | None, clock: IReactorTime | None = None) -> None:
        self._transport = transport
        self._clock: IReactorTime = clock if clock is not None else _globalReactor  # type: ignore[assignment]
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._write: Writer | None = None
        self._done: Deferred[int] | None = None
        self._writing = False
        self._finished = False
        self._failure: Failure | None = None
        self._discarding = False
        self._coalesce = False
        self.delivered = 0

    @property
    def complete(self) -> bool:
        """
        Whether the whole body has arrived (or the connection has gone).
        """
        return self._finished or self._failure is not None

    def dataReceived(self, data: bytes) -> None:
        if self._discarding:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._pump()
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pauseProducing()

    def finish(self) -> None:
        self._finished = True
        self._pump()

    def fail(self, reason: Failure) -> None:
        if self._failure is None and not self._finished:
            self._failure = reason
        self._pump()

    def discard(self) -> None:
        """
        Drop what is buffered and whatever else arrives.
        """
        self._discarding = True
        self._chunks.clear()
        self._buffered = 0
        self._resume()

    def deliverTo(self, write: Writer) -> Deferred[int]:
        if self._done is not None or self._write is not None:
            raise RuntimeError("a body can be read only once")
        self._write = write
        self._done = Deferred()
        done = self._done
        self._pump()
        return done

    def _resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resumeProducing()

    def _pump(self) -> None:
        while self._write is not None and not self._writing:
            if self._chunks:
                chunk = self._take()
                self._buffered -= len(chunk)
                if self._buffered <= _HIGH_WATER // 2:
                    self._resume()
                self._writing = True
                inline = [True]

                def wrote(result: object, size: int = len(chunk), inline: list[bool] = inline) -> None:
                    self._writing = False
                    if isinstance(result, Failure):
                        self._end(result)
                        return
                    self.delivered += size
                    self._coalesce = not inline[0]
                    if not inline[0]:
                        self._pump()

                maybeDeferred(self._write, chunk).addBoth(wrote)
                inline[0] = False
            elif self._failure is not None:
                self._end(self._failure)
            elif self._finished:
                self._end(self.delivered)
            else:
                return

    def _take(self) -> bytes:
        """
        The next chunk; when the writer finished its last write later than
        it started it (a thread, a slow disk), joined with the chunks that
        queued meanwhile, up to L{CHUNK_SIZE}: one write per MiB rather
        than one per network read.  A writer that takes chunks at once (one
        that queues them for a thread of its own) gets them as they came,
        with no copy on the reactor.
        """
        chunk = self._chunks.popleft()
        if not self._coalesce or not self._chunks or len(chunk) >= CHUNK_SIZE:
            return chunk
        parts, size = [chunk], len(chunk)
        while self._chunks and size + len(self._chunks[0]) <= CHUNK_SIZE:
            part = self._chunks.popleft()
            parts.append(part)
            size += len(part)
        return chunk if len(parts) == 1 else b"".join(parts)

    def _end(self, result: int | Failure) -> None:
        done, self._done, self._write = self._done, None, None
        if isinstance(result, Failure):
            self.discard()
        if done is not None:
            # Fired on a later turn: the consumer may finish the response,
            # which must not happen inside the channel's dataReceived.
            self._clock.callLater(0, done.callback, result)


class FileBody:
    """
    A body twisted.web has already buffered (when the L{Site} does not use
    L{StreamingRequest}), read back in bounded chunks.
    """

    def __init__(self, content: IO[bytes] | None) -> None:
        self._content = content

    def deliverTo(self, write: Writer) -> Deferred[int]:
        return Deferred.fromCoroutine(self._deliver(write))

    async def _deliver(self, write: Writer) -> int:
        total = 0
        if self._content is None:
            return 0
        self._content.seek(0)
        while chunk := self._content.read(CHUNK_SIZE):
            await maybeDeferred(write, chunk)
            total += len(chunk)
        return total


async def readAtMost(body: Body, limit: int) -> bytes:
    """
    Collect a small body, refusing (413) as soon as it grows past C{limit}.
    """
    parts: list[bytes] = []
    size = 0

    def collect(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size > limit:
            raise sizeInvalid(f"body exceeds {limit} bytes", status=413)
        parts.append(chunk)

    await body.deliverTo(collect)
    return b"".join(parts)
