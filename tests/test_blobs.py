"""
Reading and deleting blobs: headers, byte ranges, per-repository visibility
and the errors for blobs that are not there.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from helpers import contentLength, digestOf, errorCode, header, pushBlob

DATA = bytes(range(256)) * 4 + b"the end"
SIZE = len(DATA)


@pytest_twisted.ensureDeferred
async def test_get_blob(client: Any) -> None:
    """GET of a pushed blob answers 200 with its bytes, length, digest and octet-stream type."""
    digest = await pushBlob(client, "library/hello", DATA)
    response = await client.request("GET", f"/v2/library/hello/blobs/{digest}")
    assert response.code == 200
    assert response.body == DATA
    assert contentLength(response) == SIZE
    assert header(response, "Docker-Content-Digest") == digest
    assert header(response, "Content-Type") == "application/octet-stream"


@pytest_twisted.ensureDeferred
async def test_head_blob(client: Any) -> None:
    """HEAD of a blob answers the GET headers, with the full Content-Length, and no body."""
    digest = await pushBlob(client, "hello", DATA)
    response = await client.request("HEAD", f"/v2/hello/blobs/{digest}")
    assert response.code == 200
    assert response.body == b""
    assert contentLength(response) == SIZE
    assert header(response, "Docker-Content-Digest") == digest
    assert header(response, "Content-Type") == "application/octet-stream"


@pytest_twisted.ensureDeferred
async def test_empty_blob(client: Any) -> None:
    """An empty blob can be pushed and read back: 200 with Content-Length 0."""
    digest = await pushBlob(client, "hello", b"")
    assert digest == digestOf(b"")
    response = await client.request("GET", f"/v2/hello/blobs/{digest}")
    assert response.code == 200
    assert response.body == b""
    assert contentLength(response) == 0
    assert header(response, "Docker-Content-Digest") == digest


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=2-5", 2, 5),
        ("bytes=0-0", 0, 0),
        (f"bytes=1000-{SIZE - 1}", 1000, SIZE - 1),
        ("bytes=3-", 3, SIZE - 1),
        ("bytes=-4", SIZE - 4, SIZE - 1),
        (f"bytes=-{SIZE + 50}", 0, SIZE - 1),
        ("bytes=1020-99999", 1020, SIZE - 1),
    ],
)
@pytest_twisted.ensureDeferred
async def test_get_blob_range(client: Any, spec: str, start: int, end: int) -> None:
    """A satisfiable Range answers 206 with exactly that span, its end clamped to the blob."""
    digest = await pushBlob(client, "hello", DATA)
    response = await client.request("GET", f"/v2/hello/blobs/{digest}", headers={"Range": spec})
    assert response.code == 206
    assert response.body == DATA[start : end + 1]
    assert header(response, "Content-Range") == f"bytes {start}-{end}/{SIZE}"
    assert contentLength(response) == end - start + 1
    assert header(response, "Docker-Content-Digest") == digest
    assert header(response, "Content-Type") == "application/octet-stream"


@pytest.mark.parametrize("spec", [f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}", "bytes=-0"])
@pytest_twisted.ensureDeferred
async def test_get_blob_range_unsatisfiable(client: Any, spec: str) -> None:
    """An unsatisfiable Range answers 416 with Content-Range bytes */size and a JSON error."""
    digest = await pushBlob(client, "hello", DATA)
    response = await client.request("GET", f"/v2/hello/blobs/{digest}", headers={"Range": spec})
    assert response.code == 416
    assert header(response, "Content-Range") == f"bytes */{SIZE}"
    assert errorCode(response) == "SIZE_INVALID"


@pytest_twisted.ensureDeferred
async def test_range_on_empty_blob_is_unsatisfiable(client: Any) -> None:
    """Any Range of an empty blob answers 416 with Content-Range bytes */0."""
    digest = await pushBlob(client, "hello", b"")
    response = await client.request("GET", f"/v2/hello/blobs/{digest}", headers={"Range": "bytes=0-"})
    assert response.code == 416
    assert header(response, "Content-Range") == "bytes */0"
    assert errorCode(response) == "SIZE_INVALID"


@pytest_twisted.ensureDeferred
async def test_delete_blob(client: Any) -> None:
    """DELETE of a blob answers 202; afterwards GET and HEAD answer 404 BLOB_UNKNOWN."""
    digest = await pushBlob(client, "hello", DATA)
    response = await client.request("DELETE", f"/v2/hello/blobs/{digest}")
    assert response.code == 202
    response = await client.request("GET", f"/v2/hello/blobs/{digest}")
    assert response.code == 404
    assert errorCode(response) == "BLOB_UNKNOWN"
    response = await client.request("HEAD", f"/v2/hello/blobs/{digest}")
    assert response.code == 404
    assert response.body == b""


@pytest_twisted.ensureDeferred
async def test_delete_missing_blob(client: Any) -> None:
    """DELETE of a blob that is not there, or already deleted, answers 404 BLOB_UNKNOWN."""
    missing = digestOf(b"never pushed")
    response = await client.request("DELETE", f"/v2/hello/blobs/{missing}")
    assert response.code == 404
    assert errorCode(response) == "BLOB_UNKNOWN"
    digest = await pushBlob(client, "hello", DATA)
    assert (await client.request("DELETE", f"/v2/hello/blobs/{digest}")).code == 202
    response = await client.request("DELETE", f"/v2/hello/blobs/{digest}")
    assert response.code == 404
    assert errorCode(response) == "BLOB_UNKNOWN"


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:abc",
        "nonsense",
        "sha256:" + "A" * 64,
        "sha256:" + "0" * 63 + "g",
        "md5:" + "0" * 32,
        "sha512:" + "0" * 64,
        "sha256:" + "0" * 64 + "%00",
    ],
)
@pytest_twisted.ensureDeferred
async def test_get_malformed_digest(client: Any, digest: str) -> None:
    """GET and DELETE of a malformed or unsupported digest answer 404 BLOB_UNKNOWN."""
    await pushBlob(client, "hello", DATA)
    for method in ["GET", "DELETE"]:
        response = await client.request(method, f"/v2/hello/blobs/{digest}")
        assert response.code == 404, method
        assert errorCode(response) == "BLOB_UNKNOWN"


@pytest_twisted.ensureDeferred
async def test_get_blob_unknown_repository(client: Any) -> None:
    """GET of a blob in a repository that does not exist (or cannot) answers 404 BLOB_UNKNOWN."""
    digest = await pushBlob(client, "hello", DATA)
    for name in ["nobody", "no/such/repo", "UPPER", "a%2Fb"]:
        response = await client.request("GET", f"/v2/{name}/blobs/{digest}")
        assert response.code == 404, name
        assert errorCode(response) == "BLOB_UNKNOWN"


@pytest_twisted.ensureDeferred
async def test_sha512_blob(client: Any) -> None:
    """A blob pushed under a sha512 digest is served, ranged and deleted under it."""
    digest = await pushBlob(client, "hello", DATA, "sha512")
    assert digest.startswith("sha512:") and len(digest) == 7 + 128
    response = await client.request("GET", f"/v2/hello/blobs/{digest}")
    assert response.code == 200
    assert response.body == DATA
    assert header(response, "Docker-Content-Digest") == digest
    response = await client.request("GET", f"/v2/hello/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert response.code == 206
    assert response.body == DATA[10:20]
    # The same content under its sha256 digest was never pushed.
    response = await client.request("GET", f"/v2/hello/blobs/{digestOf(DATA)}")
    assert response.code == 404
    assert (await client.request("DELETE", f"/v2/hello/blobs/{digest}")).code == 202
    assert (await client.request("GET", f"/v2/hello/blobs/{digest}")).code == 404


@pytest_twisted.ensureDeferred
async def test_blob_visible_per_repository(client: Any) -> None:
    """A blob pushed only to one repository is 404 in another until pushed there too."""
    digest = await pushBlob(client, "a", DATA)
    response = await client.request("GET", f"/v2/b/blobs/{digest}")
    assert response.code == 404
    assert errorCode(response) == "BLOB_UNKNOWN"
    assert (await client.request("HEAD", f"/v2/b/blobs/{digest}")).code == 404
    assert (await client.request("DELETE", f"/v2/b/blobs/{digest}")).code == 404
    assert await pushBlob(client, "b", DATA) == digest
    response = await client.request("GET", f"/v2/b/blobs/{digest}")
    assert response.code == 200
    assert response.body == DATA


@pytest_twisted.ensureDeferred
async def test_blob_visible_after_mount(client: Any) -> None:
    """A blob of one repository becomes visible in another once mounted there."""
    digest = await pushBlob(client, "a", DATA)
    assert (await client.request("GET", f"/v2/b/blobs/{digest}")).code == 404
    response = await client.request("POST", f"/v2/b/blobs/uploads/?mount={digest}&from=a")
    assert response.code == 201
    response = await client.request("GET", f"/v2/b/blobs/{digest}")
    assert response.code == 200
    assert response.body == DATA


@pytest_twisted.ensureDeferred
async def test_delete_blob_in_one_repository_only(client: Any) -> None:
    """Deleting a blob from one repository leaves it readable in every other."""
    digest = await pushBlob(client, "a", DATA)
    await pushBlob(client, "b", DATA)
    assert (await client.request("DELETE", f"/v2/a/blobs/{digest}")).code == 202
    assert (await client.request("GET", f"/v2/a/blobs/{digest}")).code == 404
    response = await client.request("GET", f"/v2/b/blobs/{digest}")
    assert response.code == 200
    assert response.body == DATA


@pytest_twisted.ensureDeferred
async def test_encoded_slash_is_not_a_separator(client: Any) -> None:
    """A blob of repository a/b is not reachable as a%2Fb, nor as a%2fb."""
    digest = await pushBlob(client, "a/b", DATA)
    assert (await client.request("GET", f"/v2/a/b/blobs/{digest}")).code == 200
    for name in ["a%2Fb", "a%2fb"]:
        response = await client.request("GET", f"/v2/{name}/blobs/{digest}")
        assert response.code == 404, name
        assert errorCode(response) == "BLOB_UNKNOWN"
        response = await client.request("DELETE", f"/v2/{name}/blobs/{digest}")
        assert response.code == 404, name
    assert (await client.request("GET", f"/v2/a/b/blobs/{digest}")).code == 200


@pytest_twisted.ensureDeferred
async def test_blob_method_not_allowed(client: Any) -> None:
    """PUT or PATCH on a blob URL answers 405 UNSUPPORTED as JSON, with the methods it allows."""
    digest = await pushBlob(client, "hello", DATA)
    for method in ["PUT", "PATCH", "POST"]:
        response = await client.request(method, f"/v2/hello/blobs/{digest}", data=b"x")
        assert response.code == 405, method
        assert errorCode(response) == "UNSUPPORTED"
        assert header(response, "Allow") == "DELETE, GET, HEAD"
    response = await client.request("GET", f"/v2/hello/blobs/{digest}")
    assert response.body == DATA
