"""
What the client tests share: a test token service in front of a registry
resource, a TCP proxy that cuts a connection once a given number of bytes
has passed, in-process HTTP servers and big files.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.protocols import portforward
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from ociklein.http._plainhttp import RefuseTLSFactory


async def listen(resource: IResource) -> IListeningPort:
    """
    Serve C{resource} on a free port of 127.0.0.1 (stop it with stopListening).
    """
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    # Like ociklein's own listeners, refuse a TLS ClientHello at once, so
    # that a client probing HTTPS falls back to HTTP without waiting.
    return await endpoint.listen(RefuseTLSFactory(Site(resource)))


# -- a token service ---------------------------------------------------------------


@dataclass
class _Grant:
    scopes: dict[str, set[str]]
    expires: float


@dataclass
class TokenGate(Resource):
    """
    Docker's token flow in front of a registry resource: C{/token} gives
    tokens to C{user}:C{password} for the scopes asked, lasting
    C{lifetime} seconds of C{clock}; everything else needs a bearer token
    covering the repository and action, or gets a 401 challenge.
    """

    inner: IResource
    user: str = "alice"
    password: str = "wonderland"
    lifetime: int = 300
    clock: Any = field(default_factory=Clock)
    base: str = ""
    tokenRequests: list[list[str]] = field(default_factory=list)
    challenged: int = 0
    grants: dict[str, _Grant] = field(default_factory=dict)
    isLeaf = True

    def __post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Any) -> Any:
        path = request.path.decode()
        if path == "/token":
            return self._token(request)
        needed = _scopeOf(request.method.decode(), path)
        header = (request.getHeader("Authorization") or "").partition(" ")
        grant = self.grants.get(header[2]) if header[0] == "Bearer" else None
        if grant is not None and grant.expires > self.clock.seconds() and _covers(grant, needed):
            return self.inner.render(request)
        self.challenged += 1
        challenge = f'Bearer realm="{self.base}/token",service="test-registry"'
        if needed:
            challenge += f',scope="{needed[0]}:{needed[1]}:{",".join(sorted(needed[2]))}"'
        request.setResponseCode(401)
        request.setHeader("WWW-Authenticate", challenge)
        request.setHeader("Content-Type", "application/json")
        error = {"code": "UNAUTHORIZED", "message": "authentication required", "detail": None}
        return json.dumps({"errors": [error]}).encode()

    def _token(self, request: Any) -> bytes:
        kind, _, encoded = (request.getHeader("Authorization") or "").partition(" ")
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.setHeader("Content-Type", "application/json")
        if kind != "Basic" or encoded != expected:
            request.setResponseCode(401)
            error = {"code": "UNAUTHORIZED", "message": "bad credentials", "detail": None}
            return json.dumps({"errors": [error]}).encode()
        query = parse_qs(urlsplit(request.uri.decode()).query)
        asked = query.get("scope", [])
        self.tokenRequests.append(asked)
        scopes: dict[str, set[str]] = {}
        for scope in asked:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            scopes.setdefault(f"{kind}:{name}", set()).update(actions.split(","))
        token = secrets.token_hex(16)
        self.grants[token] = _Grant(scopes, self.clock.seconds() + self.lifetime)
        return json.dumps({"token": token, "expires_in": self.lifetime}).encode()


def _scopeOf(method: str, path: str) -> tuple[str, str, set[str]] | None:
    if path.rstrip("/") == "/v2":
        return None
    if path.startswith("/v2/_catalog"):
        return ("registry", "catalog", {"*"})
    parts = path[len("/v2/") :].split("/")
    for i, part in enumerate(parts):
        if part in ("manifests", "blobs", "tags", "referrers"):
            name = "/".join(parts[:i])
            actions = {"pull"} if method in ("GET", "HEAD") else {"pull", "push"}
            if method == "DELETE":
                actions = {"delete"}
            return ("repository", name, actions)
    return ("repository", path, {"pull"})


def _covers(grant: _Grant, needed: tuple[str, str, set[str]] | None) -> bool:
    if needed is None:
        return True
    kind, name, actions = needed
    return actions <= grant.scopes.get(f"{kind}:{name}", set())


# -- a proxy that cuts ---------------------------------------------------------------------


class _CuttingClient(portforward.ProxyClient):
    def dataReceived(self, data: bytes) -> None:
        proxy: CuttingProxy = self.factory.server.factory.proxy
        proxy.downstream += len(data)
        if proxy.cutDownstreamAt is not None and proxy.downstream >= proxy.cutDownstreamAt and not proxy.cut:
            proxy.cut = True
            self.transport.abortConnection()
            self.peer.transport.abortConnection()
            return
        super().dataReceived(data)


class _CuttingClientFactory(portforward.ProxyClientFactory):
    protocol = _CuttingClient


class _CuttingServer(portforward.ProxyServer):
    clientProtocolFactory = _CuttingClientFactory

    def dataReceived(self, data: bytes) -> None:
        proxy: CuttingProxy = self.factory.proxy
        proxy.upstream += len(data)
        if proxy.cutUpstreamAt is not None and proxy.upstream >= proxy.cutUpstreamAt and not proxy.cut:
            proxy.cut = True
            self.transport.abortConnection()
            if self.peer is not None:
                self.peer.transport.abortConnection()
            return
        super().dataReceived(data)


@dataclass
class CuttingProxy:
    """
    A TCP proxy to C{port} of 127.0.0.1 that aborts the connection carrying
    the C{cutUpstreamAt}-th byte sent (or C{cutDownstreamAt}-th received),
    once; it counts every byte either way.
    """

    port: int
    cutUpstreamAt: int | None = None
    cutDownstreamAt: int | None = None
    upstream: int = 0
    downstream: int = 0
    cut: bool = False
    listening: IListeningPort | None = None

    async def start(self) -> str:
        factory = portforward.ProxyFactory("127.0.0.1", self.port)
        factory.protocol = _CuttingServer
        factory.proxy = self  # type: ignore[attr-defined]
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.listening = await endpoint.listen(factory)
        return f"127.0.0.1:{self.listening.getHost().port}"

    async def stop(self) -> None:
        if self.listening is not None:
            await self.listening.stopListening()


def bigFile(path: Path, size: int) -> Path:
    """
    A file of C{size} pseudo-random bytes (random enough for digests).
    """
    import hashlib

    block = b"".join(hashlib.sha512(str(i).encode()).digest() for i in range(16384))  # 1 MiB
    with path.open("wb") as f:
        for i in range(size // len(block)):
            f.write(block[i % 7 :] + block[: i % 7])
        f.write(block[: size % len(block)])
    return path
