"""
The public face of ociklein for embedding: a registry built from two storage
backends, served as a twisted.web resource, a Site, or an IService.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import implementer

from ociklein._workers import listenReusingPort
from ociklein.auth import AccessControl
from ociklein.core import DEFAULT_MAX_MANIFEST_BYTES, RegistryCore
from ociklein.http._limits import Limits
from ociklein.http._plainhttp import RefuseTLSFactory
from ociklein.http._routes import RegistryRoutes
from ociklein.http._streaming import makeSite
from ociklein.interfaces import IBlobStore, IManifestBackend
from ociklein.storage.memory import MemoryBlobStore, MemoryManifestBackend

log = Logger()


class Registry:
    """
    An OCI Distribution v1.1 registry over an L{IManifestBackend} and an
    L{IBlobStore}; in memory when none are given.

    With C{allowSparseManifests}, a manifest may reference blobs and child
    manifests the repository does not hold (as mirrors need).  With
    C{automaticMount}, a mount that names no source repository finds the
    blob in any repository the caller may pull.
    """

    def __init__(
        self,
        manifests: IManifestBackend | None = None,
        blobs: IBlobStore | None = None,
        *,
        maxManifestBytes: int = DEFAULT_MAX_MANIFEST_BYTES,
        allowSparseManifests: bool = False,
        automaticMount: bool = False,
        access: AccessControl | None = None,
        readOnly: bool = False,
    ) -> None:
        """
        With C{access}, every request is authenticated and authorized (see
        L{ociklein.auth}); with C{readOnly}, every write is refused.
        """
        self.core = RegistryCore(
            manifests if manifests is not None else MemoryManifestBackend(),
            blobs if blobs is not None else MemoryBlobStore(),
            maxManifestBytes=maxManifestBytes,
            allowSparseManifests=allowSparseManifests,
            automaticMount=automaticMount,
        )
        self.access = access
        self._routes = RegistryRoutes(self.core, access, readOnly)

    def resource(self) -> IResource:
        """
        The registry as a resource for any L{Site}; it serves C{/v2/}.

        Bodies stream into storage only under a Site from L{site}; under any
        other Site twisted.web buffers them first, which works but costs a
        copy through a temporary file.
        """
        return self._routes.resource()

    def site(self, reactor: Any = None, accessLog: bool = True, limits: Limits | None = None) -> Site:
        """
        A L{Site} serving the registry with streaming request bodies,
        keeping clients within C{limits} (connections, deadlines); one
        access log line per request unless C{accessLog} is false.
        """
        return makeSite(self.resource(), reactor=reactor, accessLog=accessLog, limits=limits)

    def service(
        self,
        listen: list[str],
        reactor: Any = None,
        onStop: Any = None,
        accessLog: bool = True,
        reusePort: bool = False,
        limits: Limits | None = None,
    ) -> IService:
        """
        An L{IService} listening on each Twisted server endpoint string;
        with C{reusePort}, TCP ports other processes may listen on too.
        """
        return _ListeningService(self, listen, reactor, onStop, accessLog, reusePort, limits)


@implementer(IService)
class _ListeningService(Service):
    def __init__(
        self,
        registry: Registry,
        listen: list[str],
        reactor: Any,
        onStop: Any,
        accessLog: bool = True,
        reusePort: bool = False,
        limits: Limits | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._registry = registry
        self._descriptions = listen
        self._reactor = reactor
        self._onStop = onStop
        self._accessLog = accessLog
        self._reusePort = reusePort
        self._limits = limits
        self.ports: list[IListeningPort] = []
        self.listening: Deferred[list[IListeningPort]] = Deferred()

    def startService(self) -> None:
        super().startService()
        site = self._registry.site(self._reactor, accessLog=self._accessLog, limits=self._limits)
        waiting = []
        for description in self._descriptions:
            factory = site if description.startswith(("ssl:", "tls:")) else RefuseTLSFactory(site)
            if self._reusePort:
                listened = maybeDeferred(listenReusingPort, self._reactor, description, factory)
            else:
                listened = serverFromString(self._reactor, description).listen(factory)
            waiting.append(listened.addCallback(self._listening, description))
        DeferredList(waiting, fireOnOneErrback=True, consumeErrors=True).addCallbacks(
            lambda _: self.listening.callback(self.ports), self._failed
        )

    def _listening(self, port: IListeningPort, description: str) -> None:
        self.ports.append(port)
        address = port.getHost()
        log.info(
            "ociklein listening on {description} ({host}:{port})",
            description=description,
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
        )

    def _failed(self, failure: Any) -> None:
        reason = getattr(failure.value, "subFailure", failure)
        log.critical("ociklein cannot listen: {reason}", reason=reason.getErrorMessage())
        self.listening.errback(reason)
        if self._reactor.running:
            self._reactor.stop()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        ports, self.ports = self.ports, []
        stopping = [port.stopListening() for port in ports]
        done = DeferredList([d for d in stopping if d is not None])
        if self._onStop is not None:
            done.addCallback(lambda _: self._onStop())
        return done
