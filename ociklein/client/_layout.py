"""
OCI image layouts (the directory format of the OCI image-layout spec, as
C{skopeo copy ... oci:DIR:TAG} writes it): C{oci-layout}, C{index.json}
naming the images by C{org.opencontainers.image.ref.name}, and every blob
under C{blobs/ALGORITHM/ENCODED}.  Blobs are written to a temporary name,
fsynced and renamed, so a layout never holds a partial blob under its
digest.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from ociklein.client._errors import RegistryError
from ociklein.client._files import fsyncDirectory, replaceFile
from ociklein.manifests import OCI_INDEX
from ociklein.names import isDigestShaped, isSupportedDigest

REF_NAME = "org.opencontainers.image.ref.name"
_LAYOUT_FILE = {"imageLayoutVersion": "1.0.0"}


class ImageLayout:
    """
    One image layout directory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return (self.path / "oci-layout").is_file()

    def create(self) -> None:
        """
        Make the directory a layout if it is not one yet.
        """
        (self.path / "blobs").mkdir(parents=True, exist_ok=True)
        if not (self.path / "oci-layout").exists():
            replaceFile(self.path / "oci-layout", json.dumps(_LAYOUT_FILE).encode())
        if not (self.path / "index.json").exists():
            self._writeIndex({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})

    def index(self) -> dict[str, Any]:
        """
        The parsed C{index.json}.
        """
        if not self.exists():
            raise RegistryError(
                "LAYOUT_INVALID", f"{self.path} is not an OCI image layout (no oci-layout file)"
            )
        try:
            document = json.loads((self.path / "index.json").read_bytes())
        except (OSError, ValueError) as e:
            raise RegistryError("LAYOUT_INVALID", f"{self.path}/index.json: {e}") from None
        if not isinstance(document, dict) or not isinstance(document.get("manifests", []), list):
            raise RegistryError("LAYOUT_INVALID", f"{self.path}/index.json is not an image index")
        return document

    def _writeIndex(self, document: dict[str, Any]) -> None:
        replaceFile(self.path / "index.json", json.dumps(document, indent=None).encode())

    def tags(self) -> list[str]:
        return [
            str(entry["annotations"][REF_NAME])
            for entry in self.index().get("manifests", [])
            if REF_NAME in (entry.get("annotations") or {})
        ]

    def resolve(self, tag: str | None) -> dict[str, Any]:
        """
        The descriptor of the image at C{tag}; with no tag, of the layout's
        only image.
        """
        entries = self.index().get("manifests", [])
        if tag is None:
            if len(entries) != 1:
                raise RegistryError(
                    "NAME_UNKNOWN", f"{self.path} holds {len(entries)} images: name one with :TAG"
                )
            return dict(entries[0])
        for entry in entries:
            if (entry.get("annotations") or {}).get(REF_NAME) == tag or entry.get("digest") == tag:
                return dict(entry)
        raise RegistryError("MANIFEST_UNKNOWN", f"{self.path} has no image tagged {tag}")

    def blobPath(self, digest: str) -> Path:
        if not isSupportedDigest(digest):
            raise RegistryError("DIGEST_INVALID", f"{digest} is not a sha256 or sha512 digest")
        algorithm, _, encoded = digest.partition(":")
        return self.path / "blobs" / algorithm / encoded

    def hasBlob(self, digest: str) -> bool:
        return self.blobPath(digest).is_file()

    def readSmall(self, digest: str, limit: int = 4 * 1024 * 1024) -> bytes:
        """
        A manifest's bytes, checked against its digest.
        """
        from ociklein.client._client import digestOf

        path = self.blobPath(digest)
        try:
            if path.stat().st_size > limit:
                raise RegistryError("SIZE_INVALID", f"{path} is over {limit} bytes")
            content = path.read_bytes()
        except FileNotFoundError:
            raise RegistryError("BLOB_UNKNOWN", f"{self.path} has no blob {digest}") from None
        if digestOf(content, digest.partition(":")[0]) != digest:
            raise RegistryError("DIGEST_MISMATCH", f"{path} does not hash to {digest}")
        return content

    def openTemporary(self, digest: str) -> IO[bytes]:
        """
        A new file to write blob C{digest} into, then L{commit} or discard.
        """
        directory = self.blobPath(digest).parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=directory, prefix=".partial-")
        os.close(fd)
        return open(path, "w+b")

    def commit(self, f: IO[bytes], digest: str) -> None:
        """
        Give a complete, verified temporary file its digest's name, durably.
        """
        f.flush()
        os.fsync(f.fileno())
        os.replace(f.name, self.blobPath(digest))
        fsyncDirectory(self.blobPath(digest).parent)

    def discard(self, f: IO[bytes]) -> None:
        f.close()
        try:
            os.unlink(f.name)
        except FileNotFoundError:
            pass

    def writeSmall(self, digest: str, content: bytes) -> None:
        """
        Store a manifest blob (its digest already checked by the caller).
        """
        path = self.blobPath(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            replaceFile(path, content)

    def addManifest(self, descriptor: dict[str, Any], tag: str | None) -> None:
        """
        Name a manifest in C{index.json}: at C{tag} (moving the tag if it
        named another), or untagged (a referrer) when C{tag} is L{None}.
        """
        self.create()
        document = self.index()
        entries = []
        for entry in document.get("manifests", []):
            name = (entry.get("annotations") or {}).get(REF_NAME)
            if tag is not None and name == tag:
                continue
            if tag is None and name is None and entry.get("digest") == descriptor["digest"]:
                return
            entries.append(entry)
        entry = {k: v for k, v in descriptor.items() if k in ("mediaType", "digest", "size", "artifactType")}
        if tag is not None:
            entry["annotations"] = {REF_NAME: tag}
        document["manifests"] = [*entries, entry]
        self._writeIndex(document)

    def referrers(self, digest: str) -> list[dict[str, Any]]:
        """
        Descriptors of the manifests in C{index.json} whose subject is C{digest}.
        """
        found = []
        for entry in self.index().get("manifests", []):
            candidate = entry.get("digest")
            if not isinstance(candidate, str) or not isDigestShaped(candidate) or not self.hasBlob(candidate):
                continue
            try:
                subject = json.loads(self.readSmall(candidate)).get("subject") or {}
            except (RegistryError, ValueError, AttributeError):
                continue
            if isinstance(subject, dict) and subject.get("digest") == digest:
                found.append(dict(entry))
        return found
