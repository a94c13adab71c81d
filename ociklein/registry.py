"""
The public face of ociklein for embedding: a registry built from two storage
backends, served as a twisted.web resource, a Site, or an IService.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore, IReactorTime, IStreamServerEndpoint
from twisted.web.resource import IResource
from twisted.web.server import Site

from ociklein._listening import ListeningService
from ociklein.auth import AccessControl
from ociklein.core import DEFAULT_MAX_MANIFEST_BYTES, RegistryCore
from ociklein.http._accesslog import AccessLog, ClientAddress, parseNetworks
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
    ) -> Site:
        """
        A L{Site} serving the registry with streaming request bodies,
        keeping clients within C{limits} (connections, deadlines); one
        access log event per request unless C{accessLog} is false, naming
        the client behind proxies in C{trustedProxies} (CIDR networks).
        """
        finished = [AccessLog(ClientAddress(parseNetworks(trustedProxies)))] if accessLog else []
        return makeSite(self.resource(), reactor=reactor, finished=finished, limits=limits)

    def service(
        self,
        listen: Iterable[str | IStreamServerEndpoint],
        reactor: IReactorCore | None = None,
        onStop: Callable[[], object] | None = None,
        accessLog: bool = True,
        trustedProxies: Iterable[str] = (),
        limits: Limits | None = None,
    ) -> RegistryService:
        """
        An L{IService} listening on each Twisted server endpoint string (or
        endpoint) of C{listen} while it runs.
        """
        resolved = _resolveReactor(reactor)
        site = self.site(resolved, accessLog=accessLog, trustedProxies=trustedProxies, limits=limits)  # type: ignore[arg-type]
        top = RegistryService(onStop)
        for item in listen:
            if isinstance(item, str):
                endpoint, description = serverFromString(resolved, item), item
            else:
                endpoint, description = item, str(item)
            plain = not description.startswith(("ssl:", "tls:"))
            factory = RefuseTLSFactory(site) if plain else site
            ListeningService(endpoint, factory, description).setServiceParent(top)
        return top


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
        return [s.port for s in self if isinstance(s, ListeningService) and s.port is not None]

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
