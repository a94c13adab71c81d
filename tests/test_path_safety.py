"""
Path safety of the filesystem backend through HTTP: no name, tag, digest or
upload id a client sends reaches outside --root, and none is a 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import makeBackends, serve
from helpers import digestOf

from ociklein import Registry

HOSTILE_NAMES = [
    "..",
    "../x",
    "a/../../b",
    "a/./b",
    "%2e%2e/x",
    "a%2F..%2F..%2Fb",
    "a%2fb",
    "%2Fetc",
    "/etc",
    "a%00b",
    "a\\..\\b",
    "_links",
    "a/_manifests",
    "x" * 300,
    "a/" * 130 + "b",
]
HOSTILE_REFERENCES = ["..", "..%2F..%2Fx", "%2e%2e", "a%00", "sha256:..%2F..", "sha256:" + "a" * 63 + "/"]


@pytest_twisted.async_yield_fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[tuple[Any, Path]]:
    """A live fs registry whose root sits inside an otherwise empty directory."""
    root = tmp_path / "inside" / "root"
    manifests, blobs = makeBackends("fs", root)
    async for live in serve(Registry(manifests, blobs)):
        yield live, tmp_path
    blobs.close()


def _outside(top: Path) -> set[Path]:
    return {p for p in top.rglob("*") if "root" not in p.relative_to(top).parts}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest_twisted.ensureDeferred
async def test_hostile_names_stay_inside_root(sandbox: tuple[Any, Path], name: str) -> None:
    """Writes and reads under hostile repository names are refused (4xx) and touch nothing outside root."""
    client, top = sandbox
    before = _outside(top)
    data = b"payload"
    digest = digestOf(data)
    attempts = [
        ("POST", f"/v2/{name}/blobs/uploads/?digest={digest}", data),
        ("POST", f"/v2/{name}/blobs/uploads/", None),
        ("PUT", f"/v2/{name}/manifests/latest", b"{}"),
        ("GET", f"/v2/{name}/manifests/latest", None),
        ("GET", f"/v2/{name}/blobs/{digest}", None),
        ("GET", f"/v2/{name}/tags/list", None),
        ("DELETE", f"/v2/{name}/manifests/latest", None),
    ]
    for method, path, body in attempts:
        response = await client.request(method, path, data=body)
        assert 400 <= response.code < 500, (method, path, response.code)
    assert _outside(top) == before


@pytest.mark.parametrize("reference", HOSTILE_REFERENCES)
@pytest_twisted.ensureDeferred
async def test_hostile_references_stay_inside_root(sandbox: tuple[Any, Path], reference: str) -> None:
    """Hostile tags, digests and upload ids are refused (4xx) and touch nothing outside root."""
    client, top = sandbox
    before = _outside(top)
    attempts = [
        ("PUT", f"/v2/repo/manifests/{reference}", b"{}"),
        ("GET", f"/v2/repo/manifests/{reference}", None),
        ("DELETE", f"/v2/repo/manifests/{reference}", None),
        ("GET", f"/v2/repo/blobs/{reference}", None),
        ("DELETE", f"/v2/repo/blobs/{reference}", None),
        ("POST", f"/v2/repo/blobs/uploads/?digest={reference}", b"x"),
        ("POST", f"/v2/repo/blobs/uploads/?mount={reference}&from=..", None),
        ("GET", f"/v2/repo/blobs/uploads/{reference}", None),
        ("PATCH", f"/v2/repo/blobs/uploads/{reference}", b"x"),
        ("PUT", f"/v2/repo/blobs/uploads/{reference}?digest={digestOf(b'x')}", b"x"),
        ("GET", f"/v2/repo/referrers/{reference}", None),
    ]
    for method, path, body in attempts:
        response = await client.request(method, path, data=body)
        assert response.code < 500, (method, path, response.code)
        assert (method == "POST" and "mount" in path) or response.code >= 400, (method, path, response.code)
    assert _outside(top) == before
