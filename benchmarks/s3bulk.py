#!/usr/bin/env python
"""
Blob push and pull on the s3 backend, A/B: ociklein from several
checkouts (and Distribution's s3 driver) on one SeaweedFS, alternately
(the order reversed every round), so that a shared machine's load falls
on all alike.  Prints, per round, variant and phase, the MB/s and the CPU
the server (all its threads) and SeaweedFS spent per 256 MiB; then the
medians and each server's peak RSS.

    python benchmarks/s3bulk.py --rounds 3 new=. main=/tmp/main-clone distribution

Each round pushes two fresh 256 MiB blobs (a blob already stored is not
assembled again): one by POST then one PUT with the body (curl, as
run.py's push_mono), one in 16 MiB PATCHes; then pulls the first with 1
and with 4 curls.  A checkout runs with PYTHONPATH pointing at it.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from seaweedfixture import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, SeaweedFS, s3Arguments

MIB = 1024 * 1024
SIZE = 256 * MIB
CHUNK = 16 * MIB
PHASES = ("push", "chunked", "pull1", "pull4")


def cpuSeconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peakRSS(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def freePort() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Blob:
    def __init__(self, path: Path) -> None:
        digest = hashlib.sha256()
        with path.open("wb") as f:
            for _ in range(SIZE // MIB):
                data = os.urandom(MIB)
                digest.update(data)
                f.write(data)
        self.path = path
        self.digest = "sha256:" + digest.hexdigest()


class Server:
    def __init__(self, name: str, source: str | None, weed: SeaweedFS, work: Path) -> None:
        self.name = name
        self.port = freePort()
        env = dict(os.environ)
        if source is None:
            config = work / f"{name}.yml"
            config.write_text(
                "version: 0.1\nlog:\n  accesslog:\n    disabled: true\n  level: warn\nstorage:\n  s3:\n"
                f"    accesskey: {ACCESS_KEY}\n    secretkey: {SECRET_KEY}\n    region: {REGION}\n"
                f"    regionendpoint: {weed.endpoint}\n    bucket: {BUCKET}\n"
                f"    rootdirectory: /{name}-{os.urandom(4).hex()}\n    secure: false\n    v4auth: true\n"
                "  redirect:\n    disable: true\n  cache:\n    blobdescriptor: inmemory\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: bench\n"
            )
            env.pop("AWS_CA_BUNDLE", None)  # Distribution 2.8.2 panics with it
            argv = [shutil.which("docker-registry") or "/usr/bin/docker-registry", "serve", str(config)]
        else:
            env["PYTHONPATH"] = str(Path(source).resolve())
            argv = [
                sys.executable,
                os.path.join(os.path.dirname(sys.executable), "twistd"),
                "-n",
                "--pidfile=",
                "ociregistry",
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
                "--access-log=no",
                *s3Arguments(weed, f"{name}-{os.urandom(4).hex()}/"),
            ]
        with (work / f"{name}.log").open("wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/v2/")
                conn.getresponse().read()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"{name} did not start; see {work / f'{name}.log'}")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def start(self, conn: http.client.HTTPConnection) -> str:
        conn.request("POST", "/v2/bench/blobs/uploads/")
        response = conn.getresponse()
        response.read()
        assert response.status == 202, response.status
        return relative(response.getheader("Location") or "")

    def push(self, blob: Blob) -> None:
        location = self.start(http.client.HTTPConnection("127.0.0.1", self.port, timeout=60))
        url = f"http://127.0.0.1:{self.port}{withDigest(location, blob.digest)}"
        curl = ["curl", "-s", "-H", "Expect:", "-X", "PUT", "-T", str(blob.path), "-o", "/dev/null"]
        curl += ["-H", "Content-Type: application/octet-stream", "-w", "%{http_code}", url]
        code = subprocess.run(curl, capture_output=True, timeout=900).stdout.decode()
        assert code == "201", f"{self.name} push: {code}"

    def pushChunked(self, blob: Blob) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=900)
        location = self.start(conn)
        with blob.path.open("rb") as f:
            for offset in range(0, SIZE, CHUNK):
                data = f.read(CHUNK)
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(data) - 1}",
                }
                conn.request("PATCH", location, data, headers)
                response = conn.getresponse()
                response.read()
                assert response.status == 202, f"{self.name} PATCH: {response.status}"
                location = relative(response.getheader("Location") or location)
        conn.request("PUT", withDigest(location, blob.digest), b"")
        response = conn.getresponse()
        response.read()
        assert response.status == 201, f"{self.name} final PUT: {response.status}"

    def pull(self, blob: Blob, clients: int) -> None:
        url = f"http://127.0.0.1:{self.port}/v2/bench/blobs/{blob.digest}"
        curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url]
        curls = [subprocess.Popen(curl, stdout=subprocess.PIPE) for _ in range(clients)]
        for process in curls:
            out = process.communicate(timeout=900)[0].decode()
            assert out == f"200 {SIZE}", f"{self.name} pull: {out}"


def relative(location: str) -> str:
    parts = urlsplit(location)
    return parts.path + ("?" + parts.query if parts.query else "")


def withDigest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + f"digest={digest}"


def measure(server: Server, weed: SeaweedFS, run: Callable[[], None], moved: int) -> dict[str, float]:
    assert weed.process is not None
    node, store, began = cpuSeconds(server.process.pid), cpuSeconds(weed.process.pid), time.perf_counter()
    run()
    elapsed = time.perf_counter() - began
    per = SIZE / moved  # CPU per 256 MiB moved
    return {
        "mbps": moved / elapsed / 1e6,
        "node": (cpuSeconds(server.process.pid) - node) * per,
        "store": (cpuSeconds(weed.process.pid) - store) * per,
    }


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--phases", default=",".join(PHASES), help=f"a subset of {','.join(PHASES)}")
    parser.add_argument("variants", nargs="+", help="NAME=CHECKOUT for ociklein, or 'distribution'")
    args = parser.parse_args()
    phases = args.phases.split(",")
    work = Path(tempfile.mkdtemp(prefix="s3bulk-"))
    weed = SeaweedFS(work / "seaweedfs")
    (work / "seaweedfs").mkdir()
    servers: list[Server] = []
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    finished = False
    try:
        weed.start()
        for variant in args.variants:
            name, _, source = variant.partition("=")
            servers.append(Server(name, source or None, weed, work))
        for r in range(args.rounds):
            pushed, chunked = Blob(work / "blob-push"), Blob(work / "blob-chunked")
            for server in servers if r % 2 == 0 else servers[::-1]:
                runs: dict[str, tuple[Callable[[], None], int]] = {
                    "push": (lambda s=server, b=pushed: s.push(b), SIZE),
                    "chunked": (lambda s=server, b=chunked: s.pushChunked(b), SIZE),
                    "pull1": (lambda s=server, b=pushed: s.pull(b, 1), SIZE),
                    "pull4": (lambda s=server, b=pushed: s.pull(b, 4), 4 * SIZE),
                }
                if "push" not in phases:
                    server.push(pushed)  # the pulls need it
                for phase in phases:
                    run, moved = runs[phase]
                    got = measure(server, weed, run, moved)
                    results.setdefault(server.name, {}).setdefault(phase, []).append(got)
                    print(
                        f"round {r} {server.name:12} {phase:8} {got['mbps']:7.1f} MB/s   CPU per 256 MiB: "
                        f"server {got['node']:.2f} s, SeaweedFS {got['store']:.2f} s",
                        flush=True,
                    )
        print("\nmedians (MB/s; CPU seconds per 256 MiB)")
        for server in servers:
            for phase, got in results[server.name].items():
                rates = [round(g["mbps"]) for g in got]
                print(
                    f"{server.name:12} {phase:8} {median([g['mbps'] for g in got]):7.1f} MB/s {rates}  "
                    f"server {median([g['node'] for g in got]):.2f} s  "
                    f"SeaweedFS {median([g['store'] for g in got]):.2f} s"
                )
            print(f"{server.name:12} peak RSS {peakRSS(server.process.pid):.0f} MB")
        finished = True
    finally:
        for server in servers:
            server.stop()
        weed.stop()
        for blob in work.glob("blob-*"):
            blob.unlink()
        shutil.rmtree(work / "seaweedfs" / "data", ignore_errors=True)  # gigabytes
        if finished:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"the servers' logs are in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
