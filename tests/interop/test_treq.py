"""
The registry's public HTTP API driven with treq, the way a Twisted program
embedding a client would use it: monolithic and chunked blob uploads,
manifests of every kind, tag listing, pulling back, deleting, and content
negotiation that never hides a manifest that exists.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote, urljoin

import pytest
import pytest_twisted
import treq
from interophelpers import COMMAND_TIMEOUT, RunningRegistry
from ocilayout import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    Index,
    makeImage,
    makeIndex,
    sha256,
)
from twisted.internet import reactor

pytest_plugins = ["interopfixtures"]


async def call(interop: RunningRegistry, method: str, url: str, **kwargs: Any) -> Any:
    """
    One request to the registry (C{url} absolute or relative to it), body read.
    """
    kwargs.setdefault("persistent", False)
    d = treq.request(method, urljoin(interop.url, url), **kwargs)
    response = await d.addTimeout(COMMAND_TIMEOUT, reactor)
    response.body = await treq.content(response).addTimeout(COMMAND_TIMEOUT, reactor)
    return response


def one(response: Any, name: str) -> str:
    """
    The single value of header C{name}.
    """
    [value] = response.headers.getRawHeaders(name)
    return str(value)


def errorCode(response: Any) -> str:
    return str(json.loads(response.body)["errors"][0]["code"])


async def pushBlob(interop: RunningRegistry, repository: str, data: bytes) -> str:
    digest = sha256(data)
    response = await call(interop, "POST", f"/v2/{repository}/blobs/uploads/?digest={digest}", data=data)
    assert response.code == 201, response.body
    return digest


async def pushImage(interop: RunningRegistry, repository: str, image: Image, reference: str) -> None:
    for data in image.blobs.values():
        await pushBlob(interop, repository, data)
    response = await call(
        interop,
        "PUT",
        f"/v2/{repository}/manifests/{reference}",
        data=image.manifest,
        headers={"Content-Type": image.mediaType},
    )
    assert response.code == 201, response.body


async def pushIndex(interop: RunningRegistry, repository: str, index: Index, tag: str) -> None:
    for image in index.images:
        await pushImage(interop, repository, image, image.digest)
    response = await call(
        interop,
        "PUT",
        f"/v2/{repository}/manifests/{tag}",
        data=index.manifest,
        headers={"Content-Type": index.mediaType},
    )
    assert response.code == 201, response.body


@pytest_twisted.ensureDeferred
async def test_full_push_pull_delete(interop: RunningRegistry) -> None:
    """A treq user pushes blobs (monolithic, chunked), a tagged manifest, pulls them back, deletes them."""
    repository = "treq/full"
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    configDigest = await pushBlob(interop, repository, config)

    layer = os.urandom(300_000)
    layerDigest = sha256(layer)
    started = await call(interop, "POST", f"/v2/{repository}/blobs/uploads/")
    assert started.code == 202
    location = one(started, "Location")
    chunks = [layer[:100_000], layer[100_000:250_000], layer[250_000:]]
    offset = 0
    for chunk in chunks[:2]:
        end = offset + len(chunk) - 1
        patched = await call(
            interop,
            "PATCH",
            location,
            data=chunk,
            headers={"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{end}"},
        )
        assert patched.code == 202, patched.body
        assert one(patched, "Range") == f"0-{end}"
        location, offset = one(patched, "Location"), end + 1
        status = await call(interop, "GET", location)
        assert (status.code, one(status, "Range")) == (204, f"0-{end}")
    separator = "&" if "?" in location else "?"
    finished = await call(
        interop,
        "PUT",
        f"{location}{separator}digest={quote(layerDigest)}",
        data=chunks[2],
        headers={"Content-Type": "application/octet-stream"},
    )
    assert finished.code == 201, finished.body
    assert one(finished, "Docker-Content-Digest") == layerDigest
    assert one(finished, "Location") == f"/v2/{repository}/blobs/{layerDigest}"

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": configDigest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layerDigest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    put = await call(
        interop,
        "PUT",
        f"/v2/{repository}/manifests/v1",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert put.code == 201, put.body
    manifestDigest = one(put, "Docker-Content-Digest")
    assert manifestDigest == sha256(manifest)
    assert one(put, "Location") == f"/v2/{repository}/manifests/{manifestDigest}"

    tags = await call(interop, "GET", f"/v2/{repository}/tags/list")
    assert json.loads(tags.body) == {"name": repository, "tags": ["v1"]}
    pulled = await call(interop, "GET", f"/v2/{repository}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert (pulled.code, pulled.body, one(pulled, "Content-Type")) == (200, manifest, OCI_MANIFEST)
    for digest, data in [(configDigest, config), (layerDigest, layer)]:
        blob = await call(interop, "GET", f"/v2/{repository}/blobs/{digest}")
        assert (blob.code, blob.body, one(blob, "Docker-Content-Digest")) == (200, data, digest)
        head = await call(interop, "HEAD", f"/v2/{repository}/blobs/{digest}")
        assert (head.code, head.body, one(head, "Content-Length")) == (200, b"", str(len(data)))
    ranged = await call(
        interop, "GET", f"/v2/{repository}/blobs/{layerDigest}", headers={"Range": "bytes=10-19"}
    )
    assert (ranged.code, ranged.body) == (206, layer[10:20])

    deleted = await call(interop, "DELETE", f"/v2/{repository}/manifests/{manifestDigest}")
    assert deleted.code == 202
    for reference in ["v1", manifestDigest]:
        missing = await call(interop, "GET", f"/v2/{repository}/manifests/{reference}")
        assert (missing.code, errorCode(missing)) == (404, "MANIFEST_UNKNOWN")
    deleted = await call(interop, "DELETE", f"/v2/{repository}/blobs/{layerDigest}")
    assert deleted.code == 202
    missing = await call(interop, "GET", f"/v2/{repository}/blobs/{layerDigest}")
    assert (missing.code, errorCode(missing)) == (404, "BLOB_UNKNOWN")
    kept = await call(interop, "GET", f"/v2/{repository}/blobs/{configDigest}")
    assert (kept.code, kept.body) == (200, config)


OCI_ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}"
DOCKER_ACCEPT = f"{DOCKER_MANIFEST}, {DOCKER_LIST}"
SCHEMA1_ACCEPT = "application/vnd.docker.distribution.manifest.v1+prettyjws"


@pytest.mark.parametrize(
    ("kind", "accept"),
    [
        ("docker", OCI_MANIFEST),
        ("docker", OCI_ACCEPT),
        ("docker", SCHEMA1_ACCEPT),
        ("oci", DOCKER_MANIFEST),
        ("oci", DOCKER_ACCEPT),
        ("oci", "application/json"),
        ("docker-list", OCI_INDEX),
        ("docker-list", DOCKER_MANIFEST),
        ("oci-index", DOCKER_LIST),
        ("oci-index", OCI_MANIFEST),
    ],
)
@pytest_twisted.ensureDeferred
async def test_manifest_served_whatever_the_accept(interop: RunningRegistry, kind: str, accept: str) -> None:
    """A stored manifest is served (200, own Content-Type and bytes) even if Accept does not list its type."""
    repository = f"treq/accept-{kind}-{sha256(accept.encode())[7:19]}"
    top: Image | Index
    if kind in ("docker", "oci"):
        top = makeImage(layers=1, docker=kind == "docker")
        await pushImage(interop, repository, top, "v1")
    else:
        top = makeIndex([("linux", "amd64"), ("linux", "arm64")], docker=kind == "docker-list")
        await pushIndex(interop, repository, top, "v1")

    for reference in ["v1", top.digest]:
        got = await call(
            interop, "GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": accept}
        )
        assert got.code == 200, got.body
        assert (one(got, "Content-Type"), got.body) == (top.mediaType, top.manifest)
        assert one(got, "Docker-Content-Digest") == top.digest
        head = await call(
            interop, "HEAD", f"/v2/{repository}/manifests/{reference}", headers={"Accept": accept}
        )
        assert (head.code, one(head, "Content-Type")) == (200, top.mediaType)
        assert one(head, "Content-Length") == str(len(top.manifest))
        assert one(head, "Docker-Content-Digest") == top.digest


@pytest_twisted.ensureDeferred
async def test_docker_types_round_trip(interop: RunningRegistry) -> None:
    """Docker schema 2 manifests and manifest lists keep their media types, in JSON and headers."""
    repository = "treq/docker"
    manifestList = makeIndex([("linux", "amd64"), ("windows", "amd64")], docker=True)
    await pushIndex(interop, repository, manifestList, "latest")

    got = await call(interop, "GET", f"/v2/{repository}/manifests/latest", headers={"Accept": DOCKER_ACCEPT})
    assert one(got, "Content-Type") == DOCKER_LIST
    listed = json.loads(got.body)
    assert listed["mediaType"] == DOCKER_LIST
    assert [d["mediaType"] for d in listed["manifests"]] == [DOCKER_MANIFEST, DOCKER_MANIFEST]
    for image in manifestList.images:
        child = await call(interop, "GET", f"/v2/{repository}/manifests/{image.digest}")
        assert (one(child, "Content-Type"), child.body) == (DOCKER_MANIFEST, image.manifest)
        assert json.loads(child.body)["mediaType"] == DOCKER_MANIFEST
