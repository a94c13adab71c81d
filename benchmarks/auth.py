"""
Manifest GET with access control on, against the same registry without it,
in one run: the bar of issue 11 is at least 90 % of the rate without auth.

    python benchmarks/auth.py            # 5 rounds of 10 s wrk runs per mode (about 3 minutes)
    python benchmarks/auth.py --quick    # 1 round of 2 s runs

Three ociklein-memory servers, started in turn and interleaved round by
round (none, basic, token, none, ...) so that a busy machine weighs on each
mode alike: no access control; C{--htpasswd} with a client sending its Basic
credentials on every request; C{--htpasswd --token-key} with a client
sending the bearer token it got from /token on every request.  The figure
of each mode is the median of its rounds, as requests per second of wall
time and per second of the server's own CPU time: on a machine other work
keeps busy, the second shows the cost of access control where the first
mostly shows the neighbours.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import run as bench

USER, PASSWORD = "bench", "bench-password"
MODES = ("none", "basic", "token")
MANIFEST = "/v2/bench/app/manifests/latest"


class AuthorizedConnection(http.client.HTTPConnection):
    """
    A connection that sends one Authorization header with every request.
    """

    def __init__(self, host: str, port: int, authorization: str | None) -> None:
        super().__init__(host, port, timeout=60)
        self.authorization = authorization

    def request(
        self, method: str, url: str, body: object = None, headers: object = None, **kw: object
    ) -> None:  # type: ignore[override]
        merged = dict(headers or {})  # type: ignore[call-overload]
        if self.authorization is not None:
            merged["Authorization"] = self.authorization
        super().request(method, url, body=body, headers=merged, **kw)  # type: ignore[arg-type]


def basic() -> str:
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def prepare(workdir: Path) -> dict[str, tuple[str, ...]]:
    """
    The htpasswd file (htpasswd's default bcrypt cost) and the token key;
    the extra options of each mode.
    """
    users = workdir / "htpasswd"
    subprocess.run(["htpasswd", "-cbB", str(users), USER, PASSWORD], check=True, capture_output=True)
    key = workdir / "token-key.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key)],
        check=True,
        capture_output=True,
    )
    return {
        "none": (),
        "basic": ("--htpasswd", str(users)),
        "token": ("--htpasswd", str(users), "--token-key", str(key)),
    }


def authorization(server: bench.Server, mode: str) -> str | None:
    if mode == "none":
        return None
    if mode == "basic":
        return basic()
    conn = AuthorizedConnection(bench.HOST, server.port, basic())
    reply = bench.expect(
        bench.call(conn, "GET", "/token?service=ociklein&scope=repository:bench/app:pull,push"), 200, "token"
    )
    conn.close()
    return "Bearer " + json.loads(reply.body)["token"]


def cpuSeconds(pid: int) -> float:
    """
    The user and system CPU time a process has used so far.
    """
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def once(
    mode: str, extra: tuple[str, ...], workdir: Path, data: bench.Data, sizes: bench.Sizes, n: int
) -> tuple[float, float]:
    """
    The manifest-GET rate of one server of C{mode}: requests per second of
    wall time, and per second of the server's CPU time (what the server
    would serve with a core to itself: a fairer figure on a busy machine).
    """
    server = bench.startServer("memory", workdir, accessLog=False, extraArgs=extra, label=f"{mode}-{n}")
    try:
        header = authorization(server, mode)
        conn = AuthorizedConnection(bench.HOST, server.port, header)
        bench.pushSmall(conn, "bench/app", data.config)
        bench.pushSmall(conn, "bench/app", data.layer)
        bench.putManifest(conn, "bench/app", "latest", data.manifest)
        conn.close()
        cpu = cpuSeconds(server.process.pid)
        rate, _ = bench.wrk(server, MANIFEST, sizes, {} if header is None else {"Authorization": header})
        cpu = cpuSeconds(server.process.pid) - cpu
        return rate, rate * sizes.wrkSeconds / cpu
    finally:
        bench.PROCESSES.stop(server.process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round of 2 s runs")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per mode [default: 5, quick: 1]")
    args = parser.parse_args(argv)
    sizes = bench.QUICK if args.quick else bench.FULL
    rounds = args.rounds or (1 if args.quick else 5)
    bench.SIGNALS.install()
    workdir = Path(tempfile.mkdtemp(prefix="ociklein-bench-auth-"))
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    perCPU: dict[str, list[float]] = {mode: [] for mode in MODES}
    loads = [os.getloadavg()]
    try:
        extras = prepare(workdir)
        data = bench.smallData(workdir)
        for n in range(rounds):
            for mode in MODES:
                rate, cpuRate = once(mode, extras[mode], workdir, data, sizes, n)
                print(f"  round {n + 1}, {mode}: {rate:.0f} req/s, {cpuRate:.0f} per CPU s", file=sys.stderr)
                rates[mode].append(rate)
                perCPU[mode].append(cpuRate)
        loads.append(os.getloadavg())
    except bench.BenchError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        bench.PROCESSES.stopAll()
        shutil.rmtree(workdir, ignore_errors=True)
    base = statistics.median(rates["none"])
    baseCPU = statistics.median(perCPU["none"])
    print(
        f"manifest GET, ociklein-memory, access log off, wrk {sizes.wrkSeconds} s x "
        f"{sizes.wrkConnections} connections, {rounds} round(s), {os.cpu_count()} CPUs"
    )
    print()
    print(
        "| mode | req/s (median) | of no auth | req per server CPU s (median) | of no auth | rounds (req/s) |"
    )
    print("|---|---|---|---|---|---|")
    for mode in MODES:
        median, medianCPU = statistics.median(rates[mode]), statistics.median(perCPU[mode])
        each = ", ".join(f"{r:.0f}" for r in rates[mode])
        wall = f"{median:.0f} | {median / base:.1%}"
        print(f"| {mode} | {wall} | {medianCPU:.0f} | {medianCPU / baseCPU:.1%} | {each} |")
    print()
    print(
        "load averages (1/5/15 min) at start "
        + "/".join(f"{x:.2f}" for x in loads[0])
        + ", at end "
        + "/".join(f"{x:.2f}" for x in loads[-1])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
