"""
ociklein.client against real registries (ociklein on each backend, and
Distribution 2.8): pushing, pulling and copying single images, multi-arch
indexes and artifacts with referrers, with identical digests and bytes;
skipping, mounting, listings and deletes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from ocilayout import ARTIFACT, artifactFor, makeImage, makeIndex, readLayout, writeLayout
from twisted.internet import reactor

from ociklein.client import Clients, ImageLayout, RegistryClient, RegistryError, copy, pull, push

pytest_plugins = ["clientfixtures"]


def assertLayoutHolds(path: Path, top: Any, tag: str) -> None:
    """
    The layout names C{top} at C{tag} and holds exactly its blobs, byte for byte.
    """
    index, blobs = readLayout(path)
    [entry] = [m for m in index["manifests"] if m.get("annotations")]
    assert entry["digest"] == top.digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == tag
    expected = {**top.blobs, top.digest: top.manifest}
    assert {d: blobs[d] for d in expected} == expected


@pytest_twisted.ensureDeferred
async def test_push_and_pull_an_image(target: Any, tmp_path: Path) -> None:
    """An image pushed from a layout and pulled back has the same digest and the same bytes."""
    image = makeImage(layers=3)
    source = writeLayout(tmp_path / "in", image, "v1")
    pushed = await push(source, f"{target.address}/client/single:v1", "v1", reactor=reactor)
    assert pushed.digest == image.digest
    assert pushed.counts() == {"pushed": 4}
    pulled = await pull(f"{target.address}/client/single:v1", tmp_path / "out", reactor=reactor)
    assert pulled.digest == image.digest
    assertLayoutHolds(tmp_path / "out", image, "v1")


@pytest_twisted.ensureDeferred
async def test_push_and_pull_a_multiarch_index(target: Any, tmp_path: Path) -> None:
    """A multi-arch index travels with every child manifest and blob, digests unchanged."""
    index = makeIndex([("linux", "amd64"), ("linux", "arm64"), ("windows", "amd64")])
    source = writeLayout(tmp_path / "in", index, "multi")
    result = await copy(f"oci:{source}:multi", f"{target.address}/client/multi:multi", reactor=reactor)
    assert result.digest == index.digest
    assert set(result.manifests) == {index.digest, *(image.digest for image in index.images)}
    await copy(f"{target.address}/client/multi:multi", f"oci:{tmp_path / 'out'}", reactor=reactor)
    assertLayoutHolds(tmp_path / "out", index, "multi")


@pytest_twisted.ensureDeferred
async def test_referrers_found_and_copied(target: Any, tmp_path: Path) -> None:
    """An artifact with a subject is a referrer (filtered by artifactType), copied with referrers=True."""
    image = makeImage()
    artifact = artifactFor(image)
    await push(
        writeLayout(tmp_path / "image", image, "v1"), f"{target.address}/client/ref:v1", reactor=reactor
    )
    async with RegistryClient(target.address, reactor=reactor) as client:
        for digest, data in artifact.blobs.items():
            assert await client.pushBytes("client/ref", data) == digest
        await client.putManifest("client/ref", artifact.digest, artifact.manifest, artifact.mediaType)
        found = await client.referrers("client/ref", image.digest, artifactType=ARTIFACT)
        assert [d["digest"] for d in found] == [artifact.digest]
        assert await client.referrers("client/ref", image.digest, artifactType="application/other") == []

    out = tmp_path / "out"
    result = await copy(f"{target.address}/client/ref:v1", f"oci:{out}:v1", referrers=True, reactor=reactor)
    assert artifact.digest in result.manifests
    layout = ImageLayout(out)
    assert [d["digest"] for d in layout.referrers(image.digest)] == [artifact.digest]
    assert (out / "blobs" / "sha256" / artifact.digest.partition(":")[2]).read_bytes() == artifact.manifest

    await copy(f"oci:{out}:v1", f"{target.address}/client/ref-copy:v1", referrers=True, reactor=reactor)
    async with RegistryClient(target.address, reactor=reactor) as client:
        found = await client.referrers("client/ref-copy", image.digest)
        assert [d["digest"] for d in found] == [artifact.digest]
        fetched = await client.getManifest("client/ref-copy", artifact.digest)
        assert fetched.content == artifact.manifest


@pytest_twisted.ensureDeferred
async def test_copy_skips_what_is_there_and_mounts_within_a_registry(target: Any, tmp_path: Path) -> None:
    """A second copy uploads nothing; a copy to another repository of the same registry mounts every blob."""
    image = makeImage(layers=2)
    source = f"oci:{writeLayout(tmp_path / 'in', image, 'v1')}:v1"
    await copy(source, f"{target.address}/client/mount-a:v1", reactor=reactor)
    again = await copy(source, f"{target.address}/client/mount-a:v1", reactor=reactor)
    assert again.counts() == {"skipped": 3}
    mounted = await copy(
        f"{target.address}/client/mount-a:v1", f"{target.address}/client/mount-b:v2", reactor=reactor
    )
    assert mounted.counts() == {"mounted": 3}
    async with RegistryClient(target.address, reactor=reactor) as client:
        assert (await client.getManifest("client/mount-b", "v2")).digest == image.digest


@pytest_twisted.ensureDeferred
async def test_copy_between_ociklein_and_distribution(target: Any, tmp_path: Path, distribution: Any) -> None:
    """A copy from one registry to another keeps every digest, whole or in chunks, streamed and verified."""
    if target is distribution:
        pytest.skip("the same registry")
    index = makeIndex([("linux", "amd64"), ("linux", "arm64")])
    await push(writeLayout(tmp_path / "in", index, "x"), f"{target.address}/client/cross:x", reactor=reactor)
    there = f"{distribution.address}/client/cross-{target.port}:x"
    result = await copy(f"{target.address}/client/cross:x", there, jobs=2, reactor=reactor)
    assert result.digest == index.digest
    assert result.counts() == {"pushed": len(index.images) * 3}
    back = await copy(there, f"{target.address}/client/cross-back:y", reactor=reactor)
    assert back.digest == index.digest and back.counts() == {"pushed": 6}
    # Streamed in chunks (PATCH by PATCH), each way.
    clients = Clients(reactor, chunkSize=1000)
    try:
        for source, destination in [
            (f"{target.address}/client/cross:x", f"{distribution.address}/client/chunked-{target.port}:x"),
            (there, f"{target.address}/client/chunked-back:y"),
        ]:
            chunked = await copy(source, destination, clients=clients)
            assert chunked.digest == index.digest and chunked.counts() == {"pushed": 6}
    finally:
        await clients.close()


@pytest_twisted.ensureDeferred
async def test_listings_follow_link_pages(target: Any, tmp_path: Path) -> None:
    """Tags and catalog listed one per page come out whole, following Link headers."""
    image = makeImage(layers=1)
    source = writeLayout(tmp_path / "in", image, "v1")
    for tag in ("a", "b", "c"):
        await push(source, f"{target.address}/client/pages:{tag}", reactor=reactor)
    async with RegistryClient(target.address, reactor=reactor) as client:
        assert sorted(await client.tags("client/pages", pageSize=1)) == ["a", "b", "c"]
        assert "client/pages" in await client.catalog(pageSize=1)
    if hasattr(target, "requests"):
        # Distribution 2.8 ignores n for tags; ociklein pages them.
        pages = [
            path for method, path, _ in target.requests() if path.startswith("/v2/client/pages/tags/list")
        ]
        assert len(pages) >= 3, pages


@pytest_twisted.ensureDeferred
async def test_delete_by_tag_and_errors_are_oci_codes(target: Any, tmp_path: Path) -> None:
    """Deleting by tag removes the manifest (even from Distribution); a missing one is MANIFEST_UNKNOWN."""
    image = makeImage(layers=1)
    await push(writeLayout(tmp_path / "in", image, "v1"), f"{target.address}/client/rm:v1", reactor=reactor)
    async with RegistryClient(target.address, reactor=reactor) as client:
        assert (await client.headManifest("client/rm", "v1"))["digest"] == image.digest  # type: ignore[index]
        await client.deleteManifest("client/rm", "v1")
        assert await client.headManifest("client/rm", "v1") is None
        with pytest.raises(RegistryError) as raised:
            await client.getManifest("client/rm", "v1")
        assert (raised.value.code, raised.value.status) == ("MANIFEST_UNKNOWN", 404)


@pytest_twisted.ensureDeferred
async def test_clients_reuse_one_client_per_registry(target: Any) -> None:
    """Clients hands out one client per registry, with the auth files' credentials, and closes them all."""
    clients = Clients(reactor, env={"HOME": "/nonexistent"})
    try:
        assert clients.get(target.address) is clients.get(target.address)
        await clients.get(target.address).ping()
    finally:
        await clients.close()
