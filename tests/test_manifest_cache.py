"""
The fs backend keeps small manifests read by digest in a bounded cache,
yet sees at once what another process sharing the root deleted, replaced
or tagged.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from ociklein.storage.fs import FilesystemManifestBackend
from ociklein.storage.fs._cache import FileCache

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


Pair = tuple[FilesystemManifestBackend, FilesystemManifestBackend]


@pytest.fixture
def backends(tmp_path: Path) -> Pair:
    """Two backends on one root, as two processes would have."""
    root = str(tmp_path / "root")
    return FilesystemManifestBackend(root), FilesystemManifestBackend(root)


@pytest_twisted.ensureDeferred
async def test_servedFromCache(backends: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest read again by digest is not opened again: one stat checks it is still the same file."""
    ours, _ = backends
    content = b'{"a": 1}'
    await ours.putManifest("repo", sha256(content), MANIFEST, content, None, {})
    assert await ours.getManifest("repo", sha256(content)) == (MANIFEST, content)
    opened: list[str] = []
    real = os.open

    def recording(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fsdecode(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording)
    for _ in range(3):
        assert await ours.getManifest("repo", sha256(content)) == (MANIFEST, content)
    assert opened == []


@pytest_twisted.ensureDeferred
async def test_otherProcessDeletes(
    backends: tuple[FilesystemManifestBackend, FilesystemManifestBackend],
) -> None:
    """A manifest another process deleted is gone at once, though it was cached."""
    ours, theirs = backends
    content = b'{"b": 2}'
    await ours.putManifest("repo", sha256(content), MANIFEST, content, None, {})
    assert await ours.getManifest("repo", sha256(content)) is not None
    assert await theirs.deleteManifest("repo", sha256(content))
    assert await ours.getManifest("repo", sha256(content)) is None


@pytest_twisted.ensureDeferred
async def test_otherProcessReplaces(backends: Pair) -> None:
    """A manifest deleted and stored again (with another media type) by another process is read afresh."""
    ours, theirs = backends
    content = b'{"c": 3}'
    await ours.putManifest("repo", sha256(content), MANIFEST, content, None, {})
    assert await ours.getManifest("repo", sha256(content)) == (MANIFEST, content)
    assert await theirs.deleteManifest("repo", sha256(content))
    await theirs.putManifest("repo", sha256(content), INDEX, content, None, {})
    assert await ours.getManifest("repo", sha256(content)) == (INDEX, content)


@pytest_twisted.ensureDeferred
async def test_tagsAlwaysFresh(backends: Pair) -> None:
    """A tag moved by another process resolves to its new target on the next read."""
    ours, theirs = backends
    await ours.setTag("repo", "latest", sha256(b"one"))
    assert await ours.resolveTag("repo", "latest") == sha256(b"one")
    await theirs.setTag("repo", "latest", sha256(b"two"))
    assert await ours.resolveTag("repo", "latest") == sha256(b"two")


def test_bounded(tmp_path: Path) -> None:
    """The cache holds at most its byte budget, least recently used out first, and no large file."""
    cache = FileCache(maxBytes=250, maxFile=100)
    for i in range(10):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x" * 50)
        assert cache.read(i, str(path), bytes) == b"x" * 50
        cache.get(0)  # keep the first one in use
    assert cache.size <= 250 and len(cache) == 5
    assert cache.get(0) == b"x" * 50 and cache.get(1) is None
    big = tmp_path / "big"
    big.write_bytes(b"y" * 101)
    assert cache.read("big", str(big), bytes) == b"y" * 101
    assert cache.get("big") is None
