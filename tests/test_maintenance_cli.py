"""
The maintenance verbs of the C{ociklein} command, run as a separate process
on an fs root a registry in this process serves: exit statuses, one-line
errors, JSON output, and scrub finding and repairing corruption.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import StubClient

from ociklein import Registry
from tests.helpers import digestOf, pushBlob, pushImage

CONFIG = b'{"architecture":"amd64","os":"linux"}'


def ociklein(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ociklein.cli", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def fsRegistry(tmp_path: Path) -> Any:
    from ociklein.storage.fs import FilesystemBlobStore, FilesystemManifestBackend

    root = tmp_path / "root"
    blobs = FilesystemBlobStore(str(root))
    yield root, StubClient(Registry(FilesystemManifestBackend(str(root)), blobs))
    blobs.close()


@pytest.mark.parametrize("verb", ["gc", "scrub", "du"])
def test_wrongRoot(tmp_path: Path, verb: str) -> None:
    """A missing root, a file, or a directory that is no storage root: one line, exit 2, nothing created."""
    (tmp_path / "file").write_text("")
    (tmp_path / "other").mkdir()
    for root, reason in [("missing", "does not exist"), ("file", "not a directory"), ("other", "no blobs/")]:
        result = ociklein(verb, "--root", str(tmp_path / root))
        assert result.returncode == 2
        assert reason in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "missing").exists()
    assert list((tmp_path / "other").iterdir()) == []


def test_incompatibleRoot(tmp_path: Path) -> None:
    """A root laid out by another version of the format is refused in one line."""
    for name in ("blobs", "repositories"):
        (tmp_path / name).mkdir()
    (tmp_path / "ociklein-format").write_text("2\n")
    result = ociklein("gc", "--root", str(tmp_path))
    assert result.returncode == 2
    assert "layout version '2'" in result.stderr and result.stderr.count("\n") == 1


def test_badGrace(tmp_path: Path) -> None:
    """A --grace that is not a duration is a usage error."""
    result = ociklein("gc", "--root", str(tmp_path), "--grace", "soon")
    assert result.returncode == 2 and "duration" in result.stderr


def test_configFile(tmp_path: Path) -> None:
    """The root comes from the registry's own config file."""
    config = tmp_path / "tap.cfg"
    config.write_text(f"[ociregistry]\nbackend = fs\nroot = {tmp_path / 'nowhere'}\nworkers = 2\n")
    result = ociklein("du", "--config", str(config))
    assert result.returncode == 2 and "nowhere does not exist" in result.stderr


@pytest_twisted.ensureDeferred
async def test_gcJson(fsRegistry: Any) -> None:
    """gc --json reports what it removed and the bytes freed; a dry run first removes nothing."""
    root, stub = fsRegistry
    await pushImage(stub, "app", "v1")
    await pushBlob(stub, "app", b"orphan layer" * 100)
    dry = ociklein("gc", "--root", str(root), "--grace", "0", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["freedBytes"] == 1200
    assert (await stub.request("GET", f"/v2/app/blobs/{digestOf(b'orphan layer' * 100)}")).code == 200
    result = ociklein("gc", "--root", str(root), "--grace", "0s", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["freedBytes"] == 1200
    assert {(r["kind"], r["digest"]) for r in report["removed"]} == {
        ("link", digestOf(b"orphan layer" * 100)),
        ("blob", digestOf(b"orphan layer" * 100)),
    }
    assert (await stub.request("GET", "/v2/app/manifests/v1")).code == 200
    human = ociklein("gc", "--root", str(root), "--grace", "0")
    assert human.stdout.splitlines()[-1].startswith("gc: removed 0 manifests, 0 links, 0 blobs")


@pytest_twisted.ensureDeferred
async def test_scrubFindsAndRepairs(fsRegistry: Any) -> None:
    """Scrub finds a flipped byte and a cut manifest; --repair makes both unknown; a push restores."""
    root, stub = fsRegistry
    layer = b"layer bytes " * 1000
    digest, content = await pushImage(stub, "app", "v1", layers=(layer,))
    other, otherContent = await pushImage(stub, "app", "v2", config=b'{"v": 2}', layers=(b"two",))
    assert ociklein("scrub", "--root", str(root)).returncode == 0
    blob = root / "blobs" / "sha256" / digestOf(layer)[7:9] / digestOf(layer)[7:]
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    manifest = root / "repositories" / "app" / "_manifests" / "sha256" / other[7:]
    manifest.write_bytes(manifest.read_bytes()[:-20])
    found = ociklein("scrub", "--root", str(root), "--json")
    assert found.returncode == 1
    problems = {(p["kind"], p["digest"]) for p in json.loads(found.stdout)["problems"]}
    assert ("corrupt blob", digestOf(layer)) in problems
    assert ("corrupt manifest", other) in problems
    repaired = ociklein("scrub", "--root", str(root), "--repair")
    assert repaired.returncode == 1
    assert "moved to quarantine/" in repaired.stdout
    assert (await stub.request("GET", f"/v2/app/blobs/{digestOf(layer)}")).code == 404
    assert (await stub.request("GET", f"/v2/app/manifests/{other}")).code == 404
    assert len(list((root / "quarantine").rglob("sha256-*"))) == 2
    await pushImage(stub, "app", "v1", layers=(layer,))
    await pushImage(stub, "app", "v2", config=b'{"v": 2}', layers=(b"two",))
    response = await stub.request("GET", f"/v2/app/blobs/{digestOf(layer)}")
    assert response.code == 200 and response.body == layer
    assert (await stub.request("GET", f"/v2/app/manifests/{other}")).body == otherContent
    clean = ociklein("scrub", "--root", str(root))
    assert clean.returncode == 0, clean.stdout
    assert clean.stdout.strip().endswith("0 problems")
    assert digest and content


@pytest_twisted.ensureDeferred
async def test_du(fsRegistry: Any) -> None:
    """du splits each repository's bytes into unique and shared, against the bytes stored."""
    root, stub = fsRegistry
    shared = b"shared" * 1000
    await pushImage(stub, "one", "v1", layers=(shared, b"one" * 100))
    await pushImage(stub, "two", "v1", layers=(shared,))
    result = ociklein("du", "--root", str(root), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    usage = {r["repository"]: r for r in report["repositories"]}
    assert usage["one"]["unique"] == 300
    assert usage["one"]["shared"] == usage["two"]["shared"] == 6000 + len(CONFIG)
    assert usage["two"]["unique"] == 0
    assert report["blobBytes"] == 6300 + len(CONFIG)
    assert report["storedBytes"] >= report["blobBytes"] + report["manifestBytes"]
    human = ociklein("du", "--root", str(root))
    assert human.stdout.splitlines()[0].split() == ["UNIQUE", "SHARED", "MANIFESTS", "REPOSITORY"]
