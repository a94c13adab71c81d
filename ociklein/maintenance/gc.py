"""
Online garbage collection: mark what tags (or, by default, any manifest)
reach, then remove the rest with deletions fenced against concurrent
writes, so that it may run while the registry serves.  The argument for
its safety is in docs/storage.md, "Garbage collection".
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ociklein.interfaces import (
    IBlobMaintenance,
    IBlobStore,
    ICollectorLease,
    IHeldLease,
    IManifestBackend,
    IManifestMaintenance,
)
from ociklein.maintenance._walk import (
    Progress,
    ReadManifest,
    allBlobs,
    allLinks,
    allRepositories,
    allTags,
    noProgress,
    readManifests,
)

DEFAULT_GRACE = 3600.0


@dataclass
class Removed:
    """
    One thing removed (or, in a dry run, that would be).
    """

    kind: str  # "manifest", "link", "blob" or "upload"
    digest: str
    repository: str | None = None
    size: int = 0

    def asDict(self) -> dict[str, Any]:
        return {"kind": self.kind, "repository": self.repository, "digest": self.digest, "size": self.size}


@dataclass
class CollectionReport:
    """
    What a collection removed and kept, and why it stopped if it did.
    """

    dryRun: bool
    grace: float
    untagged: bool
    removed: list[Removed] = field(default_factory=list)
    keptManifests: int = 0
    keptBlobs: int = 0
    # Fenced deletions refused because a write used the object meanwhile.
    refused: int = 0
    unreadable: list[str] = field(default_factory=list)
    storedBefore: int = 0
    storedAfter: int = 0

    @property
    def freedBytes(self) -> int:
        return sum(r.size for r in self.removed if r.kind in ("blob", "manifest"))

    def count(self, kind: str) -> int:
        return sum(1 for r in self.removed if r.kind == kind)

    def asDict(self) -> dict[str, Any]:
        return {
            "dryRun": self.dryRun,
            "grace": self.grace,
            "untagged": self.untagged,
            "removed": [r.asDict() for r in self.removed],
            "freedBytes": self.freedBytes,
            "keptManifests": self.keptManifests,
            "keptBlobs": self.keptBlobs,
            "refused": self.refused,
            "unreadable": self.unreadable,
            "storedBefore": self.storedBefore,
            "storedAfter": self.storedAfter,
        }


class _Repository:
    """
    The manifests of one repository and what keeps them.
    """

    def __init__(self, name: str, manifests: dict[str, ReadManifest]) -> None:
        self.name = name
        self.manifests = manifests
        self.retained: set[str] = set()
        self.referrers: dict[str, list[str]] = {}
        self.parents: dict[str, list[str]] = {}
        for digest, read in manifests.items():
            if read.parsed is None:
                continue
            if read.parsed.subject is not None:
                self.referrers.setdefault(read.parsed.subject, []).append(digest)
            for child in read.parsed.children:
                self.parents.setdefault(child, []).append(digest)

    def retain(self, roots: Iterable[str]) -> None:
        """
        Keep C{roots} and what they reach: children of an index, and
        referrers whose subject is kept.
        """
        pending = [d for d in roots if d in self.manifests]
        while pending:
            digest = pending.pop()
            if digest in self.retained:
                continue
            self.retained.add(digest)
            parsed = self.manifests[digest].parsed
            if parsed is not None:
                pending.extend(c for c in parsed.children if c in self.manifests)
            pending.extend(self.referrers.get(digest, ()))

    def sweepOrder(self) -> list[str]:
        """
        The manifests not retained, each after the index that lists it and
        after its subject: if a write keeps one of those alive meanwhile,
        what it reaches is retained before its own turn comes.
        """
        candidates = [d for d in sorted(self.manifests) if d not in self.retained]
        wanted = set(candidates)
        order: list[str] = []
        seen: set[str] = set()

        def visit(digest: str) -> None:
            if digest in seen:
                return
            seen.add(digest)
            parsed = self.manifests[digest].parsed
            first = list(self.parents.get(digest, ()))
            if parsed is not None and parsed.subject is not None:
                first.append(parsed.subject)
            for before in first:
                if before in wanted:
                    visit(before)
            order.append(digest)

        for digest in candidates:
            visit(digest)
        return order

    def blobs(self) -> set[str]:
        found: set[str] = set()
        for digest in self.retained:
            parsed = self.manifests[digest].parsed
            if parsed is not None:
                found.update(parsed.blobs)
        return found


async def collect(
    manifests: IManifestBackend,
    blobs: IBlobStore,
    grace: float = DEFAULT_GRACE,
    untagged: bool = False,
    dryRun: bool = False,
    progress: Progress = noProgress,
) -> CollectionReport:
    """
    Remove what nothing retained reaches and nothing used within C{grace}
    seconds; with C{untagged}, manifests that no tag reaches (through
    indexes and subjects) too.  Safe while the registry serves.

    On a storage that allows one collection at a time (L{ICollectorLease})
    the collection holds its lease from before it reads the clock until
    its last deletion, and fails with L{CollectionRefused} if another
    holds it (a dry run removes nothing and takes no lease).
    """
    lease = ICollectorLease(blobs, None)
    if lease is None or dryRun:
        return await _collect(manifests, blobs, grace, untagged, dryRun, progress, None)
    held = await lease.acquireCollectorLease(f"ociklein gc on {socket.gethostname()}, pid {os.getpid()}")
    try:
        return await _collect(manifests, blobs, grace, untagged, dryRun, progress, held)
    finally:
        await held.release()


async def _collect(
    manifests: IManifestBackend,
    blobs: IBlobStore,
    grace: float,
    untagged: bool,
    dryRun: bool,
    progress: Progress,
    held: IHeldLease | None,
) -> CollectionReport:
    def dry() -> bool:
        """
        Whether this is a dry run, in which nothing is deleted; before a
        real deletion, raise L{CollectionRefused} if the lease was lost.
        """
        if held is not None and not dryRun:
            held.check()
        return dryRun

    blobStore = IBlobMaintenance(blobs)
    backend = IManifestMaintenance(manifests)
    report = CollectionReport(dryRun=dryRun, grace=grace, untagged=untagged)
    report.storedBefore = await blobStore.storedBytes()
    # The cutoff is taken before anything is read: whatever is written or
    # used from now on is at or after it, so no deletion below removes it.
    cutoff = min(await blobStore.now(), await backend.now()) - grace

    # Mark.
    repositories: list[_Repository] = []
    for name in await allRepositories(manifests, blobStore):
        progress("repositories marked", 1)
        repository = _Repository(name, await readManifests(manifests, name, progress))
        for read in repository.manifests.values():
            if read.problem is not None:
                report.unreadable.append(f"{name}@{read.digest}: {read.problem}")
        if untagged:
            tags = await allTags(manifests, name)
            young = [d for d, r in repository.manifests.items() if r.item.modified >= cutoff]
            repository.retain([*tags.values(), *young])
        else:
            repository.retain(repository.manifests)
        repositories.append(repository)
    if report.unreadable:
        # What an unreadable manifest references is unknown: removing
        # anything could break it.  Scrub first.
        report.storedAfter = report.storedBefore
        return report

    # Sweep manifests (only with untagged), parents and subjects first.
    for repository in repositories:
        for digest in repository.sweepOrder():
            if digest in repository.retained:
                continue  # kept alive by a parent or subject a write refreshed
            item = repository.manifests[digest].item
            progress("manifests swept", 1)
            if dry() or await backend.deleteManifestBefore(repository.name, digest, cutoff):
                report.removed.append(Removed("manifest", digest, repository.name, item.size))
            else:
                report.refused += 1
                repository.retain([digest])
        report.keptManifests += len(repository.retained)

    # Sweep links: a link stays if a retained manifest of its repository
    # needs it, or it is young, or a write used it meanwhile.
    marked: set[str] = set()
    linked: set[str] = set()
    for repository in repositories:
        needed = repository.blobs()
        marked |= needed
        for link in await allLinks(blobStore, repository.name):
            progress("links swept", 1)
            if link.digest in needed or link.modified >= cutoff:
                linked.add(link.digest)
            elif dry() or await blobStore.deleteLink(repository.name, link.digest, cutoff):
                report.removed.append(Removed("link", link.digest, repository.name))
            else:
                report.refused += 1
                linked.add(link.digest)

    # Sweep blobs whose last link is gone.
    for blob in await allBlobs(blobStore):
        progress("blobs swept", 1)
        if blob.digest in marked or blob.digest in linked or blob.modified >= cutoff:
            report.keptBlobs += 1
        elif dry() or await blobStore.deleteBlob(blob.digest, cutoff):
            report.removed.append(Removed("blob", blob.digest, None, blob.size))
        else:
            report.refused += 1
            report.keptBlobs += 1

    if not dryRun:
        for uploadId in await blobStore.expireUploads():
            report.removed.append(Removed("upload", uploadId))
    report.storedAfter = await blobStore.storedBytes()
    return report
