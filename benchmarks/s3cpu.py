#!/usr/bin/env python
"""
Server CPU per manifest GET and PUT by tag on the s3 backend, A/B: this
checkout's ociklein against another checkout's (say a clone of main),
alternately, on one SeaweedFS, so that a shared machine's load falls on
both alike.  Prints, per round and variant, the rates and the CPU the
server (all its threads) and SeaweedFS spent per operation.

    python benchmarks/s3cpu.py --other /tmp/main-clone [--rounds 3] [--seconds 5]

The other checkout runs with PYTHONPATH pointing at it (its ociklein is
imported before the installed one).  Rates on a loaded machine are noisy;
CPU per operation is what to compare.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench


def cpuSeconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def gets(server: bench.Server, seconds: int) -> int:
    """
    The number of GETs by tag wrk made in C{seconds} with 32 connections.
    """
    output = bench.run(
        [
            "wrk",
            "-t2",
            "-c32",
            f"-d{seconds}s",
            "-H",
            f"Accept: {bench.OCI_MANIFEST}",
            server.url("/v2/bench/app/manifests/latest"),
        ],
        seconds + 60,
    )
    if "Non-2xx" in output:
        raise bench.BenchError(output)
    found = re.search(r"(\d+) requests in", output)
    assert found is not None, output
    return int(found.group(1))


def phase(server: bench.Server, store: bench.ObjectStore, work: Callable[[], int]) -> dict[str, float]:
    pids = server.processes()
    began, serverBegan, storeBegan = time.perf_counter(), cpuSeconds(pids), store.cpuSeconds()
    count = work()
    elapsed = time.perf_counter() - began
    return {
        "rate": count / elapsed,
        "server_ms": (cpuSeconds(pids) - serverBegan) / count * 1000,
        "store_ms": (store.cpuSeconds() - storeBegan) / count * 1000,
    }


def measure(
    label: str, workdir: Path, store: bench.ObjectStore, data: bench.Data, seconds: int
) -> dict[str, Any]:
    server = bench.startServer("s3", workdir, accessLog=True, label=label, store=store)
    try:
        conn = server.connection()
        bench.pushSmall(conn, "bench/app", data.config)
        bench.pushSmall(conn, "bench/app", data.layer)
        bench.putManifest(conn, "bench/app", "latest", data.manifest)
        conn.close()
        gets(server, 1)  # warm up
        sizes = bench.Sizes(**{**bench.FULL.__dict__, "putSeconds": float(seconds)})
        counted: dict[str, int] = {}

        def puts() -> int:
            began = time.perf_counter()
            rate = bench.manifestPuts(server, data, sizes)
            counted["puts"] = round(rate * (time.perf_counter() - began))
            return counted["puts"]

        return {"get": phase(server, store, lambda: gets(server, seconds)), "put": phase(server, store, puts)}
    finally:
        bench.PROCESSES.stop(server.process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--other", type=Path, required=True, help="another checkout of ociklein (A)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    bench.SIGNALS.install()
    workdir = Path(tempfile.mkdtemp(prefix="ociklein-s3cpu-"))
    store = bench.ObjectStore(workdir)
    data = bench.smallData(workdir)
    path = os.environ.get("PYTHONPATH")
    try:
        for round in range(args.rounds):
            for label, pythonPath in (("A", str(args.other.resolve())), ("B", path)):
                if pythonPath is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = pythonPath
                result = measure(f"{label}{round}", workdir, store, data, args.seconds)
                for op in ("get", "put"):
                    r = result[op]
                    print(
                        f"round {round} {label} {op}: {r['rate']:7.1f}/s"
                        f"  server {r['server_ms']:5.2f} ms CPU/op"
                        f"  SeaweedFS {r['store_ms']:5.2f} ms CPU/op  (load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
    finally:
        bench.PROCESSES.shutdown()
        store.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
