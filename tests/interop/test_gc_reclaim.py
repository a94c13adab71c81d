"""
Reclaim, as a user would see it: skopeo pushes 10 images sharing layers to
a live fs registry, deletes 5, and C{ociklein gc} (a separate process, the
registry still serving) leaves on disk the bytes of what remains plus
metadata, within 1 %; every remaining image pulls back identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from clicommand import runInTerminal
from interophelpers import RunningRegistry, skopeo, startRegistry, stopRegistry
from ocilayout import Image, canonical, randomLayer, readLayout, sha256, writeLayout

from tests.helpers import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST

IMAGES = 10


def sharedImages(baseBytes: int = 256 * 1024, ownBytes: int = 96 * 1024) -> list[Image]:
    """
    Ten images over two shared base layers, each with a layer of its own
    (random, so incompressible: the sizes are about those on disk).
    """
    base = [randomLayer(files=4, size=baseBytes // 4) for _ in range(2)]
    images = []
    for i in range(IMAGES):
        layers = [*base, randomLayer(files=2, size=ownBytes // 2)]
        config = canonical(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"image": str(i)}},
                "rootfs": {"type": "layers", "diff_ids": [sha256(raw) for _, raw in layers]},
            }
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(gz), "size": len(gz)} for gz, _ in layers],
        }
        blobs = {sha256(config): config, **{sha256(gz): gz for gz, _ in layers}}
        images.append(Image(canonical(manifest), blobs))
    return images


def bytesUnder(root: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(root) for f in files)


def test_reclaimAfterDeletingHalf(tmp_path: Path) -> None:
    """gc on a live root frees deleted images to within 1 % of what remains; the rest pulls back identical."""
    server: RunningRegistry = startRegistry("fs", tmp_path)
    root = tmp_path / "root"
    try:
        images = sharedImages()
        for i, image in enumerate(images):
            layout = writeLayout(tmp_path / f"layout-{i}", image, f"v{i}")
            skopeo(
                "copy",
                "--dest-tls-verify=false",
                f"oci:{layout}:v{i}",
                f"docker://{server.address}/gc/app:v{i}",
            )
        before = bytesUnder(root)
        for i in range(5, IMAGES):
            skopeo("delete", "--tls-verify=false", f"docker://{server.address}/gc/app:v{i}")
        result = subprocess.run(
            [sys.executable, "-m", "ociklein.cli", "gc", "--root", str(root), "--grace", "0", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        after = bytesUnder(root)
        kept = images[:5]
        content = {d: len(b) for image in kept for d, b in image.blobs.items()}
        remaining = sum(content.values()) + sum(len(image.manifest) for image in kept)
        print(
            f"\nreclaim: {before} bytes before, {after} after ociklein gc (freed {report['freedBytes']}); "
            f"remaining content {remaining} bytes, {100 * (after - remaining) / remaining:.2f} % over"
        )
        assert remaining <= after <= remaining * 1.01
        assert report["storedAfter"] == after
        for i, image in enumerate(kept):
            out = tmp_path / f"pulled-{i}"
            skopeo(
                "copy", "--src-tls-verify=false", f"docker://{server.address}/gc/app:v{i}", f"oci:{out}:v{i}"
            )
            index, blobs = readLayout(out)
            assert index["manifests"][0]["digest"] == image.digest
            assert {sha256(data) for data in blobs.values()} == {image.digest, *image.blobs}
    finally:
        stopRegistry(server)


def test_progressInATerminal(tmp_path: Path) -> None:
    """On a terminal, gc draws its progress on the screen and still ends with its summary."""
    server: RunningRegistry = startRegistry("fs", tmp_path)
    try:
        image = sharedImages()[0]
        layout = writeLayout(tmp_path / "layout", image, "v1")
        skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{server.address}/gc/tty:v1")
    finally:
        stopRegistry(server)
    status, output = runInTerminal(dict(os.environ), "gc", "--root", str(tmp_path / "root"))
    assert status == 0, output
    assert "\x1b[" in output  # drawn, not logged
    assert "blobs swept" in output
    assert "gc: removed 0 manifests, 0 links, 0 blobs" in output
