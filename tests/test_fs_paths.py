"""
The fs backend never follows a symlink planted inside its root, checked
with one lstat per component below the root instead of a realpath.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ociklein.storage.fs._paths import checkInside


@pytest.mark.parametrize(
    "planted",
    ["repositories/repo", "repositories/repo/_tags", "repositories/repo/_tags/latest"],
)
def test_symlinkRefused(tmp_path: Path, planted: str) -> None:
    """A symlink at any existing component below the root is refused with ELOOP."""
    root = tmp_path / "root"
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "_tags").mkdir(parents=True)
    (elsewhere / "_tags" / "latest").write_text("x")
    target = root / planted
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(elsewhere / os.path.relpath(target, root / "repositories" / "repo"))
    path = str(root / "repositories" / "repo" / "_tags" / "latest")
    with pytest.raises(OSError) as raised:
        checkInside(str(root), path)
    assert raised.value.errno == errno.ELOOP


def test_realAndMissingPathsPass(tmp_path: Path) -> None:
    """Real directories and files pass, and so do paths whose tail does not exist yet."""
    root = tmp_path / "root"
    (root / "repositories" / "repo" / "_tags").mkdir(parents=True)
    (root / "repositories" / "repo" / "_tags" / "latest").write_text("x")
    for relative in ["repositories/repo/_tags/latest", "repositories/repo/_tags/new", "repositories/b/t"]:
        path = str(root / relative)
        assert checkInside(str(root), path) == path
    (root / "file").write_text("x")
    assert checkInside(str(root), str(root / "file" / "below")) == str(root / "file" / "below")
