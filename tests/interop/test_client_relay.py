"""
Registry-to-registry copies streamed from the source's download into the
destination's upload (ociklein.client._relay): no temporary file, chunked
uploads, the digest checked before the last bytes leave, the upload session
deleted on failure, each side pausing the other, and a copy through a file
again when a stream breaks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from clienthelpers import CuttingProxy
from helpers import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST
from ocilayout import Image, canonical, makeImage, makeIndex, sha256, writeLayout
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ociklein import MemoryBlobStore, Registry
from ociklein.client import Clients, Progress, RegistryClient, RegistryError, copy, push
from ociklein.client import _copy as copyModule
from ociklein.client._relay import _Piece, _Stream

pytest_plugins = ["clientfixtures"]


def bigImage(size: int) -> Image:
    """
    An image of one layer of C{size} random bytes.
    """
    layer, config = os.urandom(size), b'{"architecture":"amd64","os":"linux"}'
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": size}],
    }
    return Image(canonical(manifest), {sha256(config): config, sha256(layer): layer})


def noFiles(*args: object) -> Any:
    raise AssertionError("a registry-to-registry copy went through a file")


async def twoRegistries(serving: Any) -> tuple[str, str, MemoryBlobStore, MemoryBlobStore]:
    """
    Two in-process memory registries: their hosts and blob stores.
    """
    stores = (MemoryBlobStore(), MemoryBlobStore())
    hosts = [(await serving(Registry(blobs=s).resource())).removeprefix("http://") for s in stores]
    return hosts[0], hosts[1], stores[0], stores[1]


@pytest.mark.parametrize("chunkSize", [64 * 1024 * 1024, 1000])
@pytest_twisted.ensureDeferred
async def test_copy_streams_without_a_file(
    serving: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunkSize: int
) -> None:
    """Every blob goes from the source's GET into the destination's upload, whole or in chunks."""
    source, destination, _, stored = await twoRegistries(serving)
    index = makeIndex([("linux", "amd64"), ("linux", "arm64")])
    await push(writeLayout(tmp_path / "in", index, "v1"), f"{source}/relay/app:v1", reactor=reactor)
    monkeypatch.setattr(copyModule, "_openForWriting", noFiles)
    clients = Clients(reactor, chunkSize=chunkSize)
    try:
        result = await copy(f"{source}/relay/app:v1", f"{destination}/relay/copy:v1", clients=clients)
    finally:
        await clients.close()
    assert result.digest == index.digest
    assert result.counts() == {"pushed": len(index.blobs) - len(index.images)}
    assert result.bytes == sum(len(data) for data in index.blobs.values()) - sum(
        len(image.manifest) for image in index.images
    )
    async with RegistryClient(destination, reactor=reactor) as client:
        assert (await client.getManifest("relay/copy", "v1")).content == index.manifest
    assert stored.openUploadCount() == 0


@pytest.mark.parametrize("chunkSize", [64 * 1024 * 1024, 1000])
@pytest_twisted.ensureDeferred
async def test_tampered_source_commits_nothing(serving: Any, tmp_path: Path, chunkSize: int) -> None:
    """A blob whose bytes do not match its digest is DIGEST_MISMATCH; the destination keeps nothing."""
    source, destination, sourceStore, stored = await twoRegistries(serving)
    image = makeImage(layers=2)
    await push(writeLayout(tmp_path / "in", image, "v1"), f"{source}/relay/bad:v1", reactor=reactor)
    layer = max(image.blobs, key=lambda digest: len(image.blobs[digest]))
    wrong = bytearray(image.blobs[layer])
    wrong[-1] ^= 0xFF
    sourceStore._blobs[layer] = bytes(wrong)
    clients = Clients(reactor, chunkSize=chunkSize)
    try:
        with pytest.raises(RegistryError) as raised:
            await copy(f"{source}/relay/bad:v1", f"{destination}/relay/bad:v1", clients=clients, jobs=1)
    finally:
        await clients.close()
    assert raised.value.code == "DIGEST_MISMATCH"
    async with RegistryClient(destination, reactor=reactor) as client:
        assert await client.headBlob("relay/bad", layer) is None
        assert await client.headManifest("relay/bad", "v1") is None
    assert stored.openUploadCount() == 0


@pytest_twisted.ensureDeferred
async def test_blobs_after_a_failed_one_do_not_start(serving: Any, tmp_path: Path) -> None:
    """Once a blob failed, the blobs waiting for their turn are not copied."""
    source, destination, sourceStore, stored = await twoRegistries(serving)
    image = makeImage(layers=3)
    await push(writeLayout(tmp_path / "in", image, "v1"), f"{source}/relay/stop:v1", reactor=reactor)
    config = json.loads(image.manifest)["config"]["digest"]
    sourceStore._blobs[config] = b"{}" + image.blobs[config][2:]
    with pytest.raises(RegistryError) as raised:
        await copy(f"{source}/relay/stop:v1", f"{destination}/relay/stop:v1", reactor=reactor, jobs=1)
    assert raised.value.code == "DIGEST_MISMATCH"
    async with RegistryClient(destination, reactor=reactor) as client:
        for digest in image.blobs:
            assert await client.headBlob("relay/stop", digest) is None
    assert stored.openUploadCount() == 0


def test_a_copy_ends_only_when_all_its_work_has() -> None:
    """The first failure among a copy's transfers is raised only once the others have ended."""
    failing, running = Deferred[None](), Deferred[None]()
    waiting = Deferred.fromCoroutine(copyModule._all([failing, running]))
    failing.errback(RegistryError("DIGEST_MISMATCH", "wrong"))
    assert not waiting.called
    running.callback(None)
    failures: list[Any] = []
    waiting.addErrback(failures.append)
    assert failures[0].value.code == "DIGEST_MISMATCH"


class WrongSource(Resource):
    """
    Serves any blob as C{body} without a length, and ends the answer only
    once C{release} fires (or the client hangs up): a client that checked
    the digest only at the end would have sent every byte by then.
    """

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body
        self.release: Deferred[None] = Deferred()

    def render_GET(self, request: Any) -> Any:
        if b"/blobs/" not in request.path:
            return b"{}"
        request.setHeader("Content-Type", "application/octet-stream")
        request.write(self.body)
        gone = request.notifyFinish()
        gone.addErrback(lambda _: None)
        self.release.addCallback(lambda _: None if gone.called else request.finish())
        return NOT_DONE_YET


class RecordingDestination(Resource):
    """
    An upload endpoint that stores whatever whole body it receives without
    checking it (twisted.web renders a request only once its body is in),
    and records deleted sessions.
    """

    isLeaf = True

    def __init__(self, received: Deferred[None]) -> None:
        super().__init__()
        self.received = received
        self.committed: list[bytes] = []
        self.deleted: list[bytes] = []

    def render_POST(self, request: Any) -> bytes:
        request.setResponseCode(202)
        request.setHeader("Location", "/v2/x/blobs/uploads/1")
        return b""

    def render_PUT(self, request: Any) -> bytes:
        self.committed.append(request.content.read())
        self.received.callback(None)
        request.setResponseCode(201)
        return b""

    def render_DELETE(self, request: Any) -> bytes:
        self.deleted.append(request.path)
        request.setResponseCode(204)
        return b""


@pytest_twisted.ensureDeferred
async def test_last_bytes_are_sent_only_after_the_digest_is_checked(serving: Any) -> None:
    """A wrong blob never reaches the destination whole, even one that does not check digests."""
    right = b"the blob the manifest names" * 100
    wrong = right[:-1] + b"!"
    source = WrongSource(wrong)
    destination = RecordingDestination(source.release)
    async with (
        RegistryClient(await serving(source), reactor=reactor) as sourceClient,
        RegistryClient(await serving(destination), reactor=reactor) as destinationClient,
    ):
        copying = destinationClient.copyBlob("x", sha256(right), len(right), sourceClient, "x")
        with pytest.raises(RegistryError) as raised:
            await Deferred.fromCoroutine(copying).addTimeout(30, reactor)
    assert raised.value.code == "DIGEST_MISMATCH"
    assert destination.committed == []
    assert destination.deleted == [b"/v2/x/blobs/uploads/1"]


class StallingSource(Resource):
    """
    Serves any blob as the first C{sent} bytes of C{body}, then nothing more.
    """

    isLeaf = True

    def __init__(self, body: bytes, sent: int) -> None:
        super().__init__()
        self.body = body
        self.sent = sent

    def render_GET(self, request: Any) -> Any:
        if b"/blobs/" not in request.path:
            return b"{}"
        request.setHeader("Content-Length", str(len(self.body)))
        request.write(self.body[: self.sent])
        request.notifyFinish().addErrback(lambda _: None)
        return NOT_DONE_YET


class Forwarded(Progress):
    """
    Fires C{reached} once C{count} bytes of the blob have been passed on.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.reached: Deferred[None] = Deferred()

    def advanced(self, digest: str, done: int) -> None:
        if done >= self.count and not self.reached.called:
            self.reached.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_stream_that_stops_moving_is_given_up(serving: Any) -> None:
    """A stream with no byte moving for the client's timeout fails, and the destination keeps nothing."""
    blob = os.urandom(256 * 1024)
    destination = RecordingDestination(Deferred())
    clock = Clock()
    forwarded = Forwarded(len(blob) // 2)
    async with (
        RegistryClient(await serving(StallingSource(blob, len(blob) // 2)), reactor=reactor) as sourceClient,
        RegistryClient(await serving(destination), reactor=reactor, clock=clock, timeout=30) as client,
    ):
        copying = Deferred.fromCoroutine(
            client.copyBlob("x", sha256(blob), len(blob), sourceClient, "x", forwarded)
        )
        await forwarded.reached.addTimeout(30, reactor)
        # Bytes moved in the first period; none in the second.
        clock.advance(30)
        clock.advance(30)
        with pytest.raises(RegistryError) as raised:
            await copying.addTimeout(30, reactor)
    assert raised.value.code == "CONNECTION_FAILED" and "nothing moved for 30 s" in raised.value.message
    assert destination.committed == []
    assert destination.deleted == [b"/v2/x/blobs/uploads/1"]


class FakeSourceConnection:
    """
    The transport of a source's answer: whether it is paused or stopped.
    """

    paused = False
    stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class FakeResponse:
    """
    An answer whose body starts with C{buffered}, read with the headers.
    """

    length = 0

    def __init__(self, buffered: bytes = b"") -> None:
        self.connection = FakeSourceConnection()
        self.buffered = buffered

    def deliverBody(self, protocol: Any) -> None:
        # As twisted.web's Response does.
        protocol.makeConnection(self.connection)
        if self.buffered:
            protocol.dataReceived(self.buffered)
        self.connection.resumeProducing()


class Consumer:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_each_side_holds_the_other_back() -> None:
    """The source is not read while the destination's connection is full, nor between chunks."""
    blob = b"0123456789" * 10
    response = FakeResponse()
    stream = _Stream(response, sha256(blob), len(blob), Progress())  # type: ignore[arg-type]
    first, consumer = _Piece(stream, 60), Consumer()
    done = first.startProducing(consumer)
    assert not response.connection.paused
    first.pauseProducing()
    assert response.connection.paused
    stream.dataReceived(blob[:50])
    assert consumer.written == [] and response.connection.paused
    first.resumeProducing()
    assert consumer.written == [blob[:50]] and not response.connection.paused
    stream.dataReceived(blob[50:80])
    assert b"".join(consumer.written) == blob[:60] and done.called
    # Between the chunks, 20 bytes wait and the source waits with them.
    assert response.connection.paused
    second, consumer = _Piece(stream, 40), Consumer()
    done = second.startProducing(consumer)
    assert consumer.written == [blob[60:80]] and not response.connection.paused
    stream.dataReceived(blob[80:])
    assert b"".join(consumer.written) == blob[60:] and done.called


def test_bytes_read_with_the_headers_are_held_back_too() -> None:
    """Body bytes read before the first chunk began are passed on as wanted, the source paused meanwhile."""
    blob = b"0123456789" * 10
    response = FakeResponse(buffered=blob[:30])
    stream = _Stream(response, sha256(blob), len(blob), Progress())  # type: ignore[arg-type]
    consumer = Consumer()
    assert _Piece(stream, 10).startProducing(consumer).called
    assert consumer.written == [blob[:10]] and response.connection.paused
    consumer = Consumer()
    _Piece(stream, 90).startProducing(consumer)
    assert consumer.written == [blob[10:30]] and not response.connection.paused


def test_a_wrong_blob_keeps_its_last_bytes() -> None:
    """The bytes that complete a blob are checked against its digest before they are written."""
    blob = b"0123456789" * 10
    response = FakeResponse()
    stream = _Stream(response, sha256(blob), len(blob), Progress())  # type: ignore[arg-type]
    consumer = Consumer()
    done = _Piece(stream, len(blob)).startProducing(consumer)
    failures: list[Any] = []
    done.addErrback(failures.append)
    stream.dataReceived(blob[:90])
    stream.dataReceived(b"wrong end!")
    assert b"".join(consumer.written) == blob[:90]
    assert failures[0].value.code == "DIGEST_MISMATCH" and response.connection.stopped


@pytest_twisted.ensureDeferred
async def test_a_broken_stream_copies_again_through_a_file(serving: Any, tmp_path: Path) -> None:
    """A source connection cut in the middle of a streamed blob ends in a copy through a file."""
    source, destination, _, stored = await twoRegistries(serving)
    image = bigImage(4 * 1024 * 1024)
    await push(writeLayout(tmp_path / "in", image, "v1"), f"{source}/relay/cut:v1", reactor=reactor)
    proxy = CuttingProxy(int(source.rsplit(":", 1)[1]))
    proxied = await proxy.start()
    try:
        async with RegistryClient(proxied, reactor=reactor) as client:
            await client.getManifest("relay/cut", "v1")
        # Past the manifest and the config, within the layer.
        proxy.cutDownstreamAt = proxy.downstream + 1024 * 1024
        result = await copy(f"{proxied}/relay/cut:v1", f"{destination}/relay/cut:v1", reactor=reactor, jobs=1)
    finally:
        await proxy.stop()
    assert proxy.cut and result.digest == image.digest and result.counts() == {"pushed": 2}
    async with RegistryClient(destination, reactor=reactor) as client:
        for digest, data in image.blobs.items():
            assert await client.headBlob("relay/cut", digest) == len(data)
    assert stored.openUploadCount() == 0
