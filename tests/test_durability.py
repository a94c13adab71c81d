"""
Every acknowledged write of the fs backend is durable before its 2xx: a
recording fake of the C{os} calls follows which files have unsynced data
and which directories have unsynced entries, and at each 2xx nothing the
store keeps (outside tmp/ and the upload sessions, whose PATCHes are
documented as not fsynced) may be either.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import StubClient, makeBackends
from helpers import OCI_MANIFEST, digestOf, imageManifest, pushBlob, startUpload

from ociklein import Registry

Key = tuple[int, int]


class Recorder:
    """
    The durability state of files and directories, by (device, inode), as
    the C{os} calls made so far leave it.
    """

    def __init__(self) -> None:
        self.dirtyData: set[Key] = set()
        self.dirtyEntries: set[Key] = set()
        self.fsyncs = 0

    @staticmethod
    def _key(path: Any) -> Key | None:
        try:
            found = os.stat(path, follow_symlinks=False)
        except OSError:
            return None
        return found.st_dev, found.st_ino

    def _parentChanged(self, path: Any) -> None:
        key = self._key(os.path.dirname(os.path.abspath(os.fsdecode(path))))
        if key is not None:
            self.dirtyEntries.add(key)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = {
            name: getattr(os, name)
            for name in ("open", "write", "fsync", "rename", "mkdir", "unlink", "link")
        }

        def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            existed = os.path.lexists(path) if not isinstance(path, int) else True
            fd = real["open"](path, flags, *args, **kwargs)
            if flags & os.O_CREAT and not existed:
                self._parentChanged(path)
            return fd

        def write(fd: int, data: Any) -> int:
            written = real["write"](fd, data)
            found = os.fstat(fd)
            if stat.S_ISREG(found.st_mode):
                self.dirtyData.add((found.st_dev, found.st_ino))
            return written

        def fsync(fd: Any) -> None:
            real["fsync"](fd)
            found = os.fstat(fd if isinstance(fd, int) else fd.fileno())
            key = (found.st_dev, found.st_ino)
            self.fsyncs += 1
            if stat.S_ISDIR(found.st_mode):
                self.dirtyEntries.discard(key)
            else:
                self.dirtyData.discard(key)

        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            real["rename"](src, dst, *args, **kwargs)
            self._parentChanged(src)
            self._parentChanged(dst)

        def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
            real["mkdir"](path, *args, **kwargs)
            self._parentChanged(path)

        def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
            self._parentChanged(path)
            real["unlink"](path, *args, **kwargs)

        def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            real["link"](src, dst, *args, **kwargs)
            self._parentChanged(dst)

        for name, fake in [
            ("open", open_),
            ("write", write),
            ("fsync", fsync),
            ("rename", rename),
            ("mkdir", mkdir),
            ("unlink", unlink),
            ("link", link),
        ]:
            monkeypatch.setattr(os, name, fake)

    def unsynced(self, root: Path) -> list[str]:
        """
        What under C{root} (tmp/ and uploads/ aside) a power cut now could lose.
        """
        lost = []
        for directory, subdirs, files in os.walk(root):
            relative = os.path.relpath(directory, root)
            if relative.split(os.sep)[0] in ("tmp", "uploads"):
                subdirs[:] = []
                continue
            key = self._key(directory)
            if key in self.dirtyEntries:
                lost.append(f"entries of {relative}/")
            for name in files:
                key = self._key(os.path.join(directory, name))
                if key in self.dirtyData:
                    lost.append(f"data of {os.path.join(relative, name)}")
        return lost


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[StubClient, Path]]:
    root = tmp_path / "root"
    manifests, blobs = makeBackends("fs", root)
    yield StubClient(Registry(manifests, blobs)), root
    blobs.close()


@pytest_twisted.ensureDeferred
async def test_every_acknowledged_write_is_fsynced_first(
    store: tuple[StubClient, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """For every 2xx of a write (blob pushes, chunked uploads, manifests, tags, referrers, mounts,
    deletes), the data and the directory entries it created or removed were fsynced before it."""
    client, root = store
    recorder = Recorder()
    recorder.install(monkeypatch)
    checked: list[str] = []

    async def acknowledged(method: str, path: str, **kwargs: Any) -> Any:
        response = await client.request(method, path, **kwargs)
        assert 200 <= response.code < 300, (method, path, response.code, response.body)
        assert recorder.unsynced(root) == [], (method, path)
        checked.append(f"{method} {path}")
        return response

    config = b'{"architecture":"amd64"}'
    layer = os.urandom(200_000)
    await acknowledged("POST", f"/v2/app/blobs/uploads/?digest={digestOf(config)}", data=config)
    location = await startUpload(client, "app")
    await client.request("PATCH", location, data=layer[:100_000])
    await acknowledged("PUT", f"{location}?digest={digestOf(layer)}", data=layer[100_000:])
    manifest = json.dumps(imageManifest(config, [layer])).encode()
    headers = {"Content-Type": OCI_MANIFEST}
    await acknowledged("PUT", "/v2/app/manifests/v1", data=manifest, headers=headers)
    await acknowledged("PUT", f"/v2/app/manifests/{digestOf(manifest)}", data=manifest, headers=headers)
    subject = {"mediaType": OCI_MANIFEST, "digest": digestOf(manifest), "size": len(manifest)}
    referrer = json.dumps(imageManifest(config, [], subject=subject)).encode()
    await acknowledged("PUT", "/v2/app/manifests/sig", data=referrer, headers=headers)
    moved = json.dumps(imageManifest(config, [], annotations={"moved": "yes"})).encode()
    await acknowledged("PUT", "/v2/app/manifests/v1", data=moved, headers=headers)
    await acknowledged("POST", f"/v2/other/blobs/uploads/?mount={digestOf(layer)}&from=app")
    await acknowledged("DELETE", "/v2/app/manifests/sig")
    await acknowledged("DELETE", f"/v2/app/manifests/{digestOf(manifest)}")
    await acknowledged("DELETE", f"/v2/other/blobs/{digestOf(layer)}")
    await pushBlob(client, "app", b"one more")
    assert recorder.fsyncs > 0 and len(checked) == 10
