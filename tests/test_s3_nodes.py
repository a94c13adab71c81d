"""
Stateless nodes: real C{twistd ociregistry --backend s3} processes sharing
one bucket on SeaweedFS.  A session moves between nodes, what one node
answered the other serves at once, a node killed with SIGKILL loses no
acknowledged write, and a store that goes away gives 503 until it is back.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import OCI_MANIFEST, digestOf, imageManifest
from seaweedfixture import SeaweedFS, s3Arguments, uniquePrefix
from twistdprocess import TwistdRegistry

MIB = 1024 * 1024
_digest = digestOf


def _manifest(config: bytes, layer: bytes, note: str) -> bytes:
    return json.dumps(imageManifest(config, [layer], annotations={"n": note})).encode()


def _pushBlob(base: str, name: str, data: bytes) -> requests.Response:
    return requests.post(f"{base}/v2/{name}/blobs/uploads/?digest={_digest(data)}", data=data, timeout=60)


@pytest.fixture
def nodes(seaweedfs: SeaweedFS, twistdRegistry: Callable[..., TwistdRegistry]) -> list[TwistdRegistry]:
    """
    Two nodes on one bucket prefix, small parts so that sessions span parts.
    """
    args = [*s3Arguments(seaweedfs, uniquePrefix()), "--s3-part-size=5", "--access-log=no"]
    return [twistdRegistry(*args), twistdRegistry(*args)]


def test_chunkedUploadAlternatingNodes(nodes: list[TwistdRegistry]) -> None:
    """PATCHes alternating between two nodes build one session; the blob commits with the right digest."""
    a, b = nodes
    data = os.urandom(12 * MIB + 321)
    started = requests.post(f"{a.url}/v2/alt/blobs/uploads/", timeout=30)
    assert started.status_code == 202
    location = started.headers["Location"]
    step = 3 * MIB + 5
    for i, offset in enumerate(range(0, len(data), step)):
        node = nodes[i % 2]
        chunk = data[offset : offset + step]
        response = requests.patch(
            node.url + location,
            data=chunk,
            headers={"Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
            timeout=60,
        )
        assert response.status_code == 202, response.text
        assert response.headers["Range"] == f"0-{offset + len(chunk) - 1}"
        location = response.headers["Location"]
    status = requests.get(a.url + location, timeout=30)
    assert status.headers["Range"] == f"0-{len(data) - 1}"
    done = requests.put(f"{b.url}{location}?digest={_digest(data)}", timeout=60)
    assert done.status_code == 201, done.text
    pulled = requests.get(f"{a.url}/v2/alt/blobs/{_digest(data)}", timeout=60)
    assert pulled.content == data
    ranged = requests.get(
        f"{b.url}/v2/alt/blobs/{_digest(data)}", headers={"Range": "bytes=5242870-5242889"}, timeout=30
    )
    assert ranged.status_code == 206 and ranged.content == data[5242870:5242890]


def test_manifestVisibleOnOtherNodeAtOnce(nodes: list[TwistdRegistry]) -> None:
    """A manifest, tag and catalog entry written through one node are read through the other at once."""
    a, b = nodes
    for round in range(5):
        config, layer = b"{}", f"layer {round}".encode()
        assert _pushBlob(a.url, "vis", config).status_code == 201
        assert _pushBlob(a.url, "vis", layer).status_code == 201
        manifest = _manifest(config, layer, str(round))
        put = requests.put(
            f"{a.url}/v2/vis/manifests/latest",
            data=manifest,
            headers={"Content-Type": OCI_MANIFEST},
            timeout=30,
        )
        assert put.status_code == 201
        got = requests.get(f"{b.url}/v2/vis/manifests/latest", headers={"Accept": OCI_MANIFEST}, timeout=30)
        assert got.status_code == 200 and got.content == manifest
    assert requests.get(f"{b.url}/v2/vis/tags/list", timeout=30).json()["tags"] == ["latest"]
    assert "vis" in requests.get(f"{b.url}/v2/_catalog", timeout=30).json()["repositories"]


def test_killedNodeLosesNoAcknowledgedWrite(nodes: list[TwistdRegistry]) -> None:
    """kill -9 of a node during concurrent pushes: every acknowledged write is intact via the other."""
    a, b = nodes
    acknowledged: list[tuple[str, Any]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def pusher(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            name = f"kill/w{worker}"
            try:
                layer = os.urandom(random.choice([1000, 6 * MIB]))
                if _pushBlob(a.url, name, layer).status_code == 201:
                    with lock:
                        acknowledged.append(("blob", (name, layer)))
                config = f'{{"w":{worker},"n":{n}}}'.encode()
                if _pushBlob(a.url, name, config).status_code != 201:
                    continue
                manifest = _manifest(config, layer, f"{worker}-{n}")
                tag = f"t{n}"
                put = requests.put(
                    f"{a.url}/v2/{name}/manifests/{tag}",
                    data=manifest,
                    headers={"Content-Type": OCI_MANIFEST},
                    timeout=30,
                )
                if put.status_code == 201:
                    with lock:
                        acknowledged.append(("manifest", (name, tag, manifest)))
                started = requests.post(f"{a.url}/v2/{name}/blobs/uploads/", timeout=30)
                chunk = os.urandom(2 * MIB)
                patched = requests.patch(a.url + started.headers["Location"], data=chunk, timeout=30)
                if patched.status_code == 202:
                    with lock:
                        acknowledged.append(("session", (name, patched.headers["Location"], chunk)))
            except requests.RequestException:
                return

    workers = [threading.Thread(target=pusher, args=(i,)) for i in range(3)]
    for thread in workers:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0, 0.5))
    a.kill()
    stop.set()
    for thread in workers:
        thread.join(60)
    with lock:
        writes = list(acknowledged)
    assert len(writes) >= 6
    for kind, what in writes:
        if kind == "blob":
            name, layer = what
            got = requests.get(f"{b.url}/v2/{name}/blobs/{_digest(layer)}", timeout=60)
            assert got.status_code == 200 and got.content == layer
        elif kind == "manifest":
            name, tag, manifest = what
            got = requests.get(
                f"{b.url}/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}, timeout=30
            )
            assert got.status_code == 200 and got.content == manifest
        else:
            name, location, chunk = what
            status = requests.get(b.url + location, timeout=30)
            assert status.status_code == 204 and status.headers["Range"] == f"0-{len(chunk) - 1}"
            done = requests.put(f"{b.url}{location}?digest={_digest(chunk)}", timeout=60)
            assert done.status_code == 201, done.text


@pytest.fixture(scope="module")
def ownSeaweedFS(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """
    A SeaweedFS of this module's own, since its tests stop it.
    """
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs-stopped")).start()
    yield server
    server.stop()


def test_storeStoppedAndBack(
    ownSeaweedFS: SeaweedFS, twistdRegistry: Callable[..., TwistdRegistry], tmp_path: Path
) -> None:
    """With SeaweedFS gone clients get 503 and Retry-After in bounded time; once back, all is served."""
    node = twistdRegistry(*s3Arguments(ownSeaweedFS))
    assert _pushBlob(node.url, "down", b"before").status_code == 201
    ownSeaweedFS.stop()
    try:
        for method, path in [
            ("GET", f"/v2/down/blobs/{_digest(b'before')}"),
            ("POST", f"/v2/down/blobs/uploads/?digest={_digest(b'during')}"),
        ]:
            began = time.monotonic()
            response = requests.request(method, node.url + path, data=b"during", timeout=60)
            assert response.status_code == 503, (method, path, response.text)
            assert response.headers["Retry-After"] == "5"
            assert response.json()["errors"][0]["code"] == "UNAVAILABLE"
            assert time.monotonic() - began < 30
    finally:
        ownSeaweedFS.restart()
    got = requests.get(f"{node.url}/v2/down/blobs/{_digest(b'before')}", timeout=60)
    assert got.status_code == 200 and got.content == b"before"
    assert _pushBlob(node.url, "down", b"after").status_code == 201


def _memory(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


BIG = int(os.environ.get("OCIKLEIN_S3_RSS_BLOB_MIB", "64")) * MIB
RSS_LIMIT = 150 * 1000 * 1000


def _streamPush(node: TwistdRegistry, name: str, seed: bytes) -> str:
    """
    Push BIG bytes (C{seed} repeated) monolithically without holding them.
    """
    import http.client

    digest = hashlib.sha256()
    for _ in range(BIG // len(seed)):
        digest.update(seed)
    blob = "sha256:" + digest.hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=300)
    conn.putrequest("POST", f"/v2/{name}/blobs/uploads/?digest={blob}")
    conn.putheader("Content-Length", str(BIG))
    conn.endheaders()
    for _ in range(BIG // len(seed)):
        conn.send(seed)
    response = conn.getresponse()
    assert response.status == 201, response.read()
    conn.close()
    return blob


def _streamPull(node: TwistdRegistry, name: str, blob: str) -> None:
    with requests.get(f"{node.url}/v2/{name}/blobs/{blob}", stream=True, timeout=300) as response:
        assert response.status_code == 200
        digest = hashlib.sha256()
        for chunk in response.iter_content(MIB):
            digest.update(chunk)
    assert "sha256:" + digest.hexdigest() == blob


def test_rssBoundedUnderFourClients(
    seaweedfs: SeaweedFS, twistdRegistry: Callable[..., TwistdRegistry]
) -> None:
    """4 clients pushing then pulling big blobs at once keep the node's peak RSS under 150 MB."""
    from concurrent.futures import ThreadPoolExecutor

    node = twistdRegistry(*s3Arguments(seaweedfs), "--access-log=no")
    assert node.process is not None
    with ThreadPoolExecutor(4) as pool:
        pushes = [pool.submit(_streamPush, node, f"rss/{i}", os.urandom(MIB)) for i in range(4)]
        blobs = [push.result(timeout=600) for push in pushes]
        pulls = [pool.submit(_streamPull, node, f"rss/{i}", blob) for i, blob in enumerate(blobs)]
        for pulled in pulls:
            pulled.result(timeout=600)
    peak = _memory(node.process.pid, "VmHWM")
    assert peak < RSS_LIMIT, f"peak RSS {peak / 1e6:.0f} MB"


def test_workersOnS3(seaweedfs: SeaweedFS, twistdRegistry: Callable[..., TwistdRegistry]) -> None:
    """--workers 2 with s3 hands the bucket options to the worker; what one process stores both serve."""
    from test_workers import _request, _waitFor, _workersListening

    server = twistdRegistry(*s3Arguments(seaweedfs), "--workers=2")
    assert _waitFor(lambda: _workersListening(server, 2))
    data = os.urandom(1000)
    status, _, _ = _request(server.port, "POST", f"/v2/w/blobs/uploads/?digest={_digest(data)}", data)
    assert status == 201
    for _ in range(10):  # each on a new connection, so on either process
        status, _, body = _request(server.port, "GET", f"/v2/w/blobs/{_digest(data)}")
        assert status == 200 and body == data
