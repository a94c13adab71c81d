"""
S3 storage: blobs, manifests, tags, the catalog, the referrers index and
upload sessions all in one bucket (under a key prefix), so that any number
of stateless nodes can serve one registry.  The key layout is described in
docs/storage.md.
"""

from __future__ import annotations

from ociklein.storage.s3._blobs import DEFAULT_PART_SIZE, S3BlobStore
from ociklein.storage.s3._client import S3Client, S3Config
from ociklein.storage.s3._manifests import S3ManifestBackend

__all__ = ["DEFAULT_PART_SIZE", "S3BlobStore", "S3Client", "S3Config", "S3ManifestBackend"]
