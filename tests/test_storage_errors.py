"""
Storage failures on the filesystem backend say what happened: a full disk is
507, running out of descriptors is 503 with Retry-After, an I/O or
permission error is 500; always the spec's JSON body, no partial data left,
and the registry keeps serving.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import StubClient, makeBackends, serve
from helpers import OCI_MANIFEST, digestOf, errorCode, imageManifest, pushBlob

import ociklein.storage.fs._blobs
import ociklein.storage.fs._commit
from ociklein import Registry


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest_twisted.async_yield_fixture(params=["stub", "live"])
async def fsClient(request: pytest.FixtureRequest, root: Path) -> AsyncIterator[Any]:
    manifests, blobs = makeBackends("fs", root)
    registry = Registry(manifests, blobs)
    if request.param == "stub":
        yield StubClient(registry)
    else:
        async for live in serve(registry):
            yield live
    blobs.close()


def _fail(code: int) -> Any:
    def failing(*args: Any, **kwargs: Any) -> None:
        raise OSError(code, os.strerror(code))

    return failing


def _storedBlobs(root: Path) -> list[Path]:
    return [p for p in (root / "blobs").rglob("*") if p.is_file()]


# errno -> (status, spec code)
_ANSWERS = {
    errno.ENOSPC: (507, "UNSUPPORTED"),
    errno.EDQUOT: (507, "UNSUPPORTED"),
    errno.EIO: (500, "UNKNOWN"),
    errno.EACCES: (500, "UNKNOWN"),
}


@pytest.mark.parametrize("code", sorted(_ANSWERS))
@pytest_twisted.ensureDeferred
async def test_failed_write_during_upload(
    fsClient: Any, root: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """A write failing mid-upload answers 507 for a full disk, 500 for EIO/EACCES, keeps no
    partial data, and reads go on."""
    kept = await pushBlob(fsClient, "repo", b"already here")
    monkeypatch.setattr(ociklein.storage.fs._blobs, "writeParts", _fail(code))
    data = b"x" * 100_000
    response = await fsClient.request("POST", f"/v2/repo/blobs/uploads/?digest={digestOf(data)}", data=data)
    assert (response.code, errorCode(response)) == _ANSWERS[code]
    monkeypatch.undo()
    assert (await fsClient.request("HEAD", f"/v2/repo/blobs/{digestOf(data)}")).code == 404
    assert len(_storedBlobs(root)) == 1
    assert not any(p.is_file() for p in (root / "tmp").rglob("*"))
    assert not list((root / "uploads").iterdir())
    response = await fsClient.request("GET", f"/v2/repo/blobs/{kept}")
    assert response.code == 200 and response.body == b"already here"


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
@pytest_twisted.ensureDeferred
async def test_failed_last_write_of_chunked_upload(
    fsClient: Any, root: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """A write failing in the closing PUT's body (reported by the digest, the store writing
    behind) answers 500 or 507 and ends the session, as a failure in a PATCH does."""
    location = (await fsClient.request("POST", "/v2/repo/blobs/uploads/")).headers.getRawHeaders("Location")[
        0
    ]
    first, last = b"first part" * 1000, b"last part" * 1000
    assert (await fsClient.request("PATCH", location, data=first)).code == 202
    monkeypatch.setattr(ociklein.storage.fs._blobs, "writeParts", _fail(code))
    response = await fsClient.request("PUT", f"{location}?digest={digestOf(first + last)}", data=last)
    assert (response.code, errorCode(response)) == _ANSWERS[code]
    monkeypatch.undo()
    assert (await fsClient.request("GET", location)).code == 404
    assert _storedBlobs(root) == []
    assert not list((root / "uploads").iterdir())


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
@pytest_twisted.ensureDeferred
async def test_failed_publish(fsClient: Any, root: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """An error while publishing a verified upload answers 500 (EIO) or 507 (ENOSPC) and leaves
    no session or blob."""
    location = (await fsClient.request("POST", "/v2/repo/blobs/uploads/")).headers.getRawHeaders("Location")[
        0
    ]
    data = b"chunked data" * 1000
    assert (await fsClient.request("PATCH", location, data=data)).code == 202
    monkeypatch.setattr(ociklein.storage.fs._blobs, "_publish", _fail(code))
    response = await fsClient.request("PUT", f"{location}?digest={digestOf(data)}")
    assert (response.code, errorCode(response)) == _ANSWERS[code]
    monkeypatch.undo()
    assert (await fsClient.request("GET", location)).code == 404
    assert (await fsClient.request("HEAD", f"/v2/repo/blobs/{digestOf(data)}")).code == 404
    assert _storedBlobs(root) == []


@pytest_twisted.ensureDeferred
async def test_failed_manifest_write(fsClient: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while storing a manifest answers 507 with JSON; the tag does not appear."""
    await pushBlob(fsClient, "repo", b"{}")
    manifest = json.dumps(imageManifest(b"{}", [])).encode()
    monkeypatch.setattr(ociklein.storage.fs._commit, "writeAll", _fail(errno.ENOSPC))
    response = await fsClient.request(
        "PUT", "/v2/repo/manifests/v1", data=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert (response.code, errorCode(response)) == (507, "UNSUPPORTED")
    monkeypatch.undo()
    assert (await fsClient.request("GET", "/v2/repo/manifests/v1")).code == 404
    response = await fsClient.request(
        "PUT", "/v2/repo/manifests/v1", data=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.code == 201


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
@pytest_twisted.ensureDeferred
async def test_out_of_descriptors(
    fsClient: Any, root: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Running out of descriptors answers 503 UNAVAILABLE with Retry-After, not "insufficient
    storage", and the next request succeeds."""
    monkeypatch.setattr(ociklein.storage.fs._blobs, "_createSession", _fail(code))
    data = b"retry me"
    response = await fsClient.request("POST", f"/v2/repo/blobs/uploads/?digest={digestOf(data)}", data=data)
    assert (response.code, errorCode(response)) == (503, "UNAVAILABLE")
    assert response.headers.getRawHeaders("Retry-After") == ["1"]
    monkeypatch.undo()
    await pushBlob(fsClient, "repo", data)
    assert list((root / "tmp").iterdir()) == []
