"""
HTTP to one registry: the scheme (HTTPS, or plain HTTP where allowed), TLS
trust, authentication (Basic, and Docker's bearer-token flow with a token
cache per scope) and bounded retries with backoff.  Everything above it
speaks in repository paths and never sees a 401.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import treq
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseFailed
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

from ociklein.client._errors import RegistryError, errorFromBody

# Error bodies, token answers and manifests are read whole, up to this.
MAX_SMALL_BODY = 4 * 1024 * 1024
# A token without expires_in lasts 60 s (Docker's token specification).
_DEFAULT_TOKEN_SECONDS = 60

NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    ConnectError,
    ConnectionLost,
    DNSLookupError,
    ResponseFailed,
    TimeoutError,
    defer.TimeoutError,
    defer.CancelledError,
)
# What twisted.web raises when a connection ends before a response.
try:
    from twisted.web._newclient import RequestTransmissionFailed, ResponseNeverReceived

    NETWORK_ERRORS += (ResponseNeverReceived, RequestTransmissionFailed)
except ImportError:  # pragma: no cover
    pass


@implementer(IPolicyForHTTPS)
class _NoVerification:
    """
    TLS without checking the certificate (C{--tls-verify=false}).
    """

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return CertificateOptions(verify=False)


@implementer(IPolicyForHTTPS)
class _TrustCAFile:
    """
    TLS trusting only the certificates of one PEM file.
    """

    def __init__(self, caFile: str) -> None:
        with open(caFile, "rb") as f:
            self._root = Certificate.loadPEM(f.read())

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._root)


def isLoopback(host: str) -> bool:
    """
    Whether C{host} (without port) is this machine.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass
class Challenge:
    """
    A parsed C{WWW-Authenticate} header.
    """

    scheme: str
    params: dict[str, str]


def parseChallenge(value: str) -> Challenge:
    """
    Parse C{Bearer realm="...",service="...",scope="..."} or C{Basic realm=...}.
    """
    scheme, _, rest = value.strip().partition(" ")
    params = {
        m[1].lower(): m[2].replace('\\"', '"') if m[2] is not None else m[3]
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


@dataclass
class _Token:
    value: str
    expires: float


class Transport:
    """
    Requests to one registry, authenticated and retried.

    @param registry: C{host[:port]}, or a URL whose scheme fixes HTTP or
        HTTPS; without one, HTTPS is tried first, and plain HTTP after it
        when C{tlsVerify} is false or the host is a loopback address.
    """

    def __init__(
        self,
        registry: str,
        credentials: tuple[str, str] | None = None,
        reactor: Any = None,
        *,
        tlsVerify: bool = True,
        caFile: str | None = None,
        retries: int = 4,
        backoff: float = 0.25,
        timeout: float = 60.0,
        connections: int = 8,
        clock: IReactorTime | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as defaultReactor

            reactor = defaultReactor
        self.reactor = reactor
        # Token lifetimes are measured on this clock.
        self.clock: IReactorTime | None = clock or (reactor if IReactorTime.providedBy(reactor) else None)
        parts = urlsplit(registry if "://" in registry else f"//{registry}")
        self.host = parts.netloc
        if not self.host:
            raise ValueError(f"{registry!r} names no registry host")
        self._scheme: str | None = parts.scheme or None
        self._probing: list[defer.Deferred[None]] | None = None
        loopback = isLoopback(parts.hostname or "")
        self._fallback = not tlsVerify or loopback
        # A plain-HTTP server may never answer a TLS ClientHello: the HTTPS
        # probe gives up after this long (a loopback handshake is instant).
        self._probeTimeout = min(timeout, 3.0 if loopback else 10.0)
        self.credentials = credentials
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        policy: IPolicyForHTTPS
        if caFile is not None:
            policy = _TrustCAFile(caFile)
        elif not tlsVerify:
            policy = _NoVerification()
        else:
            policy = BrowserLikePolicyForHTTPS()
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = connections
        self._pool.retryAutomatically = False
        self._http = HTTPClient(
            Agent(reactor, contextFactory=policy, pool=self._pool, connectTimeout=timeout)
        )
        self._bearer: Challenge | None = None
        self._basic = False
        self._tokens: dict[str, _Token] = {}

    async def close(self) -> None:
        """
        Close the pooled connections.
        """
        await self._pool.closeCachedConnections()

    # -- where ---------------------------------------------------------------

    async def base(self) -> str:
        """
        C{scheme://host}, deciding the scheme on first use.
        """
        if self._scheme is None and self._probing is not None:
            # One probe at a time: the requests a copy starts together wait
            # for the first one's, and share its answer or its error.
            waiter: defer.Deferred[None] = defer.Deferred()
            self._probing.append(waiter)
            await waiter
        if self._scheme is None:
            self._probing = []
            error: BaseException | None = None
            try:
                self._scheme = await self._probe()
            except BaseException as e:
                error = e
                raise
            finally:
                waiters, self._probing = self._probing, None
                for waiter in waiters:
                    if error is None:
                        waiter.callback(None)
                    else:
                        waiter.errback(Failure(error))
        return f"{self._scheme}://{self.host}"

    async def _probe(self) -> str:
        try:
            response = await self._send(
                "GET", f"https://{self.host}/v2/", {}, None, deadline=self._probeTimeout
            )
        except RegistryError as e:
            if self._fallback and "certificate" not in e.message.lower():
                return "http"
            raise
        await drain(response)
        return "https"

    async def url(self, path: str) -> str:
        """
        C{path} (absolute, or relative to the registry) as an absolute URL.
        """
        return urljoin(await self.base() + "/", path)

    # -- sending ---------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Callable[[], Any] | None,
        redirects: bool = True,
        deadline: float | None = None,
        timed: bool = True,
    ) -> IResponse:
        d = self._http.request(
            method,
            url,
            headers={k: [v] for k, v in headers.items()},  # type: ignore[arg-type]
            data=None if body is None else body(),
            unbuffered=True,
            allow_redirects=redirects,
        )
        if timed:
            d.addTimeout(deadline or self.timeout, self.reactor)
        try:
            return await d
        except NETWORK_ERRORS as e:
            raise RegistryError("CONNECTION_FAILED", f"{method} {url}: {_describe(e)}") from e

    async def request(
        self,
        method: str,
        path: str,
        *,
        scopes: tuple[str, ...] = (),
        headers: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        idempotent: bool | None = None,
        redirects: bool = True,
        timed: bool = True,
    ) -> IResponse:
        """
        Send a request and return its response, body unread, whatever its
        status except a 401 that credentials can answer.  C{body} makes a
        fresh body for each attempt; C{scopes} are the token scopes it
        needs.  Connection failures, 429 and 5xx are retried with backoff
        when C{idempotent} (by default: GET, HEAD, PUT, DELETE).  Unless
        C{timed} is false (for a caller that watches the request itself),
        the answer must start within C{timeout} seconds.
        """
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        url = await self.url(path)
        attempt = 0
        authenticated = False
        while True:
            sent = dict(headers or {})
            authorization = await self._authorization(scopes)
            if authorization:
                sent["Authorization"] = authorization
            try:
                response = await self._send(method, url, sent, body, redirects, timed=timed)
            except RegistryError:
                if not idempotent or attempt >= self.retries:
                    raise
                attempt += 1
                await self.pause(attempt, None)
                continue
            if response.code == 401 and not authenticated:
                challenges = response.headers.getRawHeaders("WWW-Authenticate") or []
                await drain(response)
                authenticated = True
                if await self._authenticate([parseChallenge(c) for c in challenges], scopes):
                    continue
                raise RegistryError("UNAUTHORIZED", f"{self.host} needs credentials", 401)
            if idempotent and attempt < self.retries and (response.code == 429 or response.code >= 500):
                retryAfter = _header(response, "Retry-After")
                await drain(response)
                attempt += 1
                await self.pause(attempt, retryAfter)
                continue
            return response

    async def pause(self, attempt: int, retryAfter: str | None = None) -> None:
        """
        Wait before try C{attempt + 1}: C{backoff} doubled each time, or as
        long as C{Retry-After} asks (up to 30 s).
        """
        delay = self.backoff * 2 ** (attempt - 1)
        if retryAfter is not None and retryAfter.isdigit():
            delay = max(delay, min(float(retryAfter), 30.0))
        await deferLater(self.reactor, delay, lambda: None)

    # -- authentication ----------------------------------------------------------

    def _basicHeader(self) -> str | None:
        if self.credentials is None:
            return None
        return "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()

    async def _authorization(self, scopes: tuple[str, ...]) -> str | None:
        if self._basic:
            return self._basicHeader()
        if self._bearer is None:
            return None
        key = " ".join(sorted(set(scopes)))
        token = self._tokens.get(key)
        if token is None or token.expires <= self._now():
            token = await self._fetchToken(self._bearer, scopes)
        return f"Bearer {token.value}"

    def _now(self) -> float:
        return float(self.clock.seconds()) if self.clock is not None else time.time()

    async def _authenticate(self, challenges: list[Challenge], scopes: tuple[str, ...]) -> bool:
        """
        Learn how to answer this registry's challenge; whether a retry can
        succeed.
        """
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.params.get("realm"):
                self._bearer = challenge
                extra = tuple(challenge.params.get("scope", "").split())
                await self._fetchToken(challenge, (*scopes, *extra))
                return True
        for challenge in challenges:
            if challenge.scheme == "basic" and self.credentials is not None:
                self._basic = True
                return True
        return False

    async def _fetchToken(self, challenge: Challenge, scopes: tuple[str, ...]) -> _Token:
        """
        Ask the challenge's realm for a token covering C{scopes}, and cache
        it under them until it expires.
        """
        wanted = sorted(set(scopes))
        query: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            query.append(("service", challenge.params["service"]))
        if self.credentials is not None:
            query.append(("account", self.credentials[0]))
        query += [("scope", scope) for scope in wanted]
        realm = challenge.params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers = {}
        basic = self._basicHeader()
        if basic:
            headers["Authorization"] = basic
        response = await self._send("GET", url, headers, None)
        body = await readSmall(response)
        if response.code != 200:
            error = errorFromBody(response.code, _phrase(response), body)
            raise RegistryError(error.code, f"token service {urlsplit(realm).netloc}: {error.message}", 401)
        try:
            document = json.loads(body)
            value = document.get("token") or document.get("access_token")
            seconds = int(document.get("expires_in") or _DEFAULT_TOKEN_SECONDS)
        except (ValueError, TypeError, AttributeError):
            value = None
        if not isinstance(value, str) or not value:
            raise RegistryError("UNAUTHORIZED", f"token service {urlsplit(realm).netloc} gave no token", 401)
        # Renew a little early, so that a token does not expire in flight.
        token = _Token(value, self._now() + max(seconds - 5, 1))
        self._tokens[" ".join(wanted)] = token
        return token


def _describe(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(_describe(r.value if isinstance(r, Failure) else r) for r in reasons)
    text = str(e) or type(e).__name__
    return " ".join(text.split())


def _header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return str(values[0]) if values else None


def _phrase(response: IResponse) -> str:
    phrase = response.phrase
    return phrase.decode("latin-1") if isinstance(phrase, bytes) else str(phrase)


async def drain(response: IResponse) -> None:
    """
    Read and drop a body, so that the connection can be reused; a body too
    big to be an error message closes the connection instead.
    """
    try:
        await readSmall(response, limit=64 * 1024)
    except RegistryError:
        pass


async def readSmall(response: IResponse, limit: int = MAX_SMALL_BODY) -> bytes:
    """
    A body known to be small (JSON, a manifest), refused past C{limit} bytes.
    """
    if isinstance(response.length, int) and response.length > limit:
        response.deliverBody(_Discard())
        raise RegistryError("SIZE_INVALID", f"a {response.length}-byte answer is over {limit} bytes")
    parts: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise RegistryError("SIZE_INVALID", f"an answer is over {limit} bytes")
        parts.append(data)

    try:
        await treq.collect(response, collect)
    except RegistryError:
        raise
    except NETWORK_ERRORS as e:
        raise RegistryError("CONNECTION_FAILED", _describe(e)) from e
    except Exception as e:
        if isinstance(getattr(e, "reasons", None), list):
            for reason in e.reasons:  # type: ignore[attr-defined]
                if isinstance(reason, Failure) and isinstance(reason.value, RegistryError):
                    raise reason.value from None
        raise
    return b"".join(parts)


class _Discard:
    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass


async def raiseFor(response: IResponse) -> RegistryError:
    """
    The error a response that is not a success stands for (body read).
    """
    body = b"" if response.request.method == b"HEAD" else await readSmall(response, 64 * 1024)
    return errorFromBody(response.code, _phrase(response), body)
