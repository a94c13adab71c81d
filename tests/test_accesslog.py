"""
The access log and request ids: one event per request carrying the request
id, the client (behind trusted proxies only), method, path, status, bytes,
duration and user; the log observer's text and JSON lines.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from helpers import exchange
from twisted.internet import reactor, threads
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.web.resource import Resource

from ociklein import Registry
from ociklein._logging import ACCESS_KEY, WORKER_NAMESPACE, AccessRecord, LineObserver, _Stamp
from ociklein.http import _accesslog
from ociklein.http._accesslog import ClientAddress, parseNetworks
from ociklein.http._streaming import makeSite
from ociklein.registry import RegistryService


@pytest.fixture
def records() -> Iterator[list[AccessRecord]]:
    """The access records emitted while the test runs."""
    found: list[AccessRecord] = []

    def observe(event: dict[str, Any]) -> None:
        if ACCESS_KEY in event:
            found.append(event[ACCESS_KEY])

    globalLogPublisher.addObserver(observe)
    yield found
    globalLogPublisher.removeObserver(observe)


async def _serve(service: RegistryService) -> AsyncIterator[str]:
    service.startService()
    [port] = service.ports
    yield f"http://127.0.0.1:{port.getHost().port}"
    await service.stopService()


@pytest_twisted.async_yield_fixture
async def url() -> AsyncIterator[str]:
    """A registry on a port of 127.0.0.1 trusting nobody's forwarding headers."""
    async for base in _serve(Registry().service(["tcp:0:interface=127.0.0.1"], reactor)):
        yield base


@pytest_twisted.async_yield_fixture
async def proxied() -> AsyncIterator[str]:
    """A registry on a port of 127.0.0.1 that trusts 127.0.0.0/8 as its reverse proxy."""
    service = Registry().service(["tcp:0:interface=127.0.0.1"], reactor, trustedProxies=["127.0.0.0/8"])
    async for base in _serve(service):
        yield base


async def _get(base: str, path: str = "/v2/", headers: dict[str, str] | None = None) -> Any:
    response = await treq.get(base + path, headers=headers, persistent=False)
    await treq.content(response)
    return response


@pytest_twisted.ensureDeferred
async def test_request_id_generated_and_echoed(url: str, records: list[AccessRecord]) -> None:
    """A request without X-Request-Id gets a fresh one, echoed in the response and logged."""
    first = await _get(url)
    second = await _get(url)
    ids = [r.headers.getRawHeaders("X-Request-Id")[0] for r in (first, second)]
    assert ids[0] != ids[1]
    assert all(len(i) == 16 for i in ids)
    assert [r.requestId for r in records] == ids


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123", True), ("7f3c:req/1=2+x@y", True), ("two words", False), ("x" * 129, False), ("", False)],
)
@pytest_twisted.ensureDeferred
async def test_incoming_request_id(url: str, records: list[AccessRecord], given: str, kept: bool) -> None:
    """A sane incoming X-Request-Id is kept and echoed; an odd one is replaced by a fresh id."""
    response = await _get(url, headers={"X-Request-Id": given})
    [echoed] = response.headers.getRawHeaders("X-Request-Id")
    assert (echoed == given) is kept
    assert records[-1].requestId == echoed


@pytest_twisted.ensureDeferred
async def test_access_record_fields(url: str, records: list[AccessRecord]) -> None:
    """The access record names client, user, method, path, protocol, status, bytes, agent, duration."""
    await _get(url, "/v2/_catalog?n=1", {"User-Agent": 'tool/1.0 "quoted"'})
    [record] = records
    assert record.client == "127.0.0.1"
    assert record.user == "-"
    assert (record.method, record.path, record.protocol) == ("GET", "/v2/_catalog?n=1", "HTTP/1.1")
    assert record.status == 200
    assert record.bytes == len(b'{"repositories": []}')
    assert record.userAgent == r"tool/1.0 \x22quoted\x22"
    assert 0 <= record.duration < 10
    assert '"GET /v2/_catalog?n=1 HTTP/1.1" 200 20 ' in record.text()


@pytest_twisted.ensureDeferred
async def test_forwarding_headers_ignored_from_untrusted_peer(url: str, records: list[AccessRecord]) -> None:
    """Without --trusted-proxy, X-Forwarded-For and Forwarded cannot change the logged client."""
    await _get(url, headers={"X-Forwarded-For": "203.0.113.7"})
    await _get(url, headers={"Forwarded": "for=203.0.113.7"})
    assert [r.client for r in records] == ["127.0.0.1", "127.0.0.1"]


@pytest.mark.parametrize(
    ("headers", "client"),
    [
        ({"X-Forwarded-For": "203.0.113.7"}, "203.0.113.7"),
        ({"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 127.0.0.5"}, "203.0.113.7"),
        ({"X-Forwarded-For": "127.0.0.9"}, "127.0.0.9"),
        ({"Forwarded": 'for="[2001:db8::1]:4711";proto=https'}, "2001:db8::1"),
        ({"Forwarded": "for=198.51.100.1, for=203.0.113.7:80"}, "203.0.113.7"),
        ({"Forwarded": "for=203.0.113.7", "X-Forwarded-For": "198.51.100.1"}, "203.0.113.7"),
        ({"X-Forwarded-For": 'evil" 200 0'}, r"evil\x22\x20200\x200"),
        ({}, "127.0.0.1"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_client_behind_trusted_proxy(
    proxied: str, records: list[AccessRecord], headers: dict[str, str], client: str
) -> None:
    """From a trusted proxy, the client is the last forwarded address that is not a trusted proxy."""
    await _get(proxied, headers=headers)
    assert records[-1].client == client


def test_parse_networks() -> None:
    """--trusted-proxy takes addresses and CIDR networks of both families, and names a bad one."""
    assert [str(n) for n in parseNetworks(["10.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"])] == [
        "10.0.0.1/32",
        "10.0.0.0/8",
        "::1/128",
        "fd00::/8",
    ]
    with pytest.raises(ValueError, match="'nope' is not an address or CIDR network"):
        parseNetworks(["nope"])
    assert ClientAddress()._isTrusted("10.0.0.1") is False


class _AsUser(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.ociklein_user = "alice smith"
        request.setHeader("Content-Length", "2")
        return b"ok"


@pytest_twisted.ensureDeferred
async def test_user_slot(records: list[AccessRecord]) -> None:
    """What access control sets as request.ociklein_user is the access line's user, escaped."""
    from ociklein.http._accesslog import AccessLog

    site = makeSite(_AsUser(), reactor=reactor, finished=[AccessLog()])
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        await _get(f"http://127.0.0.1:{port.getHost().port}", "/")
    finally:
        await port.stopListening()
    assert records[-1].user == r"alice\x20smith"


@pytest_twisted.ensureDeferred
async def test_hostile_path_cannot_forge_a_line(url: str, records: list[AccessRecord]) -> None:
    """Quotes and bytes outside printable ASCII in a request path are escaped in the access line."""
    port = int(url.rsplit(":", 1)[1])
    raw = b'GET /v2/a"b%0a\\ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'
    await threads.deferToThread(exchange, port, raw)
    assert records[-1].path == r"/v2/a\x22b%0a\x5c"


def _record(**changes: Any) -> AccessRecord:
    fields: dict[str, Any] = {
        "client": "192.0.2.1",
        "user": "-",
        "method": "GET",
        "path": "/v2/",
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes": 2,
        "duration": 0.00123,
        "userAgent": "skopeo/1.13",
        "requestId": "abc",
    }
    fields.update(changes)
    return AccessRecord(**fields)


def _emit(observer: LineObserver, **event: Any) -> None:
    event.setdefault("log_time", 1_700_000_000.25)
    event.setdefault("log_level", LogLevel.info)
    event.setdefault("log_namespace", "test")
    observer(event)


def test_text_access_line() -> None:
    """A text access line is one timestamp, the logger's name, then the record; no second date."""
    out = io.StringIO()
    _emit(LineObserver(out), **{ACCESS_KEY: _record()})
    assert out.getvalue() == (
        "2023-11-14T22:13:20Z [ociklein.access] "
        '192.0.2.1 - "GET /v2/ HTTP/1.1" 200 2 0.0012 "skopeo/1.13" abc\n'
    )


def test_json_lines() -> None:
    """In JSON each event is one object per line: access fields by name, other events as a message."""
    out = io.StringIO()
    observer = LineObserver(out, "json", worker=2)
    _emit(observer, **{ACCESS_KEY: _record()})
    _emit(observer, log_format="hello {who}", who="you", log_level=LogLevel.warn)
    access, other = (json.loads(line) for line in out.getvalue().splitlines())
    assert access == {
        "time": "2023-11-14T22:13:20Z",
        "level": "info",
        "logger": "ociklein.access",
        "client": "192.0.2.1",
        "user": "-",
        "method": "GET",
        "path": "/v2/",
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes": 2,
        "duration": 0.00123,
        "user_agent": "skopeo/1.13",
        "request_id": "abc",
        "worker": 2,
    }
    assert other == {
        "time": "2023-11-14T22:13:20Z",
        "level": "warn",
        "logger": "test",
        "message": "hello you",
        "worker": 2,
    }


def test_text_other_events_and_failures() -> None:
    """Other events are 'time [namespace#level] message', a failure's traceback after it."""
    out = io.StringIO()
    observer = LineObserver(out, worker=1)
    _emit(observer, log_format="started {n}", n=3)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        from twisted.python.failure import Failure

        _emit(observer, log_format="oops", log_failure=Failure(), log_level=LogLevel.critical)
    lines = out.getvalue().splitlines()
    assert lines[0] == "2023-11-14T22:13:20Z [worker 1 test#info] started 3"
    assert lines[1] == "2023-11-14T22:13:20Z [worker 1 test#critical] oops"
    assert lines[-1] == "builtins.ZeroDivisionError: division by zero"


def test_worker_lines_pass_through() -> None:
    """A worker's line, stamped by the worker, is written as it is; procmon's empty last line is not."""
    out = io.StringIO()
    log = Logger(namespace=WORKER_NAMESPACE, observer=LineObserver(out))
    line = "2023-11-14T22:13:20Z [worker 1 x#info] hi"
    log.info("[{tag}] {line}", tag="worker-1", line=line, stream="stdout")
    log.info("[{tag}] {line}", tag="worker-1", line="", stream="stdout")
    log.info("Process {name} ended", name="worker-1")
    lines = out.getvalue().splitlines()
    assert lines[0] == "2023-11-14T22:13:20Z [worker 1 x#info] hi"
    assert lines[1].endswith(f"[{WORKER_NAMESPACE}#info] Process worker-1 ended")
    assert len(lines) == 2


def test_timestamp_formatted_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timestamp is formatted again only when the second changes, not per line."""
    calls: list[float] = []
    real = time.strftime

    def counting(fmt: str, t: Any) -> str:
        calls.append(1)
        return real(fmt, t)

    monkeypatch.setattr(time, "strftime", counting)
    stamp = _Stamp()
    for i in range(1000):
        stamp(1_700_000_000 + i / 500)
    assert len(calls) == 2


@pytest.mark.parametrize("unsafe", [_accesslog._UNSAFE_QUOTED, _accesslog._UNSAFE_BARE])
def test_escapeShortcutAgreesWithPattern(unsafe: re.Pattern[str]) -> None:
    """The shortcut for fields needing no escape gives what the pattern alone would, for every character."""
    for code in [*range(0x180), 0x2028, 0xFEFF, 0x1F600]:
        for text in [chr(code), f"a{chr(code)}b", f"{chr(code)} x"]:
            expected = unsafe.sub(_accesslog._hex, text)
            assert _accesslog._escape(text, unsafe) == expected, (code, text)
