"""
Pushing blobs: upload sessions, monolithic and chunked uploads, digest
checks, cross-repository mounts, repository names, error bodies, and bodies
streamed into the store as they arrive.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import random
import re
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
import treq
from helpers import contentLength, digestOf, errorCode, header, pushBlob, startUpload, waitFor
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IBodyProducer

from ociklein import Registry

DATA = bytes(range(256)) * 8 + b"tail"
SIZE = len(DATA)
MiB = 1024 * 1024


def withQuery(location: str, query: str) -> str:
    """
    C{location} with C{query} added, whether or not it already has one.
    """
    return f"{location}{'&' if '?' in location else '?'}{query}"


def sessionId(location: str) -> str:
    return location.rsplit("/", 1)[1]


class _Unsized:
    """
    A file-like object without seek or tell, so that its length is unknown
    and the body is sent with chunked transfer encoding.
    """

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)

    def close(self) -> None:
        pass


def unsized(client: Any, data: bytes) -> Any:
    """
    C{data} as a body of unknown length, sent chunked; StubTreq accepts only
    bytes, so there it stays bytes (L{test_raw_chunked_put} covers framing).
    """
    if hasattr(client, "stub"):
        return data
    return FileBodyProducer(_Unsized(data))


async def assertSession(client: Any, location: str, size: int) -> None:
    """
    The session at C{location} is alive and holds C{size} bytes.
    """
    response = await client.request("GET", location)
    assert response.code == 204, (response.code, response.body)
    assert header(response, "Range") == f"0-{max(size - 1, 0)}"
    assert header(response, "Location") == location


async def assertSessionGone(client: Any, location: str) -> None:
    response = await client.request("GET", location)
    assert response.code == 404
    assert errorCode(response) == "BLOB_UPLOAD_UNKNOWN"


async def assertNoBlob(client: Any, name: str, *digests: str) -> None:
    for digest in digests:
        response = await client.request("GET", f"/v2/{name}/blobs/{digest}")
        assert response.code == 404, digest
        assert errorCode(response) == "BLOB_UNKNOWN"


async def assertBlob(client: Any, name: str, digest: str, data: bytes) -> None:
    response = await client.request("GET", f"/v2/{name}/blobs/{digest}")
    assert response.code == 200, (response.code, response.body)
    assert response.body == data


# -- sessions -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_start_upload(client: Any) -> None:
    """POST .../blobs/uploads/ answers 202 with a session Location, Range 0-0 and Docker-Upload-UUID."""
    response = await client.request("POST", "/v2/library/hello/blobs/uploads/")
    assert response.code == 202
    location = header(response, "Location")
    assert location is not None
    match = re.fullmatch(r"/v2/library/hello/blobs/uploads/([^/?]+)", location)
    assert match is not None, location
    assert header(response, "Docker-Upload-UUID") == match.group(1)
    assert header(response, "Range") == "0-0"
    await assertSession(client, location, 0)


@pytest_twisted.ensureDeferred
async def test_upload_status(client: Any) -> None:
    """GET of a session answers 204 with its Range, Location and Docker-Upload-UUID."""
    location = await startUpload(client, "hello")
    assert (await client.request("PATCH", location, data=DATA[:100])).code == 202
    response = await client.request("GET", location)
    assert response.code == 204
    assert response.body == b""
    assert header(response, "Range") == "0-99"
    assert header(response, "Location") == location
    assert header(response, "Docker-Upload-UUID") == sessionId(location)


@pytest_twisted.ensureDeferred
async def test_cancel_upload(client: Any) -> None:
    """DELETE of a session answers 204; the session is then 404 BLOB_UPLOAD_UNKNOWN to every method."""
    location = await startUpload(client, "hello")
    assert (await client.request("PATCH", location, data=DATA)).code == 202
    response = await client.request("DELETE", location)
    assert response.code == 204
    assert response.body == b""
    for method, data in [("GET", None), ("PATCH", b"more"), ("PUT", None), ("DELETE", None)]:
        path = withQuery(location, f"digest={digestOf(DATA)}") if method == "PUT" else location
        response = await client.request(method, path, data=data)
        assert response.code == 404, method
        assert errorCode(response) == "BLOB_UPLOAD_UNKNOWN"
    await assertNoBlob(client, "hello", digestOf(DATA))


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
@pytest.mark.parametrize("uploadId", ["known-to-nobody", secrets.token_urlsafe(24), "0" * 64])
@pytest_twisted.ensureDeferred
async def test_unknown_session(client: Any, method: str, uploadId: str) -> None:
    """GET, PATCH, PUT and DELETE of an unknown session answer 404 BLOB_UPLOAD_UNKNOWN."""
    await startUpload(client, "hello")
    path = f"/v2/hello/blobs/uploads/{uploadId}"
    if method == "PUT":
        path += f"?digest={digestOf(b'x')}"
    response = await client.request(method, path, data=b"x" if method in ("PATCH", "PUT") else None)
    assert response.code == 404
    assert errorCode(response) == "BLOB_UPLOAD_UNKNOWN"
    await assertNoBlob(client, "hello", digestOf(b"x"))


@pytest_twisted.ensureDeferred
async def test_session_bound_to_repository(client: Any) -> None:
    """A session used under another repository is 404 BLOB_UPLOAD_UNKNOWN and stays untouched."""
    location = await startUpload(client, "a")
    uploadId = sessionId(location)
    assert (await client.request("PATCH", location, data=DATA[:10])).code == 202
    digest = digestOf(DATA[:10])
    for other in ["b", "a/a", "b/a"]:
        path = f"/v2/{other}/blobs/uploads/{uploadId}"
        for method, query, data in [
            ("GET", "", None),
            ("PATCH", "", b"intruder"),
            ("PUT", f"?digest={digest}", None),
            ("DELETE", "", None),
        ]:
            response = await client.request(method, path + query, data=data)
            assert response.code == 404, (other, method)
            assert errorCode(response) == "BLOB_UPLOAD_UNKNOWN"
    await assertSession(client, location, 10)
    await assertNoBlob(client, "b", digest)
    response = await client.request("PUT", withQuery(location, f"digest={digest}"))
    assert response.code == 201
    await assertBlob(client, "a", digest, DATA[:10])
    await assertNoBlob(client, "b", digest)


@pytest_twisted.ensureDeferred
async def test_session_ids_unguessable(client: Any) -> None:
    """Session ids are distinct and carry at least 128 bits: varying positions x log2(alphabet)."""
    ids = [sessionId(await startUpload(client, f"repo{i % 2}")) for i in range(64)]
    assert len(set(ids)) == len(ids)
    assert len({len(i) for i in ids}) == 1, ids
    # Positions that never change (dashes, a UUID's version nibble) carry no entropy.
    varying = [p for p in range(len(ids[0])) if len({i[p] for i in ids}) > 1]
    alphabet = {i[p] for i in ids for p in varying}
    assert all(re.fullmatch(r"[A-Za-z0-9_\-.~]+", i) for i in ids), ids
    bits = len(varying) * math.log2(len(alphabet))
    assert bits >= 128, (bits, ids[:3])


# -- monolithic uploads ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_monolithic_post(client: Any) -> None:
    """POST ?digest= with the body answers 201 with the blob's Location and Docker-Content-Digest."""
    digest = digestOf(DATA)
    response = await client.request("POST", f"/v2/library/hello/blobs/uploads/?digest={digest}", data=DATA)
    assert response.code == 201
    assert header(response, "Location") == f"/v2/library/hello/blobs/{digest}"
    assert header(response, "Docker-Content-Digest") == digest
    await assertBlob(client, "library/hello", digest, DATA)


@pytest_twisted.ensureDeferred
async def test_monolithic_post_twice(client: Any) -> None:
    """Pushing a blob that is already there answers 201 again and keeps it intact."""
    digest = await pushBlob(client, "hello", DATA)
    assert await pushBlob(client, "hello", DATA) == digest
    await assertBlob(client, "hello", digest, DATA)


@pytest_twisted.ensureDeferred
async def test_monolithic_post_wrong_digest(client: Any) -> None:
    """A monolithic POST whose body does not match ?digest= answers 400 DIGEST_INVALID and stores nothing."""
    claimed = digestOf(b"something else")
    response = await client.request("POST", f"/v2/hello/blobs/uploads/?digest={claimed}", data=DATA)
    assert response.code == 400
    assert errorCode(response) == "DIGEST_INVALID"
    await assertNoBlob(client, "hello", claimed, digestOf(DATA))


@pytest.mark.parametrize(
    "digest",
    ["sha256:abc", "nonsense", "sha256:" + "A" * 64, "md5:" + "0" * 32, "sha512:" + "0" * 64, "sha256:"],
)
@pytest_twisted.ensureDeferred
async def test_malformed_digest(client: Any, digest: str) -> None:
    """A malformed or unsupported ?digest= on a monolithic POST or a PUT answers 400 DIGEST_INVALID."""
    response = await client.request("POST", f"/v2/hello/blobs/uploads/?digest={digest}", data=DATA)
    assert response.code == 400
    assert errorCode(response) == "DIGEST_INVALID"
    location = await startUpload(client, "hello")
    assert (await client.request("PATCH", location, data=DATA)).code == 202
    response = await client.request("PUT", withQuery(location, f"digest={digest}"))
    assert response.code == 400
    assert errorCode(response) == "DIGEST_INVALID"
    await assertSessionGone(client, location)
    await assertNoBlob(client, "hello", digestOf(DATA))


# -- chunked uploads ------------------------------------------------------


@pytest.mark.parametrize("form", ["{start}-{end}", "bytes {start}-{end}/*"])
@pytest_twisted.ensureDeferred
async def test_patch_in_order(client: Any, form: str) -> None:
    """PATCHes whose Content-Range follow the session answer 202 with Range 0-(size-1)."""
    location = await startUpload(client, "hello")
    size = 0
    for cut in [10, 700, SIZE]:
        chunk = DATA[size:cut]
        contentRange = form.format(start=size, end=cut - 1)
        response = await client.request(
            "PATCH", location, data=chunk, headers={"Content-Range": contentRange}
        )
        assert response.code == 202, (contentRange, response.body)
        assert header(response, "Range") == f"0-{cut - 1}"
        assert header(response, "Location") == location
        assert header(response, "Docker-Upload-UUID") == sessionId(location)
        size = cut
    await assertSession(client, location, SIZE)
    digest = digestOf(DATA)
    response = await client.request("PUT", withQuery(location, f"digest={digest}"))
    assert response.code == 201
    assert header(response, "Location") == f"/v2/hello/blobs/{digest}"
    assert header(response, "Docker-Content-Digest") == digest
    await assertBlob(client, "hello", digest, DATA)
    await assertSessionGone(client, location)


@pytest.mark.parametrize("contentRange", ["20-29", "0-9", "5-14", "11-20", "10-5", "9-18"])
@pytest_twisted.ensureDeferred
async def test_patch_out_of_order(client: Any, contentRange: str) -> None:
    """A PATCH whose Content-Range does not start at the session's end answers 416 and appends nothing."""
    location = await startUpload(client, "hello")
    response = await client.request("PATCH", location, data=DATA[:10], headers={"Content-Range": "0-9"})
    assert response.code == 202
    response = await client.request(
        "PATCH", location, data=b"x" * 10, headers={"Content-Range": contentRange}
    )
    assert response.code == 416
    assert errorCode(response) == "BLOB_UPLOAD_INVALID"
    await assertSession(client, location, 10)
    response = await client.request(
        "PATCH", location, data=DATA[10:], headers={"Content-Range": f"10-{SIZE - 1}"}
    )
    assert response.code == 202
    digest = digestOf(DATA)
    assert (await client.request("PUT", withQuery(location, f"digest={digest}"))).code == 201
    await assertBlob(client, "hello", digest, DATA)


@pytest_twisted.ensureDeferred
async def test_patch_without_content_range(client: Any) -> None:
    """Repeated PATCHes without Content-Range append their bodies in order."""
    location = await startUpload(client, "hello")
    pieces = [DATA[:1], DATA[1:1000], DATA[1000:1001], DATA[1001:]]
    size = 0
    for piece in pieces:
        response = await client.request("PATCH", location, data=piece)
        assert response.code == 202
        size += len(piece)
        assert header(response, "Range") == f"0-{size - 1}"
    digest = digestOf(DATA)
    assert (await client.request("PUT", withQuery(location, f"digest={digest}"))).code == 201
    await assertBlob(client, "hello", digest, DATA)


@pytest_twisted.ensureDeferred
async def test_put_without_final_chunk(client: Any) -> None:
    """PUT ?digest= with no body closes a session filled by PATCH: 201 with Location and digest."""
    location = await startUpload(client, "hello")
    assert (await client.request("PATCH", location, data=DATA)).code == 202
    digest = digestOf(DATA)
    response = await client.request("PUT", withQuery(location, f"digest={digest}"))
    assert response.code == 201
    assert header(response, "Location") == f"/v2/hello/blobs/{digest}"
    assert header(response, "Docker-Content-Digest") == digest
    await assertBlob(client, "hello", digest, DATA)


@pytest.mark.parametrize("withRange", [False, True])
@pytest_twisted.ensureDeferred
async def test_put_with_final_chunk(client: Any, withRange: bool) -> None:
    """PUT ?digest= carrying the last chunk appends it, then publishes the blob: 201."""
    location = await startUpload(client, "hello")
    assert (await client.request("PATCH", location, data=DATA[:100])).code == 202
    digest = digestOf(DATA)
    headers = {"Content-Range": f"100-{SIZE - 1}"} if withRange else {}
    response = await client.request(
        "PUT", withQuery(location, f"digest={digest}"), data=DATA[100:], headers=headers
    )
    assert response.code == 201
    assert header(response, "Docker-Content-Digest") == digest
    await assertBlob(client, "hello", digest, DATA)


@pytest_twisted.ensureDeferred
async def test_sha512_chunked_upload(client: Any) -> None:
    """A chunked upload closed with a sha512 digest publishes the blob under that digest only."""
    location = await startUpload(client, "hello")
    assert (await client.request("PATCH", location, data=DATA[:500])).code == 202
    digest = digestOf(DATA, "sha512")
    response = await client.request("PUT", withQuery(location, f"digest={digest}"), data=DATA[500:])
    assert response.code == 201
    assert header(response, "Docker-Content-Digest") == digest
    await assertBlob(client, "hello", digest, DATA)
    await assertNoBlob(client, "hello", digestOf(DATA))


@pytest_twisted.ensureDeferred
async def test_put_whole_blob_in_one_request(client: Any) -> None:
    """POST then a single PUT ?digest= with the whole body publishes the blob."""
    location = await startUpload(client, "hello")
    digest = digestOf(DATA)
    response = await client.request("PUT", withQuery(location, f"digest={digest}"), data=DATA)
    assert response.code == 201
    await assertBlob(client, "hello", digest, DATA)


@pytest_twisted.ensureDeferred
async def test_chunked_transfer_encoding(client: Any) -> None:
    """PATCH and PUT bodies of unknown length (chunked transfer encoding) are stored whole."""
    location = await startUpload(client, "hello")
    response = await client.request("PATCH", location, data=unsized(client, DATA[:1000]))
    assert response.code == 202
    assert header(response, "Range") == "0-999"
    digest = digestOf(DATA)
    response = await client.request(
        "PUT", withQuery(location, f"digest={digest}"), data=unsized(client, DATA[1000:])
    )
    assert response.code == 201
    await assertBlob(client, "hello", digest, DATA)
    other = DATA[::-1]
    response = await client.request(
        "POST", f"/v2/hello/blobs/uploads/?digest={digestOf(other)}", data=unsized(client, other)
    )
    assert response.code == 201
    await assertBlob(client, "hello", digestOf(other), other)


@pytest.mark.parametrize("withBody", [False, True])
@pytest_twisted.ensureDeferred
async def test_put_wrong_digest(client: Any, withBody: bool) -> None:
    """A PUT whose ?digest= does not match answers 400 DIGEST_INVALID, stores nothing and ends the session."""
    location = await startUpload(client, "hello")
    assert (await client.request("PATCH", location, data=DATA[:100])).code == 202
    claimed = digestOf(DATA)
    response = await client.request(
        "PUT", withQuery(location, f"digest={claimed}"), data=DATA[100:200] if withBody else None
    )
    assert response.code == 400
    assert errorCode(response) == "DIGEST_INVALID"
    await assertNoBlob(client, "hello", claimed, digestOf(DATA[:100]), digestOf(DATA[:200]))
    await assertSessionGone(client, location)


@pytest_twisted.ensureDeferred
async def test_put_without_digest(client: Any) -> None:
    """A PUT without ?digest= answers 400 DIGEST_INVALID and publishes nothing."""
    location = await startUpload(client, "hello")
    assert (await client.request("PATCH", location, data=DATA)).code == 202
    for data in [None, b"more"]:
        response = await client.request("PUT", location, data=data)
        assert response.code == 400
        assert errorCode(response) == "DIGEST_INVALID"
    await assertNoBlob(client, "hello", digestOf(DATA), digestOf(DATA + b"more"))


# -- mounts ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_mount(client: Any) -> None:
    """POST ?mount=&from= of a blob the source has answers 201 and makes it visible in the target."""
    digest = await pushBlob(client, "source/repo", DATA)
    await assertNoBlob(client, "target", digest)
    response = await client.request("POST", f"/v2/target/blobs/uploads/?mount={digest}&from=source/repo")
    assert response.code == 201
    assert header(response, "Location") == f"/v2/target/blobs/{digest}"
    assert header(response, "Docker-Content-Digest") == digest
    await assertBlob(client, "target", digest, DATA)
    await assertBlob(client, "source/repo", digest, DATA)


@pytest.mark.parametrize(
    "query",
    [
        "mount={digest}&from=empty",
        "mount={digest}&from=nobody",
        "mount={digest}",
        "mount={digest}&from=",
        "mount={digest}&from=UPPER",
        "mount={digest}&from=a%2Fsource",
        "mount={digest}&from=source/",
        "mount={missing}&from=source",
    ],
)
@pytest_twisted.ensureDeferred
async def test_mount_falls_back_to_upload(client: Any, query: str) -> None:
    """A mount the source cannot satisfy answers 202 with a new, usable upload session."""
    digest = await pushBlob(client, "source", DATA)
    await pushBlob(client, "empty", b"other")
    missing = digestOf(b"nowhere")
    response = await client.request(
        "POST", "/v2/target/blobs/uploads/?" + query.format(digest=digest, missing=missing)
    )
    assert response.code == 202, response.body
    location = header(response, "Location")
    assert location is not None and location.startswith("/v2/target/blobs/uploads/")
    assert header(response, "Docker-Upload-UUID") == sessionId(location)
    assert header(response, "Range") == "0-0"
    await assertNoBlob(client, "target", digest, missing)
    await assertSession(client, location, 0)
    response = await client.request("PUT", withQuery(location, f"digest={digest}"), data=DATA)
    assert response.code == 201
    await assertBlob(client, "target", digest, DATA)


@pytest_twisted.ensureDeferred
async def test_mount_of_deleted_blob(client: Any) -> None:
    """A blob deleted from the source cannot be mounted from it: 202 and a new session."""
    digest = await pushBlob(client, "source", DATA)
    assert (await client.request("DELETE", f"/v2/source/blobs/{digest}")).code == 202
    response = await client.request("POST", f"/v2/target/blobs/uploads/?mount={digest}&from=source")
    assert response.code == 202
    await assertNoBlob(client, "target", digest)


# -- repository names -----------------------------------------------------

BAD_NAMES = ["UPPER", "a//b", "-a", "a..b", "a%2Fb", "a%2fb", "a/", "a/../b", "a%00", "a" * 256]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest_twisted.ensureDeferred
async def test_invalid_name_on_writes(client: Any, name: str) -> None:
    """POST, PATCH and PUT under an invalid repository name answer 400 NAME_INVALID."""
    digest = digestOf(DATA)
    for query in ["", f"?digest={digest}", f"?mount={digest}&from=a"]:
        response = await client.request("POST", f"/v2/{name}/blobs/uploads/{query}", data=DATA)
        assert response.code == 400, query
        assert errorCode(response) == "NAME_INVALID"
    uploadId = sessionId(await startUpload(client, "a/b"))
    response = await client.request("PATCH", f"/v2/{name}/blobs/uploads/{uploadId}", data=DATA)
    assert response.code == 400
    assert errorCode(response) == "NAME_INVALID"
    response = await client.request("PUT", f"/v2/{name}/blobs/uploads/{uploadId}?digest={digest}", data=DATA)
    assert response.code == 400
    assert errorCode(response) == "NAME_INVALID"
    await assertSession(client, f"/v2/a/b/blobs/uploads/{uploadId}", 0)
    await assertNoBlob(client, "a/b", digest)


@pytest_twisted.ensureDeferred
async def test_encoded_slash_never_splits_a_name(client: Any) -> None:
    """Nothing pushed as a%2Fb lands in a/b, and a/b's sessions are not reachable through a%2Fb."""
    digest = digestOf(DATA)
    response = await client.request("POST", f"/v2/a%2Fb/blobs/uploads/?digest={digest}", data=DATA)
    assert response.code == 400
    await assertNoBlob(client, "a/b", digest)
    location = await startUpload(client, "a/b")
    for method in ["GET", "PATCH", "PUT", "DELETE"]:
        path = location.replace("/a/b/", "/a%2Fb/")
        response = await client.request(method, withQuery(path, f"digest={digest}"), data=DATA)
        assert response.code in (400, 404), method
        assert errorCode(response) in ("NAME_INVALID", "BLOB_UPLOAD_UNKNOWN")
    await assertSession(client, location, 0)
    await assertNoBlob(client, "a/b", digest)


@pytest_twisted.ensureDeferred
async def test_deep_and_long_names(client: Any) -> None:
    """Names with many components, separators and 255 characters are accepted."""
    for name in ["a/b/c/d/e", "a.b_c__d---e/f", "x" * 255, "0/1"]:
        digest = await pushBlob(client, name, DATA)
        await assertBlob(client, name, digest, DATA)


# -- errors ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_client_error_is_json(client: Any) -> None:
    """Every 4xx answer carries Content-Type application/json and an errors document."""
    digest = await pushBlob(client, "hello", DATA)
    location = await startUpload(client, "hello")
    cases: list[tuple[str, str, dict[str, str], bytes | None, int]] = [
        ("GET", f"/v2/hello/blobs/{digestOf(b'x')}", {}, None, 404),
        ("GET", "/v2/hello/blobs/bad", {}, None, 404),
        ("GET", f"/v2/hello/blobs/{digest}", {"Range": "bytes=9999-"}, None, 416),
        ("DELETE", f"/v2/hello/blobs/{digestOf(b'x')}", {}, None, 404),
        ("PUT", f"/v2/hello/blobs/{digest}", {}, b"x", 405),
        ("FOO", "/v2/hello/blobs/uploads/", {}, None, 405),
        ("POST", "/v2/UPPER/blobs/uploads/", {}, None, 400),
        ("POST", "/v2/hello/blobs/uploads/?digest=bad", {}, b"x", 400),
        ("POST", f"/v2/hello/blobs/uploads/?digest={digestOf(b'y')}", {}, b"x", 400),
        ("GET", "/v2/hello/blobs/uploads/nope", {}, None, 404),
        ("PATCH", location, {"Content-Range": "5-9"}, b"x" * 5, 416),
        ("PUT", location, {}, None, 400),
        ("GET", "/v2/nowhere", {}, None, 404),
    ]
    for method, path, headers, data, status in cases:
        response = await client.request(method, path, headers=headers, data=data)
        assert response.code == status, (method, path, response.code, response.body)
        errorCode(response)


_LONG = "9" * 40

# (method, path, headers, body); {digest} is a stored blob, {session} a live session path.
_ODD_REQUESTS: list[tuple[str, str, dict[Any, Any], bytes | None]] = [
    ("GET", "/v2/", {"Host": "a..b"}, None),
    ("GET", "/v2/", {"Host": "x" * 70}, None),
    ("GET", "/v2/", {b"Host": [b"\xff"]}, None),
    ("POST", "/v2/hello/blobs/uploads/", {b"Host": [b"\xff\xfe:99"]}, None),
    ("FOO", "/v2/", {}, None),
    ("FOO", "/v2/hello/blobs/{digest}", {}, b"x"),
    ("OPTIONS", "/v2/hello/blobs/uploads/", {}, None),
    ("TRACE", "/v2/", {}, None),
    ("GET", "/v2/../v2/", {}, None),
    ("GET", "/v2/hello/../hello/blobs/{digest}", {}, None),
    ("POST", "/v2/hello/../x/blobs/uploads/", {}, None),
    ("GET", "/v2/hello/blobs/..", {}, None),
    ("GET", "/v2/hello/blobs/uploads/..", {}, None),
    ("PUT", "/v2/hello/blobs/uploads/%2e%2e?digest={digest}", {}, b"x"),
    ("POST", "/v2/%00/blobs/uploads/", {}, None),
    ("GET", "/v2/hello%00/blobs/{digest}", {}, None),
    ("GET", "/v2/hello/blobs/{digest}%00", {}, None),
    ("PATCH", "/v2/hello/blobs/uploads/%00", {}, b"x"),
    ("POST", "/v2/%ff%fe/blobs/uploads/", {}, None),
    ("GET", "/v2/hello/blobs/%zz", {}, None),
    ("GET", "/%", {}, None),
    ("GET", "//v2//", {}, None),
    ("POST", "/v2//blobs/uploads/", {}, None),
    ("POST", "/v2/hello/blobs/uploads/?digest=%00", {}, b"x"),
    ("POST", "/v2/hello/blobs/uploads/?digest=", {}, b"x"),
    ("POST", "/v2/hello/blobs/uploads/?digest=sha256:&digest=sha256:", {}, None),
    ("POST", "/v2/hello/blobs/uploads/?mount=%00&from=..", {}, None),
    ("POST", "/v2/hello/blobs/uploads/?mount=&from=", {}, None),
    ("POST", "/v2/hello/blobs/uploads/?mount=nonsense&from=hello", {}, None),
    ("POST", "/v2/hello/blobs/uploads/?mount={digest}&from=hello&digest=bad", {}, None),
    ("POST", "/v2/hello/blobs/uploads/x" + "y" * 4000, {}, None),
    ("GET", "/v2/hello/tags/list?n=abc", {}, None),
    ("GET", "/v2/hello/tags/list?n=-1", {}, None),
    ("GET", f"/v2/hello/tags/list?n={_LONG}", {}, None),
    ("GET", "/v2/_catalog?n=%00&last=%00", {}, None),
    ("GET", f"/v2/_catalog?n={_LONG}", {}, None),
    ("GET", "/v2/hello/referrers/nonsense", {}, None),
    ("GET", "/v2/hello/referrers/{digest}?artifactType=%00", {}, None),
    ("GET", "/v2/hello/manifests/..", {}, None),
    ("GET", "/v2/hello/blobs/{digest}", {"Range": "bytes=abc"}, None),
    ("GET", "/v2/hello/blobs/{digest}", {"Range": f"bytes={_LONG}-"}, None),
    ("GET", "/v2/hello/blobs/{digest}", {"Range": f"bytes=-{_LONG}"}, None),
    ("GET", "/v2/hello/blobs/{digest}", {"Range": f"bytes=0-{_LONG}"}, None),
    ("GET", "/v2/hello/blobs/{digest}", {"Range": f"bytes={_LONG}-{_LONG}0"}, None),
    ("GET", "/v2/hello/blobs/{digest}", {"Range": "bytes=0-1,3-4"}, None),
    ("GET", "/v2/hello/blobs/{digest}", {"Range": "bytes=5-2"}, None),
    ("GET", "/v2/hello/blobs/{digest}", {"Range": "bytes=--1"}, None),
    ("GET", "/v2/hello/blobs/{digest}", {"Range": "bytes="}, None),
    ("GET", "/v2/hello/blobs/{digest}", {"Range": "items=0-1"}, None),
    ("HEAD", "/v2/hello/blobs/{digest}", {"Range": f"bytes={_LONG}-"}, None),
    ("PATCH", "{session}", {"Content-Range": "abc"}, b"x"),
    ("PATCH", "{session}", {"Content-Range": ""}, b"x"),
    ("PATCH", "{session}", {"Content-Range": "-"}, b"x"),
    ("PATCH", "{session}", {"Content-Range": "0-"}, b"x"),
    ("PATCH", "{session}", {"Content-Range": "5-2"}, b"x"),
    ("PATCH", "{session}", {"Content-Range": "0-1,2-3"}, b"x"),
    ("PATCH", "{session}", {"Content-Range": f"{_LONG}-{_LONG}"}, b"x"),
    ("PATCH", "{session}", {"Content-Range": f"bytes 0-{_LONG}/*"}, b"x"),
    ("PATCH", "{session}", {"Content-Range": "bytes=0-0/abc"}, b"x"),
    ("PATCH", "{session}", {"Content-Length": "0"}, None),
    ("PUT", "{session}?digest=%00", {"Content-Range": "x"}, b"x"),
    ("PUT", "{session}?digest={digest}&digest=x", {}, None),
    ("GET", "{session}?digest=x", {"Range": "bytes=abc"}, None),
    ("DELETE", "{session}/extra", {}, None),
    ("DELETE", "/v2/hello/blobs/{digest}/", {}, None),
]


@pytest_twisted.ensureDeferred
async def test_no_server_error_for_odd_requests(client: Any) -> None:
    """Odd methods, paths, ranges and headers never get a 5xx; their 4xx are JSON."""
    digest = await pushBlob(client, "hello", DATA)
    session = await startUpload(client, "hello")
    for method, path, headers, data in _ODD_REQUESTS:
        path = path.format(digest=digest, session=session)
        response = await client.request(method, path, headers=headers, data=data)
        assert response.code < 500, (method, path, headers, response.code, response.body)
        if 400 <= response.code < 500 and method != "HEAD":
            errorCode(response)
    # Afterwards the registry still serves, and the stored blob is intact.
    await assertBlob(client, "hello", digest, DATA)


# -- streaming, on a real port --------------------------------------------

_BLOCK = MiB
_BASE = random.Random(20251127).randbytes(_BLOCK)


def _block(index: int) -> bytes:
    """
    Block C{index} of a generated stream: every MiB differs from the others.
    """
    return index.to_bytes(8, "big") + _BASE[8:]


class _Generated:
    """
    Bytes C{[start, stop)} of the generated stream as a file-like object,
    made as they are read so that the test never holds them whole.
    """

    def __init__(self, start: int, stop: int) -> None:
        self._position = start
        self._stop = stop

    def read(self, size: int = -1) -> bytes:
        left = self._stop - self._position
        size = left if size < 0 else min(size, left)
        pieces = []
        while size > 0:
            index, offset = divmod(self._position, _BLOCK)
            piece = _block(index)[offset : offset + size]
            pieces.append(piece)
            self._position += len(piece)
            size -= len(piece)
        return b"".join(pieces)

    def close(self) -> None:
        pass


def generated(start: int, stop: int, sized: bool = True) -> IBodyProducer:
    """
    A body producer of the generated bytes C{[start, stop)}; chunked
    transfer encoding unless C{sized}.
    """
    producer = FileBodyProducer(_Generated(start, stop), readSize=256 * 1024)
    if sized:
        producer.length = stop - start
    return producer


def generatedDigest(start: int, stop: int, algorithm: str = "sha256") -> str:
    hasher = hashlib.new(algorithm)
    source = _Generated(start, stop)
    while chunk := source.read(_BLOCK):
        hasher.update(chunk)
    return f"{algorithm}:{hasher.hexdigest()}"


async def downloadDigest(live: Any, path: str) -> str:
    """
    The sha256 digest of a GET's body, hashed as it arrives.
    """
    response = await treq.request("GET", live.base + path, unbuffered=True, persistent=False)
    assert response.code == 200
    hasher = hashlib.sha256()
    await treq.collect(response, hasher.update)
    return f"sha256:{hasher.hexdigest()}"


LARGE = 64 * MiB


@pytest_twisted.ensureDeferred
async def test_large_blob_monolithic(live: Any) -> None:
    """A 64 MiB monolithic POST comes back byte-identical."""
    digest = generatedDigest(0, LARGE)
    response = await live.request("POST", f"/v2/big/blobs/uploads/?digest={digest}", data=generated(0, LARGE))
    assert response.code == 201, response.body
    assert await downloadDigest(live, f"/v2/big/blobs/{digest}") == digest
    response = await live.request("HEAD", f"/v2/big/blobs/{digest}")
    assert contentLength(response) == LARGE


@pytest_twisted.ensureDeferred
async def test_large_blob_chunked(live: Any) -> None:
    """A 64 MiB blob sent as sized and chunked-encoded PATCHes and a final PUT comes back byte-identical."""
    digest = generatedDigest(0, LARGE)
    location = await startUpload(live, "big")
    cuts = [0, 20 * MiB + 7, 40 * MiB, 56 * MiB + 1]
    for i, (start, stop) in enumerate(itertools.pairwise(cuts)):
        response = await live.request(
            "PATCH",
            location,
            data=generated(start, stop, sized=i % 2 == 0),
            headers={"Content-Range": f"{start}-{stop - 1}"},
        )
        assert response.code == 202, response.body
        assert header(response, "Range") == f"0-{stop - 1}"
    response = await live.request(
        "PUT", withQuery(location, f"digest={digest}"), data=generated(cuts[-1], LARGE, sized=False)
    )
    assert response.code == 201, response.body
    assert await downloadDigest(live, f"/v2/big/blobs/{digest}") == digest


class _RawClient(Protocol):
    """
    A bare TCP client: sends what it is told, collects the answer.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(bytes(self.received))


async def rawConnect(live: Any) -> _RawClient:
    port = urlsplit(live.base).port
    assert port is not None
    return await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), _RawClient())


def requestHead(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def statusOf(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert match is not None, answer[:200]
    return int(match.group(1))


class _RecordingStore:
    """
    The real blob store, recording the size of every upload write once it
    has completed, and every abort.
    """

    def __init__(self, store: Any) -> None:
        self._store = store
        self.writes: list[int] = []
        self.aborted: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def startUpload(self, repository: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return self._store.startUpload(repository, *args, **kwargs).addCallback(_RecordingUpload, self)

    def getUpload(self, uploadId: str) -> Deferred[Any]:
        return self._store.getUpload(uploadId).addCallback(
            lambda upload: None if upload is None else _RecordingUpload(upload, self)
        )

    @property
    def written(self) -> int:
        return sum(self.writes)


class _RecordingUpload:
    def __init__(self, upload: Any, recorder: _RecordingStore) -> None:
        self._upload = upload
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._upload, name)

    def write(self, data: bytes) -> Any:
        def wrote(result: object) -> object:
            self._recorder.writes.append(len(data))
            return result

        return self._upload.write(data).addCallback(wrote)

    def abort(self) -> Any:
        self._recorder.aborted.append(self._upload.uploadId)
        return self._upload.abort()


def record(registry: Registry) -> _RecordingStore:
    recorder = _RecordingStore(registry.core.blobs)
    registry.core.blobs = recorder
    return recorder


@pytest.fixture
def loggedErrors() -> Iterator[list[str]]:
    """
    What the registry logs at level error or above during the test.
    """
    found: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.error or event.get("log_failure"):
            found.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield found
    globalLogPublisher.removeObserver(observe)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest_twisted.ensureDeferred
async def test_body_streams_into_store(live: Any, registry: Registry, method: str) -> None:
    """An upload's bytes reach the store in many pieces before the client has sent the rest of the body."""
    recorder = record(registry)
    total, half = 8 * MiB, 4 * MiB
    digest = generatedDigest(0, total)
    if method == "POST":
        path = f"/v2/hello/blobs/uploads/?digest={digest}"
    else:
        path = await startUpload(live, "hello")
    client = await rawConnect(live)
    client.transport.write(requestHead(method, path, {"Content-Length": str(total)}))
    client.transport.write(_Generated(0, half).read())
    await waitFor(lambda: recorder.written == half)
    assert len(recorder.writes) > 1, recorder.writes
    assert max(recorder.writes) < half, recorder.writes
    assert client.received == b"", "answered before the body was complete"
    client.transport.write(_Generated(half, total).read())
    answer = await client.closed
    assert statusOf(answer) == (201 if method == "POST" else 202), answer
    assert recorder.written == total
    if method == "PATCH":
        response = await live.request("PUT", withQuery(path, f"digest={digest}"))
        assert response.code == 201
    assert await downloadDigest(live, f"/v2/hello/blobs/{digest}") == digest


@pytest_twisted.ensureDeferred
async def test_disconnect_mid_monolithic_upload(
    live: Any, registry: Registry, loggedErrors: list[str]
) -> None:
    """A client leaving mid-POST leaves no blob, its session aborted, no error logged, the registry up."""
    recorder = record(registry)
    digest = generatedDigest(0, 10 * MiB)
    client = await rawConnect(live)
    client.transport.write(
        requestHead("POST", f"/v2/hello/blobs/uploads/?digest={digest}", {"Content-Length": str(10 * MiB)})
    )
    client.transport.write(_Generated(0, MiB).read())
    await waitFor(lambda: recorder.written == MiB)
    client.transport.loseConnection()
    await client.closed
    await waitFor(lambda: len(recorder.aborted) == 1)
    await assertNoBlob(live, "hello", digest)
    assert loggedErrors == []
    assert (await live.request("GET", "/v2/")).code == 200
    assert await pushBlob(live, "hello", DATA) == digestOf(DATA)
    await assertBlob(live, "hello", digestOf(DATA), DATA)


@pytest_twisted.ensureDeferred
async def test_disconnect_mid_patch(live: Any, registry: Registry, loggedErrors: list[str]) -> None:
    """A client leaving mid-PATCH leaves no blob nor error log; the session keeps what arrived."""
    recorder = record(registry)
    digest = generatedDigest(0, 10 * MiB)
    location = await startUpload(live, "hello")
    client = await rawConnect(live)
    client.transport.write(requestHead("PATCH", location, {"Content-Length": str(10 * MiB)}))
    client.transport.write(_Generated(0, MiB).read())
    await waitFor(lambda: recorder.written == MiB)
    client.transport.loseConnection()
    await client.closed
    await assertNoBlob(live, "hello", digest)
    # The session holds exactly what was stored; the client resumes from there.
    await assertSession(live, location, MiB)
    assert loggedErrors == []
    response = await live.request(
        "PATCH", location, data=generated(MiB, 10 * MiB), headers={"Content-Range": f"{MiB}-{10 * MiB - 1}"}
    )
    assert response.code == 202, response.body
    response = await live.request("PUT", withQuery(location, f"digest={digest}"))
    assert response.code == 201, response.body
    assert await downloadDigest(live, f"/v2/hello/blobs/{digest}") == digest


@pytest_twisted.ensureDeferred
async def test_raw_chunked_put(live: Any) -> None:
    """A PUT framed with Transfer-Encoding: chunked and no Content-Length is stored whole."""
    location = await startUpload(live, "hello")
    digest = digestOf(DATA)
    client = await rawConnect(live)
    head = requestHead("PUT", withQuery(location, f"digest={digest}"), {"Transfer-Encoding": "chunked"})
    framed = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in [DATA[:1], DATA[1:999], DATA[999:]])
    client.transport.write(head + framed + b"0\r\n\r\n")
    answer = await client.closed
    assert statusOf(answer) == 201, answer
    headers = answer.partition(b"\r\n\r\n")[0].decode().lower()
    assert f"docker-content-digest: {digest}" in headers
    await assertBlob(live, "hello", digest, DATA)
