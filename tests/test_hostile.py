"""
Hostile but well-formed requests: racing writes to one upload session,
digests and numbers outside what the registry stores, planted bad blob
files.  Every one gets a clear 4xx with the spec's JSON body and changes
nothing; none gets a 5xx.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers import (
    OCI_MANIFEST,
    digestOf,
    errorCode,
    header,
    imageManifest,
    pushBlob,
    putManifest,
    startUpload,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import deferLater
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

HUGE = "9" * 5000  # past Python's 4,300-digit conversion limit

MALFORMED_DIGESTS = [
    "sha384:" + "a" * 96,
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 63,
    "sha256:nothex",
    "md5:abcd",
    "sha512:" + "a" * 64,
]


@implementer(IBodyProducer)
class StalledBody:
    """
    A request body that sends C{first}, then waits for L{release} before
    sending C{rest}: a request held open in the middle of its body.
    """

    def __init__(self, first: bytes, rest: bytes = b"") -> None:
        self.length = len(first) + len(rest)
        self._first, self._rest = first, rest
        self._released: Deferred[None] = Deferred()
        self.started: Deferred[None] = Deferred()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._first)
        self.started.callback(None)

        def more(_: object) -> None:
            consumer.write(self._rest)

        return self._released.addCallback(more)

    def release(self) -> None:
        self._released.callback(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


async def _arrived(live: Any, location: str, size: int) -> None:
    """
    Wait until session C{location} holds C{size} bytes: the stalled
    request writing to it has reached the store.
    """
    for _ in range(500):
        response = await live.request("GET", location)
        if header(response, "Range") == f"0-{size - 1}":
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{location} never reached {size} bytes")


def _deferred(coroutine: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coroutine)


# Referrers and subjects


@pytest.mark.parametrize("digest", MALFORMED_DIGESTS)
@pytest_twisted.ensureDeferred
async def test_referrers_of_an_unsupported_digest(client: Any, digest: str) -> None:
    """GET referrers of a malformed or unsupported digest answers 400 DIGEST_INVALID on every backend."""
    response = await client.request("GET", f"/v2/app/referrers/{digest}")
    assert (response.code, errorCode(response)) == (400, "DIGEST_INVALID")


@pytest.mark.parametrize("digest", ["md5:abcd", "sha384:" + "a" * 96, "sha256:" + "A" * 64])
@pytest_twisted.ensureDeferred
async def test_manifest_with_an_unsupported_subject(client: Any, digest: str) -> None:
    """A manifest whose subject.digest is unsupported answers 400 MANIFEST_INVALID, stores nothing."""
    await pushBlob(client, "app", b"{}")
    subject = {"mediaType": OCI_MANIFEST, "digest": digest, "size": 2}
    content = json.dumps(imageManifest(b"{}", [], subject=subject)).encode()
    response = await putManifest(client, "app", "v1", content)
    assert (response.code, errorCode(response)) == (400, "MANIFEST_INVALID")
    assert (await client.request("GET", "/v2/app/manifests/v1")).code == 404


# Numbers too long to convert


@pytest_twisted.ensureDeferred
async def test_huge_numbers(client: Any) -> None:
    """Numbers of thousands of digits in ?n=, Range and Content-Range get 2xx or 4xx, never a 5xx."""
    digest = await pushBlob(client, "app", b"some bytes")
    await pushImage(client)
    response = await client.request("GET", f"/v2/app/tags/list?n={HUGE}")
    assert response.code == 200 and json.loads(response.body)["tags"] == ["v1"]
    response = await client.request("GET", f"/v2/_catalog?n={HUGE}")
    assert response.code == 200
    response = await client.request("GET", f"/v2/app/blobs/{digest}", headers={"Range": f"bytes={HUGE}-"})
    assert (response.code, errorCode(response)) == (416, "SIZE_INVALID")
    response = await client.request("GET", f"/v2/app/blobs/{digest}", headers={"Range": f"bytes=-{HUGE}"})
    assert response.code == 206 and response.body == b"some bytes"
    response = await client.request("GET", f"/v2/app/blobs/{digest}", headers={"Range": f"bytes=0-{HUGE}"})
    assert response.code == 206 and response.body == b"some bytes"
    location = await startUpload(client, "app")
    response = await client.request("PATCH", location, data=b"x", headers={"Content-Range": f"{HUGE}-{HUGE}"})
    assert (response.code, errorCode(response)) == (416, "BLOB_UPLOAD_INVALID")
    response = await client.request("PATCH", location, data=b"x", headers={"Content-Range": f"0-{HUGE}"})
    assert response.code == 202


async def pushImage(client: Any) -> None:
    await pushBlob(client, "app", b"{}")
    content = json.dumps(imageManifest(b"{}", [])).encode()
    assert (await putManifest(client, "app", "v1", content)).code == 201


# One session, several requests


@pytest_twisted.ensureDeferred
async def test_concurrent_patches(live: Any) -> None:
    """A PATCH to a session another PATCH is writing answers 416 and appends nothing; the
    first completes whole."""
    location = await startUpload(live, "app")
    first = StalledBody(b"a" * 1000, b"b" * 1000)
    patching = _deferred(live.request("PATCH", location, data=first))
    await _arrived(live, location, 1000)
    second = await live.request("PATCH", location, data=b"c" * 500)
    assert (second.code, errorCode(second)) == (416, "BLOB_UPLOAD_INVALID")
    first.release()
    response = await patching
    assert response.code == 202 and header(response, "Range") == "0-1999"
    data = b"a" * 1000 + b"b" * 1000
    response = await live.request("PUT", f"{location}?digest={digestOf(data)}")
    assert response.code == 201
    assert (await live.request("GET", f"/v2/app/blobs/{digestOf(data)}")).body == data


@pytest_twisted.ensureDeferred
async def test_delete_while_patch_streams(live: Any) -> None:
    """A DELETE of a session whose PATCH is streaming answers 416; the PATCH completes 202, not 500."""
    location = await startUpload(live, "app")
    body = StalledBody(b"a" * 1000, b"b" * 1000)
    patching = _deferred(live.request("PATCH", location, data=body))
    await _arrived(live, location, 1000)
    response = await live.request("DELETE", location)
    assert (response.code, errorCode(response)) == (416, "BLOB_UPLOAD_INVALID")
    body.release()
    assert (await patching).code == 202
    assert (await live.request("DELETE", location)).code == 204


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest_twisted.ensureDeferred
async def test_requests_during_finishing_put(live: Any, algorithm: str) -> None:
    """Once its finishing PUT has started, a session refuses PATCH, PUT and DELETE (404) and
    the blob published is exactly the bytes its digest names."""
    location = await startUpload(live, "app")
    head = os.urandom(100_000)
    assert (await live.request("PATCH", location, data=head)).code == 202
    tail = os.urandom(1000)
    digest = digestOf(head + tail, algorithm)
    body = StalledBody(tail[:500], tail[500:])
    finishing = _deferred(live.request("PUT", f"{location}?digest={digest}", data=body))
    await _arrived(live, location, len(head) + 500)
    for method, data in [("PATCH", b"evil"), ("PUT", b""), ("DELETE", b"")]:
        path = f"{location}?digest={digest}" if method == "PUT" else location
        response = await live.request(method, path, data=data)
        assert (response.code, errorCode(response)) == (404, "BLOB_UPLOAD_UNKNOWN"), method
    body.release()
    response = await finishing
    assert response.code == 201, response.body
    response = await live.request("GET", f"/v2/app/blobs/{digest}")
    assert response.body == head + tail


@pytest.mark.parametrize("backend", ["fs"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_damaged_blob_file_is_replaced(stub: Any, backend: Any, tmp_path: Path) -> None:
    """A blob file whose size differs from a verified upload of its digest is replaced by the upload."""
    data = b"the real content"
    digest = hashlib.sha256(data).hexdigest()
    target = tmp_path / "root" / "blobs" / "sha256" / digest[:2] / digest
    target.parent.mkdir(parents=True)
    target.write_bytes(data + b" and then some")
    await pushBlob(stub, "app", data)
    response = await stub.request("GET", f"/v2/app/blobs/sha256:{digest}")
    assert response.code == 200 and response.body == data


# Headers


@pytest_twisted.ensureDeferred
async def test_security_headers(live: Any) -> None:
    """Every answer says X-Content-Type-Options: nosniff and does not name the server's software."""
    for path in ["/v2/", "/v2/app/blobs/sha256:" + "a" * 64, "/nowhere"]:
        response = await live.request("GET", path)
        assert header(response, "X-Content-Type-Options") == "nosniff"
        assert header(response, "Server") is None
