"""
Request bodies and blob responses stream: bounded buffers, backpressure
both ways, and no body held whole.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import pytest_twisted
from conftest import serve
from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from ociklein import Registry
from ociklein._body import _HIGH_WATER, BodyPipe, FileBody, readAtMost
from ociklein.errors import OCIError
from ociklein.http._download import READ_SIZE, BlobSender
from ociklein.interfaces import IBlobReader
from ociklein.storage.memory import MemoryBlobStore, MemoryManifestBackend


class FakeTransport:
    """
    Records whether the pipe has paused the (network) producer.
    """

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


def test_pipe_pauses_the_client_while_the_store_is_slow() -> None:
    """A slow consumer makes the pipe pause the transport; draining resumes it."""
    transport, clock = FakeTransport(), Clock()
    pipe = BodyPipe(transport, clock)  # type: ignore[arg-type]
    pending: list[Deferred[None]] = []
    received: list[bytes] = []

    def slowWrite(chunk: bytes) -> Deferred[None]:
        received.append(chunk)
        pending.append(Deferred())
        return pending[-1]

    done = pipe.deliverTo(slowWrite)
    chunk = b"x" * 65536
    sent = 0
    while not transport.paused:
        pipe.dataReceived(chunk)
        sent += len(chunk)
        assert sent <= _HIGH_WATER + 2 * len(chunk)
    assert len(received) == 1
    while pending:
        pending.pop(0).callback(None)
    assert not transport.paused
    pipe.finish()
    clock.advance(0)
    assert b"".join(received) == chunk * (sent // len(chunk))
    assert done.result == sent


def test_pipe_buffers_until_a_consumer_attaches() -> None:
    """Bytes that arrive before the handler reads are delivered in order once it does."""
    clock = Clock()
    pipe = BodyPipe(None, clock)
    pipe.dataReceived(b"abc")
    pipe.dataReceived(b"def")
    pipe.finish()
    got: list[bytes] = []
    done = pipe.deliverTo(got.append)  # type: ignore[arg-type]
    clock.advance(0)
    assert got == [b"abc", b"def"]
    assert done.result == 6


def test_pipe_reports_a_lost_connection() -> None:
    """A connection lost mid-body fails the delivery, after what did arrive."""
    clock = Clock()
    pipe = BodyPipe(None, clock)
    got: list[bytes] = []
    done = pipe.deliverTo(got.append)  # type: ignore[arg-type]
    pipe.dataReceived(b"partial")
    pipe.fail(Failure(ConnectionError("gone")))
    clock.advance(0)
    failures: list[Failure] = []
    done.addErrback(failures.append)
    assert got == [b"partial"]
    assert failures[0].check(ConnectionError)


def test_pipe_stops_on_a_failed_write() -> None:
    """When the store fails a write, later chunks are discarded and the error surfaces."""
    clock = Clock()
    transport = FakeTransport()
    pipe = BodyPipe(transport, clock)  # type: ignore[arg-type]

    def failing(chunk: bytes) -> None:
        raise OSError(28, "No space left on device")

    done = pipe.deliverTo(failing)
    pipe.dataReceived(b"a" * 10)
    pipe.dataReceived(b"b" * (_HIGH_WATER * 2))
    clock.advance(0)
    failures: list[Failure] = []
    done.addErrback(failures.append)
    assert failures[0].check(OSError)
    assert not transport.paused


@pytest_twisted.ensureDeferred
async def test_small_bodies_are_capped_as_they_arrive() -> None:
    """readAtMost refuses with 413 as soon as the body passes the limit."""
    clock = Clock()
    pipe = BodyPipe(None, clock)
    result = Deferred.fromCoroutine(readAtMost(pipe, 10))
    pipe.dataReceived(b"0123456789")
    pipe.dataReceived(b"!")
    clock.advance(0)
    failures: list[Failure] = []
    result.addErrback(failures.append)
    assert isinstance(failures[0].value, OCIError)
    assert failures[0].value.status == 413


@pytest_twisted.ensureDeferred
async def test_file_body_reads_in_bounded_chunks(tmp_path: Any) -> None:
    """A body twisted.web buffered is read back in chunks, never whole."""
    data = bytes(range(256)) * 20000
    path = tmp_path / "body"
    path.write_bytes(data)
    sizes: list[int] = []
    digest = hashlib.sha256()

    def write(chunk: bytes) -> None:
        sizes.append(len(chunk))
        digest.update(chunk)

    with open(path, "rb") as f:  # noqa: ASYNC230  (a small local file, in a test)
        total = await FileBody(f).deliverTo(write)
    assert total == len(data)
    assert max(sizes) <= 1024 * 1024
    assert len(sizes) > 1
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


@implementer(IBlobReader)
class CountingReader:
    """
    A blob of known bytes that counts what has been read from it.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.read_bytes = 0
        self.closed = False

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        self.read_bytes += min(length, self.size - offset)
        return succeed(self.data[offset : offset + length])

    def close(self) -> None:
        self.closed = True


class SlowRequest:
    """
    A request whose transport is always full after a write, as with a slow client.
    """

    def __init__(self) -> None:
        self.producer: Any = None
        self.written: list[bytes] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.producer.pauseProducing()


def test_sender_reads_only_as_fast_as_the_client_takes() -> None:
    """A paused response reads no more of the blob until the client drains it."""
    data = b"z" * (READ_SIZE * 5 + 17)
    reader = CountingReader(data)
    request = SlowRequest()
    sender = BlobSender(reader, 0, len(data), request)  # type: ignore[arg-type]
    done = sender.start()
    assert reader.read_bytes == READ_SIZE
    assert len(request.written) == 1
    while not done.called:
        sender.resumeProducing()
        assert reader.read_bytes <= READ_SIZE * len(request.written)
    assert b"".join(request.written) == data
    assert reader.closed


def test_sender_sends_a_range() -> None:
    """The sender writes exactly the requested span and stops."""
    data = bytes(range(256)) * 10
    reader = CountingReader(data)
    request = SlowRequest()
    sender = BlobSender(reader, 100, 300, request)  # type: ignore[arg-type]
    done = sender.start()
    while not done.called:
        sender.resumeProducing()
    assert b"".join(request.written) == data[100:400]


def test_sender_stops_when_the_client_goes() -> None:
    """stopProducing (a client gone) closes the blob and ends the response."""
    reader = CountingReader(b"q" * (READ_SIZE * 3))
    request = SlowRequest()
    sender = BlobSender(reader, 0, reader.size, request)  # type: ignore[arg-type]
    done = sender.start()
    sender.stopProducing()
    assert done.called
    assert reader.closed
    assert reader.read_bytes == READ_SIZE


def test_pipe_batches_chunks_for_a_slow_store() -> None:
    """Chunks that queue while a slow store writes are joined into writes of up to 1 MiB."""
    clock = Clock()
    pipe = BodyPipe(None, clock)
    sizes: list[int] = []
    pending: list[Deferred[None]] = []

    def slowWrite(chunk: bytes) -> Deferred[None]:
        sizes.append(len(chunk))
        pending.append(Deferred())
        return pending[-1]

    done = pipe.deliverTo(slowWrite)
    for _ in range(40):
        pipe.dataReceived(b"y" * 65536)
    pipe.finish()
    while pending:
        pending.pop(0).callback(None)
    clock.advance(0)
    assert sizes[0] == 65536
    assert max(sizes) == 1024 * 1024
    assert sum(sizes) == 40 * 65536
    assert done.result == 40 * 65536


def test_pipe_keeps_chunks_for_a_synchronous_store() -> None:
    """A store that writes synchronously gets each chunk as it arrived."""
    clock = Clock()
    pipe = BodyPipe(None, clock)
    sizes: list[int] = []
    pipe.deliverTo(lambda chunk: sizes.append(len(chunk)))  # type: ignore[arg-type, func-returns-value]
    for size in (10, 20, 30):
        pipe.dataReceived(b"z" * size)
    assert sizes == [10, 20, 30]


def test_pipe_stops_joining_once_the_store_takes_chunks_at_once() -> None:
    """After a write that waited, what queued meanwhile is joined once; then, the store taking
    writes at once again (it queues them for a thread of its own), each chunk goes as it came,
    with no more joins on the reactor."""
    clock = Clock()
    pipe = BodyPipe(None, clock)
    sizes: list[int] = []
    slow: Deferred[None] = Deferred()

    def write(chunk: bytes) -> Deferred[None] | None:
        sizes.append(len(chunk))
        return slow if len(sizes) == 1 else None

    piece = 256 * 1024
    pipe.deliverTo(write)
    for _ in range(7):
        pipe.dataReceived(b"y" * piece)
    assert sizes == [piece]
    slow.callback(None)
    assert sizes == [piece, 4 * piece, piece, piece]


@pytest_twisted.ensureDeferred
async def test_blobs_are_sent_a_piece_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob's pieces go to the socket in sends of up to a whole piece, not 128 KiB each."""
    limits: list[int] = []
    real = tcp.Connection.writeSomeData

    def writeSomeData(self: tcp.Connection, data: bytes) -> Any:
        if isinstance(self, tcp.Server):
            limits.append(self.SEND_LIMIT)
        return real(self, data)

    monkeypatch.setattr(tcp.Connection, "writeSomeData", writeSomeData)
    async for live in serve(Registry(MemoryManifestBackend(), MemoryBlobStore())):
        data = b"y" * (4 * READ_SIZE)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response = await live.request("POST", f"/v2/repo/blobs/uploads/?digest={digest}", data=data)
        assert response.code == 201
        limits.clear()
        response = await live.request("GET", f"/v2/repo/blobs/{digest}")
        assert response.code == 200 and response.body == data
        assert max(limits) == READ_SIZE
