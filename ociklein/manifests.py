"""
What the registry needs to know of a manifest: its kind, the blobs and
manifests it references, its subject and artifact type.  Validation follows
the OCI image spec and Docker's schema 2; anything else is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ociklein.errors import manifestInvalid
from ociklein.names import isDigestShaped

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES

# Layers that live elsewhere and need not be pushed (Windows base layers).
_FOREIGN_LAYERS = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


@dataclass
class Manifest:
    """
    A parsed, validated manifest.
    """

    mediaType: str
    blobs: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    subject: str | None = None
    artifactType: str | None = None
    annotations: dict[str, str] | None = None


def _mediaTypeOf(contentType: str | None) -> str | None:
    if not contentType:
        return None
    return contentType.split(";", 1)[0].strip().lower() or None


def _descriptor(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise manifestInvalid(f"{where} is not a descriptor object")
    mediaType = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(mediaType, str) or not mediaType:
        raise manifestInvalid(f"{where}.mediaType is missing")
    if not isinstance(digest, str) or not isDigestShaped(digest):
        raise manifestInvalid(f"{where}.digest is not a digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise manifestInvalid(f"{where}.size is not a non-negative integer")
    return value


def _annotations(document: dict[str, Any]) -> dict[str, str] | None:
    annotations = document.get("annotations")
    if annotations is None:
        return None
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise manifestInvalid("annotations must map strings to strings")
    return annotations


def parseManifest(content: bytes, contentType: str | None) -> Manifest:
    """
    Parse and validate C{content}; raise MANIFEST_INVALID on any defect.
    """
    try:
        document = json.loads(content)
    except (ValueError, UnicodeDecodeError) as e:
        raise manifestInvalid(f"not JSON: {e}") from None
    except RecursionError:
        raise manifestInvalid("JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise manifestInvalid("a manifest is a JSON object")
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise manifestInvalid("mediaType must be a string")
    header = _mediaTypeOf(contentType)
    if header in MANIFEST_TYPES:
        mediaType = header
        if declared is not None and declared != mediaType:
            raise manifestInvalid(f"mediaType {declared} does not match Content-Type {mediaType}")
    elif declared in MANIFEST_TYPES:
        mediaType = declared
    elif declared is None and "manifests" in document:
        mediaType = OCI_INDEX
    elif declared is None and "config" in document:
        mediaType = OCI_MANIFEST
    else:
        raise manifestInvalid(f"unsupported manifest media type {header or declared}")
    schemaVersion = document.get("schemaVersion")
    if type(schemaVersion) is not int or schemaVersion != 2:
        raise manifestInvalid("schemaVersion must be 2")
    manifest = Manifest(mediaType=mediaType, annotations=_annotations(document))
    artifactType = document.get("artifactType")
    if artifactType is not None and not isinstance(artifactType, str):
        raise manifestInvalid("artifactType must be a string")
    manifest.artifactType = artifactType
    if "subject" in document and document["subject"] is not None:
        manifest.subject = _descriptor(document["subject"], "subject")["digest"]
    if mediaType in IMAGE_TYPES:
        config = _descriptor(document.get("config"), "config")
        layers = document.get("layers", [])
        if not isinstance(layers, list):
            raise manifestInvalid("layers must be a list")
        manifest.blobs.append(config["digest"])
        for i, layer in enumerate(layers):
            descriptor = _descriptor(layer, f"layers[{i}]")
            if descriptor["mediaType"] in _FOREIGN_LAYERS and descriptor.get("urls"):
                continue
            manifest.blobs.append(descriptor["digest"])
        if manifest.artifactType is None:
            manifest.artifactType = config["mediaType"]
    else:
        children = document.get("manifests")
        if not isinstance(children, list):
            raise manifestInvalid("manifests must be a list")
        for i, child in enumerate(children):
            manifest.children.append(_descriptor(child, f"manifests[{i}]")["digest"])
    return manifest
