"""
The public surface of ociklein: exactly the names of __all__, each importable
from the package, and the version --version prints.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import ociklein

PUBLIC = [
    "IBlobReader",
    "IBlobStore",
    "IManifestBackend",
    "IUpload",
    "MemoryBlobStore",
    "MemoryManifestBackend",
    "OCIError",
    "Registry",
]


def test_all_is_pinned() -> None:
    """ociklein.__all__ is exactly the public names; a new one is a deliberate change to this list."""
    assert sorted(ociklein.__all__) == PUBLIC


def test_every_public_name_is_there() -> None:
    """Every name of __all__ is an attribute of the package, so `from ociklein import *` works."""
    namespace: dict[str, object] = {}
    exec("from ociklein import *", namespace)
    assert all(name in namespace for name in PUBLIC)


def test_version() -> None:
    """__version__ is the installed distribution's version, which `ociklein --version` prints."""
    assert ociklein.__version__ == version("ociklein")
    result = subprocess.run(
        [sys.executable, "-m", "ociklein.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ociklein {ociklein.__version__}"
