"""
Disk usage: the bytes each repository makes visible, split into bytes no
other repository shares and bytes it shares, against what is stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ociklein.interfaces import IBlobMaintenance, IBlobStore, IManifestBackend, IManifestMaintenance
from ociklein.maintenance._walk import Progress, allBlobs, allLinks, allRepositories, everything, noProgress


@dataclass
class RepositoryUsage:
    repository: str
    blobs: int = 0
    unique: int = 0
    shared: int = 0
    manifests: int = 0
    manifestBytes: int = 0


@dataclass
class UsageReport:
    repositories: list[RepositoryUsage] = field(default_factory=list)
    blobs: int = 0
    blobBytes: int = 0
    # Blobs no repository links: what a collection would free, grace aside.
    unlinkedBytes: int = 0
    manifestBytes: int = 0
    storedBytes: int = 0

    def asDict(self) -> dict[str, Any]:
        return asdict(self)


async def diskUsage(
    manifests: IManifestBackend, blobs: IBlobStore, progress: Progress = noProgress
) -> UsageReport:
    blobStore = IBlobMaintenance(blobs)
    backend = IManifestMaintenance(manifests)
    report = UsageReport()
    sizes = {}
    for item in await allBlobs(blobStore):
        sizes[item.digest] = item.size
        progress("blobs", 1)
    report.blobs = len(sizes)
    report.blobBytes = sum(sizes.values())
    links: dict[str, set[str]] = {}
    owners: dict[str, int] = {}
    for repository in await allRepositories(manifests, blobStore):
        progress("repositories", 1)
        visible = {link.digest for link in await allLinks(blobStore, repository) if link.digest in sizes}
        links[repository] = visible
        for digest in visible:
            owners[digest] = owners.get(digest, 0) + 1
        usage = RepositoryUsage(repository, blobs=len(visible))
        stored = await everything(
            lambda last, limit, name=repository: backend.listManifests(name, last, limit),  # type: ignore[misc]
            lambda item: item.digest,
        )
        usage.manifests = len(stored)
        usage.manifestBytes = sum(item.size for item in stored)
        report.manifestBytes += usage.manifestBytes
        report.repositories.append(usage)
    for usage in report.repositories:
        for digest in links[usage.repository]:
            if owners[digest] == 1:
                usage.unique += sizes[digest]
            else:
                usage.shared += sizes[digest]
    report.unlinkedBytes = sum(size for digest, size in sizes.items() if digest not in owners)
    report.storedBytes = await blobStore.storedBytes()
    return report
