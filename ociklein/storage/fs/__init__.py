"""
Filesystem storage: blobs, manifests, tags and upload sessions under one
root directory, written so that a crash or a second process on the same
root never sees a torn file.  The layout is described in docs/storage.md.
"""

from __future__ import annotations

from ociklein.storage.fs._blobs import FilesystemBlobStore
from ociklein.storage.fs._manifests import FilesystemManifestBackend
from ociklein.storage.fs._root import prepareRoot

__all__ = ["FilesystemBlobStore", "FilesystemManifestBackend", "prepareRoot"]
