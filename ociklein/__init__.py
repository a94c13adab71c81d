"""
ociklein: an OCI Distribution v1.1 container registry on Twisted and Klein.
"""

from ociklein.errors import OCIError
from ociklein.interfaces import IBlobReader, IBlobStore, IManifestBackend, IUpload
from ociklein.memory import MemoryBlobStore, MemoryManifestBackend
from ociklein.registry import Registry

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
