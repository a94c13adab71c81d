"""
Health and metrics over HTTP, as Kubernetes probes and Prometheus expect
them: C{GET /livez} (the process answers), C{GET /readyz} (storage
reachable and writable, ports listening), C{GET /metrics}.

They are served beside C{/v2/} on the registry's own ports, or on their own
(C{--admin-listen}) so that the metrics need not be public.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import pages
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from ociklein import _metrics

log = Logger()

# A readiness check answers L{None} when ready, else the reason it is not.
Check = Callable[[], Awaitable[str | None]]
READY_TIMEOUT = 5.0
PATHS = (b"livez", b"readyz", b"metrics")


def _plain(request: Any, status: int, text: str, contentType: bytes = b"text/plain; charset=utf-8") -> bytes:
    body = text.encode()
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", contentType)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.setHeader(b"Cache-Control", b"no-store")
    request.ociklein_route = request.path.strip(b"/").decode("ascii", "replace")
    return b"" if request.method == b"HEAD" else body


class _Livez(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return _plain(request, 200, "ok\n")

    render_HEAD = render_GET


class _Readyz(Resource):
    isLeaf = True

    def __init__(self, checks: Sequence[tuple[str, Check]], clock: IReactorTime) -> None:
        super().__init__()
        self._checks = checks
        self._clock = clock

    def render_GET(self, request: Any) -> Any:
        ensureDeferred(self._answer(request))
        return NOT_DONE_YET

    render_HEAD = render_GET

    async def _answer(self, request: Any) -> None:
        lines = []
        ready = True
        for name, check in self._checks:
            try:
                waiting: Deferred[str | None] = ensureDeferred(check())  # type: ignore[arg-type]
                reason = await waiting.addTimeout(READY_TIMEOUT, self._clock)
            except Exception as e:
                reason = str(e) or type(e).__name__
            if reason is None:
                lines.append(f"[+]{name} ok")
            else:
                ready = False
                lines.append(f"[-]{name} failed: {reason}")
        lines.append("readyz check passed" if ready else "readyz check failed")
        if not request._disconnected:
            request.write(_plain(request, 200 if ready else 503, "\n".join(lines) + "\n"))
            request.finish()


class _Metrics(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        body, contentType = _metrics.exposition()
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", contentType.encode())
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.ociklein_route = "metrics"
        return b"" if request.method == b"HEAD" else body

    render_HEAD = render_GET


class _Operations(Resource):
    def getChild(self, path: bytes, request: Any) -> IResource:
        return pages.notFound()

    def render(self, request: Any) -> bytes:
        return pages.notFound().render(request)  # type: ignore[no-any-return]


def operations(checks: Sequence[tuple[str, Check]], clock: IReactorTime, metrics: bool = True) -> Resource:
    """
    The resource serving C{/livez}, C{/readyz} and, with C{metrics},
    C{/metrics}; anything else is 404.
    """
    root = _Operations()
    root.putChild(b"livez", _Livez())
    root.putChild(b"readyz", _Readyz(checks, clock))
    if metrics:
        root.putChild(b"metrics", _Metrics())
    return root


class WithOperations(Resource):
    """
    The registry's resource with C{operations} mounted beside it at the
    exact paths C{/livez}, C{/readyz}, C{/metrics}.
    """

    def __init__(self, registry: IResource, operations: Resource) -> None:
        super().__init__()
        self._registry = registry
        self._operations = operations

    def getChildWithDefault(self, name: bytes, request: Any) -> IResource:
        if not request.postpath and name in PATHS:
            child = self._operations.getStaticEntity(name)
            if child is not None:
                return child  # type: ignore[no-any-return]
        # Anything else is the registry's, whole path included.
        request.postpath.insert(0, request.prepath.pop())
        return self._registry

    def render(self, request: Any) -> Any:
        return self._registry.render(request)
