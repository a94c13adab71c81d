"""
Cross-checks with the containers tools: what C{ociklein push} uploads,
skopeo pulls back identically, and the other way round; an OCI layout
written by C{ociklein pull} is read by C{skopeo copy oci:} and unpacked by
umoci.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from clicommand import ociklein, userEnvironment
from interophelpers import COMMAND_TIMEOUT, skopeo
from ocilayout import makeImage, makeIndex, readLayout, writeLayout

pytest_plugins = ["clientfixtures"]


@pytest.mark.parametrize("target", ["fs", "distribution"], indirect=True)
def test_ociklein_push_then_skopeo_pull(target: Any, tmp_path: Path) -> None:
    """A multi-arch image pushed by ociklein is pulled by skopeo --all with the same digests and bytes."""
    env = userEnvironment(tmp_path / "user")
    index = makeIndex([("linux", "amd64"), ("linux", "arm64")])
    writeLayout(tmp_path / "in", index, "v1")
    assert ociklein(env, "push", f"{tmp_path / 'in'}:v1", f"{target.address}/x/pushed:v1").returncode == 0
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{target.address}/x/pushed:v1",
           f"oci:{tmp_path / 'back'}:v1")  # fmt: skip
    layoutIndex, blobs = readLayout(tmp_path / "back")
    assert layoutIndex["manifests"][0]["digest"] == index.digest
    assert blobs == {**index.blobs, index.digest: index.manifest}


@pytest.mark.parametrize("target", ["memory", "distribution"], indirect=True)
def test_skopeo_push_then_ociklein_pull_read_by_skopeo_and_umoci(target: Any, tmp_path: Path) -> None:
    """An image pushed by skopeo and pulled by ociklein is read by skopeo and unpacked by umoci."""
    if shutil.which("umoci") is None:
        pytest.fail("umoci is not installed (apt-get install umoci)")
    env = userEnvironment(tmp_path / "user")
    image = makeImage(layers=2)
    writeLayout(tmp_path / "in", image, "v1")
    skopeo(
        "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'in'}:v1", f"docker://{target.address}/x/sk:v1"
    )
    pulled = ociklein(env, "pull", f"{target.address}/x/sk:v1", str(tmp_path / "out"))
    assert pulled.returncode == 0, pulled.stderr
    layoutIndex, blobs = readLayout(tmp_path / "out")
    assert layoutIndex["manifests"][0]["digest"] == image.digest
    assert blobs == {**image.blobs, image.digest: image.manifest}

    skopeo("copy", f"oci:{tmp_path / 'out'}:v1", f"oci:{tmp_path / 'again'}:v1")
    assert readLayout(tmp_path / "again")[0]["manifests"][0]["digest"] == image.digest
    unpacked = subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{tmp_path / 'out'}:v1", str(tmp_path / "bundle")],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert unpacked.returncode == 0, unpacked.stderr
    files = list((tmp_path / "bundle" / "rootfs" / "data").iterdir())
    assert len(files) == 4  # two files in each of the two layers
