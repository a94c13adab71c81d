"""
The lean paths of the s3 backend (L{ociklein.storage.s3._lean}, and
L{ociklein.storage.s3._reactorreads} on the reactor) against a scripted
HTTP server: signing, error mapping, retries, credentials, connections.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import pytest_twisted
from botocore.credentials import Credentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError
from botocore.httpsession import URLLib3Session
from twisted.internet.defer import Deferred, succeed

from ociklein.interfaces import StorageUnavailable
from ociklein.storage.s3._client import isMissing, translate
from ociklein.storage.s3._lean import LeanS3
from ociklein.storage.s3._reactorreads import MAX_BODY, ReactorReads

_Answer = tuple[int, dict[str, str], bytes]


class _Store(BaseHTTPRequestHandler):
    """
    Answers each request with the next scripted answer (200 and an empty
    body once the script is used up), and records what it was sent.
    """

    protocol_version = "HTTP/1.1"
    script: list[_Answer]
    seen: list[tuple[str, str, dict[str, str], bytes]]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        self.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        status, headers, content = self.script.pop(0) if self.script else (200, {}, b"")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        chunked = headers.get("Transfer-Encoding") == "chunked"
        if not chunked:
            self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(content), content) if chunked else content)
        # Close without saying so, as a store closing an idle connection.
        self.close_connection = self.close_connection or "X-Close" in headers

    do_GET = do_PUT = do_HEAD = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def store() -> Iterator[tuple[str, type[_Store]]]:
    handler = type("Store", (_Store,), {"script": [], "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _lean(
    endpoint: str, credentials: Any = None, attempts: int = 3, clientConfig: Any = None
) -> tuple[LeanS3, list[float]]:
    slept: list[float] = []
    lean = LeanS3(
        URLLib3Session(timeout=(5, 10)),
        credentials or Credentials("KEY", "SECRET"),
        "bucket",
        endpoint,
        "us-east-1",
        attempts,
        sleep=slept.append,
        clientConfig=clientConfig,
    )
    return lean, slept


def _error(code: str) -> bytes:
    return f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>no</Message></Error>".encode()


def test_signedPathStyleRequests(store: tuple[str, type[_Store]]) -> None:
    """Requests go path-style to the bucket, SigV4-signed over the body, with metadata as headers."""
    endpoint, handler = store
    lean, _ = _lean(endpoint)
    lean.put("pre/a b/tag", b"sha256:1\n", ContentType="text/plain", Metadata={"subject": "s"})
    method, path, headers, body = handler.seen[0]
    assert (method, path, body) == ("PUT", "/bucket/pre/a%20b/tag", b"sha256:1\n")
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=KEY/")
    assert "/us-east-1/s3/aws4_request" in headers["authorization"]
    assert headers["x-amz-content-sha256"] == hashlib.sha256(b"sha256:1\n").hexdigest()
    assert headers["content-type"] == "text/plain"
    assert headers["x-amz-meta-subject"] == "s"
    assert "expect" not in headers


def test_payloadSignedAsTheClientIsConfigured(store: tuple[str, type[_Store]]) -> None:
    """With the boto3 client's payload signing off, bodies go unhashed (UNSIGNED-PAYLOAD), as boto3 does."""
    from botocore.config import Config

    endpoint, handler = store
    lean, _ = _lean(endpoint, clientConfig=Config(s3={"payload_signing_enabled": False}))
    lean.put("tail", b"x" * 1000)
    assert handler.seen[0][2]["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert handler.seen[0][3] == b"x" * 1000


def test_responsesShapedLikeBoto3(store: tuple[str, type[_Store]]) -> None:
    """GET and HEAD answer with boto3's names for type, length, ETag, time and metadata; 404 is None."""
    endpoint, handler = store
    headers = {
        "Content-Type": "application/json",
        "ETag": '"abc"',
        "Last-Modified": "Wed, 02 Dec 2026 10:00:00 GMT",
        "X-Amz-Meta-Subject": "sha256:1",
    }
    handler.script += [
        (200, headers, b"{}"),
        (200, headers, b"{}"),
        (404, {}, b""),
        (404, {}, _error("NoSuchKey")),
    ]
    lean, _ = _lean(endpoint)
    found = lean.get("k")
    assert found is not None
    content, response = found
    assert content == b"{}"
    assert response["ContentType"] == "application/json"
    assert response["ETag"] == '"abc"'
    assert response["Metadata"] == {"subject": "sha256:1"}
    assert response["LastModified"] == datetime(2026, 12, 2, 10, tzinfo=UTC)
    head = lean.head("k")
    assert head is not None and head["ContentLength"] == 2
    assert lean.head("gone") is None
    assert lean.get("gone") is None


def test_transientFailuresRetried(store: tuple[str, type[_Store]]) -> None:
    """A throttled or failing store is asked again, with backoff, up to the attempts allowed."""
    endpoint, handler = store
    handler.script += [(503, {}, _error("SlowDown")), (500, {}, _error("InternalError")), (200, {}, b"x")]
    lean, slept = _lean(endpoint)
    found = lean.get("k")
    assert found is not None and found[0] == b"x"
    assert len(handler.seen) == 3
    assert len(slept) == 2 and 0 <= slept[0] <= 1 and 0 <= slept[1] <= 2


def test_persistentFailureBecomesUnavailable(store: tuple[str, type[_Store]]) -> None:
    """A store that keeps failing raises, after the last attempt, what translate makes a 503."""
    endpoint, handler = store
    handler.script += [(503, {}, _error("SlowDown"))] * 3
    lean, _ = _lean(endpoint)
    with pytest.raises(ClientError) as raised:
        lean.put("k", b"x")
    assert len(handler.seen) == 3
    unavailable = translate(raised.value)
    assert isinstance(unavailable, StorageUnavailable) and unavailable.retryAfter == 1


def test_refusalNotRetried(store: tuple[str, type[_Store]]) -> None:
    """A refusal (403) is raised at once, with its S3 code, and becomes a 503; a 404 on PUT is missing."""
    endpoint, handler = store
    handler.script += [(403, {}, _error("AccessDenied")), (404, {}, _error("NoSuchBucket"))]
    lean, slept = _lean(endpoint)
    with pytest.raises(ClientError) as raised:
        lean.delete("k")
    assert raised.value.response["Error"]["Code"] == "AccessDenied"
    assert isinstance(translate(raised.value), StorageUnavailable)
    with pytest.raises(ClientError) as missing:
        lean.put("k", b"")
    assert isMissing(missing.value)
    assert len(handler.seen) == 2 and slept == []


def test_unreachableStoreRetriedThenUnavailable() -> None:
    """A store that refuses connections is tried each attempt, then raises what translate makes a 503."""
    from twistdprocess import freePort

    lean, slept = _lean(f"http://127.0.0.1:{freePort()}")
    with pytest.raises(BotoCoreError) as raised:
        lean.get("k")
    assert len(slept) == 2
    assert isinstance(translate(raised.value), StorageUnavailable)


def test_credentialsRefreshed(store: tuple[str, type[_Store]]) -> None:
    """Each request is signed with the credentials as they are now, refreshed once expired."""
    endpoint, handler = store
    soon = datetime.now(UTC) + timedelta(hours=1)

    def refresh() -> dict[str, str]:
        return {"access_key": "NEWKEY", "secret_key": "S", "token": "T", "expiry_time": soon.isoformat()}

    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    credentials = RefreshableCredentials.create_from_metadata(
        {"access_key": "OLDKEY", "secret_key": "S", "token": "T", "expiry_time": past}, refresh, "test"
    )
    lean, _ = _lean(endpoint, credentials)
    lean.head("k")
    headers = handler.seen[0][2]
    assert "Credential=NEWKEY/" in headers["authorization"]
    assert headers["x-amz-security-token"] == "T"


class _Reads:
    """
    L{ReactorReads} on the scripted store, with a fallback that records
    the keys left to the pool path.
    """

    def __init__(
        self, endpoint: str, connections: int = 4, timeout: float = 10.0, credentials: Any = None
    ) -> None:
        from twisted.internet import reactor

        self.fellBack: list[str] = []
        lean, _ = _lean(endpoint, credentials)
        self.reads = ReactorReads(reactor, lean, self._fallback, connections, timeout)

    def _fallback(self, key: str) -> Deferred[Any]:
        self.fellBack.append(key)
        return succeed((b"from the pool", {}))

    async def get(self, key: str) -> Any:
        from twisted.internet import reactor

        return await self.reads.get(key).addTimeout(20, reactor)


@pytest_twisted.ensureDeferred
async def test_reactorReadsKeepConnections(store: tuple[str, type[_Store]]) -> None:
    """Signed GETs on the reactor reuse one keep-alive connection; 200 gives the bytes, 404 None."""
    endpoint, handler = store
    handler.script += [(200, {"ETag": '"e"'}, b"sha256:1\n"), (404, {}, _error("NoSuchKey"))]
    handler.script += [(200, {}, b"x" * 1000)] * 3
    reads = _Reads(endpoint)
    try:
        found = await reads.get("pre/tags/a b")
        assert found[0] == b"sha256:1\n" and found[1]["ETag"] == '"e"'
        assert await reads.get("gone") is None
        for _ in range(3):
            assert (await reads.get("k"))[0] == b"x" * 1000
        assert reads.reads.opened == 1 and reads.fellBack == []
        method, path, headers, _ = handler.seen[0]
        assert (method, path) == ("GET", "/bucket/pre/tags/a%20b")
        assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=KEY/")
        assert headers["host"] == endpoint.removeprefix("http://")
    finally:
        reads.reads.close()


@pytest_twisted.ensureDeferred
async def test_reactorReadsLeaveTheRestToThePool(store: tuple[str, type[_Store]]) -> None:
    """Another status, a chunked or too large body, and a refused connection are asked of the pool path."""
    endpoint, handler = store
    handler.script += [
        (503, {}, _error("SlowDown")),
        (200, {"Transfer-Encoding": "chunked"}, b"chunked"),
        (200, {}, b"x" * (MAX_BODY + 1)),
        (200, {}, b"plain"),
    ]
    reads = _Reads(endpoint)
    try:
        for key in ("throttled", "chunked", "large"):
            assert (await reads.get(key))[0] == b"from the pool"
        assert (await reads.get("plain"))[0] == b"plain"
        assert reads.fellBack == ["throttled", "chunked", "large"]
    finally:
        reads.reads.close()
    from twistdprocess import freePort

    unreachable = _Reads(f"http://127.0.0.1:{freePort()}")
    assert (await unreachable.get("k"))[0] == b"from the pool"
    assert unreachable.fellBack == ["k"]


@pytest_twisted.ensureDeferred
async def test_reactorReadsBoundedConnections(store: tuple[str, type[_Store]]) -> None:
    """Many GETs at once share at most the pool's connections, and all are answered."""
    from twisted.internet.defer import gatherResults

    endpoint, handler = store
    reads = _Reads(endpoint, connections=3)
    try:
        results = await gatherResults([reads.reads.get(f"k{i}") for i in range(30)])
        assert [r[0] for r in results] == [b""] * 30
        assert reads.reads.opened <= 3 and reads.fellBack == []
        assert len(handler.seen) == 30
    finally:
        reads.reads.close()


@pytest_twisted.ensureDeferred
async def test_reactorReadsAfterStoreClosedConnection(store: tuple[str, type[_Store]]) -> None:
    """A connection the store closed (without saying so) is not reused: the next GET still gets its answer."""
    endpoint, handler = store
    handler.script += [(200, {"X-Close": "1"}, b"first"), (200, {}, b"second")]
    reads = _Reads(endpoint)
    try:
        assert (await reads.get("a"))[0] == b"first"
        second = await reads.get("b")
        assert second[0] in (b"second", b"from the pool")
    finally:
        reads.reads.close()


@pytest_twisted.ensureDeferred
async def test_reactorReadTimesOut() -> None:
    """A store that accepts but never answers is unavailable after the read timeout, not waited on forever."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        reads = _Reads(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
        with pytest.raises(StorageUnavailable):
            await reads.get("k")
        assert reads.fellBack == []
        reads.reads.close()
    finally:
        listener.close()


@pytest_twisted.ensureDeferred
async def test_reactorReadsLeaveRefreshToThePool(store: tuple[str, type[_Store]]) -> None:
    """Credentials due for a refresh (a network call) send the read to the pool, never block the reactor."""
    endpoint, handler = store

    refreshed: list[bool] = []
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()

    def refresh() -> dict[str, str]:
        refreshed.append(True)
        return {"access_key": "NEWKEY", "secret_key": "S", "token": "T", "expiry_time": soon}

    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    credentials = RefreshableCredentials.create_from_metadata(
        {"access_key": "OLDKEY", "secret_key": "S", "token": "T", "expiry_time": past}, refresh, "test"
    )
    reads = _Reads(endpoint, credentials=credentials)
    try:
        assert (await reads.get("k"))[0] == b"from the pool"
        assert reads.fellBack == ["k"] and handler.seen == [] and refreshed == []
    finally:
        reads.reads.close()
