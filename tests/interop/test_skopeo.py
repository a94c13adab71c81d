"""
skopeo (containers/image, the library under podman and buildah) against a
real C{twistd ociregistry}: copies in and out, between repositories, of
multi-platform indexes and Docker schema 2 images, inspect, tag listing and
delete.  Images are OCI layouts built on disk; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from interophelpers import COMMAND_TIMEOUT, RunningRegistry, http, pushWithSkopeo, skopeo
from ocilayout import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    makeImage,
    makeIndex,
    readLayout,
    sha256,
    writeLayout,
)

pytest_plugins = ["interopfixtures"]

# What containers/image sends when it reads a manifest.
SKOPEO_ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    ]
)


def test_copy_in_and_out_is_byte_identical(interop: RunningRegistry, tmp_path: Path) -> None:
    """skopeo copies an OCI layout in and back out with the same manifest digest and identical blobs."""
    image = makeImage(layers=3)
    reference = pushWithSkopeo(interop, writeLayout(tmp_path / "in", image, "v1"), "v1", "skopeo/roundtrip")
    skopeo("copy", "--src-tls-verify=false", reference, f"oci:{tmp_path / 'out'}:v1")

    index, blobs = readLayout(tmp_path / "out")
    [entry] = index["manifests"]
    assert (entry["mediaType"], entry["digest"]) == (OCI_MANIFEST, image.digest)
    assert blobs == {image.digest: image.manifest, **image.blobs}
    stored = http(interop, "GET", "/v2/skopeo/roundtrip/manifests/v1", headers={"Accept": SKOPEO_ACCEPT})
    assert stored.status_code == 200
    assert stored.content == image.manifest
    assert stored.headers["Docker-Content-Digest"] == image.digest
    assert stored.headers["Content-Type"] == OCI_MANIFEST


def test_copy_between_repositories_mounts_blobs(interop: RunningRegistry, tmp_path: Path) -> None:
    """A copy between repositories mounts the layers from the first; every blob shows in the second."""
    image = makeImage(layers=2)
    source = pushWithSkopeo(interop, writeLayout(tmp_path / "in", image, "v1"), "v1", "skopeo/mount-from")
    seen = len(interop.requests())
    target = f"docker://{interop.address}/skopeo/mount-to:v1"
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", source, target)

    mounts = {}
    for method, path, status in interop.requests()[seen:]:
        url = urlsplit(path)
        if method == "POST" and url.path == "/v2/skopeo/mount-to/blobs/uploads/":
            query = parse_qs(url.query)
            if "mount" in query:
                assert query["from"] == ["skopeo/mount-from"]
                mounts[query["mount"][0]] = status
    layers = [layer["digest"] for layer in json.loads(image.manifest)["layers"]]
    assert mounts == dict.fromkeys(layers, 201)
    for digest, data in image.blobs.items():
        blob = http(interop, "GET", f"/v2/skopeo/mount-to/blobs/{digest}")
        assert (blob.status_code, blob.content) == (200, data)
    copied = http(interop, "GET", "/v2/skopeo/mount-to/manifests/v1", headers={"Accept": SKOPEO_ACCEPT})
    assert copied.content == image.manifest
    assert copied.headers["Docker-Content-Digest"] == image.digest


def test_inspect_reports_the_stored_image(interop: RunningRegistry, tmp_path: Path) -> None:
    """skopeo inspect shows digest, platform, layers, tags; --raw and --config --raw give stored bytes."""
    image = makeImage(layers=2, architecture="arm64")
    layout = writeLayout(tmp_path / "in", image, "v1")
    reference = pushWithSkopeo(interop, layout, "v1", "skopeo/inspect")
    writeLayout(tmp_path / "again", image, "v2")
    pushWithSkopeo(interop, tmp_path / "again", "v2", "skopeo/inspect")

    report = json.loads(skopeo("inspect", "--tls-verify=false", reference).stdout)
    manifest = json.loads(image.manifest)
    assert report["Name"] == f"{interop.address}/skopeo/inspect"
    assert report["Digest"] == image.digest
    assert (report["Os"], report["Architecture"]) == ("linux", "arm64")
    assert report["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    assert sorted(report["RepoTags"]) == ["v1", "v2"]
    assert skopeo("inspect", "--tls-verify=false", "--raw", reference).stdout == image.manifest
    config = image.blobs[manifest["config"]["digest"]]
    assert skopeo("inspect", "--tls-verify=false", "--config", "--raw", reference).stdout == config


def test_list_tags_follows_pages(interop: RunningRegistry, tmp_path: Path) -> None:
    """skopeo list-tags follows the Link header past the registry's first page and returns every tag once."""
    if "--backend=s3" in interop.args:
        # 1001 manifest PUTs at some 15 object-store calls each take a minute
        # on s3; its tag paging is tested through HTTP in test_listings.py.
        pytest.skip("too slow on s3 for the suite's time budget")
    image = makeImage(layers=1)
    pushWithSkopeo(interop, writeLayout(tmp_path / "in", image, "v1"), "v1", "skopeo/many-tags")
    tags = [f"t{i:04d}" for i in range(1001)]

    def tag(name: str) -> int:
        response = requests.put(
            f"{interop.url}/v2/skopeo/many-tags/manifests/{name}",
            data=image.manifest,
            headers={"Content-Type": OCI_MANIFEST},
            timeout=COMMAND_TIMEOUT,
        )
        return response.status_code

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(tag, tags)) == {201}
    first = http(interop, "GET", "/v2/skopeo/many-tags/tags/list")
    assert len(first.json()["tags"]) < len(tags) + 1
    assert 'rel="next"' in first.headers["Link"]

    listed = json.loads(
        skopeo("list-tags", "--tls-verify=false", f"docker://{interop.address}/skopeo/many-tags").stdout
    )
    assert listed["Repository"] == f"{interop.address}/skopeo/many-tags"
    assert len(listed["Tags"]) == len(tags) + 1
    assert set(listed["Tags"]) == {"v1", *tags}


def test_delete_removes_the_manifest(interop: RunningRegistry, tmp_path: Path) -> None:
    """skopeo delete removes a tagged manifest by digest, leaving the repository's other images alone."""
    doomed, kept = makeImage(layers=1), makeImage(layers=1)
    reference = pushWithSkopeo(interop, writeLayout(tmp_path / "a", doomed, "v1"), "v1", "skopeo/delete")
    other = pushWithSkopeo(interop, writeLayout(tmp_path / "b", kept, "keep"), "keep", "skopeo/delete")

    skopeo("delete", "--tls-verify=false", reference)

    gone = skopeo("inspect", "--tls-verify=false", "--raw", reference, check=False)
    assert gone.returncode != 0
    assert b"manifest unknown" in gone.stderr.lower()
    byDigest = http(interop, "GET", f"/v2/skopeo/delete/manifests/{doomed.digest}")
    assert byDigest.status_code == 404
    assert byDigest.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    listed = json.loads(
        skopeo("list-tags", "--tls-verify=false", f"docker://{interop.address}/skopeo/delete").stdout
    )
    assert listed["Tags"] == ["keep"]
    assert skopeo("inspect", "--tls-verify=false", "--raw", other).stdout == kept.manifest


def test_multi_platform_index_copies_with_all(interop: RunningRegistry, tmp_path: Path) -> None:
    """An OCI index of two platform images copied with --all in and out keeps every digest and byte."""
    index = makeIndex([("linux", "amd64"), ("linux", "arm64")])
    reference = pushWithSkopeo(
        interop, writeLayout(tmp_path / "in", index, "v1"), "v1", "skopeo/multi", "--all"
    )
    skopeo("copy", "--all", "--src-tls-verify=false", reference, f"oci:{tmp_path / 'out'}:v1")

    layout, blobs = readLayout(tmp_path / "out")
    [entry] = layout["manifests"]
    assert (entry["mediaType"], entry["digest"]) == (OCI_INDEX, index.digest)
    assert blobs == {index.digest: index.manifest, **index.blobs}
    stored = http(interop, "GET", "/v2/skopeo/multi/manifests/v1", headers={"Accept": SKOPEO_ACCEPT})
    assert (stored.headers["Content-Type"], stored.content) == (OCI_INDEX, index.manifest)
    for image in index.images:
        child = http(interop, "GET", f"/v2/skopeo/multi/manifests/{image.digest}")
        assert (child.status_code, child.content) == (200, image.manifest)


def test_docker_schema2_keeps_its_media_type(interop: RunningRegistry, tmp_path: Path) -> None:
    """An image copied with --format v2s2 is served back as a Docker schema 2 manifest, bytes unchanged."""
    image = makeImage(layers=2)
    reference = pushWithSkopeo(
        interop, writeLayout(tmp_path / "in", image, "v1"), "v1", "skopeo/v2s2", "--format", "v2s2"
    )

    stored = http(interop, "GET", "/v2/skopeo/v2s2/manifests/v1", headers={"Accept": SKOPEO_ACCEPT})
    assert stored.status_code == 200
    assert stored.headers["Content-Type"] == DOCKER_MANIFEST
    assert stored.headers["Docker-Content-Digest"] == sha256(stored.content)
    manifest = json.loads(stored.content)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert {layer["mediaType"] for layer in manifest["layers"]} == {DOCKER_LAYER}
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer["digest"] for layer in json.loads(image.manifest)["layers"]
    ]
    assert skopeo("inspect", "--tls-verify=false", "--raw", reference).stdout == stored.content
    skopeo("copy", "--src-tls-verify=false", reference, f"dir:{tmp_path / 'out'}")
    assert (tmp_path / "out" / "manifest.json").read_bytes() == stored.content
