"""
HTTP at its edges, on a real port: request lines and headers too long,
headers that never finish, odd request targets, clients that half-close,
try TLS, stop reading, or come in greater numbers than the registry keeps.
Every answer is the spec's JSON error, and no client can hold the server.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import makeBackends
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from ociklein import Registry
from ociklein.http._limits import Limits, defaultMaxConnections


async def _listen(limits: Limits, registry: Registry | None = None) -> Any:
    service = (registry or Registry()).service(["tcp:0:interface=127.0.0.1"], reactor, limits=limits)
    service.startService()
    [port] = await service.listening  # type: ignore[attr-defined]
    service.port = port.getHost().port  # type: ignore[attr-defined]
    return service


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Any]:
    """
    A memory registry on a real port, with the default limits.
    """
    service = await _listen(Limits())
    yield service
    await service.stopService()


@pytest_twisted.async_yield_fixture
async def fsServer(tmp_path: Path) -> AsyncIterator[Any]:
    """
    An fs registry on a real port: its handlers wait on threads.
    """
    manifests, blobs = makeBackends("fs", tmp_path / "root")
    service = await _listen(Limits(), Registry(manifests, blobs))
    yield service
    await service.stopService()
    blobs.close()


@pytest_twisted.async_yield_fixture
async def impatient() -> AsyncIterator[Any]:
    """
    A memory registry on a real port giving half a second for headers and
    for progress.
    """
    service = await _listen(Limits(headerTimeout=0.5, idleTimeout=0.5))
    yield service
    await service.stopService()


@pytest_twisted.async_yield_fixture
async def small() -> AsyncIterator[Any]:
    """
    A memory registry on a real port keeping 4 connections.
    """
    service = await _listen(Limits(maxConnections=4))
    yield service
    await service.stopService()


def _exchange(port: int, data: bytes, halfClose: bool = False, wait: float = 5.0) -> bytes:
    """
    Send C{data} on a new connection and read until the server closes it.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        if halfClose:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        return received


async def exchange(port: int, data: bytes, halfClose: bool = False, wait: float = 5.0) -> bytes:
    """
    L{_exchange} in a thread, while the reactor serves.
    """
    return await deferToThread(_exchange, port, data, halfClose, wait)


def _parse(response: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"] == "application/json", headers
    document = json.loads(body[: int(headers["content-length"])])
    [error] = document["errors"]
    return status, headers, error["code"]


@pytest_twisted.ensureDeferred
async def test_request_line_too_long(server: Any) -> None:
    """A request line over 16 KiB answers 414 with the JSON error body, then closes."""
    status, _, code = _parse(await exchange(server.port, b"GET /v2/" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n"))
    assert (status, code) == (414, "UNSUPPORTED")


@pytest.mark.parametrize("size", [20000, 9000])
@pytest_twisted.ensureDeferred
async def test_headers_too_large(server: Any, size: int) -> None:
    """One header over 16 KiB, or headers adding up to more, answer 431 with the JSON error body."""
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * size) for i in range(2))
    status, _, code = _parse(
        await exchange(server.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    )
    assert (status, code) == (431, "UNSUPPORTED")


@pytest_twisted.ensureDeferred
async def test_asterisk_target(server: Any) -> None:
    """GET * answers 405 with the JSON error body and Allow: OPTIONS; OPTIONS * an empty 200."""
    close = b" * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, headers, code = _parse(await exchange(server.port, b"GET" + close))
    assert (status, code, headers["allow"]) == (405, "UNSUPPORTED", "OPTIONS")
    assert (await exchange(server.port, b"OPTIONS" + close)).startswith(b"HTTP/1.1 200 ")


@pytest_twisted.ensureDeferred
async def test_header_deadline(impatient: Any) -> None:
    """A client that trickles its headers past --header-timeout gets 408 and is closed, although
    it keeps sending."""

    def trickle() -> tuple[bytes, float]:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", impatient.port), timeout=5) as sock:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\n")
            try:
                for _ in range(40):
                    sock.sendall(b"X: y\r\n")
                    time.sleep(0.05)
            except OSError:
                pass
            received = b""
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except OSError:
                pass
        return received, time.monotonic() - started

    received, elapsed = await deferToThread(trickle)
    status, _, _ = _parse(received)
    assert status == 408
    assert elapsed < 4


@pytest_twisted.ensureDeferred
async def test_half_close_after_request(server: Any) -> None:
    """A client that half-closes its socket after a complete request still gets the answer."""
    response = await exchange(
        server.port, b"GET /v2/nothing/tags/list HTTP/1.1\r\nHost: x\r\n\r\n", halfClose=True
    )
    status, _, code = _parse(response)
    assert (status, code) == (404, "NAME_UNKNOWN")


@pytest_twisted.ensureDeferred
async def test_tls_client_hello_is_refused_at_once(server: Any) -> None:
    """A first byte 0x16 (a TLS ClientHello) on a plain-HTTP port is closed at once, not left
    waiting for a request line."""
    started = time.monotonic()
    hello = bytes.fromhex("16030100a5010000a10303") + b"\x00" * 160
    received = await exchange(server.port, hello, wait=3)
    assert received == b""
    assert time.monotonic() - started < 1


@pytest_twisted.ensureDeferred
async def test_connection_cap_evicts_waiting_clients(small: Any) -> None:
    """Past --max-connections, a new client takes the place of the one waiting longest for its
    headers, and is served at once."""

    def crowd() -> tuple[list[bytes], bytes]:
        idle = [socket.create_connection(("127.0.0.1", small.port), timeout=5) for _ in range(4)]
        for sock in idle:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\n")  # never finished
        time.sleep(0.1)
        answer = _exchange(small.port, b"GET /v2/ HTTP/1.0\r\n\r\n")
        evicted = []
        for sock in idle:
            sock.settimeout(0.2)
            try:
                evicted.append(sock.recv(100))  # b"": closed
            except ConnectionResetError:
                evicted.append(b"")  # closed, by a reset
            except TimeoutError:
                evicted.append(b"?")  # still open
            sock.close()
        return evicted, answer

    evicted, answer = await deferToThread(crowd)
    assert answer.startswith(b"HTTP/1.0 200 "), answer
    assert evicted[0] == b""  # the oldest waiting connection was closed
    assert evicted[1:] == [b"?"] * 3  # the others are still open


def test_default_max_connections() -> None:
    """The default cap keeps a quarter of the open-files limit, at most 256, for files."""
    assert defaultMaxConnections(1024) == 768
    assert defaultMaxConnections(100000) == 100000 - 256
    assert defaultMaxConnections(64) == 48


@pytest_twisted.ensureDeferred
async def test_stalled_reader_is_dropped(impatient: Any) -> None:
    """A client that stops reading a blob is dropped after --idle-timeout without progress,
    and the server goes on serving."""
    blob = os.urandom(16 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    head = f"POST /v2/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += f"Content-Length: {len(blob)}\r\n\r\n"
    assert (await exchange(impatient.port, head.encode() + blob)).startswith(b"HTTP/1.1 201 ")

    def stall() -> tuple[int, float]:
        with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(f"GET /v2/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(2)  # the stall: not reading for four idle timeouts
            started, received = time.monotonic(), 0
            try:
                while chunk := sock.recv(1024 * 1024):
                    received += len(chunk)
            except ConnectionResetError:
                pass
            return received, time.monotonic() - started

    received, elapsed = await deferToThread(stall)
    assert received < len(blob)
    assert elapsed < 5
    assert (await exchange(impatient.port, b"GET /v2/ HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 200 ")
