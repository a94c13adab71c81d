#!/usr/bin/env python
"""
Times C{ociklein copy} against C{skopeo copy} for the same multi-layer image
between the same two registries, in the same run.

    python benchmarks/copybench.py                 # 8 layers of 32 MiB, 3 rounds per pair
    python benchmarks/copybench.py --quick         # 4 layers of 8 MiB, 2 rounds
    python benchmarks/copybench.py --pairs fs:distribution

Each pair C{SOURCE:DESTINATION} names two of the servers of run.py
(memory, fs, fs2, distribution), each started on a free 127.0.0.1 port.
The image is pushed to the source once.  Every round then starts a fresh
destination and copies the image there with each tool in turn (the order
alternating between rounds), so that nothing is skipped or mounted: every
layer is downloaded and uploaded again.  A fresh destination (on a new
port) each round matters: skopeo's blob-info cache, kept for root in
/var/lib/containers/cache whatever HOME says, would otherwise mount the
layers from an earlier round's repository.  The times are wall-clock
times of the whole command, process start included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import PROCESSES, SERVERS, SIGNALS, TRANSFER_TIMEOUT, MiB, Server, makeBlob, startServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def writeLayout(directory: Path, layers: int, size: int) -> int:
    """
    An OCI layout of one image of C{layers} random layers of C{size}
    bytes, tagged C{v1}; the bytes of all its blobs.
    """
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descriptors = []
    for i in range(layers):
        blob = makeBlob(directory / f"layer-{i}", size)
        os.replace(blob.path, blobs / blob.digest.partition(":")[2])
        descriptors.append({"mediaType": OCI_LAYER, "digest": blob.digest, "size": blob.size})

    def store(content: bytes) -> dict[str, object]:
        import hashlib

        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        (blobs / digest.partition(":")[2]).write_bytes(content)
        return {"digest": digest, "size": len(content)}

    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **store(config)},
        "layers": descriptors,
    }
    top = store(json.dumps(manifest).encode())
    entry = {"mediaType": OCI_MANIFEST, **top, "annotations": {"org.opencontainers.image.ref.name": "v1"}}
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layers * size + len(config)


def _fresh(directory: Path) -> Path:
    directory.mkdir()
    return directory


def address(server: Server) -> str:
    return f"127.0.0.1:{server.port}"


def run(argv: list[str], env: dict[str, str] | None = None) -> float:
    """
    Run a command to completion; its wall-clock seconds.
    """
    started = time.monotonic()
    process = PROCESSES.start(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = process.communicate(timeout=TRANSFER_TIMEOUT)
    finally:
        PROCESSES.stop(process)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {process.returncode}: {err.decode(errors='replace')}")
    return seconds


def ocikleinCopy(source: str, destination: str) -> list[str]:
    beside = Path(sys.executable).parent / "ociklein"
    command = [str(beside)] if beside.exists() else [sys.executable, "-m", "ociklein.cli"]
    return [*command, "copy", "--json", source, destination]


def skopeoCopy(source: str, destination: str) -> list[str]:
    return [
        "skopeo", "--insecure-policy", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
        f"docker://{source}", f"docker://{destination}",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 layers of 8 MiB, 2 rounds")
    parser.add_argument("--layers", type=int, default=None, help="layers in the image (8)")
    parser.add_argument("--layer-mib", type=int, default=None, help="MiB per layer (32)")
    parser.add_argument("--rounds", type=int, default=None, help="copies per tool and pair (3)")
    parser.add_argument(
        "--pairs",
        default="fs:distribution,distribution:fs",
        help="SOURCE:DESTINATION,... among " + ",".join(SERVERS),
    )
    args = parser.parse_args(argv)
    layers = args.layers or (4 if args.quick else 8)
    layerSize = (args.layer_mib or (8 if args.quick else 32)) * MiB
    rounds = args.rounds or (2 if args.quick else 3)
    pairs = [tuple(pair.split(":", 1)) for pair in args.pairs.split(",") if pair]
    for pair in pairs:
        if len(pair) != 2 or not set(pair) <= set(SERVERS):
            parser.error(f"bad pair {':'.join(pair)}")
    if shutil.which("skopeo") is None:
        parser.error("skopeo is not installed")

    SIGNALS.install()
    workdir = Path(tempfile.mkdtemp(prefix="ociklein-copy-bench-"))
    results: list[tuple[str, str, float, float, float]] = []
    try:
        size = writeLayout(workdir / "layout", layers, layerSize)
        for source, destination in pairs:
            print(f"starting {source} (source) ...", file=sys.stderr)
            sourceServer = startServer(source, _fresh(workdir / "source"), accessLog=True)
            src = address(sourceServer)
            layout = f"oci:{workdir / 'layout'}:v1"
            run(
                [
                    "skopeo",
                    "--insecure-policy",
                    "copy",
                    "--dest-tls-verify=false",
                    layout,
                    f"docker://{src}/bench/image:v1",
                ]
            )
            times: dict[str, list[float]] = {"ociklein": [], "skopeo": []}
            for i in range(rounds):
                # A destination of its own each round, on a new port: skopeo's
                # blob-info cache (/var/lib/containers/cache for root, whatever
                # HOME says) would otherwise mount from an earlier round's copy.
                roundDir = _fresh(workdir / f"round-{source}-{destination}-{i}")
                destinationServer = startServer(destination, roundDir, accessLog=True)
                dst = address(destinationServer)
                order = ["ociklein", "skopeo"] if i % 2 == 0 else ["skopeo", "ociklein"]
                for tool in order:
                    os.sync()
                    target = f"{dst}/bench/{tool}:v1"
                    if tool == "ociklein":
                        times[tool].append(run(ocikleinCopy(f"{src}/bench/image:v1", target)))
                    else:
                        times[tool].append(run(skopeoCopy(f"{src}/bench/image:v1", target)))
                    print(
                        f"  {source}->{destination} {tool} round {i}: {times[tool][-1]:.2f} s",
                        file=sys.stderr,
                    )
                PROCESSES.stop(destinationServer.process)
                shutil.rmtree(roundDir, ignore_errors=True)
            PROCESSES.stop(sourceServer.process)
            shutil.rmtree(workdir / "source", ignore_errors=True)
            for tool, values in times.items():
                median = statistics.median(values)
                results.append((f"{source} -> {destination}", tool, median, min(values), size / median / 1e6))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        PROCESSES.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        f"copy benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs: "
        f"one image of {layers} layers x {layerSize // MiB} MiB ({size / 1e6:.0f} MB), "
        f"{rounds} rounds per tool; load average "
        f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print()
    print("| pair | tool | median s | best s | MB/s (median) | ociklein / skopeo |")
    print("|---|---|---|---|---|---|")
    for pair in dict.fromkeys(r[0] for r in results):
        rows = {r[1]: r for r in results if r[0] == pair}
        for tool in ("ociklein", "skopeo"):
            _, _, median, best, rate = rows[tool]
            ratio = f"{rows['skopeo'][2] / rows['ociklein'][2]:.2f}x as fast" if tool == "ociklein" else ""
            print(f"| {pair} | {tool} | {median:.2f} | {best:.2f} | {rate:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
