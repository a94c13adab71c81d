"""
Maintenance of an s3 bucket: C{ociklein gc}, C{scrub} and C{du} with
C{--backend s3} (run as a separate process, as an operator would), the
collector lease that allows one collection at a time per bucket and
prefix, and garbage collection racing pushes through a real node.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from conftest import LiveClient, StubClient
from helpers import digestOf, pushBlob, pushImage
from seaweedfixture import S3Backends, SeaweedFS, s3Arguments
from twistdprocess import TwistdRegistry
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from ociklein import Registry
from ociklein.interfaces import CollectionRefused
from ociklein.maintenance import CollectionReport, collect
from tests.test_gc_race import Outcome, race, verify

CONFIG = b'{"architecture":"amd64","os":"linux"}'


def ociklein(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ociklein.cli", *args], capture_output=True, text=True, timeout=120
    )


async def nextSecond(backends: S3Backends) -> None:
    """
    Wait (at most 10 s) until the store's clock is past the second in
    which anything written so far was stamped, so that a collection with
    no grace may remove it (a use in the cutoff's second keeps an object).
    """
    start = await backends.blobs.now()
    for _ in range(100):
        if await backends.blobs.now() > start:
            return
        await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError("the store's clock did not move in 10 s")


@pytest.fixture
def node(seaweedfs: SeaweedFS) -> Iterator[tuple[S3Backends, StubClient, list[str]]]:
    """
    A registry on a fresh prefix of the bucket, and the C{ociklein}
    options that name the same bucket and prefix.
    """
    backends = S3Backends(seaweedfs)
    options = s3Arguments(seaweedfs, backends.prefix)
    yield backends, StubClient(Registry(backends.manifests, backends.blobs)), options
    backends.close()


@pytest_twisted.ensureDeferred
async def test_gcScrubDuOnS3(node: tuple[S3Backends, StubClient, list[str]]) -> None:
    """gc --backend s3 frees an orphan blob, keeps the image; du counts bytes; scrub finds a flipped byte."""
    backends, stub, options = node
    layer = b"layer bytes " * 1000
    await pushImage(stub, "app", "v1", layers=(layer,))
    orphan = b"orphan layer" * 100
    await pushBlob(stub, "app", orphan)
    await nextSecond(backends)
    usage = ociklein("du", *options, "--json")
    assert usage.returncode == 0, usage.stderr
    report = json.loads(usage.stdout)
    assert report["blobBytes"] == len(layer) + len(orphan) + len(CONFIG)
    assert report["storedBytes"] >= report["blobBytes"] + report["manifestBytes"]
    [app] = report["repositories"]
    assert app["repository"] == "app" and app["unique"] == len(layer) + len(orphan) + len(CONFIG)
    gc = ociklein("gc", *options, "--grace", "0", "--json")
    assert gc.returncode == 0, gc.stderr
    removed = json.loads(gc.stdout)
    assert removed["freedBytes"] == len(orphan)
    assert {(r["kind"], r["digest"]) for r in removed["removed"]} == {
        ("link", digestOf(orphan)),
        ("blob", digestOf(orphan)),
    }
    assert (await stub.request("GET", f"/v2/app/blobs/{digestOf(orphan)}")).code == 404
    assert (await stub.request("GET", f"/v2/app/blobs/{digestOf(layer)}")).body == layer
    assert (await stub.request("GET", "/v2/app/manifests/v1")).code == 200
    # The lease was given back: the next collection runs.
    assert backends.client.head(backends.blobs._lease.key) is None
    assert ociklein("scrub", *options).returncode == 0
    key = backends.client.keys.blob(digestOf(layer))
    damaged = bytearray(layer)
    damaged[100] ^= 1
    backends.client.put(key, bytes(damaged))
    found = ociklein("scrub", *options, "--json")
    assert found.returncode == 1, found.stdout
    problems = {(p["kind"], p["digest"]) for p in json.loads(found.stdout)["problems"]}
    assert problems == {("corrupt blob", digestOf(layer))}
    repaired = ociklein("scrub", *options, "--repair")
    assert repaired.returncode == 1 and "quarantine" in repaired.stdout
    assert (await stub.request("GET", f"/v2/app/blobs/{digestOf(layer)}")).code == 404


def test_s3OptionsCheckedAsTheRegistryDoes(seaweedfs: SeaweedFS, tmp_path: Any) -> None:
    """A missing bucket or unreadable CA file is the registry's one-line error, exit 2; tap.cfg keys work."""
    options = s3Arguments(seaweedfs)
    wrong = [o if not o.startswith("--s3-bucket=") else "--s3-bucket=no-such-bucket" for o in options]
    result = ociklein("du", *wrong)
    assert result.returncode == 2
    assert "no such bucket" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    result = ociklein("gc", *options, f"--s3-ca-file={tmp_path / 'missing.pem'}")
    assert result.returncode == 2 and "cannot read the file" in result.stderr
    config = tmp_path / "tap.cfg"
    lines = [o.removeprefix("--").replace("=", " = ", 1) for o in options]
    config.write_text("[ociregistry]\n" + "\n".join(lines) + "\n")
    result = ociklein("du", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["blobs"] == 0


@pytest_twisted.ensureDeferred
async def test_secondCollectorRefused(node: tuple[S3Backends, StubClient, list[str]]) -> None:
    """While one collection holds the lease, `ociklein gc` on that bucket and prefix exits 1 in one line."""
    backends, stub, options = node
    await pushBlob(stub, "app", b"unreferenced")
    held = await backends.blobs.acquireCollectorLease("first collector")
    try:
        refused = ociklein("gc", *options, "--grace", "0")
        assert refused.returncode == 1, refused.stdout
        assert "another collection (first collector) holds the lease" in refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert (await stub.request("HEAD", f"/v2/app/blobs/{digestOf(b'unreferenced')}")).code == 200
        with pytest.raises(CollectionRefused):
            await collect(backends.manifests, backends.blobs, grace=0)
        # A dry run removes nothing and needs no lease.
        assert ociklein("gc", *options, "--grace", "0", "--dry-run").returncode == 0
    finally:
        await held.release()
    done = ociklein("gc", *options, "--grace", "0")
    assert done.returncode == 0, done.stderr


@pytest_twisted.ensureDeferred
async def test_leaseTakenOnceAtATime(seaweedfs: SeaweedFS) -> None:
    """Collectors racing for the lease: exactly one wins each time (the store's conditional PUT)."""
    first = S3Backends(seaweedfs)
    nodes = [first, S3Backends(seaweedfs, first.prefix)]
    try:
        for _ in range(5):
            results = await defer.DeferredList(
                [n.blobs.acquireCollectorLease(f"node {i}") for i, n in enumerate(nodes * 2)],
                consumeErrors=True,
            )
            held = [value for ok, value in results if ok]
            refused = [value for ok, value in results if not ok]
            assert len(held) == 1, results
            assert all(f.check(CollectionRefused) for f in refused), refused
            await held[0].release()
    finally:
        for n in nodes:
            n.close()


@pytest_twisted.ensureDeferred
async def test_expiredLeaseTakenOver(seaweedfs: SeaweedFS) -> None:
    """A lease its collector stopped renewing (it died) is taken over once expired on the store's clock."""
    backends = S3Backends(seaweedfs)
    try:
        lease = backends.blobs._lease
        now = await backends.blobs.now()
        dead = json.dumps({"owner": "a dead collector", "expires": now - 1}).encode()
        backends.client.put(lease.key, dead)
        held = await backends.blobs.acquireCollectorLease("the next one")
        got = backends.client.get(lease.key)
        assert got is not None and json.loads(got[0])["owner"] == "the next one"
        await held.release()
    finally:
        backends.close()


@pytest_twisted.ensureDeferred
async def test_lostLeaseStopsDeletions(seaweedfs: SeaweedFS) -> None:
    """A collector whose lease was taken over, or not renewed in time, refuses its next deletion."""
    backends = S3Backends(seaweedfs)
    try:
        held: Any = await backends.blobs.acquireCollectorLease("slow collector")
        held.check()
        held._confirmed -= backends.blobs._lease.seconds  # no renewal confirmed for a whole lease
        with pytest.raises(CollectionRefused, match="not renewed"):
            held.check()
        await held._renew()
        held.check()
        # Another collector overwrote the lease (it thought ours expired).
        backends.client.put(backends.blobs._lease.key, b'{"owner": "other", "expires": 0}')
        await held._renew()
        with pytest.raises(CollectionRefused, match="taken by another"):
            held.check()
        await held.release()
        assert backends.client.get(backends.blobs._lease.key) is not None  # the other's lease stays
    finally:
        backends.close()


@pytest_twisted.ensureDeferred
async def test_collectionStopsWhenLeaseLost(
    node: tuple[S3Backends, StubClient, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection whose lease another collector took deletes nothing more and fails."""
    backends, stub, _ = node
    await pushBlob(stub, "app", b"unreferenced")
    acquire = backends.blobs.acquireCollectorLease

    async def stolen(owner: str) -> Any:
        held: Any = await acquire(owner)
        backends.client.put(backends.blobs._lease.key, b'{"owner": "other", "expires": 0}')
        await held._renew()
        return held

    monkeypatch.setattr(
        backends.blobs, "acquireCollectorLease", lambda owner: defer.Deferred.fromCoroutine(stolen(owner))
    )
    # A collection a minute from now: the blob just pushed is a candidate.
    later = (await backends.blobs.now()) + 60
    for backend in (backends.blobs, backends.manifests):
        monkeypatch.setattr(backend, "now", lambda: defer.succeed(later))
    with pytest.raises(CollectionRefused, match="taken by another"):
        await collect(backends.manifests, backends.blobs, grace=0)
    assert (await stub.request("HEAD", f"/v2/app/blobs/{digestOf(b'unreferenced')}")).code == 200


ROUNDS = 8


@pytest_twisted.ensureDeferred
async def test_gcRacingPushesOnS3(
    seaweedfs: SeaweedFS, twistdRegistry: Callable[..., TwistdRegistry]
) -> None:
    """Collections with no grace while a node pushes, retags and deletes: nothing acknowledged is lost."""
    backends = S3Backends(seaweedfs)
    server = twistdRegistry(*s3Arguments(seaweedfs, backends.prefix), "--access-log=no")
    client = LiveClient(server.url)
    outcome = Outcome()

    async def collections(n: int) -> list[CollectionReport]:
        if n % 2:
            await nextSecond(backends)  # what was unreferenced a second ago can go
        return [await collect(backends.manifests, backends.blobs, grace=0, untagged=n % 2 == 1)]

    try:
        await race(client, outcome, collections, ROUNDS, chunked=True)
        during = await verify(client, outcome)
        final = await collect(backends.manifests, backends.blobs, grace=0, untagged=True)
        after = await verify(client, outcome)
    finally:
        backends.close()
    print(
        f"\ns3 gc race: {outcome.rounds} rounds; {outcome.acknowledged} manifests acknowledged, "
        f"{outcome.retries} retried, {outcome.deletes} deletes; removed {outcome.removed}, "
        f"{outcome.refused} refused, final removed {len(final.removed)}; "
        f"{len(during)} missing, {len(after)} after"
    )
    assert outcome.rounds == ROUNDS
    assert during == [] and after == []
    assert outcome.removed.get("blob", 0) > 0, outcome.removed  # collected while pushes went on


@pytest_twisted.ensureDeferred
async def test_periodicCollectionSkipsItsTurn(node: tuple[S3Backends, StubClient, list[str]]) -> None:
    """A node's periodic collection that finds the lease held logs one line and skips, no traceback."""
    from twisted.logger import globalLogPublisher

    from ociklein.maintenance._service import CollectionService

    backends, stub, _ = node
    await pushBlob(stub, "app", b"unreferenced")
    events: list[dict[str, Any]] = []
    held = await backends.blobs.acquireCollectorLease("another node")
    globalLogPublisher.addObserver(events.append)
    try:
        await CollectionService(backends.manifests, backends.blobs, interval=600, grace=0)._once()
    finally:
        globalLogPublisher.removeObserver(events.append)
        await held.release()
    assert [e for e in events if "log_failure" in e] == []
    [skipped] = [e for e in events if "skipped" in e.get("log_format", "")]
    assert "another collection (another node) holds the lease" in skipped["reason"]
    assert (await stub.request("HEAD", f"/v2/app/blobs/{digestOf(b'unreferenced')}")).code == 200
