"""
Fixtures shared by the test suite: a registry behind StubTreq (no sockets),
a registry on a real port of 127.0.0.1, and a real C{twistd} process.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from seaweedfixture import S3Backends
from seaweedfixture import seaweedfs as seaweedfs  # the session's SeaweedFS, for every test module
from treq.testing import StubTreq
from twistdprocess import TwistdRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from ociklein import MemoryBlobStore, MemoryManifestBackend, Registry

BACKENDS = ["memory", "fs", "s3"]


def makeBackends(kind: str, root: Path, request: pytest.FixtureRequest | None = None) -> tuple[Any, Any]:
    """
    A manifest backend and a blob store of the given kind; s3 needs the
    test's C{request} to start (or reuse) the session's SeaweedFS, and
    closes its client when the test ends.
    """
    if kind == "s3":
        assert request is not None
        s3 = S3Backends(request.getfixturevalue("seaweedfs"))
        request.addfinalizer(s3.close)
        return s3.manifests, s3.blobs
    if kind == "memory":
        return MemoryManifestBackend(), MemoryBlobStore()
    from ociklein.storage.fs import FilesystemBlobStore, FilesystemManifestBackend, prepareRoot

    prepareRoot(str(root))
    return FilesystemManifestBackend(str(root)), FilesystemBlobStore(str(root))


class StubClient:
    """
    treq's StubTreq around the real Klein resource, pumping it until each
    response (and its body) has fully arrived, since backends may answer
    on a later reactor turn.
    """

    def __init__(self, registry: Registry, base: str = "http://registry.test") -> None:
        self.stub = StubTreq(registry.resource())
        self.base = base

    async def _settle(self, d: Deferred[Any]) -> Any:
        done: list[Any] = []
        d.addBoth(done.append)
        # Bounded by time, not turns: backends that fsync in threads can
        # take longer than any fixed number of reactor turns.
        deadline = time.monotonic() + 30
        turns = 0
        while not done and time.monotonic() < deadline:
            self.stub.flush()
            await deferLater(reactor, 0 if turns < 1000 else 0.001, lambda: None)
            turns += 1
        if not done:
            raise TimeoutError("StubTreq request did not complete in 30 s")
        result = done[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._settle(self.stub.request(method, self.base + path, **kwargs))
        response.body = await self._settle(self.stub.content(response))
        return response


class LiveClient:
    """
    treq against a registry listening on a real port of 127.0.0.1; a
    request (headers and body) not answered within C{timeout} seconds
    fails the test rather than hang it.
    """

    def __init__(self, base: str, timeout: float = 60.0) -> None:
        self.base = base
        self.timeout = timeout

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("persistent", False)
        kwargs.setdefault("timeout", self.timeout)
        response = await treq.request(method, self.base + path, **kwargs)
        content: Deferred[bytes] = treq.content(response)
        response.body = await content.addTimeout(self.timeout, reactor)
        return response


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    manifests, blobs = makeBackends(request.param, tmp_path / "root", request)
    yield manifests, blobs
    close = getattr(blobs, "close", None)
    if close is not None:
        close()


@pytest.fixture
def registry(backend: tuple[Any, Any]) -> Registry:
    return Registry(*backend, maxManifestBytes=64 * 1024)


@pytest.fixture
def stub(registry: Registry) -> StubClient:
    return StubClient(registry)


@pytest_twisted.async_yield_fixture
async def live(registry: Registry) -> AsyncIterator[LiveClient]:
    """
    The registry served by L{Registry.service} on an ephemeral port.
    """
    async for live in serve(registry):
        yield live


async def serve(registry: Registry) -> AsyncIterator[LiveClient]:
    service = registry.service(["tcp:0:interface=127.0.0.1"], reactor)
    service.startService()
    ports = await service.listening  # type: ignore[attr-defined]
    yield LiveClient(f"http://127.0.0.1:{ports[0].getHost().port}")
    await service.stopService()


@pytest_twisted.async_yield_fixture(params=["stub", "live"])
async def client(request: pytest.FixtureRequest, registry: Registry) -> AsyncIterator[Any]:
    """
    Every HTTP behaviour is checked both through StubTreq and on a real port.
    """
    if request.param == "stub":
        yield StubClient(registry)
        return
    async for live in serve(registry):
        yield live


@pytest.fixture
def twistdRegistry(tmp_path: Path) -> Iterator[Callable[..., TwistdRegistry]]:
    """
    Starts C{twistd ociregistry} processes with given arguments; all are
    stopped at the end of the test.
    """
    started: list[TwistdRegistry] = []

    def start(*args: str) -> TwistdRegistry:
        server = TwistdRegistry(list(args), tmp_path / f"twistd-{len(started)}.log")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
