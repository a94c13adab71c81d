"""
ociklein: an OCI Distribution v1.1 container registry on Twisted and Klein.
"""

from ociklein.errors import OCIError
from ociklein.interfaces import IBlobReader, IBlobStore, IManifestBackend, IUpload
from ociklein.registry import Registry
from ociklein.storage.memory import MemoryBlobStore, MemoryManifestBackend

__all__ = [
    "IBlobReader",
    "IBlobStore",
    "IManifestBackend",
    "IUpload",
    "MemoryBlobStore",
    "MemoryManifestBackend",
    "OCIError",
    "Registry",
]
