"""
GETs of small objects on the reactor thread: the tag read of every
manifest GET or HEAD by tag, and manifests read by digest.

A GET through the S3 thread pool costs about 0.6 ms of CPU on a node
under load, most of it not the request: the hand-over to a pool thread
and back, urllib3 and http.client (whose header parsing goes through
the email package), and the GIL passed between threads.  A GET by tag
is one such request for every client request, so it bounds a node's
rate.  Here the request is signed by botocore's signer (L{LeanS3.signed},
as on the pool path) and sent on a keep-alive connection of a small pool
of the reactor's own: a few bytes out, one status line, headers and a
body of at most L{MAX_BODY} bytes back, parsed once.

Only the plain case is handled here: a C{200} or C{404} with a
C{Content-Length} of at most L{MAX_BODY} on a plain-HTTP endpoint.
Everything else (another status, a chunked or larger body, a connection
refused or closed under the request) is asked again through the pool
path, which has botocore's retries, error codes, TLS and proxies, so
failures are mapped exactly as for every other request.  A store that
does not answer within the read timeout is L{StorageUnavailable} at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from ociklein.interfaces import StorageUnavailable
from ociklein.storage.s3._lean import LeanS3, shape

MAX_BODY = 64 * 1024
_MAX_HEAD = 16 * 1024

Found = tuple[bytes, dict[str, Any]] | None


class _Fallback(Exception):
    """
    An answer (or a failure) the reactor path leaves to the pool path.
    """


class _Connection(Protocol):
    """
    One keep-alive HTTP/1.1 connection to the store, one request at a time.
    """

    def __init__(self, reads: ReactorReads) -> None:
        self._reads = reads
        self._pending: Deferred[tuple[int, dict[str, str], bytes]] | None = None
        self._buffer = b""
        self._status = 0
        self._headers: dict[str, str] | None = None
        self._length = 0
        self._keepAlive = False

    def send(self, request: bytes) -> Deferred[tuple[int, dict[str, str], bytes]]:
        def cancel(_: object) -> None:
            self._pending = None
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]

        self._pending = Deferred(cancel)
        self._buffer, self._headers = b"", None
        assert self.transport is not None
        self.transport.write(request)
        return self._pending

    def dataReceived(self, data: bytes) -> None:
        if self._pending is None:
            # Bytes nobody asked for: the connection cannot be trusted.
            self._abort()
            return
        self._buffer += data
        if self._headers is None and not self._parseHead():
            return
        if len(self._buffer) < self._length:
            return
        if len(self._buffer) > self._length:
            self._fail(_Fallback("more bytes than the response announced"))
            return
        pending, self._pending = self._pending, None
        status, headers, body = self._status, self._headers, self._buffer
        self._buffer, self._headers = b"", None
        assert headers is not None
        if self._keepAlive:
            self._reads._release(self)
        else:
            assert self.transport is not None
            self.transport.loseConnection()
        pending.callback((status, headers, body))

    def _parseHead(self) -> bool:
        """
        Parse the status line and headers once they are all in; L{False}
        until then (or when the answer is left to the pool path).
        """
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD:
                self._fail(_Fallback("response headers too long"))
            return False
        lines = self._buffer[:end].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length", "")
        if (
            version != "HTTP/1.1"
            or not code.isdigit()
            or "transfer-encoding" in headers
            or not length.isdigit()
            or int(length) > MAX_BODY
        ):
            self._fail(_Fallback(f"not a plain answer: {lines[0]!r}"))
            return False
        self._status, self._headers, self._length = int(code), headers, int(length)
        self._keepAlive = headers.get("connection", "").lower() != "close"
        self._buffer = self._buffer[end + 4 :]
        return True

    def _fail(self, reason: Exception) -> None:
        pending, self._pending = self._pending, None
        self._abort()
        if pending is not None:
            pending.errback(reason)

    def _abort(self) -> None:
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self._reads._lost(self)
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.errback(_Fallback(f"connection lost: {reason.getErrorMessage()}"))


class _Factory(Factory):
    def __init__(self, reads: ReactorReads) -> None:
        self._reads = reads

    def buildProtocol(self, addr: Any) -> _Connection:
        return _Connection(self._reads)


class ReactorReads:
    """
    Up to C{connections} keep-alive connections to a plain-HTTP endpoint,
    and the GETs waiting for one.  C{fallback(key)} reads a key through
    the pool path.
    """

    def __init__(
        self,
        reactor: Any,
        lean: LeanS3,
        fallback: Callable[[str], Deferred[Found]],
        connections: int,
        timeout: float,
    ) -> None:
        self._reactor = reactor
        self._lean = lean
        self._fallback = fallback
        self._max = connections
        self._timeout = timeout
        location = urlsplit(lean.url(""))
        assert location.scheme == "http" and location.hostname is not None
        self._hostHeader = location.netloc.removesuffix(":80")
        self._endpoint = HostnameEndpoint(reactor, location.hostname, location.port or 80, timeout=5)
        self._factory = _Factory(self)
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiting: deque[Deferred[_Connection]] = deque()
        self._closed = False
        self.opened = 0  # connections opened so far (for tests)

    def get(self, key: str) -> Deferred[Found]:
        """
        The object's bytes and response (as L{LeanS3.get} gives them), or
        L{None} if it is missing.
        """
        if self._lean.mayBlock():
            # Credentials are refreshed in the pool, never on the reactor.
            return self._fallback(key)
        url = self._lean.url(key)
        try:
            prepared = self._lean.signed("GET", url, b"", {})
        except Exception:
            return self._fallback(key)
        location = urlsplit(url)
        target = location.path + (f"?{location.query}" if location.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {self._hostHeader}"]
        for name, value in prepared.headers.items():
            lines.append(f"{name}: {value.decode() if isinstance(value, bytes) else value}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        exchange = self._acquire().addCallback(lambda connection: connection.send(request))
        exchange.addTimeout(self._timeout, self._reactor)

        def answered(result: tuple[int, dict[str, str], bytes]) -> Found | Deferred[Found]:
            status, headers, body = result
            if status == 404:
                return None
            if status != 200:
                return self._fallback(key)
            return body, shape(status, headers)

        def failed(failure: Failure) -> Deferred[Found]:
            if failure.check(TimeoutError):
                raise StorageUnavailable("object store unreachable: read timeout", retryAfter=5)
            if failure.check(CancelledError):
                return failure  # type: ignore[return-value]
            return self._fallback(key)

        return exchange.addCallbacks(answered, failed)

    def _acquire(self) -> Deferred[_Connection]:
        if self._idle:
            return succeed(self._idle.pop())
        if self._open < self._max:
            return self._connect()

        def cancel(waiter: Deferred[_Connection]) -> None:
            if waiter in self._waiting:
                self._waiting.remove(waiter)

        waiter: Deferred[_Connection] = Deferred(cancel)
        self._waiting.append(waiter)
        return waiter

    def _connect(self) -> Deferred[_Connection]:
        self._open += 1
        self.opened += 1

        def failed(failure: Failure) -> Failure:
            self._open -= 1
            return failure

        return self._endpoint.connect(self._factory).addErrback(failed)  # type: ignore[return-value]

    def _release(self, connection: _Connection) -> None:
        """
        A connection whose response was read whole: to the next waiting
        GET, else idle (closed if the pool was closed meanwhile).
        """
        if self._closed:
            assert connection.transport is not None
            connection.transport.loseConnection()
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.called:
                waiter.callback(connection)
                return
        self._idle.append(connection)

    def _lost(self, connection: _Connection) -> None:
        if connection in self._idle:
            self._idle.remove(connection)
        self._open -= 1
        if self._waiting and not self._closed and self._open < self._max:
            waiter = self._waiting.popleft()
            self._connect().chainDeferred(waiter)

    def close(self) -> None:
        """
        Close the idle connections; those in use close once answered.
        """
        self._closed = True
        for connection in list(self._idle):
            assert connection.transport is not None
            connection.transport.loseConnection()
        self._idle.clear()
