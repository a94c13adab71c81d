"""
Manifest GET, HEAD and PUT and blob HEAD are served without Klein: what
goes over the wire must be byte for byte what Klein's route would have sent.
"""

from __future__ import annotations

import gc
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import StubClient, makeBackends, serve
from helpers import OCI_MANIFEST, digestOf, imageManifest, pushBlob, putManifest
from klein.resource import KleinResource
from twisted.internet import defer, threads
from twisted.logger import globalLogPublisher

import ociklein.http._routes
from ociklein import MemoryBlobStore, Registry
from ociklein.storage.memory import MemoryManifestBackend

CONFIG = b'{"os": "linux"}'
LAYER = b"layer bytes"
MANIFEST = imageManifest(CONFIG, [LAYER])


def _raw(port: int, request: bytes) -> bytes:
    """
    Send one raw HTTP request on a fresh connection; the whole answer.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _withoutDate(response: bytes) -> bytes:
    # The date and the request id differ from one answer to the next.
    varying = (b"date:", b"x-request-id:")
    return b"\r\n".join(line for line in response.split(b"\r\n") if not line.lower().startswith(varying))


@pytest_twisted.async_yield_fixture(params=["memory", "fs"])
async def port(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[int]:
    """
    A registry on a real port holding one image, tagged C{latest} in
    C{repo} and in C{a/b}.
    """
    manifests, blobs = makeBackends(request.param, tmp_path / "root")
    registry = Registry(manifests, blobs)
    async for live in serve(registry):
        content = json.dumps(MANIFEST).encode()
        for name in ["repo", "a/b"]:
            await pushBlob(live, name, CONFIG)
            await pushBlob(live, name, LAYER)
            assert (await putManifest(live, name, "latest", content)).code == 201
        yield int(live.base.rpartition(":")[2])
    if hasattr(blobs, "close"):
        blobs.close()


def _requests() -> list[bytes]:
    digest = digestOf(json.dumps(MANIFEST).encode())
    paths = [
        "/v2/repo/manifests/latest",
        f"/v2/repo/manifests/{digest}",
        "/v2/repo/manifests/missing",
        f"/v2/repo/manifests/{digest[:-1]}0",
        "/v2/repo/manifests/sha256:short",
        "/v2/repo/manifests/sha999:" + "0" * 64,
        "/v2/Upper/manifests/latest",
        "/v2/a%2Fb/manifests/latest",
        "/v2/a/b/manifests/latest",
        "/v2/a/%62/manifests/latest",
        "/v2/repo/manifests/lat%65st",
        "/v2/repo/manifests/%ff",
        "/v2//repo/manifests/latest",
        "/v2/repo/manifests/latest?x=1",
        f"/v2/repo/blobs/{digestOf(LAYER)}",
        f"/v2/repo/blobs/{digestOf(b'nothing')}",
        "/v2/repo/blobs/sha256:bad",
        f"/v2/a%2Fb/blobs/{digestOf(LAYER)}",
    ]
    accept = f"Accept: {OCI_MANIFEST}\r\n"
    built = []
    for path in paths:
        for method in ["GET", "HEAD"]:
            built.append(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n".encode())
    blob = digestOf(LAYER)
    built.append(f"HEAD /v2/repo/blobs/{blob} HTTP/1.0\r\nRange: bytes=2-4\r\n\r\n".encode())
    built.append(b"HEAD /v2/repo/manifests/latest HTTP/1.0\r\n\r\n")
    content = json.dumps(MANIFEST).encode()
    unknown = json.dumps(imageManifest(CONFIG, [b"never pushed"])).encode()
    # Each PUT answers the same the second time (through Klein) as the first.
    puts = [
        ("/v2/repo/manifests/latest", OCI_MANIFEST, content),
        ("/v2/repo/manifests/other", OCI_MANIFEST, content),
        (f"/v2/repo/manifests/{digest}", OCI_MANIFEST, content),
        (f"/v2/repo/manifests/{digest}?tag=t1&tag=t2", OCI_MANIFEST, content),
        (f"/v2/repo/manifests/{digest}?tag=bad%20tag", OCI_MANIFEST, content),
        ("/v2/repo/manifests/latest?tag=t1", OCI_MANIFEST, content),
        (f"/v2/repo/manifests/{digest[:-1]}0", OCI_MANIFEST, content),
        ("/v2/repo/manifests/missing-blob", OCI_MANIFEST, unknown),
        ("/v2/repo/manifests/latest", OCI_MANIFEST, b"{not json"),
        ("/v2/repo/manifests/latest", "text/plain", content),
        ("/v2/repo/manifests/bad%20tag", OCI_MANIFEST, content),
        ("/v2/Upper/manifests/latest", OCI_MANIFEST, content),
        ("/v2/a%2Fb/manifests/latest", OCI_MANIFEST, content),
        ("/v2/a/b/manifests/latest", OCI_MANIFEST, content),
        ("/v2//repo/manifests/latest", OCI_MANIFEST, content),
        ("/v2/repo/manifests/latest", OCI_MANIFEST, b""),
    ]
    for path, contentType, body in puts:
        head = f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {contentType}\r\n"
        built.append(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    return built


@pytest_twisted.ensureDeferred
async def test_sameBytesAsKlein(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every manifest GET/HEAD/PUT and blob HEAD, good or bad, answers exactly as through Klein."""
    requests = _requests()
    direct = [await threads.deferToThread(_raw, port, r) for r in requests]
    monkeypatch.setattr(ociklein.http._routes, "_DIRECT", frozenset())
    throughKlein = [await threads.deferToThread(_raw, port, r) for r in requests]
    for request, a, b in zip(requests, direct, throughKlein, strict=True):
        assert _withoutDate(a) == _withoutDate(b), request


@pytest_twisted.ensureDeferred
async def test_kleinIsNotCalled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Manifest GET/HEAD/PUT and blob HEAD never reach Klein; other requests still do."""
    client = StubClient(Registry())
    await pushBlob(client, "repo", CONFIG)
    await pushBlob(client, "repo", LAYER)
    await putManifest(client, "repo", "latest", json.dumps(MANIFEST).encode())
    calls: list[bytes] = []

    kleinRender = KleinResource.render

    def counted(self: Any, request: Any) -> Any:
        calls.append(b"klein " + request.method)
        return kleinRender(self, request)

    monkeypatch.setattr(KleinResource, "render", counted)
    assert (await client.request("GET", "/v2/repo/manifests/latest")).code == 200
    assert (await client.request("HEAD", "/v2/repo/manifests/latest")).code == 200
    assert (await client.request("HEAD", f"/v2/repo/blobs/{digestOf(LAYER)}")).code == 200
    assert (await client.request("GET", "/v2/repo/manifests/nope")).code == 404
    assert (await putManifest(client, "repo", "again", json.dumps(MANIFEST).encode())).code == 201
    assert calls == []
    assert (await client.request("GET", f"/v2/repo/blobs/{digestOf(LAYER)}")).code == 200
    assert calls == [b"klein GET"]


@pytest_twisted.ensureDeferred
async def test_answers(port: int) -> None:
    """HEAD has no body but GET's Content-Length and digest; errors are JSON; %2F is not a slash."""
    content = json.dumps(MANIFEST).encode()
    get = await threads.deferToThread(
        _raw, port, b"GET /v2/repo/manifests/latest HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    head = await threads.deferToThread(
        _raw, port, b"HEAD /v2/repo/manifests/latest HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    assert get.startswith(b"HTTP/1.1 200 ") and get.endswith(b"\r\n\r\n" + content)
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    for response in [get, head]:
        assert b"\r\nContent-Length: %d\r\n" % len(content) in response
        assert b"\r\nDocker-Content-Digest: " + digestOf(content).encode() + b"\r\n" in response
        assert b"\r\nContent-Type: " + OCI_MANIFEST.encode() + b"\r\n" in response
    missing = await threads.deferToThread(
        _raw, port, b"GET /v2/a%2Fb/manifests/latest HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    assert missing.startswith(b"HTTP/1.1 404 ")
    head, _, body = missing.partition(b"\r\n\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert b"\r\nContent-Length: %d\r\n" % len(body) in head + b"\r\n"
    assert [e["code"] for e in json.loads(body)["errors"]] == ["MANIFEST_UNKNOWN"]
    blobHead = await threads.deferToThread(
        _raw, port, f"HEAD /v2/repo/blobs/{digestOf(LAYER)} HTTP/1.1\r\nConnection: close\r\n\r\n".encode()
    )
    assert blobHead.endswith(b"\r\n\r\n") and b"\r\nContent-Length: %d\r\n" % len(LAYER) in blobHead


class _Held(MemoryManifestBackend):
    """
    A backend whose first tag lookup waits until the test lets it answer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[defer.Deferred[Any]] = []

    def resolveTag(self, repository: str, tag: str) -> defer.Deferred[str | None]:
        found = super().resolveTag(repository, tag)
        if self.waiting:
            return found
        held: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append(held)
        return held.addCallback(lambda _: found)


@pytest_twisted.ensureDeferred
async def test_clientGoneWhileWaiting() -> None:
    """A client that goes while its manifest GET waits on the backend gets nothing, and nothing fails."""
    backend = _Held()
    registry = Registry(backend, MemoryBlobStore())
    errors: list[Any] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    # Earlier tests' unhandled failures are logged when collected: collect
    # them now, so that only this test's are observed.
    gc.collect()
    globalLogPublisher.addObserver(observe)
    try:
        async for live in serve(registry):
            port = int(live.base.rpartition(":")[2])
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /v2/repo/manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(1000):
                if backend.waiting:
                    break
                await threads.deferToThread(lambda: None)
            s.close()
            for _ in range(20):
                await threads.deferToThread(lambda: None)
            backend.waiting[0].callback(None)
            gc.collect()  # an unhandled failure in a Deferred is logged when it is collected
            # Another request on the same server still works.
            assert (await live.request("GET", "/v2/repo/manifests/other")).code == 404
    finally:
        globalLogPublisher.removeObserver(observe)
    assert errors == []
