"""
Names to object keys in the bucket, all under one key prefix so that several
registries can share a bucket.  The layout is described in docs/storage.md.

Keys are built only from names checked by L{ociklein.storage._checks}.
Two rules shape the layout:

- no key is also the "directory" of another key (stores such as SeaweedFS
  keep keys in a directory tree and cannot hold both C{a} and C{a/b});
- what is listed page by page (tags, the catalog) sits in one flat
  "directory" whose key order is the order of the names, so that a page is
  one C{ListObjectsV2} call with C{StartAfter}, never a full read.
"""

from __future__ import annotations

import re

from ociklein.storage._checks import checkDigest, checkRepository, checkTag

UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


def normalizePrefix(prefix: str) -> str:
    """
    C{""} or a prefix ending in C{/}, without a leading C{/}.
    """
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""


def _digestPart(digest: str) -> str:
    algorithm, _, encoded = checkDigest(digest).partition(":")
    return f"{algorithm}/{encoded}"


# Longest component of an encoded name: stores that keep keys as paths
# (SeaweedFS) refuse a component longer than 255 bytes.
_CHUNK = 200
# Ends every encoded name; sorts below "/" and every hex digit.
_END = "!"


def encodeName(name: str) -> str:
    """
    A repository name as a key suffix that sorts like the name, for the
    flat, paged listings of the catalog: the hex of its UTF-8 bytes (fixed
    width per byte keeps byte order), cut into components of 200 digits,
    then C{/!}.  The terminator sorts below any digit and below C{/}, so a
    name comes before the longer names it starts, both in byte order of
    keys and in the order of a store that walks a tree of components.
    """
    encoded = name.encode().hex()
    chunks = [encoded[i : i + _CHUNK] for i in range(0, len(encoded), _CHUNK)] or [""]
    return "/".join(chunks) + "/" + _END


def decodeName(suffix: str) -> str | None:
    if not suffix.endswith("/" + _END):
        return None
    try:
        return bytes.fromhex(suffix[: -len(_END) - 1].replace("/", "")).decode()
    except ValueError:
        return None


class Keys:
    """
    Where everything lives under C{prefix}.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = normalizePrefix(prefix)
        self.catalog = self.prefix + "catalog/"
        self.linked = self.prefix + "linked/"
        self.holderIndex = self.prefix + "holders/"
        self.uploads = self.prefix + "uploads/"
        self.blobs = self.prefix + "blobs/"
        self.collectorLease = self.prefix + "collector-lease"

    def blob(self, digest: str) -> str:
        return self.blobs + _digestPart(digest)

    def repository(self, repository: str) -> str:
        """
        The "directory" of a repository: its name components, then the
        C{_}-prefixed internal ones no name component may start with.
        """
        return f"{self.prefix}repositories/{checkRepository(repository)}/"

    def link(self, repository: str, digest: str) -> str:
        return self.links(repository) + _digestPart(digest)

    def manifests(self, repository: str) -> str:
        return self.repository(repository) + "_manifests/"

    def manifest(self, repository: str, digest: str) -> str:
        return self.manifests(repository) + _digestPart(digest)

    def tags(self, repository: str) -> str:
        return self.repository(repository) + "_tags/"

    def tag(self, repository: str, tag: str) -> str:
        return self.tags(repository) + checkTag(tag)

    def referrers(self, repository: str, subject: str) -> str:
        return self.repository(repository) + "_referrers/" + _digestPart(subject) + "/"

    def referrer(self, repository: str, subject: str, digest: str) -> str:
        algorithm, _, encoded = checkDigest(digest).partition(":")
        return self.referrers(repository, subject) + f"{algorithm}-{encoded}.json"

    def catalogEntry(self, repository: str) -> str:
        return self.catalog + encodeName(checkRepository(repository))

    def links(self, repository: str) -> str:
        return self.repository(repository) + "_links/"

    def holders(self, digest: str) -> str:
        """
        The index of the repositories blob C{digest} is linked in.
        """
        return self.holderIndex + _digestPart(digest) + "/"

    def holder(self, digest: str, repository: str) -> str:
        return self.holders(digest) + encodeName(checkRepository(repository))

    def linkedEntry(self, repository: str) -> str:
        """
        The entry of a repository that has (or had) links, for maintenance.
        """
        return self.linked + encodeName(checkRepository(repository))

    def upload(self, uploadId: str) -> str:
        """
        The "directory" of an upload session.
        """
        if UPLOAD_ID.fullmatch(uploadId) is None:
            raise ValueError(f"invalid upload id {uploadId[:80]!r}")
        return self.uploads + uploadId + "/"

    def uploadInfo(self, uploadId: str) -> str:
        return self.upload(uploadId) + "info"

    def uploadPart(self, uploadId: str, number: int) -> str:
        return self.upload(uploadId) + f"part-{number:05d}"

    def uploadTail(self, uploadId: str, size: int) -> str:
        return self.upload(uploadId) + f"tail-{size:015d}"
