"""
ociklein: an OCI Distribution v1.1 container registry on Twisted and Klein.
"""

from importlib.metadata import PackageNotFoundError, version

from ociklein.errors import OCIError
from ociklein.interfaces import IBlobReader, IBlobStore, IManifestBackend, IUpload
from ociklein.registry import Registry
from ociklein.storage.memory import MemoryBlobStore, MemoryManifestBackend

try:
    __version__ = version("ociklein")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0.0.0"

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
