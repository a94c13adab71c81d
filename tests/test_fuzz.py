"""
A property-based fuzz of the whole HTTP surface, against a real twistd on
each backend: every route and method, with names, references, digests,
numbers, headers and bodies drawn from valid values, near misses and
garbage.  No request may get a 5xx, every error is the spec's JSON, the
server stays responsive, and a push and pull still round-trip afterwards.

Hypothesis draws a seed per example; each example sends a batch of
requests generated from it over one persistent connection, so that the
run sends tens of thousands of requests in well under a minute.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twistdprocess import TwistdRegistry

EXAMPLES = 100
BATCH = 110  # requests per example: 2 backends x 100 x 110 = 22,000 requests
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"

_sent = {"memory": 0, "fs": 0}


def _digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


class _State:
    """
    What the fuzzer has learnt of the registry: repositories, blobs and
    manifests it pushed, upload sessions it opened.
    """

    def __init__(self) -> None:
        self.names = ["fuzz", "fuzz/deep/er", "a"]
        self.blobs = [_digest(b"{}")]
        self.manifests: list[str] = []
        self.uploads: list[str] = []


def _pick(rng: random.Random, *choices: Any) -> Any:
    return rng.choice(choices)


def _garbage(rng: random.Random, size: int = 40) -> str:
    alphabet = "aZ09-_.:/%+@=?&#;~ \t\x00\x7f\u00e9\u2603\ud7ff"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, size)))
    return quote(text, safe=rng.choice(["", "/", "/:%@+=&", "%"]))


def _name(rng: random.Random, state: _State) -> str:
    return _pick(
        rng,
        rng.choice(state.names),
        rng.choice(state.names),
        "UPPER",
        "a" * rng.choice([255, 256, 4000]),
        "..",
        "a/../b",
        "_catalog",
        "x%2Fy",
        "%2e%2e",
        "a//b",
        _garbage(rng),
    )


def _digestText(rng: random.Random, state: _State) -> str:
    hexes = "".join(rng.choice("0123456789abcdef") for _ in range(64))
    return _pick(
        rng,
        rng.choice(state.blobs),
        rng.choice(state.manifests or state.blobs),
        "sha256:" + hexes,
        "sha512:" + hexes * 2,
        "sha256:" + hexes.upper(),
        "sha256:" + hexes[:63],
        "sha384:" + hexes + hexes[:32],
        "md5:abcd",
        "sha256:nothex",
        "sha256:",
        ":" + hexes,
        "9" * rng.choice([10, 5000]),
        _garbage(rng),
    )


def _number(rng: random.Random) -> str:
    return _pick(
        rng, "0", "1", "5", "10000", "-1", "1e3", "%D9%A3", "9" * rng.choice([19, 4301, 6000]), "", "x"
    )


def _reference(rng: random.Random, state: _State) -> str:
    return _pick(rng, "latest", "v1", "a" * 129, "-bad", _digestText(rng, state), _garbage(rng, 10))


def _manifestBody(rng: random.Random, state: _State) -> tuple[bytes, str]:
    descriptor = {"mediaType": "application/octet-stream", "digest": rng.choice(state.blobs), "size": 2}
    subject = {"mediaType": MANIFEST, "digest": _digestText(rng, state), "size": rng.randint(-1, 99)}
    document: Any = {
        "schemaVersion": _pick(rng, 2, 2, 2, 1, "2", None),
        "mediaType": _pick(rng, MANIFEST, INDEX, "text/plain", None, 7),
        "config": _pick(rng, descriptor, {}, None, [], {"digest": _digestText(rng, state)}),
        "layers": _pick(rng, [descriptor] * rng.randint(0, 3), None, {}, [1]),
        "manifests": _pick(
            rng, [], [{"mediaType": MANIFEST, "digest": _digestText(rng, state), "size": 1}], None
        ),
        "subject": _pick(rng, None, None, subject, "x", {}),
        "annotations": _pick(rng, None, {"a": "b"}, {"a": 1}, []),
        "artifactType": _pick(rng, None, "application/x", 5),
    }
    for key in [k for k in document if rng.random() < 0.3]:
        del document[key]
    body = json.dumps(document).encode()
    body = _pick(rng, body, body, body[: rng.randint(0, len(body))], b"[" * 2000, b"\xff\xfe", b"null")
    return body, _pick(rng, MANIFEST, INDEX, "application/json", "text/html", "", "a/b; charset=x")


def _requests(rng: random.Random, state: _State) -> Iterator[tuple[str, str, dict[str, str], bytes]]:
    """
    An endless stream of (method, path, headers, body).
    """
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "BREW", "get"]
    while True:
        name = _name(rng, state)
        kind = rng.randrange(12)
        method = rng.choice(methods)
        headers: dict[str, str] = {}
        body = b""
        query = ""
        if kind == 0:
            path = rng.choice(["/v2/", "/v2", "/", "/v2/_catalog", "/nowhere", "/v2/" + _garbage(rng)])
            query = f"?n={_number(rng)}&last={_garbage(rng, 8)}"
        elif kind == 1:
            path = f"/v2/{name}/tags/list"
            query = _pick(rng, "", f"?n={_number(rng)}", f"?last={_garbage(rng, 8)}&n={_number(rng)}")
        elif kind == 2:
            path = f"/v2/{name}/manifests/{_reference(rng, state)}"
            if rng.random() < 0.3:
                headers["Accept"] = _pick(rng, MANIFEST, "*/*", _garbage(rng, 20))
        elif kind == 3:
            method = _pick(rng, "PUT", "PUT", method)
            body, contentType = _manifestBody(rng, state)
            headers["Content-Type"] = contentType
            reference = _reference(rng, state)
            if rng.random() < 0.3:
                reference = _digest(body)
            path = f"/v2/{name}/manifests/{reference}"
            query = _pick(rng, "", f"?tag={_garbage(rng, 8)}", "?tag=a&tag=b")
        elif kind == 4:
            path = f"/v2/{name}/blobs/{_digestText(rng, state)}"
            if rng.random() < 0.5:
                headers["Range"] = _pick(
                    rng,
                    f"bytes={_number(rng)}-{_number(rng)}",
                    f"bytes=-{_number(rng)}",
                    "bytes=0-0,2-3",
                    _garbage(rng, 12),
                )
        elif kind == 5:
            method = _pick(rng, "POST", "POST", method)
            data = rng.randbytes(rng.choice([0, 1, 100, 5000]))
            path = f"/v2/{name}/blobs/uploads/"
            digest = _pick(rng, _digest(data), _digest(data, "sha512"), _digestText(rng, state))
            query = _pick(
                rng,
                "",
                f"?digest={digest}",
                f"?mount={_digestText(rng, state)}&from={_name(rng, state)}",
                f"?mount={_digestText(rng, state)}",
                f"?digest={quote(_garbage(rng, 12))}",
            )
            body = data if rng.random() < 0.8 else b""
        elif kind in (6, 7, 8):
            upload = rng.choice(state.uploads) if state.uploads and rng.random() < 0.8 else None
            location = upload or f"/v2/{name}/blobs/uploads/{_pick(rng, 'A' * 32, _garbage(rng, 20))}"
            method = _pick(rng, "PATCH", "PUT", "GET", "DELETE", method)
            data = rng.randbytes(rng.choice([0, 10, 1000]))
            body = data
            if rng.random() < 0.5:
                start = _pick(rng, "0", _number(rng))
                headers["Content-Range"] = _pick(
                    rng, f"{start}-{_number(rng)}", f"bytes {start}-9/*", _garbage(rng, 9)
                )
            path = location
            if method == "PUT":
                query = f"?digest={_pick(rng, _digest(data), _digestText(rng, state), '')}"
        elif kind == 9:
            path = f"/v2/{name}/referrers/{_digestText(rng, state)}"
            query = _pick(rng, "", f"?artifactType={_garbage(rng, 10)}")
        elif kind == 10:
            path = "/v2/" + "/".join(_garbage(rng, 6) for _ in range(rng.randint(1, 6)))
            body = rng.randbytes(rng.choice([0, 20]))
        else:
            path = f"/v2/{name}/blobs/{_digestText(rng, state)}"
            method = _pick(rng, "DELETE", method)
        for _ in range(rng.choice([0, 0, 0, 1, 3])):
            headers[_pick(rng, "X-Fuzz", "Accept-Encoding", "Expect", "Transfer-Encoding-X")] = _garbage(
                rng, 20
            )
        yield method, path + query, headers, body


def _check(
    conn: http.client.HTTPConnection,
    state: _State,
    request: tuple[str, str, dict[str, str], bytes],
) -> None:
    """
    Send one request and check its answer.
    """
    method, path, headers, body = request
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    where = f"{method} {path[:200]!r} {headers!r} -> {response.status}"
    assert response.status < 500, f"{where}: {data[:300]!r}"
    if response.status >= 400 and method.upper() != "HEAD":
        assert response.getheader("Content-Type") == "application/json", where
        [error] = json.loads(data)["errors"]
        assert isinstance(error["code"], str) and error["code"].isupper(), where
    location = response.getheader("Location")
    if response.status == 202 and location and "/blobs/uploads/" in location:
        state.uploads = [*state.uploads[-20:], location]
    digest = response.getheader("Docker-Content-Digest")
    if response.status == 201 and digest:
        (state.manifests if "/manifests/" in path else state.blobs).append(digest)


def _connection(server: TwistdRegistry) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)


def _roundTrip(server: TwistdRegistry) -> None:
    """
    A push of a blob and a manifest, then their pulls, all answered right.
    """
    conn = _connection(server)
    config = b'{"fuzzed":true}'
    conn.request("POST", f"/v2/after/blobs/uploads/?digest={_digest(config)}", body=config)
    response = conn.getresponse()
    assert response.status == 201, response.read()
    response.read()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    conn.request("PUT", "/v2/after/manifests/v1", body=manifest, headers={"Content-Type": MANIFEST})
    response = conn.getresponse()
    assert response.status == 201, response.read()
    response.read()
    conn.request("GET", "/v2/after/manifests/v1")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, manifest)
    conn.request("GET", f"/v2/after/blobs/{_digest(config)}")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, config)
    conn.close()


@pytest.fixture(scope="module", params=["memory", "fs"])
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, TwistdRegistry]]:
    """
    One twistd per backend for the whole fuzz run, without an access log.
    """
    tmp: Path = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    args = [f"--backend={request.param}", "--access-log=no"]
    if request.param == "fs":
        args.append(f"--root={tmp / 'root'}")
    server = TwistdRegistry(args, tmp / "twistd.log").start()
    yield request.param, server
    server.stop()
    log = (tmp / "twistd.log").read_text(errors="replace")
    assert "Unhandled" not in log and "unexpected error" not in log, log[-3000:]


def test_fuzz_every_route(fuzzed: tuple[str, TwistdRegistry]) -> None:
    """Thousands of generated requests over every route and method get no 5xx and only JSON
    errors; the server answers /v2/ within a second after each batch and round-trips at the end."""
    backend, server = fuzzed
    state = _State()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(st.integers(min_value=0, max_value=2**32))
    def batch(seed: int) -> None:
        rng = random.Random(seed)
        conn = _connection(server)
        try:
            stream = _requests(rng, state)
            for _ in range(BATCH):
                request = next(stream)
                try:
                    _check(conn, state, request)
                except (http.client.HTTPException, ConnectionError):
                    conn.close()  # the server closed, as it may after refusing a body
                _sent[backend] += 1
        finally:
            conn.close()
        started = time.monotonic()
        probe = _connection(server)
        probe.request("GET", "/v2/")
        assert probe.getresponse().status == 200
        probe.close()
        assert time.monotonic() - started < 1.0

    started = time.monotonic()
    batch()
    _roundTrip(server)
    elapsed = time.monotonic() - started
    print(f"fuzz[{backend}]: {_sent[backend]} requests in {elapsed:.1f} s, 0 answered 5xx")
    assert _sent[backend] >= EXAMPLES * BATCH
