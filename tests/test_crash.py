"""
Crash safety of the filesystem backend: a real twistd process is killed with
SIGKILL in the middle of uploads and manifest writes, restarted on the same
root, and every acknowledged write must be intact and nothing partial served.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twistdprocess import TwistdRegistry

MIB = 1024 * 1024


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _request(
    server: TwistdRegistry,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _pushImage(server: TwistdRegistry, name: str, tag: str, seed: int) -> dict[str, Any]:
    """
    Push a three-layer image; what the registry acknowledged.
    """
    rng = random.Random(seed)
    layers = [rng.randbytes(rng.randint(1000, 300_000)) for _ in range(3)]
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    blobs = {_digest(b): b for b in [*layers, config]}
    for digest, data in blobs.items():
        status, _, body = _request(server, "POST", f"/v2/{name}/blobs/uploads/?digest={digest}", data)
        assert status == 201, body
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(x),
                    "size": len(x),
                }
                for x in layers
            ],
        }
    ).encode()
    status, _, body = _request(
        server,
        "PUT",
        f"/v2/{name}/manifests/{tag}",
        manifest,
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert status == 201, body
    return {"name": name, "tag": tag, "manifest": manifest, "blobs": blobs}


def _checkImage(server: TwistdRegistry, image: dict[str, Any]) -> None:
    name = image["name"]
    status, headers, body = _request(server, "GET", f"/v2/{name}/manifests/{image['tag']}")
    assert status == 200, (image["tag"], body)
    assert body == image["manifest"]
    assert headers["Docker-Content-Digest"] == _digest(image["manifest"])
    for digest, data in image["blobs"].items():
        status, _, body = _request(server, "GET", f"/v2/{name}/blobs/{digest}")
        assert status == 200 and body == data


def _storedBytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def _startPartialUpload(server: TwistdRegistry, size: int, sent: int) -> tuple[socket.socket, str]:
    """
    Begin a monolithic upload of C{size} bytes and send only C{sent} of them.
    """
    data = os.urandom(MIB)
    digest = _digest(data * (size // MIB))
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        f"POST /v2/big/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {size}\r\n\r\n".encode()
    )
    for _ in range(sent // MIB):
        sock.sendall(data)
    return sock, digest


def test_kill_9_mid_upload_keeps_acknowledged_image(
    twistdRegistry: Callable[..., TwistdRegistry], tmp_path: Path
) -> None:
    """SIGKILL in the middle of a 200 MiB upload: the image pushed before is intact after restart,
    the partial blob is never served and its data is gone."""
    root = tmp_path / "root"
    server = twistdRegistry("--backend=fs", f"--root={root}")
    image = _pushImage(server, "library/app", "v1", seed=1)
    before = _storedBytes(root)
    sock, bigDigest = _startPartialUpload(server, 200 * MIB, 96 * MIB)
    deadline = time.monotonic() + 20
    while _storedBytes(root) < before + 32 * MIB and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _storedBytes(root) >= before + 32 * MIB, "the upload was not being written as it arrived"
    server.kill()
    sock.close()

    again = twistdRegistry("--backend=fs", f"--root={root}")
    _checkImage(again, image)
    status, _, _ = _request(again, "HEAD", f"/v2/big/blobs/{bigDigest}")
    assert status == 404
    assert _storedBytes(root) < before + MIB, "partial upload data survived the restart"


def test_kill_9_at_random_moments_loses_no_acknowledged_write(
    twistdRegistry: Callable[..., TwistdRegistry], tmp_path: Path
) -> None:
    """SIGKILL at random moments during a stream of pushes, retags and deletes: every
    acknowledged write is intact after restart and the store stays consistent."""
    root = tmp_path / "root"
    rng = random.Random(20261127)
    acknowledged: dict[str, dict[str, Any]] = {}
    deleted: set[str] = set()
    for round_ in range(3):
        server = twistdRegistry("--backend=fs", f"--root={root}")
        for image in acknowledged.values():
            _checkImage(server, image)
        for tag in deleted:
            status, _, _ = _request(server, "GET", f"/v2/library/app/manifests/{tag}")
            assert status == 404
        stop = threading.Event()
        failures: list[BaseException] = []

        def work(
            server: TwistdRegistry = server,
            round_: int = round_,
            stop: threading.Event = stop,
            failures: list[BaseException] = failures,
        ) -> None:
            i = 0
            while not stop.is_set() and i < 200:
                tag = f"r{round_}-{i}"
                try:
                    image = _pushImage(server, "library/app", tag, seed=round_ * 1000 + i)
                    acknowledged[tag] = image
                    if i % 3 == 2:
                        # Until the 202 arrives, the victim may or may not be gone.
                        victim = f"r{round_}-{i - 1}"
                        acknowledged.pop(victim, None)
                        status, _, _ = _request(server, "DELETE", f"/v2/library/app/manifests/{victim}")
                        if status == 202:
                            deleted.add(victim)
                except (OSError, http.client.HTTPException):
                    return  # the kill cut this request
                except AssertionError as e:  # a wrong answer: the test must fail
                    failures.append(e)
                    return
                i += 1

        worker = threading.Thread(target=work)
        worker.start()
        time.sleep(rng.uniform(0.3, 1.5))
        server.kill()
        stop.set()
        worker.join(30)
        assert not worker.is_alive(), "the writer thread hung"
        assert failures == [], failures
    final = twistdRegistry("--backend=fs", f"--root={root}")
    assert acknowledged, "nothing was acknowledged before the kills"
    for image in acknowledged.values():
        _checkImage(final, image)
    status, _, body = _request(final, "GET", "/v2/library/app/tags/list?n=10000")
    assert status == 200
    tags = set(json.loads(body)["tags"])
    assert set(acknowledged) <= tags
    assert not (deleted & tags)


def test_chunked_upload_resumes_after_kill_9(
    twistdRegistry: Callable[..., TwistdRegistry], tmp_path: Path
) -> None:
    """A chunked upload whose PATCHes were acknowledged resumes after SIGKILL and a restart,
    and completes into the right blob."""
    root = tmp_path / "root"
    server = twistdRegistry("--backend=fs", f"--root={root}")
    first, second = os.urandom(3 * MIB), os.urandom(MIB + 17)
    status, headers, _ = _request(server, "POST", "/v2/resumed/blobs/uploads/")
    assert status == 202
    location = headers["Location"]
    status, headers, _ = _request(server, "PATCH", location, first, {"Content-Range": f"0-{len(first) - 1}"})
    assert status == 202 and headers["Range"] == f"0-{len(first) - 1}"
    server.kill()

    again = twistdRegistry("--backend=fs", f"--root={root}")
    status, headers, _ = _request(again, "GET", location)
    assert status == 204 and headers["Range"] == f"0-{len(first) - 1}"
    end = len(first) + len(second) - 1
    status, _, _ = _request(again, "PATCH", location, second, {"Content-Range": f"{len(first)}-{end}"})
    assert status == 202
    digest = _digest(first + second)
    status, _, body = _request(again, "PUT", f"{location}?digest={digest}")
    assert status == 201, body
    status, _, body = _request(again, "GET", f"/v2/resumed/blobs/{digest}")
    assert status == 200 and body == first + second
