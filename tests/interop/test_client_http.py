"""
How ociklein.client speaks HTTP, against in-process servers: the bearer
token flow with a test token service (one token per scope, renewed when it
expires), bounded retries of idempotent requests, digests verified on
download, and TLS trust.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from clienthelpers import CuttingProxy, TokenGate
from interophelpers import RunningRegistry, selfSignedCertificate, startRegistry, stopRegistry
from ocilayout import makeImage, sha256, writeLayout
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from ociklein import Registry
from ociklein.client import Clients, RegistryClient, RegistryError, copy, push
from ociklein.http._plainhttp import RefuseTLSFactory

pytest_plugins = ["clientfixtures"]


@pytest_twisted.ensureDeferred
async def test_bearer_tokens_are_fetched_once_per_scope_and_renewed(serving: Any, tmp_path: Path) -> None:
    """A Bearer challenge gets a token per scope, reused until it expires, then renewed."""
    clock = Clock()
    gate = TokenGate(Registry().resource(), clock=clock, lifetime=300)
    base = await serving(gate)
    gate.base = base
    image = makeImage(layers=2)
    async with RegistryClient(base, ("alice", "wonderland"), reactor, clock=clock) as client:
        for data in image.blobs.values():
            await client.pushBytes("secure/app", data)
        await client.putManifest("secure/app", "v1", image.manifest, image.mediaType)
        assert (await client.getManifest("secure/app", "v1")).digest == image.digest
        assert await client.tags("secure/app") == ["v1"]
        asked = [tuple(sorted(scopes)) for scopes in gate.tokenRequests]
        assert len(asked) == len(set(asked)) == 2, asked
        assert set(asked) == {("repository:secure/app:pull,push",), ("repository:secure/app:pull",)}
        challenged = gate.challenged
        clock.advance(301)
        assert await client.tags("secure/app") == ["v1"]
        assert len(gate.tokenRequests) == 3 and gate.tokenRequests[-1] == ["repository:secure/app:pull"]
        assert gate.challenged == challenged


@pytest_twisted.ensureDeferred
async def test_bearer_flow_refused_is_one_unauthorized_error(serving: Any) -> None:
    """Wrong or missing credentials end in one UNAUTHORIZED error naming the token service."""
    gate = TokenGate(Registry().resource())
    gate.base = await serving(gate)
    for credentials in [("alice", "wrong"), None]:
        async with RegistryClient(gate.base, credentials, reactor) as client:
            with pytest.raises(RegistryError) as raised:
                await client.tags("secure/app")
            assert raised.value.code == "UNAUTHORIZED"
            assert "token service" in raised.value.message


@pytest_twisted.ensureDeferred
async def test_copy_through_bearer_flow_with_auth_file(serving: Any, tmp_path: Path) -> None:
    """copy() finds credentials in REGISTRY_AUTH_FILE and pushes through the token flow."""
    gate = TokenGate(Registry().resource())
    gate.base = await serving(gate)
    host = gate.base.removeprefix("http://")
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {host: {"auth": "YWxpY2U6d29uZGVybGFuZA=="}}}))
    image = makeImage(layers=2)
    clients = Clients(reactor, env={"REGISTRY_AUTH_FILE": str(authfile)})
    try:
        result = await copy(
            f"oci:{writeLayout(tmp_path / 'in', image, 'v1')}:v1", f"{host}/a/b:v1", clients=clients
        )
    finally:
        await clients.close()
    assert result.digest == image.digest and result.counts() == {"pushed": 3}


class _CountingHellos(ProtocolWrapper):
    checked = False

    def dataReceived(self, data: bytes) -> None:
        if not self.checked:
            self.checked = True
            self.factory.hellos += data[:1] == b"\x16"  # type: ignore[attr-defined]
        super().dataReceived(data)


class CountingHellos(WrappingFactory):
    """
    Counts the connections that open with a TLS ClientHello.
    """

    protocol = _CountingHellos
    hellos = 0


@pytest_twisted.ensureDeferred
async def test_requests_started_together_share_one_https_probe() -> None:
    """A new client's first requests, sent at once, share one HTTPS probe instead of each making its own."""
    counting = CountingHellos(RefuseTLSFactory(Site(Registry().resource())))
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(counting)
    try:
        async with RegistryClient(f"127.0.0.1:{port.getHost().port}", reactor=reactor) as client:
            sizes = await gatherResults(
                [Deferred.fromCoroutine(client.headBlob("a/b", sha256(b"%d" % i))) for i in range(4)]
            )
    finally:
        await port.stopListening()
    assert sizes == [None] * 4 and counting.hellos == 1


class Flaky(Resource):
    """
    Answers the first C{failures} requests with C{status}, then passes
    requests on; counts them all.
    """

    isLeaf = True

    def __init__(self, inner: Any, failures: int, status: int = 503) -> None:
        super().__init__()
        self.inner = inner
        self.failures = failures
        self.status = status
        self.seen: list[str] = []

    def render(self, request: Any) -> Any:
        self.seen.append(request.method.decode())
        if len(self.seen) <= self.failures:
            request.setResponseCode(self.status)
            request.setHeader("Retry-After", "0")
            request.setHeader("Content-Type", "application/json")
            error = {"code": "UNAVAILABLE", "message": "try later", "detail": None}
            return json.dumps({"errors": [error]}).encode()
        return self.inner.render(request)


@pytest_twisted.ensureDeferred
async def test_idempotent_requests_are_retried_a_bounded_number_of_times(serving: Any) -> None:
    """GETs answered 503 or 429 are retried with backoff until they succeed, at most retries + 1 times."""
    for status in (503, 429):
        flaky = Flaky(Registry().resource(), failures=2, status=status)
        async with RegistryClient(await serving(flaky), reactor=reactor, retries=2, backoff=0.01) as client:
            await client.ping()
        assert flaky.seen == ["GET"] * 3
    always = Flaky(Registry().resource(), failures=1000)
    async with RegistryClient(await serving(always), reactor=reactor, retries=2, backoff=0.01) as client:
        with pytest.raises(RegistryError) as raised:
            await client.getManifest("a/b", "v1")
    assert raised.value.code == "UNAVAILABLE" and len(always.seen) == 3


@pytest_twisted.ensureDeferred
async def test_non_idempotent_requests_are_not_retried(serving: Any) -> None:
    """A PATCH answered 503 is an error at once, never sent twice."""
    registry = Registry()
    flaky = Flaky(registry.resource(), failures=0)
    async with RegistryClient(await serving(flaky), reactor=reactor, retries=3, backoff=0.01) as client:
        await client.ping()
        flaky.failures = len(flaky.seen) + 100
        response = await client.transport.request("PATCH", "/v2/a/b/blobs/uploads/x", body=lambda: b"data")
        assert response.code == 503
    assert flaky.seen.count("PATCH") == 1


@pytest_twisted.ensureDeferred
async def test_connection_failures_are_retried(serving: Any) -> None:
    """A GET whose connection is cut before the answer is sent again on a new connection."""
    base = await serving(Registry().resource())
    proxy = CuttingProxy(int(base.rsplit(":", 1)[1]), cutDownstreamAt=1)
    address = await proxy.start()
    try:
        async with RegistryClient(f"http://{address}", reactor=reactor, backoff=0.01) as client:
            await client.ping()
        assert proxy.cut
    finally:
        await proxy.stop()


class Liar(Resource):
    """
    Serves any blob or manifest with the wrong bytes.
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setHeader("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        return b'{"schemaVersion": 2, "not": "what you asked for"}'


@pytest_twisted.ensureDeferred
async def test_downloads_with_the_wrong_digest_are_refused(serving: Any) -> None:
    """A blob or manifest not hashing to the digest asked for is DIGEST_MISMATCH; nothing is kept."""
    digest = sha256(b"the real content")
    async with RegistryClient(await serving(Liar()), reactor=reactor) as client:
        sink = io.BytesIO()
        with pytest.raises(RegistryError) as raised:
            await client.pullBlob("a/b", digest, sink)
        assert raised.value.code == "DIGEST_MISMATCH" and sink.getvalue() == b""
        with pytest.raises(RegistryError) as raised:
            await client.getManifest("a/b", digest)
        assert raised.value.code == "DIGEST_MISMATCH"


@pytest.fixture
def tlsRegistry(tmp_path: Path) -> Iterator[tuple[RunningRegistry, Path]]:
    """
    ociklein on TLS only, with a fresh self-signed certificate.
    """
    key, cert = selfSignedCertificate(tmp_path)
    running = startRegistry("memory", tmp_path, tls=(key, cert))
    yield running, cert
    stopRegistry(running)


@pytest_twisted.ensureDeferred
async def test_tls_trust(tlsRegistry: tuple[RunningRegistry, Path], tmp_path: Path) -> None:
    """TLS is trusted through a CA file or unverified on request; an unknown certificate is refused."""
    server, cert = tlsRegistry
    image = makeImage(layers=1)
    source = writeLayout(tmp_path / "in", image, "v1")
    async with RegistryClient(server.address, reactor=reactor, caFile=str(cert)) as client:
        await client.ping()
        assert client.transport._scheme == "https"
    clients = Clients(reactor, tlsVerify=False)
    try:
        assert (await push(source, f"{server.address}/tls/app:v1", clients=clients)).digest == image.digest
    finally:
        await clients.close()
    async with RegistryClient(server.address, reactor=reactor, retries=0) as client:
        with pytest.raises(RegistryError) as raised:
            await client.ping()
        assert "certificate" in raised.value.message.lower()
