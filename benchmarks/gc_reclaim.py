"""
Reclaim after deleting images: ociklein gc (online, the registry serving)
against CNCF Distribution's `docker-registry garbage-collect` (offline, as
its documentation requires) on the same data.

    python benchmarks/gc_reclaim.py [--base-mib 4] [--own-mib 1]

Both registries get the same 10 images (two shared base layers and one
layer of their own each) from skopeo, then `skopeo delete` removes 5 of
them; the script prints the bytes on disk of each root before and after
its collector, and what the remaining content weighs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "interop"), str(HERE.parent)]

from ocilayout import writeLayout  # noqa: E402
from test_gc_reclaim import sharedImages  # noqa: E402
from twistdprocess import TwistdRegistry, freePort  # noqa: E402

REGISTRY = "/usr/bin/docker-registry"


def du(root: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(root) for f in files)


def skopeo(*args: str) -> None:
    subprocess.run(["skopeo", "--insecure-policy", *args], check=True, capture_output=True, timeout=120)


def distribution(workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path, Path]:
    root = workdir / "distribution-root"
    root.mkdir()
    port = freePort()
    config = workdir / "distribution.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  delete:\n    enabled: true\n"
        f"  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: gc\n"
    )
    process = subprocess.Popen(
        [REGISTRY, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            import urllib.request

            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    return process, f"127.0.0.1:{port}", root, config


def pushAndDelete(address: str, layouts: list[Path]) -> None:
    for i, layout in enumerate(layouts):
        skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v{i}", f"docker://{address}/gc/app:v{i}")
    for i in range(5, len(layouts)):
        skopeo("delete", "--tls-verify=false", f"docker://{address}/gc/app:v{i}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-mib", type=float, default=4.0, help="size of each shared base layer")
    parser.add_argument("--own-mib", type=float, default=1.0, help="size of each image's own layer")
    args = parser.parse_args()
    images = sharedImages(int(args.base_mib * 1024 * 1024), int(args.own_mib * 1024 * 1024))
    kept = images[:5]
    remaining = sum(len(b) for b in {d: b for i in kept for d, b in i.blobs.items()}.values())
    remaining += sum(len(i.manifest) for i in kept)
    with tempfile.TemporaryDirectory() as temp:
        workdir = Path(temp)
        layouts = [writeLayout(workdir / f"layout-{i}", image, f"v{i}") for i, image in enumerate(images)]

        root = workdir / "ociklein-root"
        server = TwistdRegistry(["--backend=fs", f"--root={root}"], workdir / "twistd.log").start()
        try:
            pushAndDelete(server.address, layouts)
            before = du(root)
            started = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "ociklein.cli", "gc", "--root", str(root), "--grace", "0"],
                check=True,
                capture_output=True,
            )
            ocikleinTime = time.monotonic() - started
            ociklein = (before, du(root))
        finally:
            server.stop()

        process, address, droot, config = distribution(workdir)
        try:
            pushAndDelete(address, layouts)
        finally:
            process.terminate()
            process.wait(10)
        dbefore = du(droot)
        started = time.monotonic()
        subprocess.run([REGISTRY, "garbage-collect", str(config)], check=True, capture_output=True)
        distributionTime = time.monotonic() - started
        dist = (dbefore, du(droot))

    print(f"remaining content (5 images): {remaining} bytes")
    print(f"{'':42} {'before':>12} {'after':>12} {'freed':>12} {'over content':>13} {'time':>7}")
    for name, (b, a), t in [
        ("ociklein gc (online)", ociklein, ocikleinTime),
        ("docker-registry garbage-collect (offline)", dist, distributionTime),
    ]:
        print(f"{name:42} {b:>12} {a:>12} {b - a:>12} {100 * (a - remaining) / remaining:>12.2f}% {t:>6.2f}s")


if __name__ == "__main__":
    main()
