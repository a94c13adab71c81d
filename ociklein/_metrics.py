"""
ociklein's Prometheus metrics, in one registry of their own.

Adding a metric is one line here, with the helper for its type, for example

    AUTH_FAILURES = counter("ociklein_auth_failures_total", "Failed sign-ins, by reason.", ["reason"])

and one call where it happens (C{AUTH_FAILURES.labels("bad-password").inc()}).
Label values must come from a small fixed set, never from what a client
sends, or every hostile request would make a new time series.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Request durations: from a cached manifest GET (~1 ms) to a large upload.
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    """
    A counter in ociklein's registry.
    """
    return Counter(name, documentation, labels, registry=REGISTRY)


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
    """
    A gauge in ociklein's registry.
    """
    return Gauge(name, documentation, labels, registry=REGISTRY)


def histogram(
    name: str, documentation: str, labels: Sequence[str] = (), buckets: Sequence[float] = _DURATION_BUCKETS
) -> Histogram:
    """
    A histogram in ociklein's registry.
    """
    return Histogram(name, documentation, labels, registry=REGISTRY, buckets=buckets)


REQUESTS = counter(
    "ociklein_http_requests_total",
    "HTTP requests answered, by route, method and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = histogram(
    "ociklein_http_request_duration_seconds",
    "Time from a request's first line to its last byte sent, by route and method.",
    ["route", "method"],
)
RECEIVED_BYTES = counter(
    "ociklein_http_received_bytes_total", "Request body bytes received, by route.", ["route"]
)
SENT_BYTES = counter("ociklein_http_sent_bytes_total", "Response body bytes sent, by route.", ["route"])
OPEN_CONNECTIONS = gauge("ociklein_http_open_connections", "HTTP connections open now.")
UPLOAD_SESSIONS = gauge(
    "ociklein_upload_sessions_open",
    "Upload sessions this process holds open (started, not finished or expired).",
)
STORAGE_ERRORS = counter(
    "ociklein_storage_errors_total", "Storage operations that failed, by kind (an errno name).", ["kind"]
)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def storageError(error: OSError) -> None:
    """
    Count a failed storage operation under its errno name (C{ENOSPC}, C{EIO}).
    """
    STORAGE_ERRORS.labels(errno.errorcode.get(error.errno or 0, "other")).inc()


def countUploadSessions(*counts: Callable[[], int]) -> None:
    """
    Report as L{UPLOAD_SESSIONS} the sum of C{counts} when scraped.
    """
    UPLOAD_SESSIONS.set_function(lambda: sum(count() for count in counts))


class RequestMetrics:
    """
    Observes every answered request: count, duration, bytes.  Label
    children are looked up once per (route, method, status), not per request.
    """

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}

    def __call__(self, request: Any) -> None:
        route = getattr(request, "ociklein_route", "other")
        method = request.method.decode("latin-1")
        if method not in _METHODS:
            method = "other"
        key = (route, method, request.code)
        children = self._children.get(key)
        if children is None:
            children = (
                REQUESTS.labels(route, method, str(request.code)),
                REQUEST_SECONDS.labels(route, method),
                RECEIVED_BYTES.labels(route),
                SENT_BYTES.labels(route),
            )
            self._children[key] = children
        requests, seconds, received, sent = children
        requests.inc()
        started = getattr(request, "ociklein_started", None)
        if started is not None:
            seconds.observe(time.monotonic() - started)
        size = getattr(request, "ociklein_received", 0)
        if size:
            received.inc(size)
        if request.sentLength:
            sent.inc(request.sentLength)


def exposition() -> tuple[bytes, str]:
    """
    Every metric in the Prometheus text format, and its content type.
    """
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
