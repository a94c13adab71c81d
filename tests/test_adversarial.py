"""
Attacks on a real twistd, tried as an attacker would: racing a PATCH with
the finishing PUT, thousands of idle upload sessions, trickling and
stalled connections under a lowered open-files limit, and connections cut
at every stage of an upload.  No blob is ever served under a digest its
bytes do not match, nothing leaks, and a normal client is served within a
second throughout.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twistdprocess import TwistdRegistry

MIB = 1024 * 1024


def _digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _request(
    server: TwistdRegistry, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _timed(server: TwistdRegistry) -> float:
    """
    How long a normal client takes to push a small blob and pull it back.
    """
    data = os.urandom(1000)
    started = time.monotonic()
    status, _, body = _request(server, "POST", f"/v2/normal/blobs/uploads/?digest={_digest(data)}", data)
    assert status == 201, body
    status, _, body = _request(server, "GET", f"/v2/normal/blobs/{_digest(data)}")
    assert (status, body) == (200, data)
    return time.monotonic() - started


def _waitFor(condition: Callable[[], bool], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., TwistdRegistry]]:
    """
    Starts twistd processes (optionally under a lower open-files limit);
    all are stopped at the end of the test.
    """
    started: list[TwistdRegistry] = []

    def run(*args: str, openFiles: int | None = None) -> TwistdRegistry:
        server = TwistdRegistry(list(args), tmp_path / f"twistd-{len(started)}.log", openFiles=openFiles)
        started.append(server)
        return server.start()

    yield run
    for server in started:
        server.stop()


# PATCH during the finishing PUT

ROUNDS = 50


def _raw(server: TwistdRegistry, method: str, path: str, body: bytes) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


def _send(sock: socket.socket, data: bytes, answers: list[int]) -> None:
    sock.sendall(data)
    received = b""
    while b"\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    answers.append(int(received.split(b" ", 2)[1]) if received else 0)


@pytest.mark.parametrize("backend", ["memory", "fs"])
def test_patch_racing_the_finishing_put(
    start: Callable[..., TwistdRegistry], tmp_path: Path, backend: str
) -> None:
    """50 rounds of a PATCH sent at the same instant as the finishing PUT (sha256 and sha512):
    no 5xx, and every blob served hashes to its digest."""
    root = [f"--root={tmp_path / 'root'}"] if backend == "fs" else []
    server = start(f"--backend={backend}", *root, "--access-log=no")
    mismatches, fives, published = 0, 0, 0
    for round_ in range(ROUNDS):
        status, headers, _ = _request(server, "POST", "/v2/race/blobs/uploads/")
        location = headers["Location"]
        head = os.urandom(2 * MIB)
        status, _, body = _request(server, "PATCH", location, head)
        assert status == 202, body
        digest = _digest(head, "sha512" if round_ % 2 else "sha256")
        put = _raw(server, "PUT", f"{location}?digest={digest}", b"")
        patch = _raw(server, "PATCH", location, os.urandom(256 * 1024))
        sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(2)]
        answers: list[int] = []
        threads = [
            threading.Thread(target=_send, args=(sockets[0], put, answers)),
            threading.Thread(target=_send, args=(sockets[1], patch, answers)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for sock in sockets:
            sock.close()
        fives += sum(1 for answer in answers if answer >= 500)
        status, _, body = _request(server, "GET", f"/v2/race/blobs/{digest}")
        if status == 200:
            published += 1
            algorithm = digest.partition(":")[0]
            mismatches += _digest(body, algorithm) != digest
    print(f"race[{backend}]: {ROUNDS} rounds, {published} published, {mismatches} mismatches, {fives} 5xx")
    assert (mismatches, fives) == (0, 0)
    assert published > 0


# Descriptors


def test_idle_sessions_hold_no_descriptor(start: Callable[..., TwistdRegistry], tmp_path: Path) -> None:
    """1,100 open upload sessions under a 1,024 open-files limit: pushes and pulls still work and
    the server holds no descriptor per session."""
    server = start("--backend=fs", f"--root={tmp_path / 'root'}", "--access-log=no", openFiles=1024)
    before = server.openDescriptors()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for _ in range(1100):
        conn.request("POST", "/v2/idle/blobs/uploads/")
        response = conn.getresponse()
        response.read()
        assert response.status == 202
    conn.close()
    assert _waitFor(lambda: server.openDescriptors() <= before + 5)
    assert _timed(server) < 1.0


def _descriptorsAndStaging(server: TwistdRegistry, root: Path) -> tuple[int, list[str]]:
    return server.openDescriptors(), sorted(os.listdir(root / "tmp"))


def test_cut_connections_leak_nothing(start: Callable[..., TwistdRegistry], tmp_path: Path) -> None:
    """Connections cut at every stage of an upload (and of a download) leave no descriptor and
    nothing in tmp/ behind."""
    root = tmp_path / "root"
    server = start("--backend=fs", f"--root={root}", "--access-log=no")
    blob = os.urandom(4 * MIB)
    status, _, _ = _request(server, "POST", f"/v2/cut/blobs/uploads/?digest={_digest(blob)}", blob)
    assert status == 201
    _, headers, _ = _request(server, "POST", "/v2/cut/blobs/uploads/")
    session = headers["Location"]
    before = _descriptorsAndStaging(server, root)
    assert before[1] == []

    def head(method: str, path: str, length: int | None = None) -> bytes:
        sized = "" if length is None else f"Content-Length: {length}\r\n"
        return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{sized}\r\n".encode()

    big = f"/v2/cut/blobs/uploads/?digest=sha256:{'0' * 64}"
    small = b"y" * 1000
    stages: list[bytes] = [
        # monolithic: headers only, half the body, the whole body unanswered
        head("POST", big, MIB),
        head("POST", big, MIB) + b"x" * (MIB // 2),
        head("POST", f"/v2/cut/blobs/uploads/?digest={_digest(small)}", len(small)) + small,
        # a session being opened, a PATCH and a finishing PUT cut mid-body
        head("POST", "/v2/cut/blobs/uploads/"),
        head("PATCH", session, MIB) + b"z" * 1000,
        head("PUT", f"{session}?digest=sha256:{'0' * 64}", MIB) + b"z" * 1000,
        # a download read in part
        head("GET", f"/v2/cut/blobs/{_digest(blob)}"),
    ]
    cuts = 0
    for data in stages:
        for _ in range(40):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.sendall(data)
                if data.startswith(b"GET"):
                    sock.recv(65536)
            cuts += 1

    def settled() -> bool:
        descriptors, staging = _descriptorsAndStaging(server, root)
        return descriptors <= before[0] and staging == []

    assert _waitFor(settled), (before, _descriptorsAndStaging(server, root))
    after = _descriptorsAndStaging(server, root)
    print(f"cut: {cuts} connections cut, {max(0, after[0] - before[0])} descriptors leaked, tmp/ {after[1]}")
    assert _timed(server) < 1.0


# Trickling and stalled clients


def test_slowloris_and_stalled_readers(start: Callable[..., TwistdRegistry], tmp_path: Path) -> None:
    """Under a 1,024 open-files limit, 1,100 connections trickling their headers and 50 that stopped
    reading a 4 MiB blob do not keep a normal client from being served within a second."""
    server = start("--backend=fs", f"--root={tmp_path / 'root'}", "--access-log=no", openFiles=1024)
    blob = os.urandom(4 * MIB)
    status, _, _ = _request(server, "POST", f"/v2/big/blobs/uploads/?digest={_digest(blob)}", blob)
    assert status == 201
    held: list[socket.socket] = []
    try:
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            sock.sendall(f"GET /v2/big/blobs/{_digest(blob)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            held.append(sock)
        for i in range(1100):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Trickle: ")
            held.append(sock)
            if i % 100 == 99:
                for trickling in held[50:]:
                    try:
                        trickling.send(b"a")
                    except OSError:
                        pass  # evicted to make room
        open_ = server.openDescriptors()
        latencies = [_timed(server) for _ in range(5)]
        print(
            f"slowloris: {len(held)} connections opened, server holding {open_} descriptors, "
            f"normal client served in {max(latencies) * 1000:.0f} ms at most"
        )
        assert max(latencies) < 1.0
        assert open_ < 1024
    finally:
        for sock in held:
            sock.close()
    status, _, body = _request(server, "GET", f"/v2/big/blobs/{_digest(blob)}")
    assert (status, body) == (200, blob)
