"""
The twisted.web plumbing that lets request bodies stream.

twisted.web normally routes a request only after its whole body has arrived
in a temporary file.  L{StreamingRequest} routes a request with a body as
soon as its headers are in, and hands the handler a L{BodyPipe} instead, so
uploads go straight into the store as they arrive.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http import parse_qs
from twisted.web.resource import IResource
from zope.interface import implementer

from ociklein import _metrics, errors
from ociklein._body import Body, BodyPipe, FileBody
from ociklein.errors import OCIError
from ociklein.http._limits import ConnectionGuard, Deadline, Limits

_BODY_METHODS = frozenset({b"PUT", b"PATCH", b"POST"})
# An incoming X-Request-Id is kept when it is this tame; else a new one is made.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


class StreamingRequest(server.Request):
    """
    A request routed as soon as its headers have arrived when it carries a
    body, with the body readable as a stream through L{requestBody}.
    """

    _pipe: BodyPipe | None = None
    _started = False

    # Who made the request, for the access log: set by access control.
    ociklein_user = "-"
    ociklein_request_id = "-"
    ociklein_received = 0  # request body bytes, for the metrics

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ociklein_started = time.monotonic()

    def process(self) -> None:
        """
        Give the request its id before any handler sees it: the client's
        C{X-Request-Id} when it sent a sane one, else a new one; either way
        echoed in the response.
        """
        given = self.requestHeaders.getRawHeaders(b"x-request-id")
        if given and _REQUEST_ID.fullmatch(given[0]):
            requestId = given[0]
        else:
            requestId = os.urandom(8).hex().encode()
        self.ociklein_request_id = requestId.decode()
        self.responseHeaders.setRawHeaders(b"x-request-id", [requestId])
        super().process()

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
        self.ociklein_received += len(data)
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

    def _handleStar(self) -> None:
        """
        C{OPTIONS *} probes the server: an empty 200.  Any other method on
        C{*} gets the spec's JSON error, not twisted.web's empty 405.
        """
        self.responseHeaders.removeHeader(b"server")
        self.setHeader(b"X-Content-Type-Options", b"nosniff")
        if self.method == b"OPTIONS":
            self.setResponseCode(200)
            self.setHeader(b"Content-Length", b"0")
            self.finish()
            return
        error = errors.unsupported("only OPTIONS applies to *", allow=["OPTIONS"])
        body = error.body()
        self.setResponseCode(error.status)
        for key, value in error.headers.items():
            self.setHeader(key, value)
        self.setHeader(b"Content-Type", b"application/json")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()


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
    An HTTP channel that answers what it cannot parse (bad request line,
    header or chunk framing; a request line or headers too long) with the
    spec's JSON error, and keeps within its site's L{ConnectionGuard}: a
    deadline for each request's headers, a bound on how long a response
    may wait for a client that does not read, and a place among the site's
    open connections.
    """

    site: _Site
    _guarded = False
    _halfClosed = False

    def connectionMade(self) -> None:
        super().connectionMade()
        _metrics.OPEN_CONNECTIONS.inc()
        guard = self.site.guard
        self._headerDeadline = Deadline(guard.clock, guard.limits.headerTimeout, self._headersTooSlow)
        self._stalled = Deadline(guard.clock, guard.limits.idleTimeout, self._readerStalled)
        if not guard.admit(self):
            self._respondAndDisconnect(errors.unavailable("too many connections", 5))
            return
        self._guarded = True
        self._headerDeadline.start()

    def lineReceived(self, line: bytes) -> None:
        first = getattr(self, "_HTTPChannel__first_line", 0)
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:  # type: ignore[attr-defined]
            self._tooLong(bool(first))
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._tooLong(bool(getattr(self, "_HTTPChannel__first_line", 0)))

    def _tooLong(self, requestLine: bool) -> None:
        if requestLine:
            error = OCIError(414, "UNSUPPORTED", "request line too long", {"limit": self.MAX_LENGTH})
        else:
            error = OCIError(
                431, "UNSUPPORTED", "request header fields too large", {"limit": self.totalHeadersSize}
            )
        self._respondAndDisconnect(error)

    def allHeadersReceived(self) -> None:
        self._headerDeadline.stop()
        self.site.guard.serving(self)
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if self.persistent and not self._halfClosed and self._guarded:
            self.site.guard.waiting(self)
            self._headerDeadline.start()

    def _headersTooSlow(self) -> None:
        self._respondAndDisconnect(OCIError(408, "UNSUPPORTED", "request headers took too long", {}))

    def evict(self) -> None:
        self._headerDeadline.stop()
        self.transport.abortConnection()  # type: ignore[union-attr]

    # A client that stops reading: the transport pauses us when its send
    # buffer is full and resumes us when it drains.

    def pauseProducing(self) -> None:
        self._stalled.start()
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self._stalled.stop()
        super().resumeProducing()

    def _readerStalled(self) -> None:
        self._log.info("dropping a client that stopped reading: {peer}", peer=str(self.transport.getPeer()))  # type: ignore[union-attr]
        self.transport.abortConnection()  # type: ignore[union-attr]

    # A client that half-closes after its request still gets the answer.

    def readConnectionLost(self) -> None:
        self._halfClosed = True
        if self._handlingRequest:  # type: ignore[attr-defined]
            self.persistent = False  # close once the answer is out
        else:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        self.loseConnection()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        _metrics.OPEN_CONNECTIONS.dec()
        self._headerDeadline.stop()
        self._stalled.stop()
        if self._guarded:
            self.site.guard.gone(self)
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._respondAndDisconnect(OCIError(400, "UNSUPPORTED", "malformed HTTP request", {}))

    def _respondAndDisconnect(self, error: OCIError) -> None:
        self._headerDeadline.stop()
        body = error.body()
        reason = http.RESPONSES.get(error.status, b"Error")
        head = [b"HTTP/1.1 %d %s" % (error.status, reason), b"Content-Type: application/json"]
        head.append(b"X-Content-Type-Options: nosniff")
        for key, value in error.headers.items():
            head.append(f"{key}: {value}".encode("latin-1"))
        head.append(b"Content-Length: %d" % len(body))
        head.append(b"Connection: close")
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)  # type: ignore[union-attr]
        # A request already routed at header time must not answer as well.
        for request in list(self.requests):
            request.connectionLost(Failure(ConnectionLost(error.message)))
        self.loseConnection()
        self.dataReceived = lambda data: None  # type: ignore[method-assign]


@implementer(IHalfCloseableProtocol)
class _HalfCloseableHTTP(http._GenericHTTPChannelProtocol):  # type: ignore[misc,name-defined]
    """
    The HTTP protocol, told when its client has finished sending rather
    than only when the connection is gone.
    """

    def readConnectionLost(self) -> None:
        self._channel.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self._channel.writeConnectionLost()


RequestObserver = Callable[[Any], None]


class _Site(server.Site):
    noisy = False  # no "Starting factory" line per listening port
    finished: tuple[RequestObserver, ...] = ()
    guard: ConnectionGuard

    def protocol(self) -> Any:  # type: ignore[override]
        return _HalfCloseableHTTP(_Channel())

    def log(self, request: Any) -> None:
        # Called by twisted.web once a request is answered: instead of its
        # combined log line, hand the request to each observer.
        for observer in self.finished:
            observer(request)


def makeSite(
    resource: IResource,
    reactor: Any = None,
    finished: Iterable[RequestObserver] = (),
    limits: Limits | None = None,
) -> server.Site:
    """
    A L{server.Site} that streams request bodies into the registry, keeps
    its clients within C{limits}, and calls each of C{finished} with every
    request it has answered (the access log, the metrics).
    """
    limits = limits or Limits()
    site = _Site(
        resource,
        requestFactory=StreamingRequest,
        parsePOSTFormSubmission=False,
        reactor=reactor,
        timeout=limits.idleTimeout,
    )
    site.displayTracebacks = False
    site.finished = tuple(finished)
    site.guard = ConnectionGuard(limits, site.reactor)
    return site
