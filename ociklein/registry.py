"""
The public face of ociklein for embedding: a registry built from two storage
backends, served as a twisted.web resource, a Site, or an IService.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore, IReactorTime, IStreamServerEndpoint
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from ociklein import _metrics
from ociklein._listening import ListeningService
from ociklein._metrics import RequestMetrics
from ociklein.auth import AccessControl
from ociklein.core import DEFAULT_MAX_MANIFEST_BYTES, RegistryCore
from ociklein.http._accesslog import AccessLog, ClientAddress, parseNetworks
from ociklein.http._health import Check, WithOperations, operations
from ociklein.http._limits import Limits
from ociklein.http._plainhttp import RefuseTLSFactory
from ociklein.http._routes import RegistryRoutes
from ociklein.http._streaming import makeSite
from ociklein.interfaces import IBlobStore, IManifestBackend
from ociklein.storage.memory import MemoryBlobStore, MemoryManifestBackend


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

    def site(
        self,
        reactor: IReactorTime | None = None,
        accessLog: bool = True,
        trustedProxies: Iterable[str] = (),
        limits: Limits | None = None,
        metrics: bool = True,
        operations: Resource | None = None,
    ) -> Site:
        """
        A L{Site} serving the registry with streaming request bodies,
        keeping clients within C{limits} (connections, deadlines); one
        access log event per request unless C{accessLog} is false, naming
        the client behind proxies in C{trustedProxies} (CIDR networks);
        each request counted in the metrics unless C{metrics} is false;
        C{operations} (health, metrics) served beside C{/v2/} when given.
        """
        finished: list[Callable[[Any], None]] = []
        if accessLog:
            finished.append(AccessLog(ClientAddress(parseNetworks(trustedProxies))))
        if metrics:
            finished.append(RequestMetrics())
        resource = self.resource()
        if operations is not None:
            resource = WithOperations(resource, operations)
        return makeSite(resource, reactor=reactor, finished=finished, limits=limits)

    def service(
        self,
        listen: Iterable[str | IStreamServerEndpoint],
        reactor: IReactorCore | None = None,
        onStop: Callable[[], object] | None = None,
        accessLog: bool = True,
        trustedProxies: Iterable[str] = (),
        limits: Limits | None = None,
        metrics: bool = True,
        adminListen: Iterable[str] | None = (),
    ) -> RegistryService:
        """
        An L{IService} listening on each Twisted server endpoint string (or
        endpoint) of C{listen} while it runs.

        C{/livez}, C{/readyz} and (unless C{metrics} is false) C{/metrics}
        are served beside C{/v2/}, or only on the endpoints of
        C{adminListen} when it names some, or nowhere when it is L{None}.
        """
        resolved = _resolveReactor(reactor)
        top = RegistryService(onStop)
        if metrics:
            count = getattr(self.core.blobs, "openUploadCount", None)
            if count is not None:
                _metrics.countUploadSessions(count)
        admin = list(adminListen) if adminListen is not None else []
        ops = operations(self._readiness(top), resolved, metrics)  # type: ignore[arg-type]
        beside = ops if adminListen is not None and not admin else None
        site = self.site(resolved, accessLog, trustedProxies, limits, metrics, beside)  # type: ignore[arg-type]
        for item in listen:
            if isinstance(item, str):
                endpoint, description = serverFromString(resolved, item), item
            else:
                endpoint, description = item, str(item)
            _listen(top, endpoint, site, description)
        if admin:
            finished = [RequestMetrics()] if metrics else []
            adminSite = makeSite(ops, reactor=resolved, finished=finished, limits=limits)
            for description in admin:
                _listen(top, serverFromString(resolved, description), adminSite, description, admin=True)
        return top

    def _readiness(self, service: RegistryService) -> list[tuple[str, Check]]:
        """
        What C{/readyz} checks: the storage takes writes (when the blob
        store can tell), the registry listens.
        """
        blobs = self.core.blobs

        async def storage() -> str | None:
            check = getattr(blobs, "checkWritable", None)
            return None if check is None else await check()

        async def listening() -> str | None:
            return None if service.running and service.ports else "not listening"

        return [("storage", storage), ("listening", listening)]


def _listen(
    top: MultiService, endpoint: IStreamServerEndpoint, site: Site, description: str, admin: bool = False
) -> None:
    plain = not description.startswith(("ssl:", "tls:"))
    factory = RefuseTLSFactory(site) if plain else site
    ListeningService(endpoint, factory, description, admin=admin).setServiceParent(top)


def _resolveReactor(reactor: IReactorCore | None) -> IReactorCore:
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        return globalReactor  # type: ignore[return-value]
    return reactor


class RegistryService(MultiService):
    """
    The registry's listening ports as one restartable service; C{onStop}
    runs once they have all stopped.
    """

    def __init__(self, onStop: Callable[[], object] | None = None) -> None:
        super().__init__()
        self._onStop = onStop

    @property
    def ports(self) -> list[IListeningPort]:
        """
        The ports listened on, once started.
        """
        return [
            s.port for s in self if isinstance(s, ListeningService) and s.port is not None and not s.admin
        ]

    @property
    def adminPorts(self) -> list[IListeningPort]:
        """
        The ports of C{--admin-listen} (health, metrics), once started.
        """
        return [s.port for s in self if isinstance(s, ListeningService) and s.port is not None and s.admin]

    @property
    def listening(self) -> Deferred[list[IListeningPort]]:
        """
        Fires with L{ports} (every endpoint listens as the service starts).
        """
        return succeed(self.ports)

    def stopService(self) -> Deferred[None]:
        stopped = super().stopService()
        if self._onStop is not None:
            onStop = self._onStop
            stopped.addCallback(lambda _: onStop())
        return stopped
