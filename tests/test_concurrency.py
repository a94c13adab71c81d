"""
Many clients at once on a real port: the same blob pushed concurrently, one
tag moved by concurrent PUTs, a delete racing a pull.  The store stays
consistent and last writer wins on tags.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest_twisted
from helpers import OCI_MANIFEST, digestOf, header, imageManifest, pushBlob, putManifest
from twisted.internet.defer import Deferred, gatherResults

CLIENTS = 24


@pytest_twisted.ensureDeferred
async def test_same_blob_pushed_by_many_clients(live: Any) -> None:
    """Concurrent monolithic pushes of one blob to several repositories all succeed and agree."""
    data = os.urandom(512 * 1024)
    digest = digestOf(data)
    pushes = [
        live.request("POST", f"/v2/team{i % 4}/app/blobs/uploads/?digest={digest}", data=data)
        for i in range(CLIENTS)
    ]
    responses = await gatherResults([_deferred(push) for push in pushes])
    assert [r.code for r in responses] == [201] * CLIENTS
    for i in range(4):
        response = await live.request("GET", f"/v2/team{i}/app/blobs/{digest}")
        assert response.code == 200 and response.body == data


@pytest_twisted.ensureDeferred
async def test_concurrent_puts_to_one_tag(live: Any) -> None:
    """Concurrent manifest PUTs to one tag all succeed and the tag ends on one of them, whole."""
    await pushBlob(live, "app", b"{}")
    manifests = [
        json.dumps(imageManifest(b"{}", [], annotations={"n": str(i)})).encode() for i in range(CLIENTS)
    ]
    responses = await gatherResults(
        [_deferred(putManifest(live, "app", "latest", m, OCI_MANIFEST)) for m in manifests]
    )
    assert [r.code for r in responses] == [201] * CLIENTS
    response = await live.request("GET", "/v2/app/manifests/latest")
    assert response.code == 200
    assert response.body in manifests
    assert header(response, "Docker-Content-Digest") == digestOf(response.body)
    listed = await live.request("GET", "/v2/app/tags/list")
    assert json.loads(listed.body)["tags"] == ["latest"]


@pytest_twisted.ensureDeferred
async def test_delete_racing_pulls(live: Any) -> None:
    """Pulls in flight when a blob is deleted either complete whole or get 404, never a torn body."""
    data = os.urandom(8 * 1024 * 1024)
    digest = await pushBlob(live, "app", data)
    pulls = [_deferred(live.request("GET", f"/v2/app/blobs/{digest}")) for _ in range(8)]
    deletion = _deferred(live.request("DELETE", f"/v2/app/blobs/{digest}"))
    responses = await gatherResults(pulls)
    assert (await deletion).code == 202
    for response in responses:
        assert (response.code, response.body) in {(200, data)} or response.code == 404
    assert (await live.request("GET", f"/v2/app/blobs/{digest}")).code == 404


def _deferred(coroutine: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coroutine)
