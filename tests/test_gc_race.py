"""
Garbage collection racing writes: a real C{twistd ociregistry} serves an fs
root while clients push images that reuse old blobs, mount, retag, delete
and upload in chunks across collections, and two collectors in this
process sweep the same root, round after round, with no grace period.
Nothing acknowledged may go missing, and no upload session may break.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest_twisted
from conftest import LiveClient
from twistdprocess import TwistdRegistry
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from ociklein.maintenance import CollectionReport, collect
from tests.helpers import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, digestOf, header

ROUNDS = 50
PUSHERS = 3
SHARED = [f"shared base layer {i} ".encode() * 2000 for i in range(3)]


@dataclass
class Outcome:
    rounds: int = 0
    acknowledged: int = 0
    retries: int = 0
    deletes: int = 0
    mounts: int = 0
    sessions: int = 0
    brokenSessions: list[str] = field(default_factory=list)
    removed: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    # (repository, tag) -> (manifest digest, [(blob digest, bytes)])
    tagged: dict[tuple[str, str], tuple[str, list[tuple[str, bytes]]]] = field(default_factory=dict)

    def count(self, report: CollectionReport) -> None:
        """
        Add what one collection removed and refused.
        """
        assert report.unreadable == []
        for removed in report.removed:
            self.removed[removed.kind] = self.removed.get(removed.kind, 0) + 1
        self.refused += report.refused


async def uploadBlob(client: LiveClient, name: str, data: bytes) -> None:
    digest = digestOf(data)
    response = await client.request("POST", f"/v2/{name}/blobs/uploads/?digest={digest}", data=data)
    assert response.code == 201, (response.code, response.body)


async def ensureBlob(
    client: LiveClient, name: str, data: bytes, source: str | None, outcome: Outcome
) -> None:
    """
    As clients do: mount from another repository or skip what is there
    (HEAD), else upload.
    """
    digest = digestOf(data)
    if source is not None:
        mounted = await client.request("POST", f"/v2/{name}/blobs/uploads/?mount={digest}&from={source}")
        if mounted.code == 201:
            outcome.mounts += 1
            return
        location = header(mounted, "Location")
        if location is not None:
            await client.request("DELETE", location.removeprefix(client.base))
    if (await client.request("HEAD", f"/v2/{name}/blobs/{digest}")).code == 200:
        return
    await uploadBlob(client, name, data)


def manifestOf(blobs: list[bytes]) -> bytes:
    config, *layers = blobs
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digestOf(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": digestOf(b), "size": len(b)} for b in layers],
        }
    ).encode()


async def pushImage(
    client: LiveClient, name: str, tag: str, blobs: list[bytes], source: str | None, outcome: Outcome
) -> str:
    """
    Push until acknowledged: a collection may take a reused blob between
    the HEAD and the manifest, which the registry refuses (not acknowledges).
    """
    content = manifestOf(blobs)
    # Collections at grace 0 every few ms can refuse a push many times in a
    # row on a loaded machine; they stop after ROUNDS, so this ends.
    for _ in range(200):
        for data in blobs:
            await ensureBlob(client, name, data, source, outcome)
        response = await client.request(
            "PUT", f"/v2/{name}/manifests/{tag}", data=content, headers={"Content-Type": OCI_MANIFEST}
        )
        if response.code == 201:
            outcome.acknowledged += 1
            digest = digestOf(content)
            outcome.tagged[(name, tag)] = (digest, [(digestOf(b), b) for b in blobs])
            return digest
        assert response.code == 400 and b"MANIFEST_BLOB_UNKNOWN" in response.body, response.body
        outcome.retries += 1
    raise AssertionError(f"push of {name}:{tag} never acknowledged")


async def pusher(client: LiveClient, k: int, done: Callable[[], bool], outcome: Outcome) -> None:
    """
    Push images over shared and old layers, retag, delete some, mount
    from the previous pusher's repository.
    """
    rng = random.Random(k)
    name = f"race/p{k}"
    source = f"race/p{(k - 1) % PUSHERS}"
    deleted: list[bytes] = []
    i = 0
    while not done():
        i += 1
        unique = f"pusher {k} image {i} ".encode() * rng.randint(10, 400)
        layers = [rng.choice(SHARED), unique]
        if deleted and rng.random() < 0.5:
            layers.append(deleted.pop())  # an old blob no manifest references any more
        config = f'{{"pusher": {k}, "image": {i}}}'.encode()
        tag = f"t{i % 4}"  # retags: each tag moves every fourth image
        digest = await pushImage(
            client, name, tag, [config, *layers], source if i % 3 == 0 else None, outcome
        )
        if rng.random() < 0.3:
            response = await client.request("DELETE", f"/v2/{name}/manifests/{digest}")
            assert response.code == 202, response.body
            outcome.deletes += 1
            outcome.tagged = {
                key: value for key, value in outcome.tagged.items() if key[0] != name or value[0] != digest
            }
            deleted.append(unique)


async def chunkedUploader(
    client: LiveClient, rounds: Callable[[], int], done: Callable[[], bool], outcome: Outcome
) -> None:
    """
    Upload sessions left open across whole collections, then finished and
    pushed as images.
    """
    i = 0
    while not done():
        i += 1
        data = os.urandom(50_000)
        response = await client.request("POST", "/v2/race/chunked/blobs/uploads/")
        assert response.code == 202
        location = str(header(response, "Location")).removeprefix(client.base)
        outcome.sessions += 1
        for start in range(0, len(data), 10_000):
            chunk = data[start : start + 10_000]
            waitFor = rounds() + 1
            while rounds() < waitFor and not done():
                await deferLater(reactor, 0.005, lambda: None)
            response = await client.request(
                "PATCH",
                location,
                data=chunk,
                headers={
                    "Content-Range": f"{start}-{start + len(chunk) - 1}",
                    "Content-Type": "application/octet-stream",
                },
            )
            if response.code != 202:
                outcome.brokenSessions.append(f"PATCH {response.code} {response.body!r}")
                return
            location = str(header(response, "Location")).removeprefix(client.base)
        sep = "&" if "?" in location else "?"
        response = await client.request("PUT", f"{location}{sep}digest={digestOf(data)}")
        if response.code != 201:
            outcome.brokenSessions.append(f"PUT {response.code} {response.body!r}")
            return
        await pushImage(client, "race/chunked", f"c{i % 2}", [b'{"chunked": %d}' % i, data], None, outcome)


async def verify(client: LiveClient, outcome: Outcome) -> list[str]:
    """
    Every acknowledged tag still names its manifest, and every blob it
    references is served with its bytes.
    """
    missing = []
    for (name, tag), (digest, blobs) in sorted(outcome.tagged.items()):
        response = await client.request(
            "GET", f"/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
        )
        if response.code != 200 or digestOf(response.body) != digest:
            missing.append(f"manifest {name}:{tag} {response.code}")
            continue
        for blobDigest, data in blobs:
            got = await client.request("GET", f"/v2/{name}/blobs/{blobDigest}")
            if got.code != 200 or hashlib.sha256(got.body).digest() != hashlib.sha256(data).digest():
                missing.append(f"blob {name}@{blobDigest} {got.code}")
    return missing


async def race(
    client: LiveClient,
    outcome: Outcome,
    collections: Callable[[int], Awaitable[list[CollectionReport]]],
    rounds: int,
    chunked: bool,
) -> None:
    """
    Run C{rounds} rounds of C{collections} while L{PUSHERS} pushers (and,
    if C{chunked}, an uploader keeping sessions open across rounds) work
    against the registry, until the last round ends.
    """
    finished = False

    async def collecting() -> None:
        nonlocal finished
        try:
            for n in range(rounds):
                for report in await collections(n):
                    outcome.count(report)
                outcome.rounds += 1
                await deferLater(reactor, 0.02, lambda: None)
        finally:
            finished = True

    workers = [
        defer.Deferred.fromCoroutine(pusher(client, k, lambda: finished, outcome)) for k in range(PUSHERS)
    ]
    if chunked:
        workers.append(
            defer.Deferred.fromCoroutine(
                chunkedUploader(client, lambda: outcome.rounds, lambda: finished, outcome)
            )
        )
    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(collecting()), *workers], consumeErrors=True
    ).addTimeout(240, reactor)


@pytest_twisted.ensureDeferred
async def test_gcRacingWrites(tmp_path: Path, twistdRegistry: Callable[..., TwistdRegistry]) -> None:
    """50 rounds of two concurrent collections with no grace lose no acknowledged write, break no session."""
    from ociklein.storage.fs import FilesystemBlobStore, FilesystemManifestBackend

    root = tmp_path / "root"
    server = twistdRegistry("--backend=fs", f"--root={root}", "--access-log=no")
    client = LiveClient(server.url)
    collectors = [(FilesystemManifestBackend(str(root)), FilesystemBlobStore(str(root))) for _ in range(2)]
    outcome = Outcome()

    async def collections(n: int) -> list[CollectionReport]:
        return await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(collect(m, b, grace=0, untagged=(n + i) % 2 == 1))
                for i, (m, b) in enumerate(collectors)
            ],
            consumeErrors=True,
        )

    await race(client, outcome, collections, ROUNDS, chunked=True)
    during = await verify(client, outcome)
    # A last collection with nothing racing it must keep everything acknowledged too.
    final = await collect(*collectors[0], grace=0, untagged=True)
    after = await verify(client, outcome)
    for _, blobs in collectors:
        blobs.close()
    blobsChecked = sum(len(blobs) for _, blobs in outcome.tagged.values())
    print(
        f"\ngc race: {outcome.rounds} rounds x 2 collectors; {outcome.acknowledged} manifests acknowledged, "
        f"{outcome.retries} pushes refused and retried, {outcome.deletes} deletes, {outcome.mounts} mounts, "
        f"{outcome.sessions} chunked sessions across collections; removed {outcome.removed}, "
        f"{outcome.refused} deletions refused by a fence, final collection removed {len(final.removed)}; "
        f"{len(outcome.tagged)} tags and {blobsChecked} blobs checked: {len(during)} missing, "
        f"{len(after)} after the final collection; {len(outcome.brokenSessions)} sessions broken"
    )
    assert outcome.rounds == ROUNDS
    assert outcome.brokenSessions == []
    assert during == [] and after == []
    assert outcome.removed.get("blob", 0) > 0  # the collectors did collect while pushes went on
