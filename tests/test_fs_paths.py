"""
The fs backend never follows a symlink planted inside its root, checked
with one lstat per component below the root instead of a realpath.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from twisted.python.failure import Failure

from ociklein.storage.fs import FilesystemManifestBackend, _paths
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


@pytest.mark.parametrize("kernelCheck", [True, False], ids=["openat2", "lstat"])
@pytest.mark.parametrize(
    "planted",
    ["repositories/repo", "repositories/repo/_tags", "repositories/repo/_tags/latest"],
)
def test_tagNeverReadThroughSymlink(
    tmp_path: Path, planted: str, kernelCheck: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag is read only through real directories: a symlink on its path is refused with ELOOP."""
    if kernelCheck and _paths._openat2 is None:
        pytest.skip("no openat2 here")
    if not kernelCheck:
        monkeypatch.setattr(_paths, "_openat2", None)
    root = tmp_path / "root"
    backend = FilesystemManifestBackend(str(root))
    digest = "sha256:" + "a" * 64
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "_tags").mkdir(parents=True)
    (elsewhere / "_tags" / "latest").write_text(digest)
    target = root / planted
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(elsewhere / os.path.relpath(target, root / "repositories" / "repo"))
    failures: list[Failure] = []
    backend.resolveTag("repo", "latest").addErrback(failures.append)
    assert len(failures) == 1 and failures[0].value.errno == errno.ELOOP
    target.unlink()
    (root / "repositories" / "repo" / "_tags").mkdir(parents=True, exist_ok=True)
    (root / "repositories" / "repo" / "_tags" / "latest").write_text(digest)
    found: list[str | None] = []
    backend.resolveTag("repo", "latest").addCallback(found.append)
    assert found == [digest]
