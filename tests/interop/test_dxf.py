"""
python-dxf (a Docker registry v2 client) against a real C{twistd
ociregistry}: blobs and Docker schema 2 manifests and manifest lists pushed
and pulled, tags listed page by page, aliases and blobs deleted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import dxf
import dxf.exceptions
import pytest
import requests
from interophelpers import RunningRegistry, http
from ocilayout import DOCKER_LIST, DOCKER_MANIFEST, canonical, makeImage, sha256

pytest_plugins = ["interopfixtures"]


def client(interop: RunningRegistry, repository: str) -> dxf.DXF:
    return dxf.DXF(interop.address, repository, insecure=True, timeout=60)


def test_push_and_pull_blob_and_manifest(interop: RunningRegistry, tmp_path: Path) -> None:
    """dxf pushes a blob and a Docker schema 2 manifest naming it, and pulls both back unchanged."""
    data = os.urandom(100_000)
    (tmp_path / "blob").write_bytes(data)
    repo = client(interop, "dxf/roundtrip")

    digest = repo.push_blob(str(tmp_path / "blob"))
    assert digest == sha256(data)
    assert b"".join(repo.pull_blob(digest)) == data
    assert repo.blob_size(digest) == len(data)
    manifest = repo.set_alias("v1", digest)
    assert repo.get_alias("v1") == [digest]
    assert repo.get_manifest("v1") == manifest
    stored = http(interop, "GET", "/v2/dxf/roundtrip/manifests/v1")
    assert stored.headers["Content-Type"] == DOCKER_MANIFEST
    assert stored.content == manifest.encode()


def test_list_aliases_follows_pages(interop: RunningRegistry, tmp_path: Path) -> None:
    """dxf lists every tag by following the Link header two tags at a time."""
    (tmp_path / "blob").write_bytes(os.urandom(1000))
    repo = client(interop, "dxf/pages")
    digest = repo.push_blob(str(tmp_path / "blob"))
    tags = ["alpha", "beta", "delta", "epsilon", "gamma"]
    for tag in tags:
        repo.set_alias(tag, digest)
    seen = len(interop.requests())

    assert repo.list_aliases(batch_size=2) == tags

    pages = [
        parse_qs(urlsplit(path).query)
        for method, path, _ in interop.requests()[seen:]
        if method == "GET" and path.startswith("/v2/dxf/pages/tags/list")
    ]
    assert pages == [{"n": ["2"]}, {"n": ["2"], "last": ["beta"]}, {"n": ["2"], "last": ["epsilon"]}]


def test_delete_alias_and_blob(interop: RunningRegistry, tmp_path: Path) -> None:
    """dxf deletes a manifest by the digest of its alias, then the blob; both are gone afterwards."""
    (tmp_path / "one").write_bytes(os.urandom(1000))
    (tmp_path / "two").write_bytes(os.urandom(1000))
    repo = client(interop, "dxf/delete")
    doomed = repo.push_blob(str(tmp_path / "one"))
    kept = repo.push_blob(str(tmp_path / "two"))
    manifest = repo.set_alias("doomed", doomed)
    repo.set_alias("kept", kept)

    assert repo.del_alias("doomed") == [doomed]
    assert repo.list_aliases() == ["kept"]
    gone = http(interop, "GET", f"/v2/dxf/delete/manifests/{sha256(manifest.encode())}")
    assert gone.status_code == 404
    repo.del_blob(doomed)
    with pytest.raises(requests.HTTPError) as missing:
        repo.blob_size(doomed)
    assert missing.value.response.status_code == 404
    assert repo.get_alias("kept") == [kept]


def test_mount_blob_from_another_repository(interop: RunningRegistry, tmp_path: Path) -> None:
    """dxf mounts a blob from another repository (201, no upload); a blob the source lacks is refused."""
    data = os.urandom(5000)
    (tmp_path / "blob").write_bytes(data)
    digest = client(interop, "dxf/mount-from").push_blob(str(tmp_path / "blob"))
    target = client(interop, "dxf/mount-to")
    with pytest.raises(requests.HTTPError) as before:
        target.blob_size(digest)
    assert before.value.response.status_code == 404

    assert target.mount_blob("dxf/mount-from", digest) == digest
    assert b"".join(target.pull_blob(digest)) == data
    with pytest.raises(dxf.exceptions.DXFMountFailed):
        target.mount_blob("dxf/mount-from", sha256(b"never pushed"))


def test_docker_manifest_list_roundtrip(interop: RunningRegistry) -> None:
    """A Docker manifest list and its schema 2 images pushed with dxf come back with their media types."""
    repo = client(interop, "dxf/list")
    platforms = [("linux", "amd64"), ("linux", "arm64")]
    images = [makeImage(layers=1, architecture=arch, os_=os_, docker=True) for os_, arch in platforms]
    for image in images:
        for blobDigest, data in image.blobs.items():
            assert repo.push_blob(data=iter([data]), digest=blobDigest) == blobDigest
        repo.set_manifest(image.digest, image.manifest.decode())
    manifestList = canonical(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                image.descriptor({"os": os_, "architecture": arch})
                for image, (os_, arch) in zip(images, platforms, strict=True)
            ],
        }
    )
    repo.set_manifest("v1", manifestList.decode())

    assert repo.get_manifest("v1") == {
        f"{os_}/{arch}": image.manifest.decode() for image, (os_, arch) in zip(images, platforms, strict=True)
    }
    arm = json.loads(images[1].manifest)
    assert repo.get_alias("v1", platform="linux/arm64") == [arm["layers"][0]["digest"]]
    assert repo.get_digest("v1", platform="linux/arm64") == arm["config"]["digest"]
    stored = http(interop, "GET", "/v2/dxf/list/manifests/v1")
    assert (stored.headers["Content-Type"], stored.content) == (DOCKER_LIST, manifestList)
    child = http(interop, "HEAD", f"/v2/dxf/list/manifests/{images[0].digest}")
    assert child.headers["Content-Type"] == DOCKER_MANIFEST
    assert child.headers["Docker-Content-Digest"] == images[0].digest
    with pytest.raises(dxf.exceptions.DXFPlatformDataNotFound):
        repo.get_alias("v1", platform="windows/amd64")
