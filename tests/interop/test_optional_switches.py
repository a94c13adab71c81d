"""
The switches for the spec's optional parts, through a real C{twistd
ociregistry} on both backends: skopeo copies an index without its platform
images (C{--multi-arch index-only}, as mirrors do) only when sparse
manifests are allowed, and a mount without C{from} is automatic only when
asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from interophelpers import RunningRegistry, http, skopeo, stopRegistry
from ocilayout import OCI_INDEX, makeIndex, sha256, writeLayout
from twistdprocess import TwistdRegistry

pytest_plugins = ["interopfixtures"]


@pytest.fixture(scope="module", params=["memory", "fs"])
def switchedOn(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningRegistry]:
    """
    A registry with every optional part switched on: memory by the
    command-line switches, fs by the configuration file's keys.
    """
    directory = tmp_path_factory.mktemp(f"switches-{request.param}")
    if request.param == "memory":
        args = ["--allow-sparse-manifests", "--automatic-mount"]
    else:
        config = directory / "ociregistry.cfg"
        config.write_text(
            f"[ociregistry]\nbackend = fs\nroot = {directory / 'root'}\n"
            "allow-sparse-manifests = yes\nautomatic-mount = yes\n"
        )
        args = ["--config", str(config)]
    running = TwistdRegistry(args, directory / "twistd.log").start()
    yield running
    stopRegistry(running)


def copyIndexOnly(server: RunningRegistry, tmp_path: Path, repository: str, check: bool) -> tuple[int, bytes]:
    index = makeIndex([("linux", "amd64"), ("linux", "arm64")])
    layout = writeLayout(tmp_path / "in", index, "v1")
    target = f"docker://{server.address}/{repository}:v1"
    result = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--multi-arch",
        "index-only",
        f"oci:{layout}:v1",
        target,
        check=check,
    )
    return result.returncode, index.manifest


def test_index_only_copy_with_sparse_manifests(switchedOn: RunningRegistry, tmp_path: Path) -> None:
    """skopeo copy --multi-arch index-only succeeds; the index is served as pushed, its children 404."""
    _, manifest = copyIndexOnly(switchedOn, tmp_path, "mirror/index-only", check=True)
    stored = http(switchedOn, "GET", "/v2/mirror/index-only/manifests/v1", headers={"Accept": OCI_INDEX})
    assert (stored.status_code, stored.headers["Content-Type"], stored.content) == (200, OCI_INDEX, manifest)
    inspected = skopeo(
        "inspect", "--tls-verify=false", "--raw", f"docker://{switchedOn.address}/mirror/index-only:v1"
    )
    assert inspected.stdout == manifest
    for child in stored.json()["manifests"]:
        missing = http(switchedOn, "GET", f"/v2/mirror/index-only/manifests/{child['digest']}")
        assert missing.status_code == 404
    assert http(switchedOn, "GET", "/v2/mirror/index-only/tags/list").json()["tags"] == ["v1"]


def test_index_only_copy_refused_by_default(interop: RunningRegistry, tmp_path: Path) -> None:
    """Without the switch, skopeo copy --multi-arch index-only fails and leaves nothing behind."""
    code, _ = copyIndexOnly(interop, tmp_path, "mirror/refused", check=False)
    assert code != 0
    assert http(interop, "GET", "/v2/mirror/refused/tags/list").status_code == 404


def mountWithoutFrom(server: RunningRegistry, tmp_path: Path) -> int:
    data = tmp_path.name.encode()
    digest = sha256(data)
    pushed = http(server, "POST", f"/v2/mount/source/blobs/uploads/?digest={digest}", data=data)
    assert pushed.status_code == 201, pushed.text
    return http(server, "POST", f"/v2/mount/target/blobs/uploads/?mount={digest}").status_code


def test_automatic_mount_switched_on(switchedOn: RunningRegistry, tmp_path: Path) -> None:
    """With the switch on, a mount without from is 201."""
    assert mountWithoutFrom(switchedOn, tmp_path) == 201


def test_automatic_mount_off_by_default(interop: RunningRegistry, tmp_path: Path) -> None:
    """By default a mount without from opens an upload session (202)."""
    assert mountWithoutFrom(interop, tmp_path) == 202
