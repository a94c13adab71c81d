"""
Small OCI image layouts built on disk, so that real clients have something
to push without any network: random gzipped tar layers, an image config, a
manifest (or an index of several), C{index.json} and C{oci-layout}.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
)

# The artifact type of the test artifacts that refer to an image.
ARTIFACT = "application/vnd.example.signature"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def randomLayer(files: int = 2, size: int = 2048) -> tuple[bytes, bytes]:
    """
    A gzipped tar of random files: (compressed, uncompressed).
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(files):
            data = os.urandom(size)
            info = tarfile.TarInfo(f"data/file-{i}-{data[:4].hex()}.bin")
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), uncompressed


@dataclass
class Image:
    """
    One platform image: its manifest bytes and every blob it references.
    """

    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)
    mediaType: str = OCI_MANIFEST

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def descriptor(self, platform: dict[str, str] | None = None) -> dict[str, Any]:
        descriptor: dict[str, Any] = {
            "mediaType": self.mediaType,
            "digest": self.digest,
            "size": len(self.manifest),
        }
        if platform is not None:
            descriptor["platform"] = platform
        return descriptor


def makeImage(
    layers: int = 2, architecture: str = "amd64", os_: str = "linux", docker: bool = False
) -> Image:
    """
    A runnable-looking image of C{layers} random layers, OCI-typed unless
    C{docker} asks for Docker schema 2 media types.
    """
    compressed = [randomLayer() for _ in range(layers)]
    config = canonical(
        {
            "architecture": architecture,
            "os": os_,
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(raw) for _, raw in compressed]},
        }
    )
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": {
            "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
            "digest": sha256(config),
            "size": len(config),
        },
        "layers": [
            {"mediaType": DOCKER_LAYER if docker else OCI_LAYER, "digest": sha256(gz), "size": len(gz)}
            for gz, _ in compressed
        ],
    }
    blobs = {sha256(config): config, **{sha256(gz): gz for gz, _ in compressed}}
    return Image(canonical(manifest), blobs, manifest["mediaType"])


@dataclass
class Index:
    """
    A multi-platform image: an index and its platform images.
    """

    manifest: bytes
    images: list[Image]
    mediaType: str = OCI_INDEX

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def blobs(self) -> dict[str, bytes]:
        blobs: dict[str, bytes] = {}
        for image in self.images:
            blobs[image.digest] = image.manifest
            blobs.update(image.blobs)
        return blobs


def makeIndex(platforms: list[tuple[str, str]], docker: bool = False) -> Index:
    """
    An index (or Docker manifest list) of one image per (os, architecture).
    """
    images = [makeImage(architecture=arch, os_=os_, docker=docker) for os_, arch in platforms]
    mediaType = DOCKER_LIST if docker else OCI_INDEX
    document = {
        "schemaVersion": 2,
        "mediaType": mediaType,
        "manifests": [
            image.descriptor({"os": os_, "architecture": arch})
            for image, (os_, arch) in zip(images, platforms, strict=True)
        ],
    }
    return Index(canonical(document), images, mediaType)


def artifactFor(subject: Image) -> Image:
    """
    A small artifact whose subject is C{subject}.
    """
    payload = b'{"signed": true}'
    empty = b"{}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": ARTIFACT,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty), "size": 2},
        "layers": [{"mediaType": "application/json", "digest": sha256(payload), "size": len(payload)}],
        "subject": subject.descriptor(),
    }
    return Image(canonical(manifest), {sha256(empty): empty, sha256(payload): payload})


def writeLayout(path: Path, top: Image | Index, tag: str) -> Path:
    """
    Write C{top} as an OCI image layout at C{path}, tagged C{tag}.
    """
    blobsDir = path / "blobs" / "sha256"
    blobsDir.mkdir(parents=True, exist_ok=True)
    blobs = {**top.blobs, top.digest: top.manifest}
    for digest, data in blobs.items():
        (blobsDir / digest.partition(":")[2]).write_bytes(data)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    entry = {
        "mediaType": top.mediaType,
        "digest": top.digest,
        "size": len(top.manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return path


def readLayout(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """
    The C{index.json} of a layout and every blob file in it, by digest.
    """
    index = json.loads((path / "index.json").read_text())
    blobs = {"sha256:" + blob.name: blob.read_bytes() for blob in (path / "blobs" / "sha256").iterdir()}
    return index, blobs
