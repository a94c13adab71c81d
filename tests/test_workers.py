"""
Several processes on one fs root and one port (--workers): the parent binds
the port once and hands it to its workers, connections are spread across
them, uploads move between them, no stranger can join the port, and the
workers live and die with the process twistd started.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from twistdprocess import TwistdRegistry
from twisted.python import usage

from ociklein.tap import Options


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _waitFor(condition: Callable[[], bool], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _request(
    port: int, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _workersListening(server: TwistdRegistry, count: int) -> bool:
    return server.logPath.read_text().count("ociklein listening on") >= count


def _accessLines(server: TwistdRegistry, tag: str) -> int:
    return server.logPath.read_text().count(f"[{tag}ociklein.access]")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers=2"], "--workers above 1 needs --backend=fs"),
        (["--workers=2", "--backend=fs", "--listen", "ssl:0:privateKey=KEY"], "needs tcp:, tcp6: or unix:"),
        (["--workers=0"], "--workers must be positive"),
        (["--workers=two"], "--workers must be a number"),
    ],
)
def test_workers_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    """--workers needs the fs backend, endpoints whose socket can be handed over, and a positive count."""
    key = tmp_path / "key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x"]
    subprocess.run(
        [*request, "-keyout", str(key), "-out", str(key.with_suffix(".crt"))],
        check=True,
        capture_output=True,
    )
    key.write_bytes(key.read_bytes() + key.with_suffix(".crt").read_bytes())
    args = [a.replace("KEY", str(key)) for a in args]
    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(args)


def test_workers_share_port_and_root(twistdRegistry: Callable[..., TwistdRegistry], tmp_path: Path) -> None:
    """Two processes serve one port: a chunked upload spread over many connections completes,
    and what one process stored every connection reads back."""
    server = twistdRegistry("--backend=fs", f"--root={tmp_path / 'root'}", "--workers=2")
    assert server.process is not None
    assert _waitFor(lambda: len(_children(server.process.pid)) == 1)
    assert _waitFor(lambda: _workersListening(server, 2))
    chunks = [os.urandom(256 * 1024) for _ in range(12)]
    status, headers, _ = _request(server.port, "POST", "/v2/shared/blobs/uploads/")
    assert status == 202
    location = headers["Location"]
    for chunk in chunks:  # each PATCH on a new connection, so on either process
        status, _, body = _request(server.port, "PATCH", location, chunk)
        assert status == 202, body
    digest = "sha256:" + hashlib.sha256(b"".join(chunks)).hexdigest()
    status, _, body = _request(server.port, "PUT", f"{location}?digest={digest}")
    assert status == 201, body
    for _ in range(40):
        status, _, body = _request(server.port, "GET", f"/v2/shared/blobs/{digest}")
        assert status == 200 and body == b"".join(chunks)
    # Both processes served: each logged access lines of its own, once.
    assert _waitFor(lambda: _accessLines(server, "") + _accessLines(server, "worker 1 ") == 54)
    assert _accessLines(server, "worker 1 ") > 0
    assert _accessLines(server, "") > 0


def test_second_instance_cannot_join_the_port(
    twistdRegistry: Callable[..., TwistdRegistry], tmp_path: Path
) -> None:
    """A second registry with workers on a port already served exits non-zero, with one line, at once."""
    server = twistdRegistry("--backend=fs", f"--root={tmp_path / 'one'}", "--workers=2")
    assert _waitFor(lambda: _workersListening(server, 2))
    listen = f"tcp:{server.port}:interface=127.0.0.1"
    result = subprocess.run(
        [*server.command("--listen", listen, "--workers=2"), "--backend=fs", f"--root={tmp_path / 'two'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    [line] = result.stderr.splitlines()
    assert line.startswith("twistd ociregistry: cannot listen on tcp:"), line


def test_workers_stop_with_their_parent(
    twistdRegistry: Callable[..., TwistdRegistry], tmp_path: Path
) -> None:
    """A worker that dies is restarted; workers end when the parent stops, and even when it is SIGKILLed."""
    server = twistdRegistry("--backend=fs", f"--root={tmp_path / 'root'}", "--workers=2")
    assert server.process is not None
    parent = server.process.pid
    assert _waitFor(lambda: len(_children(parent)) == 1)
    [worker] = _children(parent)
    os.kill(worker, signal.SIGKILL)
    assert _waitFor(lambda: [c for c in _children(parent) if c != worker and _alive(c)] != [])
    [replacement] = [c for c in _children(parent) if c != worker]
    server.kill(signal.SIGKILL)
    assert _waitFor(lambda: not _alive(replacement))

    again = twistdRegistry("--backend=fs", f"--root={tmp_path / 'root'}", "--workers=2")
    assert again.process is not None
    assert _waitFor(lambda: len(_children(again.process.pid)) == 1)
    [worker] = _children(again.process.pid)
    again.stop()
    assert _waitFor(lambda: not _alive(worker))


def _establishedSockets(pid: int, port: int) -> int:
    """
    How many established TCP connections to local C{port} process C{pid} holds.
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held += 1
    return held


def test_workers_share_a_burst_of_connections(
    twistdRegistry: Callable[..., TwistdRegistry], tmp_path: Path
) -> None:
    """32 connections opened at once (as wrk opens them) are shared between both processes,
    not taken all by the one that happened to be idle.  (Which process takes which connection
    is a race either way; tests/test_tap.py pins how each port accepts.)"""
    import socket

    server = twistdRegistry("--backend=fs", f"--root={tmp_path / 'root'}", "--workers=2", "--access-log=no")
    assert server.process is not None
    parent = server.process.pid
    assert _waitFor(lambda: len(_children(parent)) == 1)
    assert _waitFor(lambda: _workersListening(server, 2))
    [worker] = _children(parent)
    for _ in range(20):  # both idle and warm, as after a benchmark's warm-up
        assert _request(server.port, "GET", "/v2/")[0] == 200
    clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(32)]
    try:
        for client in clients:
            client.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        for client in clients:
            assert client.recv(100).startswith(b"HTTP/1.1 200")
        shares = (_establishedSockets(parent, server.port), _establishedSockets(worker, server.port))
        assert sum(shares) == 32
        assert min(shares) >= 4, shares
    finally:
        for client in clients:
            client.close()
