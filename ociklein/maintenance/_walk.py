"""
Reading a whole store through the maintenance contracts: every page of a
listing, every repository, every manifest parsed and checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

from ociklein.core import computeDigest
from ociklein.errors import OCIError
from ociklein.interfaces import IBlobMaintenance, IManifestBackend, IManifestMaintenance, StoredItem
from ociklein.manifests import Manifest, parseManifest

PAGE = 1000

_T = TypeVar("_T")

# Told what is being done and how many of it so far, for a progress display.
Progress = Callable[[str, int], None]


def noProgress(what: str, done: int) -> None:
    pass


async def everything(fetch: Callable[[Any, int], Deferred[list[_T]]], key: Callable[[_T], str]) -> list[_T]:
    """
    Every entry of a paged listing.
    """
    found: list[_T] = []
    last = None
    while True:
        page = await fetch(last, PAGE)
        found.extend(page)
        if len(page) < PAGE:
            return found
        last = key(page[-1])


def _name(name: str) -> str:
    return name


def _digest(item: StoredItem) -> str:
    return item.digest


async def allRepositories(manifests: IManifestBackend, blobs: IBlobMaintenance) -> list[str]:
    """
    Repositories known to the manifest backend or holding links.
    """
    named = await everything(manifests.listRepositories, _name)
    linked = await everything(blobs.listLinkedRepositories, _name)
    return sorted(set(named) | set(linked))


async def allBlobs(blobs: IBlobMaintenance) -> list[StoredItem]:
    return await everything(blobs.listBlobs, _digest)


async def allLinks(blobs: IBlobMaintenance, repository: str) -> list[StoredItem]:
    return await everything(lambda last, limit: blobs.listLinks(repository, last, limit), _digest)


async def allTags(manifests: IManifestBackend, repository: str) -> dict[str, str]:
    """
    Every tag of C{repository} and the digest it points at.
    """

    async def page(last: str | None, limit: int) -> list[str]:
        return await manifests.listTags(repository, last, limit) or []

    tags = await everything(lambda last, limit: Deferred.fromCoroutine(page(last, limit)), _name)
    found = {}
    for tag in tags:
        digest = await manifests.resolveTag(repository, tag)
        if digest is not None:
            found[tag] = digest
    return found


@dataclass
class ReadManifest:
    """
    A stored manifest as read back: parsed, or why it could not be.
    """

    repository: str
    item: StoredItem
    parsed: Manifest | None
    problem: str | None

    @property
    def digest(self) -> str:
        return self.item.digest


async def readManifests(
    manifests: IManifestBackend, repository: str, progress: Progress = noProgress
) -> dict[str, ReadManifest]:
    """
    Every manifest of C{repository}, read, its digest checked and parsed.
    One that vanished meanwhile (deleted) is left out.
    """
    maintained = IManifestMaintenance(manifests)
    items = await everything(lambda last, limit: maintained.listManifests(repository, last, limit), _digest)
    found = {}
    for item in items:
        progress("manifests read", 1)
        try:
            stored = await manifests.getManifest(repository, item.digest)
        except Exception as e:
            found[item.digest] = ReadManifest(repository, item, None, f"unreadable: {e}")
            continue
        if stored is None:
            continue
        mediaType, content = stored
        algorithm = item.digest.partition(":")[0]
        actual = computeDigest(content, algorithm)
        if actual != item.digest:
            problem = f"content hashes to {actual} ({len(content)} bytes)"
            found[item.digest] = ReadManifest(repository, item, None, problem)
            continue
        try:
            parsed = parseManifest(content, mediaType)
        except OCIError as e:
            found[item.digest] = ReadManifest(repository, item, None, f"invalid: {e.message}")
            continue
        found[item.digest] = ReadManifest(repository, item, parsed, None)
    return found
