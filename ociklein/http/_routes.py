"""
The HTTP face of the registry: Klein routes that parse a request, call the
core, and format the answer.  No spec rule lives here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionClosed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException

from ociklein import _metrics, errors
from ociklein.auth import BASE, CATALOG, AccessControl, IRegistryUser
from ociklein.core import Page, RegistryCore
from ociklein.errors import OCIError
from ociklein.http._download import BlobSender, parseRange
from ociklein.http._streaming import requestBody
from ociklein.interfaces import IBlobReader, StorageUnavailable

log = Logger()

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

_ROUTES: list[tuple[str, re.Pattern[str]]] = [
    ("base", re.compile(r"/v2/?")),
    ("token", re.compile(r"/token")),
    ("catalog", re.compile(r"/v2/_catalog")),
    ("manifest", re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)")),
    ("uploads", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/?")),
    ("upload", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<uploadId>[^/]+)")),
    ("blob", re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)")),
    ("tags", re.compile(r"/v2/(?P<name>.+)/tags/list")),
    ("referrers", re.compile(r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)")),
]

# Served without Klein (see RegistryRoutes.serveDirectly): the small
# requests that dominate a registry's traffic, pulls and pushes.
_DIRECT = frozenset({("manifest", b"GET"), ("manifest", b"HEAD"), ("manifest", b"PUT"), ("blob", b"HEAD")})
_DIRECT_METHODS = frozenset(method for _, method in _DIRECT)

Handler = Callable[..., Awaitable[bytes | None]]

_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# What each route and method needs of the caller: signed in (base), the
# catalog, or an action in the repository the path names.  The token
# service checks its callers itself.
_NEEDS: dict[tuple[str, str], str | None] = {
    ("base", "GET"): BASE,
    ("token", "GET"): None,
    ("catalog", "GET"): CATALOG,
    ("manifest", "GET"): "pull",
    ("manifest", "PUT"): "push",
    ("manifest", "DELETE"): "delete",
    ("uploads", "POST"): "push",
    ("upload", "GET"): "push",
    ("upload", "PATCH"): "push",
    ("upload", "PUT"): "push",
    ("upload", "DELETE"): "push",
    ("blob", "GET"): "pull",
    ("blob", "DELETE"): "delete",
    ("tags", "GET"): "pull",
    ("referrers", "GET"): "pull",
}


_Routed = tuple[str, dict[str, str]]


def _route(path: str) -> _Routed | None:
    """
    The first route matching the raw C{path}, with its parameters.
    """
    for route, pattern in _ROUTES:
        match = pattern.fullmatch(path)
        if match is not None:
            return route, match.groupdict()
    return None


def _header(request: IRequest, name: str) -> str | None:
    value = request.getHeader(name.encode())
    return None if value is None else value.decode("latin-1")


def _args(request: IRequest, name: str) -> list[str]:
    values = request.args.get(name.encode(), [])  # type: ignore[attr-defined]
    return [value.decode("utf-8", "replace") for value in values]


def _arg(request: IRequest, name: str) -> str | None:
    values = _args(request, name)
    return values[0] if values else None


def _respond(
    request: IRequest,
    status: int,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    contentType: str | None = None,
    repeated: dict[str, list[str]] | None = None,
) -> bytes:
    """
    Answer with C{headers}, one header line per value of C{repeated}, and
    C{body} with its type and length.
    """
    request.setResponseCode(status)
    for key, value in (headers or {}).items():
        request.setHeader(key, value)
    for key, values in (repeated or {}).items():
        if values:
            request.responseHeaders.setRawHeaders(key, values)
    if contentType is not None:
        request.setHeader("Content-Type", contentType)
    request.setHeader("Content-Length", str(len(body)))
    return body


def _json(request: IRequest, status: int, document: Any, headers: dict[str, str] | None = None) -> bytes:
    return _respond(request, status, headers, json.dumps(document).encode(), "application/json")


def _error(request: IRequest, error: OCIError) -> bytes:
    return _respond(request, error.status, error.headers, error.body(), "application/json")


def _user(request: IRequest) -> IRegistryUser | None:
    """
    The caller, when access control is on.
    """
    return request.getComponent(IRegistryUser)  # type: ignore[attr-defined, no-any-return]


def _uploadHeaders(name: str, uploadId: str, size: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{uploadId}",
        "Range": f"0-{max(size - 1, 0)}",
        "Docker-Upload-UUID": uploadId,
    }


def _blobCreated(request: IRequest, name: str, digest: str) -> bytes:
    return _respond(request, 201, {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})


def _nextLink(path: str, page: Page, extra: dict[str, str] | None = None) -> dict[str, str]:
    if page.nextLast is None:
        return {}
    query = urlencode({**(extra or {}), "n": page.limit, "last": page.nextLast}, quote_via=quote)
    return {"Link": f'<{path}?{query}>; rel="next"'}


def _finish(request: Any, body: bytes | None) -> None:
    if body is not None:
        request.write(body)
    request.finish()


def _utf8(raw: bytes) -> bytes:
    return raw.decode("utf-8", "replace").encode("utf-8")


def _bindable(host: bytes) -> bool:
    """
    Whether werkzeug can bind its URL map to C{host} (else: a 500).
    """
    try:
        host.decode("utf-8").lower().partition(":")[0].encode("idna")
    except UnicodeError:
        return False
    return True


class _RegistryResource(Resource):
    """
    The registry's root resource.  Manifest GETs, HEADs and PUTs and blob
    HEADs go straight to L{RegistryRoutes.serveDirectly}: Klein would only bind
    werkzeug's URL map and match a route that sends every path to the same
    handler, a fifth of such a request's time.  Everything else goes
    through Klein.

    Klein answers a bare text/html 400 when the unquoted path is not UTF-8,
    and a 500 when werkzeug cannot IDNA-encode the Host.  The routes work on
    the raw path and ignore the Host, so Klein gets decodable copies and
    L{RegistryRoutes.dispatch} answers as for any other bad name or digest.
    """

    isLeaf = True

    def __init__(self, routes: RegistryRoutes, inner: IResource) -> None:
        super().__init__()
        self._routes = routes
        self._inner = inner

    def render(self, request: Any) -> Any:
        # No content sniffing of blobs by browsers; no server version for
        # scanners to match against known bugs.
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.responseHeaders.removeHeader(b"server")
        path = request.path
        # werkzeug answers a path with an empty segment itself (a redirect).
        if request.method in _DIRECT_METHODS and b"//" not in path:
            found = _route(path.decode("latin-1"))
            if found is not None and (found[0], request.method) in _DIRECT:
                return self._routes.serveDirectly(request, *found)
        request.postpath = [_utf8(segment) for segment in request.postpath]
        host = request.getHeader(b"host")
        if host is not None and not _bindable(host):
            request.requestHeaders.setRawHeaders(b"host", [b"invalid"])
        return self._inner.render(request)


class RegistryRoutes:
    """
    The Klein application serving one L{RegistryCore}.
    """

    app = Klein()

    def __init__(
        self, core: RegistryCore, access: AccessControl | None = None, readOnly: bool = False
    ) -> None:
        self.core = core
        self.access = access
        self.readOnly = readOnly
        self._handlers: dict[tuple[str, str], Handler] = {
            ("base", "GET"): self.base,
            ("token", "GET"): self.token,
            ("catalog", "GET"): self.catalog,
            ("manifest", "GET"): self.getManifest,
            ("manifest", "PUT"): self.putManifest,
            ("manifest", "DELETE"): self.deleteManifest,
            ("uploads", "POST"): self.startUpload,
            ("upload", "GET"): self.uploadStatus,
            ("upload", "PATCH"): self.patchUpload,
            ("upload", "PUT"): self.putUpload,
            ("upload", "DELETE"): self.cancelUpload,
            ("blob", "GET"): self.getBlob,
            ("blob", "DELETE"): self.deleteBlob,
            ("tags", "GET"): self.tags,
            ("referrers", "GET"): self.referrers,
        }

    def resource(self) -> IResource:
        """
        The Klein resource, safe from paths and hosts that are not UTF-8.
        """
        return _RegistryResource(self, self.app.resource())

    @app.handle_errors(HTTPException)
    def _werkzeugError(self, request: IRequest, failure: Failure) -> bytes:
        exc = failure.value
        status = getattr(exc, "code", None) or 404
        code = "UNSUPPORTED" if status == 405 else "NAME_UNKNOWN"
        return _error(request, OCIError(status, code, exc.description or "not found", {}))  # type: ignore[union-attr]

    @app.route("/", branch=True, methods=_METHODS)
    def dispatch(self, request: IRequest) -> Deferred[bytes | None]:
        """
        Serve a request to its end even when its client goes: Klein would
        cancel the handler at whatever it awaits, losing a descriptor or a
        staging directory a thread was just creating.  Every handler ends
        by itself once its client is gone (a failed body, a stopped
        producer), so nothing is left waiting.
        """
        handled = Deferred.fromCoroutine(self._dispatch(request))
        shielded: Deferred[bytes | None] = Deferred()

        def settle(result: Any) -> None:
            if not shielded.called:
                shielded.callback(result)

        handled.addBoth(settle)
        return shielded

    async def _dispatch(self, request: IRequest) -> bytes | None:
        """
        Route on the raw (still percent-encoded) path, so that no encoded
        slash or dot ever turns into a path separator.
        """
        path = request.path.decode("latin-1")  # type: ignore[attr-defined]
        return await self._serve(request, path, _route(path))

    def serveDirectly(self, request: Any, route: str, parameters: dict[str, str]) -> Any:
        """
        Serve a request already routed, without Klein, as Klein would: the
        handler's bytes written, then the request finished, unless the
        client has gone meanwhile.
        """
        path = request.path.decode("latin-1")
        served = Deferred.fromCoroutine(self._serve(request, path, (route, parameters)))
        if served.called:
            # The usual case: the backend answered without waiting.
            served.addCallbacks(lambda body: _finish(request, body), request.processingFailed)
            return NOT_DONE_YET
        gone: list[object] = []
        request.notifyFinish().addBoth(gone.append)

        def answer(body: bytes | None) -> None:
            if not gone:
                _finish(request, body)

        served.addCallbacks(answer, request.processingFailed)
        return NOT_DONE_YET

    async def _serve(self, request: IRequest, path: str, found: _Routed | None) -> bytes | None:
        request.setHeader("Docker-Distribution-API-Version", "registry/2.0")
        method = request.method.decode("latin-1").upper()  # type: ignore[attr-defined]
        try:
            if found is None:
                raise OCIError(404, "NAME_UNKNOWN", "no such endpoint", {"path": path})
            route, arguments = found
            request.ociklein_route = route  # type: ignore[attr-defined]  # the metrics' label
            lookup = "GET" if method == "HEAD" else method
            handler = self._handlers.get((route, lookup))
            if handler is None or (self.readOnly and lookup in _WRITES):
                allowed = {m for r, m in self._handlers if r == route}
                if "GET" in allowed:
                    allowed.add("HEAD")
                if self.readOnly:
                    allowed -= _WRITES
                    if handler is not None:
                        raise errors.unsupported("the registry is read-only", allow=sorted(allowed))
                raise errors.unsupported(f"{method} is not allowed on {route}", allow=sorted(allowed))
            if self.access is not None:
                await self._authorize(request, route, lookup, arguments.get("name"))
            return await handler(request, **arguments)
        except OCIError as e:
            return _error(request, e)
        except ConnectionClosed:
            return None  # the client went while sending its body: nobody to answer
        except StorageUnavailable as e:
            log.warn("storage unavailable serving {method} {path}: {e}", method=method, path=path, e=e)
            return _error(request, errors.unavailable(e.reason, e.retryAfter))
        except OSError as e:
            # The store failed (out of descriptors, a full disk, an I/O
            # error): say which, keep serving.
            log.failure("storage error serving {method} {path}", method=method, path=path)
            _metrics.storageError(e)
            return _error(request, errors.forOSError(e))
        except Exception:
            log.failure("unexpected error serving {method} {path}", method=method, path=path)
            return _error(request, errors.internal())

    async def _authorize(self, request: IRequest, route: str, method: str, name: str | None) -> None:
        """
        Let the request through only if its caller may do what it asks;
        the caller goes with the request, for the handlers and the log.
        """
        assert self.access is not None
        need = _NEEDS[(route, method)]
        if need is None:
            return
        user = await self.access.authorize(request, need, name)
        request.setComponent(IRegistryUser, user)  # type: ignore[attr-defined]
        request.ociklein_user = user.name or "-"  # type: ignore[attr-defined]

    # -- base and listings ------------------------------------------------

    async def base(self, request: IRequest) -> bytes:
        return _json(request, 200, {})

    async def token(self, request: IRequest) -> bytes:
        if self.access is None:
            raise OCIError(404, "NAME_UNKNOWN", "no token service here", {})
        scopes = [v.decode("utf-8", "replace") for v in request.args.get(b"scope", [])]  # type: ignore[attr-defined]
        answer = await self.access.issueToken(request, _arg(request, "service"), scopes)
        return _json(request, 200, answer, {"Cache-Control": "no-store"})

    async def catalog(self, request: IRequest) -> bytes:
        user = _user(request)
        visible = None if user is None else user.listable
        page = await self.core.catalog(_arg(request, "n"), _arg(request, "last"), visible)
        headers = _nextLink("/v2/_catalog", page)
        return _json(request, 200, {"repositories": page.items}, headers)

    async def tags(self, request: IRequest, name: str) -> bytes:
        page = await self.core.listTags(name, _arg(request, "n"), _arg(request, "last"))
        headers = _nextLink(f"/v2/{name}/tags/list", page)
        return _json(request, 200, {"name": name, "tags": page.items}, headers)

    async def referrers(self, request: IRequest, name: str, digest: str) -> bytes:
        artifactType = _arg(request, "artifactType")
        body = await self.core.referrers(name, digest, artifactType)
        headers = {"OCI-Filters-Applied": "artifactType"} if artifactType is not None else {}
        return _respond(request, 200, headers, body, "application/vnd.oci.image.index.v1+json")

    # -- manifests --------------------------------------------------------

    async def getManifest(self, request: IRequest, name: str, reference: str) -> bytes:
        manifest = await self.core.getManifest(name, reference)
        body = _respond(
            request,
            200,
            {"Docker-Content-Digest": manifest.digest, "ETag": f'"{manifest.digest}"'},
            manifest.content,
            manifest.mediaType,
        )
        return body

    async def putManifest(self, request: IRequest, name: str, reference: str) -> bytes:
        pushed = await self.core.putManifest(
            name, reference, _header(request, "Content-Type"), requestBody(request), _args(request, "tag")
        )
        digest = pushed.digest
        headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
        if pushed.subject is not None:
            headers["OCI-Subject"] = pushed.subject
        return _respond(request, 201, headers, repeated={"OCI-Tag": pushed.tags})

    async def deleteManifest(self, request: IRequest, name: str, reference: str) -> bytes:
        await self.core.deleteManifest(name, reference)
        return _respond(request, 202)

    # -- blobs ------------------------------------------------------------

    async def getBlob(self, request: IRequest, name: str, digest: str) -> bytes | None:
        # One lookup per request: a GET opens the blob and takes its size
        # from the reader; a HEAD only asks for the size.
        reader = None
        if request.method == b"HEAD":  # type: ignore[attr-defined]
            size = await self.core.blobSize(name, digest)
        else:
            reader = await self.core.openBlob(name, digest)
            size = reader.size
        try:
            return await self._sendBlob(request, digest, reader, size)
        finally:
            if reader is not None:
                reader.close()

    async def _sendBlob(
        self, request: IRequest, digest: str, reader: IBlobReader | None, size: int
    ) -> bytes | None:
        span = parseRange(_header(request, "Range"), size)
        headers = {"Docker-Content-Digest": digest, "Accept-Ranges": "bytes", "ETag": f'"{digest}"'}
        start, end = (0, size - 1) if span is None else span
        request.setResponseCode(200 if span is None else 206)
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        for key, value in headers.items():
            request.setHeader(key, value)
        request.setHeader("Content-Type", "application/octet-stream")
        request.setHeader("Content-Length", str(end - start + 1))
        if reader is None or end < start:
            return b""
        await BlobSender(reader, start, end - start + 1, request).start()
        return None

    async def deleteBlob(self, request: IRequest, name: str, digest: str) -> bytes:
        await self.core.deleteBlob(name, digest)
        return _respond(request, 202)

    # -- uploads ----------------------------------------------------------

    async def startUpload(self, request: IRequest, name: str) -> bytes:
        self.core.checkName(name)
        self.core.checkAlgorithm(_arg(request, "digest-algorithm"))
        mount, source, digest = _arg(request, "mount"), _arg(request, "from"), _arg(request, "digest")
        if mount is not None:
            user = _user(request)
            mayPull = None if user is None else (lambda repository: user.may("pull", repository))
            if await self.core.mountBlob(name, mount, source, mayPull):
                return _blobCreated(request, name, mount)
        elif digest is not None:
            await self.core.uploadBlob(name, digest, requestBody(request))
            return _blobCreated(request, name, digest)
        upload = await self.core.startUpload(name)
        return _respond(request, 202, _uploadHeaders(name, upload.uploadId, 0))

    async def uploadStatus(self, request: IRequest, name: str, uploadId: str) -> bytes:
        size = await self.core.uploadSize(name, uploadId)
        return _respond(request, 204, _uploadHeaders(name, uploadId, size))

    async def patchUpload(self, request: IRequest, name: str, uploadId: str) -> bytes:
        size = await self.core.appendChunk(
            name, uploadId, requestBody(request), _header(request, "Content-Range")
        )
        return _respond(request, 202, _uploadHeaders(name, uploadId, size))

    async def putUpload(self, request: IRequest, name: str, uploadId: str) -> bytes:
        digest = _arg(request, "digest")
        await self.core.finishChunked(
            name, uploadId, digest, requestBody(request), _header(request, "Content-Range")
        )
        return _blobCreated(request, name, digest or "")

    async def cancelUpload(self, request: IRequest, name: str, uploadId: str) -> bytes:
        await self.core.cancelUpload(name, uploadId)
        return _respond(request, 204)
