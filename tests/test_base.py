"""
The API root and errors for routes that do not exist.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq
from helpers import exchange
from twisted.internet import threads


@pytest_twisted.ensureDeferred
async def test_base_answers_with_api_version(client: Any) -> None:
    """GET /v2/ answers 200 with the Docker-Distribution-API-Version header."""
    response = await client.request("GET", "/v2/")
    assert response.code == 200
    assert response.headers.getRawHeaders("Docker-Distribution-API-Version") == ["registry/2.0"]


@pytest_twisted.ensureDeferred
async def test_unknown_route_is_json(client: Any) -> None:
    """An unknown route answers 404 with the spec's JSON error body, not HTML."""
    response = await client.request("GET", "/nothing/here")
    assert response.code == 404
    assert response.headers.getRawHeaders("Content-Type") == ["application/json"]
    assert json.loads(response.body)["errors"][0]["code"] == "NAME_UNKNOWN"


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1 junk\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"PUT /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_http_gets_one_json_answer(live: Any, raw: bytes) -> None:
    """A request twisted.web cannot parse gets a single JSON 400 and the connection closes."""
    port = int(live.base.rsplit(":", 1)[1])
    received = await threads.deferToThread(exchange, port, raw)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
    assert received.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize("accessLog", [True, False])
@pytest_twisted.ensureDeferred
async def test_access_log_can_be_switched_off(accessLog: bool) -> None:
    """The registry's Site writes one access log line per request, or none when asked not to."""
    from twisted.logger import formatEvent, globalLogPublisher

    from ociklein import Registry

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if "GET /v2/ HTTP/1.1" in text:
            lines.append(text)

    registry = Registry()
    service = registry.service(["tcp:0:interface=127.0.0.1"], accessLog=accessLog)
    service.startService()
    globalLogPublisher.addObserver(observe)
    try:
        [port] = await service.listening  # type: ignore[attr-defined]
        response = await treq.get(f"http://127.0.0.1:{port.getHost().port}/v2/", persistent=False)
        await treq.content(response)
    finally:
        globalLogPublisher.removeObserver(observe)
        await service.stopService()
    assert len(lines) == (1 if accessLog else 0)
