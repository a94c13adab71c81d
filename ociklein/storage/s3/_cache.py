"""
Manifests a node keeps, by repository and digest, to answer a GET by tag
after reading only the tag.

A manifest is named by its digest, so what is kept is checked against it
once, and is the right answer for as long as the manifest exists.  It is
only served after a tag read from the bucket named it: a manifest is
deleted after its tags (and a collector deletes only untagged ones), so a
tag that names it proves it was there when the tag was read.  A GET by
digest always asks the bucket.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict


class ManifestCache:
    """
    Up to C{maxBytes} of manifests of at most C{maxManifest} bytes each,
    least recently used out first.
    """

    def __init__(self, maxBytes: int = 4 * 1024 * 1024, maxManifest: int = 64 * 1024) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[str, bytes]] = OrderedDict()
        self._bytes = 0
        self._maxBytes = maxBytes
        self._maxManifest = maxManifest

    def get(self, repository: str, digest: str) -> tuple[str, bytes] | None:
        found = self._entries.get((repository, digest))
        if found is not None:
            self._entries.move_to_end((repository, digest))
        return found

    def keep(self, repository: str, digest: str, mediaType: str, content: bytes) -> None:
        """
        Keep a manifest read from the bucket, if small and it hashes to its name.
        """
        key = (repository, digest)
        if key in self._entries or len(content) > self._maxManifest:
            return
        algorithm, _, encoded = digest.partition(":")
        if hashlib.new(algorithm, content).hexdigest() != encoded:
            return
        self._entries[key] = (mediaType, content)
        self._bytes += len(content)
        while self._bytes > self._maxBytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= len(dropped)

    def drop(self, repository: str, digest: str) -> None:
        found = self._entries.pop((repository, digest), None)
        if found is not None:
            self._bytes -= len(found[1])
