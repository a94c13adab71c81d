"""
The collector lease: one object, C{<prefix>collector-lease}, that a garbage
collection creates with a conditional PUT (C{If-None-Match: *}), renews and
finally deletes with C{If-Match} on its own ETag.

Two collections on one bucket and prefix must not overlap: their fences
(C{fence/<key>}) are shared marker objects, so one collector removing its
fence could uncover a key the other is deciding on.  The conditional PUT
makes taking the lease atomic in the store; a lease not renewed before it
expires (on the store's clock) is taken over, again with a conditional PUT
on the ETag that was read, so of two collectors taking over one stale
lease only one succeeds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from ociklein.interfaces import CollectionRefused, IHeldLease
from ociklein.storage.s3._client import S3Client, errorCode
from ociklein.storage.s3._uses import Uses

_log = Logger()

LEASE_SECONDS = 300.0


def _conflict(e: Exception) -> bool:
    """
    Whether a ClientError says a condition did not hold (the lease changed).
    """
    status, code = errorCode(e)
    return status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict")


class LeaseObject:
    """
    Blocking helpers (for L{S3Client.run}) over the lease object.
    """

    def __init__(self, client: S3Client, seconds: float) -> None:
        self._client = client
        self.key = client.keys.collectorLease
        self.seconds = seconds
        self._uses = Uses(client)

    def _where(self) -> str:
        return f"s3://{self._client.bucket}/{self._client.keys.prefix}"

    def _put(self, owner: str, **condition: str) -> str:
        expires = self._uses.now() + self.seconds
        body = json.dumps({"owner": owner, "expires": expires}).encode()
        response = self._client.s3.put_object(
            Bucket=self._client.bucket, Key=self.key, Body=body, ContentType="application/json", **condition
        )
        return str(response["ETag"])

    def acquire(self, owner: str) -> str:
        """
        Create the lease, or take over one that expired; its ETag.
        """
        try:
            return self._put(owner, IfNoneMatch="*")
        except Exception as e:
            if not _conflict(e):
                raise
        found = self._client.get(self.key)
        if found is None:  # released meanwhile: try once more
            try:
                return self._put(owner, IfNoneMatch="*")
            except Exception as e:
                if not _conflict(e):
                    raise
                raise CollectionRefused(
                    f"another collection just took the lease of {self._where()}"
                ) from None
        content, response = found
        try:
            held = json.loads(content)
            holder, expires = str(held["owner"]), float(held["expires"])
        except (ValueError, KeyError, TypeError):
            holder, expires = "unknown", 0.0
        if expires > self._uses.now():
            raise CollectionRefused(
                f"another collection ({holder}) holds the lease of {self._where()} "
                f"for up to {expires - self._uses.now():.0f} s more"
            )
        try:
            return self._put(owner, IfMatch=response["ETag"])
        except Exception as e:
            if not _conflict(e):
                raise
            raise CollectionRefused(f"another collection just took the lease of {self._where()}") from None

    def renew(self, owner: str, etag: str) -> str | None:
        """
        Extend the lease; its new ETag, or L{None} if it is no longer ours.
        """
        try:
            return self._put(owner, IfMatch=etag)
        except Exception as e:
            if _conflict(e) or errorCode(e)[0] == 404:
                return None
            raise

    def release(self, etag: str) -> None:
        try:
            self._client.s3.delete_object(Bucket=self._client.bucket, Key=self.key, IfMatch=etag)
        except Exception as e:
            if not _conflict(e) and errorCode(e)[0] != 404:
                raise

    def fencedDelete(
        self, key: str, before: float, related: Callable[[dict[str, Any]], list[str]]
    ) -> Deferred[bool]:
        """
        L{Uses.fencedDelete} of C{key} in the S3 pool, L{underLease}: the
        one way the backends delete what a collection decided on.
        """
        work = partial(self._uses.fencedDelete, key, before, related)
        return self._client.run(underLease, self._client, self, work)


def underLease(client: S3Client, lease: LeaseObject, work: Callable[[], bool]) -> bool:
    """
    Run a fenced deletion (C{work}, blocking) with the collector lease
    present, as writers require (L{Uses.touch} looks for fences only while
    a lease exists): under the lease this process holds, else under a
    lease taken for this deletion alone.  L{False} (nothing deleted) if
    another collection holds the lease.
    """
    if client.leaseHeld:
        return work()
    try:
        etag = lease.acquire("a single fenced deletion")
    except CollectionRefused:
        return False
    try:
        return work()
    finally:
        lease.release(etag)


@implementer(IHeldLease)
class HeldLease:
    """
    The lease while a collection runs: renewed every fifth of its length
    by a L{LoopingCall}; L{check} refuses once the last confirmed renewal
    is more than 3/5 of the lease old (a renewal failed, or is stuck),
    keeping two fifths of the lease as margin against a deletion that is
    under way when the lease runs out.
    """

    def __init__(self, client: S3Client, lease: LeaseObject, owner: str, etag: str) -> None:
        self._client = client
        self._lease = lease
        self._owner = owner
        self._etag: str | None = etag
        self._clock = cast(IReactorTime, client.reactor)
        self._confirmed = self._clock.seconds()
        client.leaseHeld += 1
        self._renewing: Deferred[None] | None = None
        self._loop = LoopingCall(self._renew)
        self._loop.clock = self._clock
        self._loop.start(lease.seconds / 5, now=False).addErrback(
            lambda failure: _log.failure("renewing the collector lease failed", failure)
        )

    def _renew(self) -> Deferred[None] | None:
        if self._etag is None:
            return None
        started = self._clock.seconds()

        def renewed(etag: str | None) -> None:
            if etag is None:
                _log.error("the collector lease was taken by another collection; stopping")
            else:
                self._confirmed = started
            self._etag = etag

        def failed(failure: Any) -> None:
            # A store briefly unreachable: keep trying; check() refuses
            # deletions if it lasts.
            _log.warn("renewing the collector lease: {reason}", reason=failure.getErrorMessage())

        def done(result: None) -> None:
            self._renewing = None

        renewing = self._client.run(self._lease.renew, self._owner, self._etag).addCallbacks(renewed, failed)
        self._renewing = renewing.addBoth(done)
        return self._renewing

    def check(self) -> None:
        if self._etag is None:
            raise CollectionRefused("the collector lease was taken by another collection; stopped")
        age = self._clock.seconds() - self._confirmed
        if age > self._lease.seconds * 3 / 5:
            raise CollectionRefused(f"the collector lease was not renewed for {age:.0f} s; stopped")

    def release(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._release())

    async def _release(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._renewing is not None:
            # Let a renewal under way finish, so the ETag deleted is the last.
            await self._renewing
        etag, self._etag = self._etag, None
        try:
            if etag is not None:
                await self._client.run(self._lease.release, etag)
        finally:
            self._client.leaseHeld -= 1
