"""
Garbage collection inside the registry: a service that collects every
C{interval} seconds, started and stopped with the registry.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ociklein.interfaces import CollectionRefused, IBlobStore, IManifestBackend
from ociklein.maintenance.gc import collect

log = Logger()


class CollectionService(Service):
    """
    Runs L{collect} every C{interval} seconds of C{clock}, the first one
    interval after start; a collection still running when the registry
    stops is waited for.
    """

    def __init__(
        self,
        manifests: IManifestBackend,
        blobs: IBlobStore,
        interval: float,
        grace: float,
        untagged: bool = False,
        clock: Any = None,
    ) -> None:
        self._manifests = manifests
        self._blobs = blobs
        self.interval = interval
        self._grace = grace
        self._untagged = untagged
        self._clock = clock
        self._loop: LoopingCall | None = None
        self._running: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._collect)
        if self._clock is not None:
            self._loop.clock = self._clock
        self._loop.start(self.interval, now=False).addErrback(
            lambda failure: log.failure("periodic garbage collection stopped", failure)
        )

    def _collect(self) -> Deferred[None]:
        self._running = Deferred.fromCoroutine(self._once())
        return self._running

    async def _once(self) -> None:
        try:
            report = await collect(self._manifests, self._blobs, self._grace, self._untagged)
        except CollectionRefused as e:
            # Another node collects this storage now: its turn, not ours.
            log.info("garbage collection skipped: {reason}", reason=str(e))
            return
        except Exception:
            log.failure("garbage collection failed")
            return
        finally:
            self._running = None
        if report.unreadable:
            log.error(
                "garbage collection removed nothing: {count} unreadable manifests; run ociklein scrub",
                count=len(report.unreadable),
            )
        else:
            log.info(
                "garbage collection removed {manifests} manifests, {links} links, {blobs} blobs, "
                "{uploads} uploads; freed {freed} bytes",
                manifests=report.count("manifest"),
                links=report.count("link"),
                blobs=report.count("blob"),
                uploads=report.count("upload"),
                freed=report.freedBytes,
            )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        running = self._running
        return succeed(None) if running is None else running
