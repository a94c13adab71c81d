"""
Scrub: hash every blob and manifest again, check that every manifest's
blobs and children are there, and optionally move what is corrupt aside so
that it is answered as unknown and can be pushed again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ociklein.interfaces import IBlobMaintenance, IBlobStore, IManifestBackend, IManifestMaintenance
from ociklein.maintenance._walk import Progress, allBlobs, allRepositories, noProgress, readManifests

_CHUNK = 1024 * 1024


@dataclass
class Problem:
    """
    One thing found wrong.
    """

    kind: str  # "corrupt blob", "corrupt manifest", "missing blob", "missing child"
    digest: str
    repository: str | None
    detail: str
    repaired: bool = False

    def asDict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "repository": self.repository,
            "digest": self.digest,
            "detail": self.detail,
            "repaired": self.repaired,
        }


@dataclass
class ScrubReport:
    repair: bool
    blobs: int = 0
    blobBytes: int = 0
    manifests: int = 0
    problems: list[Problem] = field(default_factory=list)

    def asDict(self) -> dict[str, Any]:
        return {
            "repair": self.repair,
            "blobs": self.blobs,
            "blobBytes": self.blobBytes,
            "manifests": self.manifests,
            "problems": [p.asDict() for p in self.problems],
        }


async def _blobProblem(blobs: IBlobStore, digest: str, size: int) -> str | None:
    """
    Why blob C{digest} is not what its name says, or L{None}.
    """
    reader = await blobs.open(digest)
    if reader is None:
        return None  # removed meanwhile
    try:
        algorithm, _, expected = digest.partition(":")
        hashed = hashlib.new(algorithm)
        offset = 0
        while offset < reader.size:
            chunk = await reader.read(offset, _CHUNK)
            if not chunk:
                return f"ends after {offset} of {reader.size} bytes"
            hashed.update(chunk)
            offset += len(chunk)
    finally:
        reader.close()
    if hashed.hexdigest() != expected:
        return f"content hashes to {algorithm}:{hashed.hexdigest()} ({offset} bytes)"
    return None


async def scrub(
    manifests: IManifestBackend, blobs: IBlobStore, repair: bool = False, progress: Progress = noProgress
) -> ScrubReport:
    """
    Check every blob and manifest; with C{repair}, quarantine the corrupt.
    """
    blobStore = IBlobMaintenance(blobs)
    backend = IManifestMaintenance(manifests)
    report = ScrubReport(repair=repair)
    for item in await allBlobs(blobStore):
        report.blobs += 1
        report.blobBytes += item.size
        progress("blobs hashed", 1)
        problem = await _blobProblem(blobs, item.digest, item.size)
        if problem is not None:
            repaired = repair and await blobStore.quarantineBlob(item.digest)
            report.problems.append(Problem("corrupt blob", item.digest, None, problem, repaired))
    for repository in await allRepositories(manifests, blobStore):
        for digest, read in (await readManifests(manifests, repository, progress)).items():
            report.manifests += 1
            if read.problem is not None or read.parsed is None:
                repaired = repair and await backend.quarantineManifest(repository, digest)
                detail = read.problem or "unreadable"
                report.problems.append(Problem("corrupt manifest", digest, repository, detail, repaired))
                continue
            for blob in read.parsed.blobs:
                if not await blobs.isLinked(repository, blob):
                    detail = f"manifest {digest} needs it"
                    report.problems.append(Problem("missing blob", blob, repository, detail))
            for child in read.parsed.children:
                if await manifests.getManifest(repository, child) is None:
                    detail = f"index {digest} needs it"
                    report.problems.append(Problem("missing child", child, repository, detail))
    return report
