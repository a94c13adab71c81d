"""
The filesystem backend's promise, as a user would try it: push an image with
skopeo, kill -9 the registry, start it again on the same root, pull the
image back with identical digests.
"""

from __future__ import annotations

from pathlib import Path

from interophelpers import pushWithSkopeo, skopeo
from ocilayout import OCI_MANIFEST, makeImage, readLayout, writeLayout
from twistdprocess import TwistdRegistry


def test_image_survives_kill_9(tmp_path: Path) -> None:
    """An image skopeo pushed to an fs registry is pulled back byte-identical after SIGKILL and restart."""
    root = tmp_path / "root"
    image = makeImage(layers=4)
    first = TwistdRegistry(["--backend=fs", f"--root={root}"], tmp_path / "first.log").start()
    try:
        pushWithSkopeo(first, writeLayout(tmp_path / "in", image, "v1"), "v1", "durable/app")
    finally:
        first.kill()
    second = TwistdRegistry(["--backend=fs", f"--root={root}"], tmp_path / "second.log").start()
    try:
        skopeo(
            "copy",
            "--src-tls-verify=false",
            f"docker://{second.address}/durable/app:v1",
            f"oci:{tmp_path / 'out'}:v1",
        )
        listed = skopeo("list-tags", "--tls-verify=false", f"docker://{second.address}/durable/app")
    finally:
        second.stop()
    index, blobs = readLayout(tmp_path / "out")
    [entry] = index["manifests"]
    assert (entry["mediaType"], entry["digest"]) == (OCI_MANIFEST, image.digest)
    assert blobs == {image.digest: image.manifest, **image.blobs}
    assert b'"v1"' in listed.stdout
