"""
One access log event per finished request: who asked (the client behind
trusted proxies), what, the answer, its size and duration, the request id.

This runs for every request, so it does little: no date formatting (the
observer stamps the line) and no format string (see L{AccessRecord}).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger, LogLevel

from ociklein._logging import ACCESS_KEY, AccessRecord

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_log = Logger(namespace="ociklein.access")
_UNSAFE_QUOTED = re.compile(r'[^\x20-\x7e]|["\\]')
_UNSAFE_BARE = re.compile(r'[^\x21-\x7e]|["\\]')
_FORWARDED_FOR = re.compile(r'(?:^|[;,\s])for\s*=\s*("[^"]*"|[^;,\s]*)', re.IGNORECASE)
_TRUST_CACHE_SIZE = 1024


def _hex(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 256 else "?"


def _escape(text: str, unsafe: re.Pattern[str] = _UNSAFE_QUOTED) -> str:
    """
    C{text} with quotes, backslashes and control or non-ASCII characters
    (and spaces, for a bare field) escaped, so that a line can be neither
    forged nor split.
    """
    # The usual field needs nothing: found by str methods, without a regex.
    if (
        text.isascii()
        and text.isprintable()
        and '"' not in text
        and "\\" not in text
        and (unsafe is _UNSAFE_QUOTED or (unsafe is _UNSAFE_BARE and " " not in text))
    ):
        return text
    if unsafe.search(text) is None:
        return text
    return unsafe.sub(_hex, text)


def parseNetworks(values: Iterable[str]) -> list[Network]:
    """
    The CIDR networks (or single addresses) in C{values}; a L{ValueError}
    names the first one that is neither.
    """
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an address or CIDR network") from None
    return networks


def _hostOf(forwarded: str) -> str:
    """
    The address in one C{Forwarded: for=} value: unquoted, without port or
    IPv6 brackets.
    """
    value = forwarded.strip().strip('"')
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


class ClientAddress:
    """
    The client's address: the TCP peer, or when the peer is a trusted proxy,
    the last address in C{Forwarded} (or else C{X-Forwarded-For}) that is
    not itself a trusted proxy.
    """

    def __init__(self, trusted: Iterable[Network] = ()) -> None:
        self._trusted = list(trusted)
        self._cache: dict[str, bool] = {}

    def _isTrusted(self, host: str) -> bool:
        known = self._cache.get(host)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            trusted = False
        else:
            trusted = any(address in network for network in self._trusted)
        if len(self._cache) >= _TRUST_CACHE_SIZE:
            self._cache.clear()
        self._cache[host] = trusted
        return trusted

    def __call__(self, request: Any) -> str:
        peer = getattr(request.getClientAddress(), "host", None) or "-"
        if not self._trusted or not self._isTrusted(peer):
            return peer  # type: ignore[no-any-return]
        headers = request.requestHeaders
        forwarded = headers.getRawHeaders(b"forwarded")
        if forwarded:
            chain = [_hostOf(m) for m in _FORWARDED_FOR.findall(b",".join(forwarded).decode("latin-1"))]
        else:
            xff = headers.getRawHeaders(b"x-forwarded-for") or []
            chain = [part.strip() for part in b",".join(xff).decode("latin-1").split(",")]
        chain = [host for host in chain if host]
        for host in reversed(chain):
            if not self._isTrusted(host):
                return _escape(host, _UNSAFE_BARE)
        return _escape(chain[0], _UNSAFE_BARE) if chain else peer


class AccessLog:
    """
    Emits one access event per finished request.
    """

    def __init__(self, clientAddress: ClientAddress | None = None) -> None:
        self._client = clientAddress if clientAddress is not None else ClientAddress()

    def __call__(self, request: Any) -> None:
        agent = request.requestHeaders.getRawHeaders(b"user-agent")
        record = AccessRecord(
            self._client(request),
            _escape(getattr(request, "ociklein_user", "-"), _UNSAFE_BARE),
            _escape(request.method.decode("latin-1"), _UNSAFE_BARE),
            _escape(request.uri.decode("latin-1"), _UNSAFE_BARE),
            _escape(request.clientproto.decode("latin-1"), _UNSAFE_BARE),
            request.code,
            request.sentLength,
            time.monotonic() - getattr(request, "ociklein_started", time.monotonic()),
            _escape(agent[0].decode("latin-1")) if agent else "-",
            getattr(request, "ociklein_request_id", "-"),
        )
        # What Logger.emit builds, without its per-call check of the level
        # and copy of keyword arguments: a tenth of a manifest GET's time.
        _log.observer(
            {
                "log_logger": _log,
                "log_level": LogLevel.info,
                "log_namespace": _log.namespace,
                "log_source": None,
                "log_format": "{ociklein_line()}",
                "log_time": time.time(),
                "ociklein_line": record.text,
                ACCESS_KEY: record,
            }
        )
