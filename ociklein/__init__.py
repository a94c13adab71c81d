"""
ociklein: an OCI Distribution v1.1 container registry on Twisted and Klein.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ociklein.errors import OCIError
from ociklein.interfaces import IBlobReader, IBlobStore, IManifestBackend, IUpload

if TYPE_CHECKING:
    from ociklein.registry import Registry
    from ociklein.storage.memory import MemoryBlobStore, MemoryManifestBackend

    __version__: str

# Imported on first use: the ociklein command's client verbs need none of
# the server, and importing it (Klein, werkzeug) would double their start.
_LAZY = {
    "Registry": "ociklein.registry",
    "MemoryBlobStore": "ociklein.storage.memory",
    "MemoryManifestBackend": "ociklein.storage.memory",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ociklein")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        return "0.0.0"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'ociklein' has no attribute {name!r}")
    globals()[name] = value
    return value


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
