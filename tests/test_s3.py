"""
What only the s3 backend has: sessions continued by another node, parts
assembled server-side, expiry in the bucket, a store that is down, and the
start-up check of the bucket.  The shared contract and HTTP suites run on
s3 too; these tests pin the rest, on the session's SeaweedFS.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from conftest import StubClient
from helpers import digestOf, errorCode, waitFor
from seaweedfixture import BUCKET, REGION, S3Backends, SeaweedFS, s3Arguments, uniquePrefix
from twistdprocess import freePort
from twisted.internet.task import Clock
from twisted.python.usage import UsageError

from ociklein import Registry
from ociklein.storage.s3 import S3Client, S3Config, S3ManifestBackend
from ociklein.storage.s3._blobs import S3BlobStore
from ociklein.tap import Options

MIB = 1024 * 1024
PART = 5 * MIB


@pytest.fixture
def twoNodes(seaweedfs: SeaweedFS) -> Iterator[tuple[S3Backends, S3Backends]]:
    """
    Two nodes (each its own client, pool and memory) on one key prefix.
    """
    prefix = uniquePrefix()
    nodes = (S3Backends(seaweedfs, prefix, partSize=PART), S3Backends(seaweedfs, prefix, partSize=PART))
    yield nodes
    for node in nodes:
        node.close()


class _PartReads:
    """
    Counts the GETs of session parts a client makes.
    """

    def __init__(self, client: S3Client) -> None:
        self.count = 0
        client.s3.meta.events.register("before-call.s3.GetObject", self._seen)

    def _seen(self, params: dict[str, Any], **kwargs: Any) -> None:
        if "/part-" in params.get("url_path", ""):
            self.count += 1


async def _readBlob(blobs: Any, digest: str) -> bytes:
    reader = await blobs.open(digest)
    assert reader is not None
    try:
        chunks, offset = [], 0
        while offset < reader.size:
            chunk = await reader.read(offset, MIB)
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    finally:
        reader.close()


@pytest_twisted.ensureDeferred
async def test_sessionAlternatingNodes(twoNodes: tuple[S3Backends, S3Backends]) -> None:
    """A session alternating between two nodes commits to the right blob, its parts read back once."""
    a, b = twoNodes
    data = os.urandom(3 * PART + 12345)
    chunk = 2 * MIB + 7  # not a divisor of the part size: parts fill across chunks
    upload = await a.blobs.startUpload("repo")
    nodes = [a, b]
    for i, start in enumerate(range(0, len(data), chunk)):
        session = await nodes[i % 2].blobs.getUpload(upload.uploadId)
        assert session is not None and session.size == start
        await session.write(data[start : start + chunk])
        await session.flush()
    reads = _PartReads(a.client)
    last = await a.blobs.getUpload(upload.uploadId)
    assert last is not None and last.size == len(data)
    digest = digestOf(data)
    assert await last.digest("sha256") == digest.partition(":")[2]
    await last.commit(digest)
    assert reads.count == 3  # each full part once, for the hash; none for the commit
    assert await _readBlob(b.blobs, digest) == data
    assert await b.blobs.getUpload(upload.uploadId) is None
    assert a.client.listObjects(a.client.keys.uploads) == []


@pytest_twisted.ensureDeferred
async def test_sessionOnOneNodeIsNotReadBack(twoNodes: tuple[S3Backends, S3Backends]) -> None:
    """A session written through one node is hashed as it arrives and never read back to commit."""
    a, _ = twoNodes
    data = os.urandom(2 * PART + 99)
    reads = _PartReads(a.client)
    upload = await a.blobs.startUpload("repo")
    for start in range(0, len(data), MIB):
        await upload.write(data[start : start + MIB])
        await upload.flush()
    found = await a.blobs.getUpload(upload.uploadId)
    assert found is upload
    digest = digestOf(data)
    assert await upload.digest("sha256") == digest.partition(":")[2]
    await upload.commit(digest)
    assert reads.count == 0
    assert await _readBlob(a.blobs, digest) == data


@pytest_twisted.ensureDeferred
async def test_monolithicSmallBlobStoresNoSession(twoNodes: tuple[S3Backends, S3Backends]) -> None:
    """A monolithic upload smaller than a part puts the blob alone: no session objects at any time."""
    a, _ = twoNodes
    upload = await a.blobs.startUpload("repo", resumable=False)
    await upload.write(b"small")
    assert a.client.listObjects(a.client.keys.uploads) == []
    await upload.commit(digestOf(b"small"))
    assert a.client.listObjects(a.client.keys.uploads) == []
    assert await a.blobs.stat(digestOf(b"small")) == 5


@pytest_twisted.ensureDeferred
async def test_rangesOfAMultipartBlob(twoNodes: tuple[S3Backends, S3Backends]) -> None:
    """Reads at any offset of a blob assembled from parts return the right bytes, jumps included."""
    a, b = twoNodes
    data = os.urandom(PART + 3 * MIB)
    upload = await a.blobs.startUpload("repo", resumable=False)
    await upload.write(data)
    await upload.commit(digestOf(data))
    reader = await b.blobs.open(digestOf(data))
    assert reader is not None and reader.size == len(data)
    for offset, length in [(PART - 10, 20), (0, 5), (len(data) - 3, 10), (PART - 10 + 20, 100)]:
        assert await reader.read(offset, length) == data[offset : offset + length]
    reader.close()


@pytest_twisted.ensureDeferred
async def test_expiry(seaweedfs: SeaweedFS) -> None:
    """Expired sessions, orphaned parts and abandoned multipart uploads go at expiry; live ones stay."""
    clock = Clock()
    clock.advance(time.time())
    node = S3Backends(seaweedfs, partSize=PART, clock=clock, uploadTTL=100.0)
    client, keys = node.client, node.client.keys
    try:
        old = await node.blobs.startUpload("repo")
        await old.write(os.urandom(PART + 1))
        await old.flush()
        monolithic = await node.blobs.startUpload("repo", resumable=False)
        await monolithic.write(os.urandom(PART))  # a part in the bucket, as if its node died now

        # The write returns while its part is still being stored (one part
        # is sent while the next fills): wait until it is in the bucket.
        def stored() -> bool:
            listed = client.listObjects(keys.upload(monolithic.uploadId))
            return keys.uploadPart(monolithic.uploadId, 1) in {e["Key"] for e in listed}

        await waitFor(stored, 15, "the part in the bucket")
        blobKey = keys.blob(digestOf(b"never finished"))
        client.s3.create_multipart_upload(Bucket=BUCKET, Key=blobKey)
        client.put(keys.upload("x" * 24) + "part-00001", b"left by a killed delete")  # no info
        # The store's own sweep (every 50 s here) may remove them first.
        clock.advance(60)
        young = await node.blobs.startUpload("repo")
        assert set(await node.blobs.expireUploads()) <= {"x" * 24}
        assert client.listObjects(keys.upload("x" * 24)) == []
        clock.advance(50)
        assert set(await node.blobs.expireUploads()) <= {old.uploadId, monolithic.uploadId}
        assert await node.blobs.getUpload(old.uploadId) is None
        assert await node.blobs.getUpload(young.uploadId) is not None
        left = {e["Key"] for e in client.listObjects(keys.uploads)}
        assert left == {keys.uploadInfo(young.uploadId)}
        # Multipart uploads are aborted by their real start time.
        clock.advance(time.time() + 200 - clock.seconds())
        await node.blobs.expireUploads()
        pending = client.s3.list_multipart_uploads(Bucket=BUCKET, Prefix=keys.blobs).get("Uploads", [])
        assert pending == []
        assert await node.blobs.getUpload(young.uploadId) is None
    finally:
        node.close()


def _deadClient() -> S3Client:
    config = S3Config(BUCKET, endpoint=f"http://127.0.0.1:{freePort()}", region=REGION, prefix="x/")
    return S3Client(config)


@pytest_twisted.ensureDeferred
async def test_unreachableStoreIs503() -> None:
    """A store nobody answers at gives 503 with Retry-After and a JSON error, never a 500."""
    client = _deadClient()
    try:
        stub = StubClient(Registry(S3ManifestBackend(client), S3BlobStore(client)))
        for method, path in [
            ("GET", "/v2/repo/tags/list"),
            ("GET", "/v2/repo/manifests/latest"),
            ("HEAD", f"/v2/repo/blobs/{digestOf(b'x')}"),
            ("POST", "/v2/repo/blobs/uploads/"),
            ("GET", "/v2/_catalog"),
        ]:
            response = await stub.request(method, path)
            assert response.code == 503, (method, path)
            assert response.headers.getRawHeaders("Retry-After") == ["5"]
            if method != "HEAD":
                assert errorCode(response) == "UNAVAILABLE"
                assert "unreachable" in json.loads(response.body)["errors"][0]["detail"]["reason"]
    finally:
        client.close()


def _options(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_startupCheck(seaweedfs: SeaweedFS) -> None:
    """A wrong endpoint, bucket or secret is a one-line usage error naming the cause; a right one passes."""
    good = s3Arguments(seaweedfs)
    _options(*good)
    badSecret = seaweedfs.directory / "bad-credentials"
    badSecret.write_text("[default]\naws_access_key_id = ociklein-test\naws_secret_access_key = wrong\n")
    for args, message in [
        ([*good, f"--s3-endpoint=http://127.0.0.1:{freePort()}"], "Could not connect"),
        ([*good, "--s3-bucket=no-such-bucket"], "no such bucket"),
        ([*good, f"--s3-credentials={badSecret}"], "access denied, check the credentials"),
    ]:
        with pytest.raises(UsageError) as raised:
            _options(*args)
        assert message in str(raised.value)
        assert "\n" not in str(raised.value)


def test_twistdRefusesMissingBucket(seaweedfs: SeaweedFS, tmp_path: Any) -> None:
    """twistd ociregistry with a bucket that does not exist exits non-zero with one line, no traceback."""
    from test_tap import TWISTD

    args = [*s3Arguments(seaweedfs), "--s3-bucket=absent", "--listen=tcp:0:interface=127.0.0.1"]
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "ociregistry", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1].endswith("no such bucket"), output


def test_sessionInfoDamaged() -> None:
    """A damaged or inconsistent session info is treated as no session, never trusted."""
    from ociklein.storage.s3._uploads import SessionInfo

    good = SessionInfo("repo", 1.0, PART, True, 1, PART + 3, "k")
    assert SessionInfo.decode(good.encode()) is not None
    for bad in [
        b"not json",
        b"[]",
        json.dumps({**vars(good), "parts": 2}).encode(),  # more parts than bytes
        json.dumps({**vars(good), "partSize": 0}).encode(),
        json.dumps({**vars(good), "extra": 1}).encode(),
    ]:
        assert SessionInfo.decode(bad) is None


@pytest_twisted.ensureDeferred
async def test_tagsOnFoundWithoutMD5ETags(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleting a manifest finds its tags by reading them when the store's ETags are not MD5s."""
    node = S3Backends(seaweedfs)
    try:
        m = node.manifests
        one, two = digestOf(b"one"), digestOf(b"two")
        await m.putManifest("repo", one, "application/json", b"one", None, {})
        await m.setTag("repo", "a", one)
        await m.setTag("repo", "b", two)
        listed = node.client.listObjects

        def opaque(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            return [
                e | {"ETag": '"' + hashlib.sha256(e["Key"].encode()).hexdigest() + '-1"'}
                for e in listed(*args, **kwargs)
            ]

        monkeypatch.setattr(node.client, "listObjects", opaque)
        assert await m.deleteManifest("repo", one) is True
        assert await m.resolveTag("repo", "a") is None
        assert await m.resolveTag("repo", "b") == two
    finally:
        node.close()


@pytest_twisted.ensureDeferred
async def test_touchDuringCollectionReportsMissing(seaweedfs: SeaweedFS) -> None:
    """A use recorded while a collector holds the fence of a blob is reported missing, not counted on."""
    node = S3Backends(seaweedfs)
    try:
        upload = await node.blobs.startUpload("repo", resumable=False)
        await upload.write(b"collected?")
        digest = digestOf(b"collected?")
        await upload.commit(digest)
        await node.blobs.link("repo", digest)
        assert await node.blobs.touch("repo", [digest]) == []
        blobKey = node.client.keys.blob(digest)
        held = await node.blobs.acquireCollectorLease("a collector")
        node.client.put(node.blobs._uses.fenceKey(blobKey), b"")
        assert await node.blobs.touch("repo", [digest]) == [digest]
        assert await node.manifests.touchManifests("repo", [digest]) == [digest]  # (no such manifest)
        node.client.delete(node.blobs._uses.fenceKey(blobKey))
        assert await node.blobs.touch("repo", [digest]) == []
        await held.release()
        assert await node.blobs.touch("repo", [digest]) == []
    finally:
        node.close()


@pytest_twisted.ensureDeferred
async def test_concurrentTagWritesLastWins(twoNodes: tuple[S3Backends, S3Backends]) -> None:
    """Two nodes moving one tag at once leave one whole digest, read alike by both."""
    from twisted.internet.defer import gatherResults

    a, b = twoNodes
    digests = [digestOf(str(i).encode()) for i in range(20)]
    await gatherResults([(a, b)[i % 2].manifests.setTag("repo", "latest", d) for i, d in enumerate(digests)])
    final = await a.manifests.resolveTag("repo", "latest")
    assert final in digests
    assert await b.manifests.resolveTag("repo", "latest") == final
    assert await b.manifests.listTags("repo", None, 10) == ["latest"]


@pytest_twisted.ensureDeferred
async def test_catalogOfLongNames(seaweedfs: SeaweedFS) -> None:
    """Repository names up to 255 characters, some starting others, are listed and paged in order."""
    node = S3Backends(seaweedfs)
    try:
        names = ["a", "x" * 99, "x" * 100, "x" * 101, "x" * 100 + "/a", "x" * 255, "x" * 100 + "-a", "y"]
        for name in names:
            await node.manifests.setTag(name, "t", digestOf(name.encode()))
            await node.blobs.link(name, digestOf(name.encode()))
        expected = sorted(names)
        assert await node.manifests.listRepositories(None, 100) == expected
        paged, last = [], None
        while page := await node.manifests.listRepositories(last, 3):
            paged += page
            last = page[-1]
        assert paged == expected
        assert await node.blobs.listLinkedRepositories(expected[2], 100) == expected[3:]
    finally:
        node.close()


@pytest_twisted.ensureDeferred
async def test_putsSendNoExpectContinue(twoNodes: tuple[S3Backends, S3Backends]) -> None:
    """
    No request carries C{Expect: 100-continue}: botocore's own handling of
    the interim answer can leave a pooled connection reading a response
    whose status line it already consumed, until the read timeout.
    """
    a, _ = twoNodes
    sent: list[tuple[str, str, str | None]] = []

    def seen(request: Any, **kwargs: Any) -> None:
        expect = request.headers.get("Expect")
        sent.append((request.method, request.url, expect.decode() if isinstance(expect, bytes) else expect))

    def seenLean(operation: str, url: str, headers: Any) -> None:
        sent.append(("PUT" if operation == "PutObject" else operation, url, headers.get("Expect")))

    a.client.s3.meta.events.register("before-send.s3", seen)
    a.client.lean.observers.append(seenLean)
    try:
        data = os.urandom(PART + 10)
        upload = await a.blobs.startUpload("repo")
        await upload.write(data)
        await upload.flush()
        await upload.commit(digestOf(data))
        manifest = b'{"schemaVersion": 2}'
        await a.manifests.putManifest("repo", digestOf(manifest), "application/json", manifest, None, {})
        await a.manifests.setTag("repo", "v1", digestOf(manifest))
    finally:
        a.client.s3.meta.events.unregister("before-send.s3", seen)
        a.client.lean.observers.remove(seenLean)
    puts = [entry for entry in sent if entry[0] in ("PUT", "POST")]
    assert any("partNumber=" in url for _, url, _ in puts), sent
    assert len(puts) >= 3, sent
    assert [entry for entry in puts if entry[2] is not None] == []


class _Requests:
    """
    The S3 operations a client sends, by name, from botocore's events and
    the lean path's observers.
    """

    def __init__(self, client: S3Client) -> None:
        self.calls: list[str] = []
        self._client = client
        client.s3.meta.events.register("before-call.s3", self._seen)
        client.lean.observers.append(self._seenLean)

    def _seen(self, model: Any, **kwargs: Any) -> None:
        self.calls.append(model.name)

    def _seenLean(self, operation: str, url: str, headers: Any) -> None:
        self.calls.append(operation)

    def close(self) -> None:
        self._client.s3.meta.events.unregister("before-call.s3", self._seen)
        self._client.lean.observers.remove(self._seenLean)


def _imageManifest(config: bytes, layer: bytes, note: str) -> bytes:
    from helpers import imageManifest

    return json.dumps(imageManifest(config, [layer], annotations={"note": note})).encode()


@pytest_twisted.ensureDeferred
async def test_requestsPerManifestPutAndGet(twoNodes: tuple[S3Backends, S3Backends]) -> None:
    """
    A manifest PUT by tag over two blobs costs 18 S3 requests (no per-key
    fence reads without a collector lease, no uses written again after the
    store, the catalog entry written once per node); a GET by tag of a
    manifest the node read before costs one.
    """
    from helpers import OCI_MANIFEST, pushBlob

    a, _ = twoNodes
    stub = StubClient(Registry(a.manifests, a.blobs))
    config, layer = b'{"n": 1}', b"layer" * 100
    await pushBlob(stub, "app", config)
    await pushBlob(stub, "app", layer)
    headers = {"Content-Type": OCI_MANIFEST}
    first = await stub.request(
        "PUT", "/v2/app/manifests/v0", data=_imageManifest(config, layer, "0"), headers=headers
    )
    assert first.code == 201
    requests = _Requests(a.client)
    try:
        pushed = await stub.request(
            "PUT", "/v2/app/manifests/v1", data=_imageManifest(config, layer, "1"), headers=headers
        )
        assert pushed.code == 201
        put = list(requests.calls)
        requests.calls.clear()
        assert (await stub.request("GET", "/v2/app/manifests/v1")).code == 200
        firstGet = list(requests.calls)
        requests.calls.clear()
        assert (await stub.request("GET", "/v2/app/manifests/v1")).code == 200
        assert (await stub.request("HEAD", "/v2/app/manifests/v1")).code == 200
        cached = list(requests.calls)
    finally:
        requests.close()
    # 4 uses, the lease and 4 HEADs for the blobs and links, with a HEAD of
    # the manifest (stored?); the manifest, then the tag; the lease, then
    # HEADs of the blobs, links and manifest.
    assert len(put) == 18, sorted(put)
    assert {name: put.count(name) for name in set(put)} == {"PutObject": 6, "HeadObject": 12}
    assert firstGet == ["GetObject", "GetObject"]
    assert cached == ["GetObject", "GetObject"]  # the tag, twice


@pytest_twisted.ensureDeferred
async def test_manifestPutUnderLeaseRecordsUsesAgain(twoNodes: tuple[S3Backends, S3Backends]) -> None:
    """
    While a collection holds the lease, a manifest PUT records the uses of
    its blobs, links and itself again after the store, and looks for fences.
    """
    from helpers import OCI_MANIFEST, pushBlob

    a, b = twoNodes
    stub = StubClient(Registry(a.manifests, a.blobs))
    config, layer = b'{"n": 2}', b"leased" * 100
    await pushBlob(stub, "app", config)
    await pushBlob(stub, "app", layer)
    held = await b.blobs.acquireCollectorLease("a test collection")
    requests = _Requests(a.client)
    try:
        pushed = await stub.request(
            "PUT",
            "/v2/app/manifests/v1",
            data=_imageManifest(config, layer, "leased"),
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert pushed.code == 201
    finally:
        requests.close()
        await held.release()
    put = requests.calls
    # Before: 4 uses, the lease, 4 fences, 4 HEADs and the manifest's HEAD;
    # the catalog entry, the manifest and the tag; after: the lease, then 5
    # uses, the lease, 5 fences and 5 HEADs.
    assert {name: put.count(name) for name in set(put)} == {"PutObject": 12, "HeadObject": 22}


@pytest_twisted.ensureDeferred
async def test_cachedManifestFollowsOtherNodes(twoNodes: tuple[S3Backends, S3Backends]) -> None:
    """A node that keeps a manifest still sees at once a tag moved, or a manifest deleted, by another node."""
    a, b = twoNodes
    one, two = b'{"schemaVersion": 2, "n": 1}', b'{"schemaVersion": 2, "n": 2}'
    for content in (one, two):
        await a.manifests.putManifest("repo", digestOf(content), "application/json", content, None, {})
    await a.manifests.setTag("repo", "t", digestOf(one))
    assert await a.manifests.getTaggedManifest("repo", "t") == (digestOf(one), "application/json", one)
    await b.manifests.setTag("repo", "t", digestOf(two))
    assert await a.manifests.getTaggedManifest("repo", "t") == (digestOf(two), "application/json", two)
    assert await b.manifests.deleteManifest("repo", digestOf(two)) is True
    assert await a.manifests.getTaggedManifest("repo", "t") is None
    assert await a.manifests.getManifest("repo", digestOf(two)) is None


@pytest_twisted.ensureDeferred
async def test_deletionOutsideCollectionWaitsForLease(seaweedfs: SeaweedFS) -> None:
    """A fenced deletion while another collection holds the lease deletes nothing; without one it deletes."""
    first = S3Backends(seaweedfs)
    other = S3Backends(seaweedfs, first.prefix)
    try:
        upload = await first.blobs.startUpload("repo", resumable=False)
        await upload.write(b"old blob")
        await upload.commit(digestOf(b"old blob"))
        later = (await first.blobs.now()) + 10
        held = await other.blobs.acquireCollectorLease("another collection")
        assert await first.blobs.deleteBlob(digestOf(b"old blob"), later) is False
        assert await first.blobs.stat(digestOf(b"old blob")) == 8
        await held.release()
        assert await first.blobs.deleteBlob(digestOf(b"old blob"), later) is True
        assert await first.blobs.stat(digestOf(b"old blob")) is None
        assert first.client.head(first.client.keys.collectorLease) is None
    finally:
        other.close()
        first.close()


async def _idle(reader: Any) -> None:
    """
    Wait (at most 30 s) until a reader has no read running.
    """
    await waitFor(lambda: reader._fetching is None, 30, "the reader done reading")


@pytest_twisted.ensureDeferred
async def test_downloadStreamsInTrips(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    """A download keeps one GET open across its trips to the pool, each bringing at most _TRIP bytes."""
    from ociklein.storage.s3 import _blobs

    monkeypatch.setattr(_blobs, "_TRIP", 2 * MIB)
    node = S3Backends(seaweedfs, readAhead=64 * MIB)
    try:
        data = os.urandom(10 * MIB + 5)
        upload = await node.blobs.startUpload("repo", resumable=False)
        await upload.write(data)
        await upload.commit(digestOf(data))
        requests = _Requests(node.client)
        reader: Any = await node.blobs.open(digestOf(data))
        trips: list[int] = []
        stream = reader._stream
        reader._stream = lambda offset: (trips.append(offset), stream(offset))[1]
        try:
            got = [await reader.read(offset, MIB) for offset in range(0, len(data), MIB)]
        finally:
            reader.close()
            requests.close()
        assert b"".join(got) == data
        assert trips == [0, 2 * MIB, 4 * MIB, 6 * MIB, 8 * MIB, 10 * MIB], trips
        assert requests.calls.count("GetObject") == 1, requests.calls
    finally:
        node.close()


@pytest_twisted.ensureDeferred
async def test_readAheadIsBounded(seaweedfs: SeaweedFS) -> None:
    """A download reads ahead of its client up to --s3-read-ahead, no further; 0 reads only what is asked."""
    ahead = S3Backends(seaweedfs, readAhead=3 * MIB)
    none = S3Backends(seaweedfs, ahead.prefix, readAhead=0)
    try:
        data = os.urandom(10 * MIB + 5)
        upload = await ahead.blobs.startUpload("repo", resumable=False)
        await upload.write(data)
        await upload.commit(digestOf(data))
        for node, limit in ((ahead, 3 * MIB), (none, 0)):
            requests = _Requests(node.client)
            reader: Any = await node.blobs.open(digestOf(data))
            try:
                assert await reader.read(0, MIB) == data[:MIB]
                await _idle(reader)
                assert (len(reader._buffer) > 0) == (limit > 0) and len(reader._buffer) <= limit
                assert await reader.read(MIB, 2 * MIB) == data[MIB : 3 * MIB]
                await _idle(reader)
                assert (len(reader._buffer) > 0) == (limit > 0) and len(reader._buffer) <= limit
                assert await reader.read(9 * MIB, 2 * MIB) == data[9 * MIB :]  # a jump
                await _idle(reader)
            finally:
                reader.close()
                requests.close()
            assert requests.calls.count("GetObject") == 2, requests.calls  # one per offset jumped to
    finally:
        none.close()
        ahead.close()


def _multipartsUnder(node: S3Backends) -> list[str]:
    """
    The keys of multipart uploads left open under the node's blobs.
    """
    found = node.client.s3.list_multipart_uploads(Bucket=BUCKET, Prefix=node.client.keys.blobs)
    return [m["Key"] for m in found.get("Uploads", [])]


async def _pushThrough(stub: StubClient, data: bytes, digest: str, monolithic: bool) -> Any:
    """
    One request carrying the whole blob: C{POST ?digest=}, or C{POST} then
    C{PUT ?digest=} with the body.
    """
    if monolithic:
        return await stub.request("POST", f"/v2/repo/blobs/uploads/?digest={digest}", data=data)
    started = await stub.request("POST", "/v2/repo/blobs/uploads/")
    location = started.headers.getRawHeaders("Location")[0]
    return await stub.request("PUT", f"{location}?digest={digest}", data=data)


@pytest.mark.parametrize("monolithic", [True, False])
@pytest_twisted.ensureDeferred
async def test_digestFirstWritesTheBlobOnce(seaweedfs: SeaweedFS, monolithic: bool) -> None:
    """A push whose digest comes before its data sends its parts to the blob: no part objects, no copies."""
    node = S3Backends(seaweedfs, partSize=PART)
    requests = _Requests(node.client)
    try:
        stub = StubClient(Registry(node.manifests, node.blobs))
        data = os.urandom(2 * PART + 7)
        response = await _pushThrough(stub, data, digestOf(data), monolithic)
        assert response.code == 201, response.body
        assert "UploadPartCopy" not in requests.calls, requests.calls
        assert requests.calls.count("UploadPart") == 3, requests.calls
        assert requests.calls.count("CompleteMultipartUpload") == 1, requests.calls
        assert (await stub.request("GET", f"/v2/repo/blobs/{digestOf(data)}")).body == data
        assert node.client.listObjects(node.client.keys.uploads) == []
        again = await _pushThrough(stub, data, digestOf(data), monolithic)
        assert again.code == 201 and _multipartsUnder(node) == []  # stored already: its upload aborted
    finally:
        requests.close()
        node.close()


@pytest.mark.parametrize("monolithic", [True, False])
@pytest_twisted.ensureDeferred
async def test_digestFirstWrongDigestStoresNothing(seaweedfs: SeaweedFS, monolithic: bool) -> None:
    """A digest-first push whose data does not match is refused, its blob's multipart upload aborted."""
    node = S3Backends(seaweedfs, partSize=PART)
    try:
        stub = StubClient(Registry(node.manifests, node.blobs))
        data = os.urandom(PART + 7)
        response = await _pushThrough(stub, data, digestOf(b"other"), monolithic)
        assert response.code == 400 and errorCode(response) == "DIGEST_INVALID"
        assert await node.blobs.stat(digestOf(b"other")) is None
        assert _multipartsUnder(node) == []
    finally:
        node.close()


@pytest_twisted.ensureDeferred
async def test_digestFirstLeftUnfinishedContinuesFromTheBucket(seaweedfs: SeaweedFS) -> None:
    """A digest-first request ending uncommitted aborts its blob's upload; the session goes on as stored"""

    node = S3Backends(seaweedfs, partSize=PART)
    try:
        upload: Any = await node.blobs.startUpload("repo")
        data = os.urandom(PART + 1)
        upload.expectDigest(digestOf(data))
        await upload.write(data)
        await upload._settled()  # the part sent
        assert len(_multipartsUnder(node)) == 1
        upload.close()  # the request ended: the client went away mid-body
        await waitFor(lambda: not _multipartsUnder(node), 30, "the multipart upload aborted")
        assert _multipartsUnder(node) == []
        resumed: Any = await node.blobs.getUpload(upload.uploadId)
        assert resumed is not upload and resumed.size == 0
        await resumed.write(b"more")
        await resumed.commit(digestOf(b"more"))
        assert await node.blobs.stat(digestOf(b"more")) == 4
    finally:
        node.close()


@pytest_twisted.ensureDeferred
async def test_partsStoredWhileTheNextFills(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    """One session's write returns while its part is stored; beyond SPARE_PARTS a write waits for its part."""
    import threading

    from ociklein.storage.s3 import _uploads

    monkeypatch.setattr(_uploads, "SPARE_PARTS", 1)
    gate, entered = threading.Event(), threading.Semaphore(0)
    store = _uploads.S3Upload._storePart

    def held(self: Any, number: int, part: bytearray) -> None:
        entered.release()
        gate.wait(30)
        store(self, number, part)

    monkeypatch.setattr(_uploads.S3Upload, "_storePart", held)
    node = S3Backends(seaweedfs, partSize=PART)
    try:
        first: Any = await node.blobs.startUpload("repo")
        second: Any = await node.blobs.startUpload("repo")
        await first.write(os.urandom(PART + 1))  # returns with its part held
        assert entered.acquire(timeout=30)
        waiting = second.write(os.urandom(PART + 1))
        # The reactor turns while the part is being sent.
        await waitFor(lambda: entered.acquire(blocking=False), 30, "the second part sent")
        assert not waiting.called  # no spare part left: it waits for its own
        gate.set()
        await waiting
        await first.flush()
        await second.flush()
        assert (first._parts, second._parts) == (1, 1)
    finally:
        gate.set()
        node.close()


@pytest_twisted.ensureDeferred
async def test_commitCopiesPartsAFewAtATime(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit copies its parts concurrently, but never more than _COPIES at once."""
    import threading

    from ociklein.storage.s3 import _uploads

    monkeypatch.setattr(_uploads, "_COPIES", 2)
    node = S3Backends(seaweedfs, partSize=PART)
    running, most, lock = [0], [0], threading.Lock()
    copy = node.client.s3.upload_part_copy

    def counted(**kwargs: Any) -> Any:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.2)  # long enough for every copy queued at once to start
            return copy(**kwargs)
        finally:
            with lock:
                running[0] -= 1

    try:
        data = os.urandom(5 * PART)
        upload: Any = await node.blobs.startUpload("repo")
        await upload.write(data)
        await upload.flush()
        node.client.s3.upload_part_copy = counted
        await upload.commit(digestOf(data))
        assert most[0] == 2
        reader: Any = await node.blobs.open(digestOf(data))
        try:
            assert await reader.read(0, len(data)) == data
        finally:
            reader.close()
    finally:
        node.client.s3.upload_part_copy = copy
        node.close()


@pytest_twisted.ensureDeferred
async def test_partsAreSentWithoutPayloadHash(seaweedfs: SeaweedFS) -> None:
    """Parts go to the store unsigned (UNSIGNED-PAYLOAD): botocore hashes no body a second time."""
    node = S3Backends(seaweedfs, partSize=PART)
    sent: list[str] = []

    def seen(request: Any, **kwargs: Any) -> None:
        sent.append(request.headers.get("X-Amz-Content-SHA256", b"").decode())

    node.client.s3.meta.events.register("before-send.s3.PutObject", seen)
    try:
        upload: Any = await node.blobs.startUpload("repo")
        await upload.write(os.urandom(PART + 1))
        await upload.flush()
        assert sent and set(sent) == {"UNSIGNED-PAYLOAD"}, sent
    finally:
        node.client.s3.meta.events.unregister("before-send.s3.PutObject", seen)
        node.close()
