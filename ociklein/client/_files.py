"""
Files replaced whole or not at all: the auth files and a layout's
C{index.json} are read by other programs at any moment.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsyncDirectory(path: Path) -> None:
    """
    Make the entries of directory C{path} durable.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replaceFile(path: Path, content: bytes, mode: int = 0o644) -> None:
    """
    Write C{path} through a temporary file in its directory, fsynced and
    renamed over it, with permissions C{mode}.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    fsyncDirectory(path.parent)
