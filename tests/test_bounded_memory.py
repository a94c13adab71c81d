"""
A blob is never held whole in the server's memory: a real twistd process
receives and serves a body far larger than its memory is allowed to grow.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import struct
import termios
import time
from collections.abc import Callable
from pathlib import Path

from twistdprocess import TwistdRegistry

MIB = 1024 * 1024
BLOB_SIZE = 256 * MIB
ALLOWED_GROWTH = 64 * MIB


def _memory(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def _readResponseHead(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "connection closed before the response"
        head += chunk
    return head


def _untilStalled(sock: socket.socket, bounded: Callable[[], bool], seconds: float = 20.0) -> bool:
    """
    Poll until the bytes waiting in C{sock} have not grown for half a
    second (the sender has stopped), asserting C{bounded} at each poll.
    """
    deadline = time.monotonic() + seconds
    waiting, still = -1, 0
    while time.monotonic() < deadline:
        assert bounded()
        now = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        still = still + 1 if now == waiting and now > 0 else 0
        if still >= 10:
            return True
        waiting = now
        time.sleep(0.05)
    return False


def test_upload_and_download_stream(twistdRegistry: Callable[..., TwistdRegistry], tmp_path: Path) -> None:
    """A 256 MiB blob goes in and out of an fs registry while its RSS grows by less than 64 MiB,
    and a client that stops reading does not make the server buffer the blob."""
    server = twistdRegistry("--backend=fs", f"--root={tmp_path / 'root'}")
    assert server.process is not None
    pid = server.process.pid
    piece = os.urandom(MIB)
    digest = hashlib.sha256()
    for _ in range(BLOB_SIZE // MIB):
        digest.update(piece)
    blob = f"sha256:{digest.hexdigest()}"
    baseline = _memory(pid, "VmRSS")

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            f"POST /v2/big/blobs/uploads/?digest={blob} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {BLOB_SIZE}\r\n\r\n".encode()
        )
        for _ in range(BLOB_SIZE // MIB):
            sock.sendall(piece)
        head = _readResponseHead(sock)
    assert head.startswith(b"HTTP/1.1 201"), head
    assert _memory(pid, "VmHWM") - baseline < ALLOWED_GROWTH

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET /v2/big/blobs/{blob} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        # A client that does not read: wait (bounded) until the server has
        # filled what the connection holds and stopped sending, checking
        # its memory all along.
        stalled = _untilStalled(sock, lambda: _memory(pid, "VmRSS") - baseline < ALLOWED_GROWTH)
        assert stalled, "the server never stopped sending to a client that does not read"
        head = _readResponseHead(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        body = head.split(b"\r\n\r\n", 1)[1]
        received = hashlib.sha256(body)
        total = len(body)
        while total < BLOB_SIZE:
            chunk = sock.recv(MIB)
            assert chunk, "connection closed early"
            received.update(chunk)
            total += len(chunk)
    assert total == BLOB_SIZE
    assert f"sha256:{received.hexdigest()}" == blob
    assert _memory(pid, "VmHWM") - baseline < ALLOWED_GROWTH
