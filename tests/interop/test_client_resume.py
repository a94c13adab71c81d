"""
Broken connections in the middle of a 200 MiB blob: the upload goes on from
the offset the registry reports, the download from a C{Range} request,
instead of starting over.  A proxy cuts the connection once half the blob
has passed, counting every byte either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from clienthelpers import CuttingProxy, bigFile
from interophelpers import RunningRegistry, startRegistry, stopRegistry
from twisted.internet import reactor

from ociklein.client import RegistryClient
from ociklein.client._client import hashFile

pytest_plugins = ["clientfixtures"]

MiB = 1024 * 1024
SIZE = 200 * MiB
CHUNK = 32 * MiB


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """
    A 200 MiB file and its digest.
    """
    path = bigFile(tmp_path_factory.mktemp("resume") / "layer.bin", SIZE)
    return path, hashFile(path)[0]


@pytest.fixture(scope="module")
def fsRegistry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    running = startRegistry("fs", tmp_path_factory.mktemp("resume-fs"))
    yield running
    stopRegistry(running)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("kind", ["ociklein", "distribution"])
async def test_cut_upload_resumes_from_the_registry_offset(
    kind: str, blob: tuple[Path, str], fsRegistry: RunningRegistry, distribution: Any
) -> None:
    """A cut upload asks where the registry stands and sends only the rest (Distribution: starts again)."""
    path, digest = blob
    server = fsRegistry if kind == "ociklein" else distribution
    proxy = CuttingProxy(server.port, cutUpstreamAt=SIZE // 2)
    address = await proxy.start()
    try:
        async with RegistryClient(f"http://{address}", reactor=reactor, chunkSize=CHUNK) as client:
            assert await client.pushBlob("resume/up", path, digest) == digest
            assert proxy.cut
            assert await client.headBlob("resume/up", digest) == SIZE
    finally:
        await proxy.stop()
    if kind == "distribution":
        # Distribution 2.8 refuses to go on with a session after a partial
        # chunk (BLOB_UPLOAD_INVALID): the client opens a new one.
        assert proxy.upstream >= SIZE * 3 // 2
        return
    # Starting over would send at least 1.5 times the blob.
    assert SIZE <= proxy.upstream < SIZE + CHUNK + MiB, proxy.upstream
    if kind == "ociklein":
        requests = [(m, p) for m, p, _ in server.requests() if p.startswith("/v2/resume/up/blobs/uploads/")]
        assert [m for m, _ in requests].count("POST") == 1
        assert "GET" in [m for m, _ in requests], requests


@pytest_twisted.ensureDeferred
async def test_cut_download_resumes_with_range(
    blob: tuple[Path, str], fsRegistry: RunningRegistry, tmp_path: Path
) -> None:
    """A download cut half-way goes on with a Range request from the last byte received, digest checked."""
    path, digest = blob
    async with RegistryClient(fsRegistry.url, reactor=reactor, chunkSize=SIZE) as client:
        await client.pushBlob("resume/down", path, digest)
    proxy = CuttingProxy(fsRegistry.port, cutDownstreamAt=SIZE // 2)
    address = await proxy.start()
    try:
        async with RegistryClient(f"http://{address}", reactor=reactor) as client:
            with (tmp_path / "out").open("w+b") as sink:
                assert await client.pullBlob("resume/down", digest, sink, SIZE) == SIZE
            assert proxy.cut
    finally:
        await proxy.stop()
    assert hashFile(tmp_path / "out")[0] == digest
    assert SIZE <= proxy.downstream < SIZE + MiB, proxy.downstream
    statuses = [
        s for m, p, s in fsRegistry.requests() if m == "GET" and p == f"/v2/resume/down/blobs/{digest}"
    ]
    assert statuses == [200, 206]
