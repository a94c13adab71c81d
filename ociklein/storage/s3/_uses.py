"""
Recorded uses and fenced deletions in a bucket, for garbage collection.

S3 has no rename and no conditional delete, so the fence is made of two
small marker objects beside the "directory" tree of the data:

- C{uses/<key>}: written (empty) to record a use of C{<key>}; the time of
  the last write or use of an object is the later of its own and its
  marker's C{LastModified};
- C{fence/<key>}: written by a collector for as long as it decides on and
  deletes C{<key>}, which it does only while the collector lease
  (C{collector-lease}) exists.

A collector writes the fence, reads the times, deletes (or not), then
removes the fence.  A writer records its use, then checks that there is no
fence and that the object is there.  S3 being strongly consistent, either
the collector reads the use (and keeps the object), or the writer's check
comes after the fence was written and reports the object missing.  (One
collector at a time: two collectors of one key would share the fence.)
The writer first looks at the lease: when there is none, no collector
is between writing a fence and removing it, so it need not look for
fences (one request per batch of keys instead of one per key).

All times are the store's own (the C{Date} it answers with, and
C{LastModified}), in whole seconds, the resolution S3 gives in headers.
A deletion happens only if the last use lies entirely before the cutoff:
a use in the same second as the cutoff keeps the object.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

from ociklein.interfaces import StoredItem
from ociklein.names import isSupportedDigest
from ociklein.storage.s3._client import S3Client, allOf


def _seconds(modified: Any) -> float:
    return float(math.floor(modified.timestamp()))


class Uses:
    """
    Blocking helpers (for L{S3Client.run}) over one client's keys.
    """

    def __init__(self, client: S3Client) -> None:
        self._client = client
        self._prefix = client.keys.prefix

    def _under(self, tree: str, key: str) -> str:
        return self._prefix + tree + key[len(self._prefix) :]

    def useKey(self, key: str) -> str:
        return self._under("uses/", key)

    def fenceKey(self, key: str) -> str:
        return self._under("fence/", key)

    def now(self) -> float:
        """
        The store's clock: the C{Date} of a response, in whole seconds.
        """
        response = self._client.s3.head_bucket(Bucket=self._client.bucket)
        date = response["ResponseMetadata"]["HTTPHeaders"]["date"]
        return float(parsedate_to_datetime(date).timestamp())

    def recordUse(self, key: str) -> None:
        self._client.put(self.useKey(key), b"")

    def touch(self, key: str) -> bool:
        """
        Record a use of C{key}; L{False} if it is missing or being deleted,
        in which case the caller must not count on it.
        """
        self.recordUse(key)
        if self.collecting() and self._client.head(self.fenceKey(key)) is not None:
            return False
        return self._client.head(key) is not None

    def collecting(self) -> bool:
        """
        Whether a collector lease exists (a collection may be fencing keys).
        """
        return self._client.head(self._client.keys.collectorLease) is not None

    def lastUse(self, key: str) -> float | None:
        """
        When C{key} was last written or used, or L{None} if it is missing.
        """
        head = self._client.head(key)
        if head is None:
            return None
        marker = self._client.head(self.useKey(key))
        times = [_seconds(head["LastModified"])]
        if marker is not None:
            times.append(_seconds(marker["LastModified"]))
        return max(times)

    def fencedDelete(self, key: str, before: float, related: Callable[[dict[str, Any]], list[str]]) -> bool:
        """
        Delete C{key} (and the keys C{related} names from its HEAD) if it
        was neither written nor used in or after the second of C{before}.
        """
        client, fence = self._client, self.fenceKey(key)
        client.put(fence, b"")
        try:
            head = client.head(key)
            last = self.lastUse(key)
            if head is None or last is None or last + 1 > before:
                return False
            client.deleteMany([*related(head), self.useKey(key)])
            client.delete(key)
            return True
        finally:
            client.delete(fence)

    def listWithUses(
        self, prefix: str, startAfter: str | None, limit: int, digestOf: Callable[[str], str | None]
    ) -> list[StoredItem]:
        """
        The objects under C{prefix} after C{startAfter} as L{StoredItem}s,
        their time the later of their own and their use marker's.
        """
        if limit <= 0:
            return []
        entries = self._client.listObjects(prefix, startAfter, limit)
        if not entries:
            return []
        usePrefix = self.useKey(prefix)
        uses: dict[str, float] = {}
        lastKey = self.useKey(entries[-1]["Key"])
        start = None if startAfter is None else self.useKey(startAfter)
        for marker in self._client.listObjects(usePrefix, start):
            if marker["Key"] > lastKey:
                break
            uses[marker["Key"]] = _seconds(marker["LastModified"])
        items = []
        for entry in entries:
            digest = digestOf(entry["Key"][len(prefix) :])
            if digest is None:
                continue
            modified = max(_seconds(entry["LastModified"]), uses.get(self.useKey(entry["Key"]), 0.0))
            items.append(StoredItem(digest, int(entry["Size"]), modified))
        return items

    def quarantine(self, key: str, stamp: float) -> bool:
        """
        Copy C{key} to C{quarantine/<key>.<stamp>} and delete it; L{False}
        if it is missing.
        """
        client = self._client
        if client.head(key) is None:
            return False
        aside = self._under("quarantine/", key) + f".{int(stamp)}"
        client.s3.copy_object(
            Bucket=client.bucket, Key=aside, CopySource={"Bucket": client.bucket, "Key": key}
        )
        client.deleteMany([self.useKey(key)])
        client.delete(key)
        return True

    def storedBytes(self) -> int:
        return sum(int(e["Size"]) for e in self._client.listObjects(self._prefix))


async def touchAll(client: S3Client, uses: Uses, keys: list[str]) -> list[bool]:
    """
    L{Uses.touch} of many keys with the requests of each step in parallel:
    every use, then the lease, then (only if there is a lease) every
    fence, then every key.  Each check follows the step before it, as
    the argument in the module's docstring needs.
    """
    if not keys:
        return []
    await _each(client, [(uses.recordUse, k) for k in keys])
    fenced: list[Any] = [None] * len(keys)
    if await client.run(uses.collecting):
        fenced = await _each(client, [(client.head, uses.fenceKey(k)) for k in keys])
    found = await _each(client, [(client.head, k) for k in keys])
    return [fence is None and head is not None for fence, head in zip(fenced, found, strict=True)]


async def _each(client: S3Client, calls: list[tuple[Callable[[str], Any], str]]) -> list[Any]:
    return await allOf([client.run(f, key) for f, key in calls])


def digestFromKey(rest: str) -> str | None:
    """
    C{sha256:<hex>} from the C{sha256/<hex>} end of a key.
    """
    algorithm, _, encoded = rest.partition("/")
    digest = f"{algorithm}:{encoded}"
    return digest if isSupportedDigest(digest) else None
