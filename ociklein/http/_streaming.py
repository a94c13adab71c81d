"""
The twisted.web plumbing that lets request bodies stream.

twisted.web normally routes a request only after its whole body has arrived
in a temporary file.  L{StreamingRequest} routes a request with a body as
soon as its headers are in, and hands the handler a L{BodyPipe} instead, so
uploads go straight into the store as they arrive.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http import parse_qs
from twisted.web.resource import IResource

from ociklein._body import Body, BodyPipe, FileBody
from ociklein.errors import OCIError

_BODY_METHODS = frozenset({b"PUT", b"PATCH", b"POST"})


class StreamingRequest(server.Request):
    """
    A request routed as soon as its headers have arrived when it carries a
    body, with the body readable as a stream through L{requestBody}.
    """

    _pipe: BodyPipe | None = None
    _started = False

    def _clock(self) -> IReactorTime:
        site = getattr(self.channel, "site", None)
        return getattr(site, "reactor", None) or _globalReactor  # type: ignore[return-value]

    def gotLength(self, length: int | None) -> None:
        command = getattr(self.channel, "_command", b"")
        if command.upper() in _BODY_METHODS and length != 0:
            transport: Any = self.channel.transport  # type: ignore[union-attr]
            self._pipe = BodyPipe(transport, self._clock())
            self.content = BytesIO()  # type: ignore[assignment]
            # On the next turn, after twisted.web has sent any 100 Continue.
            self._clock().callLater(
                0,
                self._routeEarly,
                command,
                self.channel._path,
                self.channel._version,  # type: ignore[union-attr]
            )
        else:
            super().gotLength(length)

    def _routeEarly(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._started or self._disconnected:
            return
        self._started = True
        self.method, self.uri, self.clientproto = command, path, version
        self.path, _, query = path.partition(b"?")
        self.args = parse_qs(query, 1) if query else {}
        self.process()

    def handleContentChunk(self, data: bytes) -> None:
        if self._pipe is not None:
            self._pipe.dataReceived(data)
        else:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._pipe is None:
            super().requestReceived(command, path, version)
            return
        self._pipe.finish()
        if not self._started:
            self._routeEarly(command, path, version)

    def write(self, data: bytes) -> None:
        if self._pipe is not None and not self._pipe.complete and not self.startedWriting:
            # Answering before the body is in: the rest of it will not be
            # read, so this connection cannot carry another request.
            self._pipe.discard()
            self.setHeader(b"connection", b"close")
            if self.channel is not None:
                self.channel.persistent = False
        super().write(data)

    def connectionLost(self, reason: Failure) -> None:
        if self._pipe is not None:
            self._pipe.fail(reason)
        super().connectionLost(reason)


def requestBody(request: Any) -> Body:
    """
    The body of C{request} as a stream, whichever L{server.Request} class
    the L{server.Site} serving it uses.
    """
    pipe = getattr(request, "_pipe", None)
    if pipe is not None:
        return pipe  # type: ignore[no-any-return]
    return FileBody(request.content)


class _Channel(http.HTTPChannel):
    """
    An HTTP channel whose answer to a request it cannot parse (bad request
    line, header or chunk framing) is the spec's JSON error, like every
    other 4xx of the registry.
    """

    def _respondToBadRequestAndDisconnect(self) -> None:
        body = OCIError(400, "UNSUPPORTED", "malformed HTTP request", {}).body()
        head = (
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            b"X-Content-Type-Options: nosniff\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        self.transport.write(head + body)  # type: ignore[union-attr]
        # A request already routed at header time must not answer as well.
        for request in list(self.requests):
            request.connectionLost(Failure(ConnectionLost("malformed HTTP request")))
        self.loseConnection()


class _Site(server.Site):
    accessLog = True

    def protocol(self) -> Any:  # type: ignore[override]
        return http._GenericHTTPChannelProtocol(_Channel())  # type: ignore[attr-defined]

    def log(self, request: Any) -> None:
        # Under twistd each access log line is a log event formatted by its
        # observer: about a quarter of the reactor's time on a manifest GET.
        if self.accessLog:
            super().log(request)


def makeSite(resource: IResource, reactor: Any = None, accessLog: bool = True) -> server.Site:
    """
    A L{server.Site} that streams request bodies into the registry, and
    logs one line per request unless C{accessLog} is false.
    """
    site = _Site(resource, requestFactory=StreamingRequest, parsePOSTFormSubmission=False, reactor=reactor)
    site.displayTracebacks = False
    site.accessLog = accessLog
    return site
