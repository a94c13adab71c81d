#!/usr/bin/env python
"""
One command that benchmarks ociklein (memory backend, fs backend, fs
backend with two worker processes, s3 backend on SeaweedFS) against CNCF
Distribution (filesystem, and its s3 driver on the same SeaweedFS) with the
same clients, and prints one table.

    python benchmarks/run.py                  # the full run (512 MiB blobs, 10 s wrk)
    python benchmarks/run.py --quick          # smaller sizes, under a minute
    python benchmarks/run.py --access-log no  # every server without its access log
    python benchmarks/run.py --servers s3,distribution-s3   # object storage only

Every server is a subprocess (with its worker processes, a process group) on
a free 127.0.0.1 port, run one at a time, and killed with its whole group on
the way out whatever happens.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MB = 1_000_000
MiB = 1024 * 1024
HOST = "127.0.0.1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
SERVERS = ("memory", "fs", "fs2", "distribution", "s3", "distribution-s3")
# Servers that keep their data in the benchmark's SeaweedFS.
ON_SEAWEEDFS = ("s3", "distribution-s3")

# Every loop and wait below is bounded by one of these.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
TRANSFER_TIMEOUT = 900.0
MAX_PAGES = 100_000


@dataclass(frozen=True)
class Sizes:
    """
    How big each test is; the full and the quick run differ only here.
    """

    blob: int
    chunk: int
    wrkSeconds: int
    wrkConnections: int
    putSeconds: float
    putClients: int
    latencyClients: int
    probeRate: float
    idleSeconds: float
    tags: int
    repositories: int
    pageSize: int
    walks: int


FULL = Sizes(
    blob=512 * MiB,
    chunk=16 * MiB,
    wrkSeconds=10,
    wrkConnections=32,
    putSeconds=5.0,
    putClients=8,
    latencyClients=4,
    probeRate=50.0,
    idleSeconds=3.0,
    tags=2000,
    repositories=1000,
    pageSize=100,
    walks=5,
)
QUICK = Sizes(
    blob=64 * MiB,
    chunk=16 * MiB,
    wrkSeconds=2,
    wrkConnections=32,
    putSeconds=2.0,
    putClients=8,
    latencyClients=4,
    probeRate=50.0,
    idleSeconds=1.0,
    tags=200,
    repositories=100,
    pageSize=50,
    walks=3,
)


class BenchError(Exception):
    """
    A figure could not be measured (a server answered wrongly, or timed out).
    """


# -- test data --------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    path: Path
    size: int
    digest: str

    def read(self) -> bytes:
        return self.path.read_bytes()


def makeBlob(path: Path, size: int) -> Blob:
    """
    A file of C{size} random bytes, hashed once as it is written.
    """
    hashed = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left > 0:
            piece = os.urandom(min(16 * MiB, left))
            hashed.update(piece)
            f.write(piece)
            left -= len(piece)
        # On disk now, so that no server's run pays for writing it back.
        f.flush()
        os.fsync(f.fileno())
    return Blob(path, size, f"sha256:{hashed.hexdigest()}")


def smallBlob(path: Path, content: bytes) -> Blob:
    path.write_bytes(content)
    return Blob(path, len(content), f"sha256:{hashlib.sha256(content).hexdigest()}")


def manifestBytes(config: Blob, layers: list[Blob], annotations: dict[str, str] | None = None) -> bytes:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": OCI_LAYER, "digest": b.digest, "size": b.size} for b in layers],
    }
    if annotations:
        document["annotations"] = annotations
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass
class Data:
    """
    Everything pushed to every server, generated once.
    """

    pushMono: Blob
    pushChunked: Blob
    background: Blob
    config: Blob
    layer: Blob
    manifest: bytes


def smallData(workdir: Path) -> Data:
    """
    Data for benchmarks of manifests alone: every blob is small.
    """
    config = smallBlob(workdir / "config", b'{"architecture":"amd64","os":"linux"}')
    layer = smallBlob(workdir / "layer", os.urandom(4096))
    return Data(
        pushMono=config,
        pushChunked=config,
        background=config,
        config=config,
        layer=layer,
        manifest=manifestBytes(config, [layer]),
    )


# -- processes --------------------------------------------------------------


class Signals:
    """
    SIGINT and SIGTERM become L{KeyboardInterrupt} in the main thread, except
    inside L{held}, which keeps them until it ends: a process is never left
    started but unrecorded, out of reach of the cleanup.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._pending = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self._depth:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def held(self) -> Iterator[None]:
        # Python runs signal handlers in the main thread only.
        mainThread = threading.current_thread() is threading.main_thread()
        if mainThread:
            self._depth += 1
        try:
            yield
        finally:
            if mainThread:
                self._depth -= 1
                if self._depth == 0 and self._pending:
                    self._pending = False
                    raise KeyboardInterrupt


SIGNALS = Signals()


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgrp: int


def procStats() -> dict[int, ProcStat]:
    """
    Every process's state, parent and process group, from /proc/PID/stat.
    """
    stats: dict[int, ProcStat] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "PID (COMM) STATE PPID PGRP ...", where COMM may hold spaces and parentheses.
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry.name)] = ProcStat(int(entry.name), fields[0], int(fields[1]), int(fields[2]))
    return stats


def processTree(pid: int) -> list[int]:
    """
    C{pid} and all its live descendants, C{pid} first.
    """
    stats = procStats()
    if pid not in stats:
        return []
    tree = [pid]
    for parent in tree:  # grows as it goes: breadth first
        tree += sorted(s.pid for s in stats.values() if s.ppid == parent and s.state != "Z")
    return tree


def groupMembers(pgid: int) -> list[int]:
    """
    The live (not zombie) processes of process group C{pgid}.
    """
    return sorted(s.pid for s in procStats().values() if s.pgrp == pgid and s.state != "Z")


def signalGroup(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def waitGroupEmpty(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while groupMembers(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


class Processes:
    """
    Every subprocess this run starts, so that all of them die with it.  One
    started with C{start_new_session=True} leads a process group (a server,
    with any worker processes it starts), and is stopped with its whole group.
    """

    def __init__(self) -> None:
        self._live: list[subprocess.Popen[bytes]] = []
        self._groups: set[int] = set()
        self._lock = threading.Lock()

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with SIGNALS.held(), self._lock:
            process = subprocess.Popen(argv, **kwargs)
            self._live.append(process)
            if kwargs.get("start_new_session"):
                self._groups.add(process.pid)
            return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """
        SIGTERM, then SIGKILL if it lingers; always reaped.  For a group
        leader, both go to the whole group, and this returns once no process
        of the group is left.
        """
        group = process.pid in self._groups
        if group:
            self._stopGroup(process)
        elif process.poll() is None:
            try:
                process.terminate()
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        with self._lock:
            if process in self._live:
                self._live.remove(process)
            self._groups.discard(process.pid)

    @staticmethod
    def _stopGroup(leader: subprocess.Popen[bytes]) -> None:
        pgid = leader.pid
        # Even a leader that already exited may have left workers in its group.
        signalGroup(pgid, signal.SIGTERM)
        try:
            leader.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            signalGroup(pgid, signal.SIGKILL)
            leader.wait(STOP_TIMEOUT)
        # The leader is reaped now, and a group id is not reused while the
        # group has members; orphaned members are reaped by init.
        if not waitGroupEmpty(pgid, STOP_TIMEOUT):
            signalGroup(pgid, signal.SIGKILL)
            if not waitGroupEmpty(pgid, STOP_TIMEOUT):
                raise BenchError(f"processes {groupMembers(pgid)} of group {pgid} survived SIGKILL")

    def stopAll(self) -> None:
        for process in list(self._live):
            try:
                self.stop(process)
            except Exception as e:  # keep going: every other one must die too
                print(f"could not stop pid {process.pid}: {e}", file=sys.stderr)

    def shutdown(self) -> None:
        """
        The last cleanup of a run: a second Ctrl-C (or a SIGTERM) must not
        cut it short, so both are ignored from here on.
        """
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.stopAll()


PROCESSES = Processes()


def freePort() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def twistdScript() -> str:
    candidate = os.path.join(sysconfig.get_path("scripts"), "twistd")
    if os.path.exists(candidate):
        return candidate
    found = shutil.which("twistd")
    if found is None:
        raise BenchError("twistd is not installed")
    return found


@dataclass
class Server:
    """
    One registry under test, listening on C{port}.
    """

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    workers: int = 1
    root: Path | None = None

    def connection(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, self.port, timeout=timeout)

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def processes(self) -> list[int]:
        """
        The server's process and its descendants (worker processes).
        """
        return processTree(self.process.pid)

    def statusEach(self, key: str) -> list[int]:
        """
        A kB figure of /proc/PID/status (VmRSS, VmHWM), in bytes, for each
        process of the server.
        """
        values = []
        for pid in self.processes():
            try:
                text = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
            if match is not None:
                values.append(int(match.group(1)) * 1024)
        return values

    def status(self, key: str) -> int | None:
        """
        That figure summed over the server's processes; L{None} if none is
        left.
        """
        values = self.statusEach(key)
        return sum(values) if values else None

    def logTail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


WORKERS = {"fs2": 2}


class ObjectStore:
    """
    The SeaweedFS of the s3 servers (tests/seaweedfixture.py), started on
    first use, one for the whole run; its CPU time counts as part of each
    s3 server's cost.
    """

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self.server: Any = None

    def get(self) -> Any:
        if self.server is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from seaweedfixture import SeaweedFS

            directory = self._workdir / "seaweedfs"
            directory.mkdir()
            with SIGNALS.held():  # stopped by stop(), in main's finally
                self.server = SeaweedFS(directory)
                self.server.start()
        return self.server

    def cpuSeconds(self) -> float:
        """
        User and system CPU seconds SeaweedFS has used so far.
        """
        if self.server is None or self.server.process is None:
            return 0.0
        fields = Path(f"/proc/{self.server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def distributionConfig(port: int, accessLog: bool, storage: str) -> str:
    accessLogConfig = "" if accessLog else "  accesslog:\n    disabled: true\n"
    return (
        "version: 0.1\n"
        "log:\n"
        f"{accessLogConfig}"
        "  level: warn\n"
        "  formatter: text\n"
        "storage:\n"
        f"{storage}"
        "  cache:\n"
        "    blobdescriptor: inmemory\n"
        "http:\n"
        f"  addr: {HOST}:{port}\n"
        "  secret: ociklein-benchmark\n"
    )


def startServer(
    kind: str,
    workdir: Path,
    accessLog: bool,
    extraArgs: tuple[str, ...] = (),
    label: str | None = None,
    store: ObjectStore | None = None,
) -> Server:
    """
    Start C{kind} and return once it answers, and (for several processes)
    once every one of them listens.  C{accessLog} false turns off each
    server's per-request log; true leaves each server's default.  An
    ociklein server gets C{extraArgs} too; C{label} names its log.
    """
    port = freePort()
    log = workdir / f"{label or kind}.log"
    workers = WORKERS.get(kind, 1)
    root = workdir / f"{kind}-root"  # unused by the memory backend
    env = None
    if kind in ON_SEAWEEDFS:
        assert store is not None
        seaweed = store.get()
    if kind in ("distribution", "distribution-s3"):
        config = workdir / f"{kind}.yml"
        if kind == "distribution":
            root.mkdir()
            storage = f"  filesystem:\n    rootdirectory: {root}\n"
        else:
            from seaweedfixture import ACCESS_KEY, BUCKET, REGION, SECRET_KEY

            # regionendpoint makes Distribution address the bucket path-style.
            storage = (
                "  s3:\n"
                f"    accesskey: {ACCESS_KEY}\n"
                f"    secretkey: {SECRET_KEY}\n"
                f"    region: {REGION}\n"
                f"    regionendpoint: {seaweed.endpoint}\n"
                f"    bucket: {BUCKET}\n"
                f"    rootdirectory: /bench-{kind}-{os.urandom(4).hex()}\n"
                "    secure: false\n"
                "    v4auth: true\n"
                # Serve blobs itself, as ociklein does, rather than answer
                # 307 to a presigned URL of the store.
                "  redirect:\n"
                "    disable: true\n"
            )
            # Distribution 2.8.2 panics at start when AWS_CA_BUNDLE is set.
            env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        config.write_text(distributionConfig(port, accessLog, storage))
        argv = [shutil.which("docker-registry") or "/usr/bin/docker-registry", "serve", str(config)]
    else:
        argv = [
            sys.executable,
            twistdScript(),
            "-n",
            "--pidfile=",
            "ociregistry",
            "--listen",
            f"tcp:{port}:interface={HOST}",
        ]
        if kind in ("fs", "fs2"):
            argv += ["--backend=fs", "--root", str(root)]
        if kind == "s3":
            from seaweedfixture import s3Arguments

            argv += s3Arguments(seaweed, f"bench-{os.urandom(4).hex()}/")
        if workers > 1:
            argv += [f"--workers={workers}"]
        if not accessLog:
            argv += ["--access-log=no"]
        argv += extraArgs
    with log.open("wb") as out:
        # A session (and process group) of its own: Ctrl-C reaches only this
        # script, whose finally clause then stops the server's whole group.
        process = PROCESSES.start(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    server = Server(
        kind, process, port, log, workers, root if kind in ("fs", "fs2", "distribution") else None
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            PROCESSES.stop(process)
            raise BenchError(f"{kind} exited with {process.returncode}:\n{server.logTail()}")
        if allListening(server):
            try:
                conn = server.connection(timeout=2.0)
                conn.request("GET", "/v2/")
                if conn.getresponse().status in (200, 401):  # 401: with access control
                    conn.close()
                    return server
            except OSError:
                pass
        time.sleep(0.1)
    PROCESSES.stop(process)
    raise BenchError(f"{kind} did not answer within {START_TIMEOUT} s:\n{server.logTail()}")


def allListening(server: Server) -> bool:
    """
    Whether each of a multi-process ociklein's processes has logged that it
    listens: the first one as "ociklein listening on", worker N through the
    first one's log as "[worker N ...] ociklein listening on".
    """
    if server.workers == 1:
        return True
    try:
        lines = server.log.read_text(errors="replace").splitlines()
    except OSError:
        return False
    listening = set()
    for line in lines:
        if "ociklein listening on" in line:
            worker = re.search(r"\[worker (\d+) ", line)
            listening.add(int(worker.group(1)) if worker else 0)
    return listening >= set(range(server.workers)) and len(server.processes()) >= server.workers


# -- HTTP helpers -------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def call(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return Reply(response.status, response.headers, response.read())


def expect(reply: Reply, status: int, what: str) -> Reply:
    if reply.status != status:
        raise BenchError(f"{what}: HTTP {reply.status}, expected {status}: {reply.body[:300]!r}")
    return reply


def relative(location: str) -> str:
    """
    The path and query of a Location, which Distribution makes absolute.
    """
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def withQuery(path: str, query: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}{query}"


def startUpload(conn: http.client.HTTPConnection, repository: str) -> str:
    reply = expect(call(conn, "POST", f"/v2/{repository}/blobs/uploads/"), 202, "start upload")
    location = reply.headers.get("Location")
    if not location:
        raise BenchError("start upload: no Location")
    return relative(location)


def pushSmall(conn: http.client.HTTPConnection, repository: str, blob: Blob) -> None:
    location = startUpload(conn, repository)
    body = blob.read()
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
    reply = call(conn, "PUT", withQuery(location, f"digest={blob.digest}"), body, headers)
    expect(reply, 201, f"push {blob.digest[:19]}")


def mount(conn: http.client.HTTPConnection, repository: str, source: str, blob: Blob) -> None:
    path = f"/v2/{repository}/blobs/uploads/?mount={blob.digest}&from={source}"
    expect(call(conn, "POST", path, b""), 201, f"mount into {repository}")


def putManifest(conn: http.client.HTTPConnection, repository: str, reference: str, body: bytes) -> None:
    headers = {"Content-Type": OCI_MANIFEST, "Content-Length": str(len(body))}
    reply = call(conn, "PUT", f"/v2/{repository}/manifests/{reference}", body, headers)
    expect(reply, 201, f"put manifest {repository}:{reference}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# -- the figures ------------------------------------------------------------


def curl(*args: str) -> list[str]:
    return ["curl", "-sS", "--fail-with-body", "-H", "Expect:", *args]


def run(argv: list[str], timeout: float) -> str:
    process = PROCESSES.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        PROCESSES.stop(process)
        raise BenchError(f"{argv[0]} timed out after {timeout} s") from None
    PROCESSES.stop(process)
    if process.returncode != 0:
        raise BenchError(f"{argv[0]} failed ({process.returncode}): {err.decode(errors='replace')[:500]}")
    return out.decode()


def curlPut(server: Server, location: str, blob: Blob) -> list[str]:
    return curl(
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "-T",
        str(blob.path),
        server.url(withQuery(location, f"digest={blob.digest}")),
    )


def pushMonolithic(server: Server, repository: str, blob: Blob) -> float:
    """
    POST, then one PUT carrying the whole blob (curl streams it from disk).
    MB/s over both requests.
    """
    started = time.perf_counter()
    conn = server.connection()
    location = startUpload(conn, repository)
    conn.close()
    code = run(curlPut(server, location, blob), TRANSFER_TIMEOUT)
    elapsed = time.perf_counter() - started
    if code.strip() != "201":
        raise BenchError(f"monolithic push: HTTP {code}")
    return blob.size / elapsed / MB


def pushChunked(server: Server, repository: str, blob: Blob, chunk: int) -> float:
    """
    POST, one PATCH per C{chunk} bytes (each read from disk as it goes), then
    an empty PUT with the digest; one keep-alive connection.  MB/s.
    """
    started = time.perf_counter()
    conn = server.connection(timeout=TRANSFER_TIMEOUT)
    location = startUpload(conn, repository)
    fd = os.open(blob.path, os.O_RDONLY)
    try:
        for offset in range(0, blob.size, chunk):
            data = os.pread(fd, chunk, offset)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(len(data)),
                "Content-Range": f"{offset}-{offset + len(data) - 1}",
            }
            reply = expect(call(conn, "PATCH", location, data, headers), 202, f"PATCH at {offset}")
            location = relative(reply.headers.get("Location") or location)
    finally:
        os.close(fd)
    reply = call(conn, "PUT", withQuery(location, f"digest={blob.digest}"), b"", {"Content-Length": "0"})
    expect(reply, 201, "chunked push: final PUT")
    elapsed = time.perf_counter() - started
    conn.close()
    return blob.size / elapsed / MB


def curlGet(server: Server, repository: str, blob: Blob) -> list[str]:
    url = server.url(f"/v2/{repository}/blobs/{blob.digest}")
    return curl("-o", "/dev/null", "-w", "%{http_code} %{size_download}", url)


def checkDownload(output: str, blob: Blob) -> None:
    if output.split() != ["200", str(blob.size)]:
        raise BenchError(f"pull: got {output!r}, expected 200 and {blob.size} bytes")


def pull(server: Server, repository: str, blob: Blob, clients: int) -> float:
    """
    C{clients} curls fetching the whole blob at once; aggregate MB/s.
    """
    started = time.perf_counter()
    processes = [
        PROCESSES.start(curlGet(server, repository, blob), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(clients)
    ]
    try:
        for process in processes:
            out, err = process.communicate(timeout=TRANSFER_TIMEOUT)
            if process.returncode != 0:
                raise BenchError(f"pull: curl failed: {err.decode(errors='replace')[:300]}")
            checkDownload(out.decode(), blob)
    finally:
        for process in processes:
            PROCESSES.stop(process)
    return clients * blob.size / (time.perf_counter() - started) / MB


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(
    server: Server, path: str, sizes: Sizes, headers: dict[str, str] | None = None
) -> tuple[float, float]:
    """
    req/s and p99 latency (ms) of GET C{path}, from wrk --latency; every
    request carries C{headers} too.
    """
    argv = ["wrk", "-t2", f"-c{sizes.wrkConnections}", f"-d{sizes.wrkSeconds}s", "--latency"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    output = run([*argv, "-H", f"Accept: {OCI_MANIFEST}", server.url(path)], sizes.wrkSeconds + 60)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    if bad or (errors and re.search(r"[1-9]", errors.group(1))):
        raise BenchError(f"wrk: errors:\n{output}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if rate is None or p99 is None:
        raise BenchError(f"wrk: cannot parse:\n{output}")
    return float(rate.group(1)), float(p99.group(1)) * _WRK_UNITS[p99.group(2)]


def buildHeadload(workdir: Path) -> Path | None:
    """
    Compile benchmarks/headload.c, wrk's stand-in for HEAD (wrk waits
    forever for the body a HEAD response announces); L{None} without gcc.
    """
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    binary = workdir / "headload"
    source = Path(__file__).with_name("headload.c")
    run([compiler, "-O2", "-Wall", "-o", str(binary), str(source)], 120)
    return binary


def headload(server: Server, path: str, sizes: Sizes, binary: Path | None) -> tuple[float, float]:
    """
    req/s and p99 latency (ms) of HEAD C{path}, wrk-style: same connection
    count and duration, one thread.
    """
    if binary is None:
        raise BenchError("no C compiler for benchmarks/headload.c")
    argv = [str(binary), HOST, str(server.port), path, str(sizes.wrkConnections), str(sizes.wrkSeconds)]
    output = run([*argv, OCI_MANIFEST], sizes.wrkSeconds + 60)
    fields = dict(part.split("=", 1) for part in output.split())
    if fields.get("errors") != "0":
        raise BenchError(f"headload: errors: {output}")
    return float(fields["rps"]), float(fields["p99_ms"])


def inThreads(clients: int, work: Callable[[int], None], timeout: float) -> None:
    """
    Run C{work(i)} in C{clients} threads; re-raise the first failure.
    """
    failures: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            work(index)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        raise BenchError(f"load generator still running after {timeout} s")
    if failures:
        raise failures[0]


def manifestPuts(server: Server, data: Data, sizes: Sizes) -> float:
    """
    ops/s of C{putClients} keep-alive clients each PUTting new manifests
    (distinct content, distinct tags) as fast as they are answered.
    """
    repository = "bench/put"
    conn = server.connection()
    pushSmall(conn, repository, data.config)
    pushSmall(conn, repository, data.layer)
    conn.close()
    counts = [0] * sizes.putClients
    started = time.perf_counter()
    deadline = time.monotonic() + sizes.putSeconds

    def client(index: int) -> None:
        conn = server.connection()
        while time.monotonic() < deadline:
            tag = f"c{index}-{counts[index]}"
            body = manifestBytes(data.config, [data.layer], {"bench.tag": tag})
            putManifest(conn, repository, tag, body)
            counts[index] += 1
        conn.close()

    inThreads(sizes.putClients, client, sizes.putSeconds + 60)
    return sum(counts) / (time.perf_counter() - started)


def populate(server: Server, data: Data, sizes: Sizes) -> None:
    """
    C{tags} tags in bench/tags and C{repositories} more repositories, by
    eight clients.
    """
    jobs: list[tuple[str, str]] = [("bench/tags", f"t{i:05d}") for i in range(sizes.tags)]
    jobs += [(f"bench/catalog/r{i:05d}", "latest") for i in range(sizes.repositories)]
    empty = manifestBytes(data.config, [])
    conn = server.connection()
    pushSmall(conn, "bench/tags", data.config)
    conn.close()
    lock = threading.Lock()

    def client(_: int) -> None:
        conn = server.connection()
        while True:
            with lock:
                if not jobs:
                    break
                repository, tag = jobs.pop()
            if repository != "bench/tags":
                mount(conn, repository, "bench/tags", data.config)
            putManifest(conn, repository, tag, empty)
        conn.close()

    inThreads(8, client, 600.0)


_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def walk(server: Server, path: str, key: str) -> tuple[float, int, int]:
    """
    Follow C{Link: rel="next"} from C{path} to the end; seconds, items,
    pages.
    """
    conn = server.connection()
    items = pages = 0
    started = time.perf_counter()
    next_: str | None = path
    while next_ is not None and pages < MAX_PAGES:
        reply = expect(call(conn, "GET", next_), 200, f"GET {next_}")
        items += len(json.loads(reply.body)[key] or [])
        pages += 1
        link = _LINK.search(reply.headers.get("Link") or "")
        next_ = relative(link.group(1)) if link else None
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed, items, pages


def medianWalk(server: Server, path: str, key: str, walks: int) -> tuple[float, int, int]:
    results = sorted(walk(server, path, key) for _ in range(walks))
    return results[len(results) // 2]


class LatencyProbe:
    """
    Keep-alive clients GETting one manifest, each C{rate} times a second,
    until told to stop, recording each request's latency (ms).
    """

    def __init__(self, server: Server, path: str, clients: int, rate: float) -> None:
        self._server = server
        self._path = path
        self._clients = clients
        self._rate = rate
        self._stop = threading.Event()
        self.latencies: list[float] = []

    def _client(self, _: int) -> None:
        conn = self._server.connection()
        mine: list[float] = []
        interval = 1.0 / self._rate
        due = time.perf_counter()
        while not self._stop.is_set():
            started = time.perf_counter()
            expect(call(conn, "GET", self._path, headers={"Accept": OCI_MANIFEST}), 200, "manifest GET")
            mine.append((time.perf_counter() - started) * 1000)
            # Paced, not flat out: the probe must not itself load the server.
            due = max(due + interval, time.perf_counter())
            self._stop.wait(max(0.0, due - time.perf_counter()))
        conn.close()
        self.latencies.extend(mine)

    @contextmanager
    def running(self, timeout: float) -> Iterator[None]:
        failures: list[BaseException] = []

        def guarded(index: int) -> None:
            try:
                self._client(index)
            except BaseException as e:
                failures.append(e)
                self._stop.set()

        threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(self._clients)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout)
        if failures:
            raise failures[0]
        if not self.latencies:
            raise BenchError("latency probe made no request")


def idleLatency(server: Server, path: str, sizes: Sizes) -> float:
    probe = LatencyProbe(server, path, sizes.latencyClients, sizes.probeRate)
    with probe.running(30.0):
        time.sleep(sizes.idleSeconds)
    return percentile(probe.latencies, 0.99)


def latencyUnderTransfer(server: Server, path: str, data: Data, sizes: Sizes) -> tuple[float, float]:
    """
    p99 (ms) of manifest GETs while one client pushes a blob and another
    pulls one, both as fast as they can; and the transfer's MB/s.
    """
    conn = server.connection()
    location = startUpload(conn, "bench/background")
    conn.close()
    probe = LatencyProbe(server, path, sizes.latencyClients, sizes.probeRate)
    with probe.running(30.0):
        started = time.perf_counter()
        upload = PROCESSES.start(
            curlPut(server, location, data.background), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        download = PROCESSES.start(
            curlGet(server, "bench/blobs", data.pushMono), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            upOut, upErr = upload.communicate(timeout=TRANSFER_TIMEOUT)
            downOut, _ = download.communicate(timeout=TRANSFER_TIMEOUT)
        finally:
            PROCESSES.stop(upload)
            PROCESSES.stop(download)
        elapsed = time.perf_counter() - started
    if upload.returncode != 0 or upOut.decode().strip() != "201":
        raise BenchError(f"background push failed: {upOut!r} {upErr.decode(errors='replace')[:300]}")
    checkDownload(downOut.decode(), data.pushMono)
    moved = data.background.size + data.pushMono.size
    return percentile(probe.latencies, 0.99), moved / elapsed / MB


# -- one server, every figure ---------------------------------------------------

FIGURES: list[tuple[str, str, bool]] = [
    # key, label, higher is better
    ("push_mono", "blob push, monolithic PUT (MB/s)", True),
    ("push_chunked", "blob push, PATCH chunks (MB/s)", True),
    ("pull_1", "blob pull, 1 client (MB/s)", True),
    ("pull_4", "blob pull, 4 clients (MB/s, total)", True),
    ("get_rps", "manifest GET (req/s)", True),
    ("get_p99", "manifest GET p99 (ms)", False),
    ("head_rps", "manifest HEAD (req/s)", True),
    ("head_p99", "manifest HEAD p99 (ms)", False),
    ("put_ops", "manifest PUT, 8 clients (ops/s)", True),
    ("tags_walk", "tags list walk (ms)", False),
    ("catalog_walk", "catalog walk (ms)", False),
    ("idle_p99", "manifest GET p99 at 200 req/s, idle (ms)", False),
    ("busy_p99", "manifest GET p99 at 200 req/s, during push+pull (ms)", False),
    ("busy_mbps", "that push+pull, total (MB/s)", True),
    ("rss_start", "RSS at start (MB)", False),
    ("rss_peak", "peak RSS, blob runs (MB)", False),
    ("store_cpu", "SeaweedFS CPU during the run (s)", False),
]


def measure(
    server: Server,
    data: Data,
    sizes: Sizes,
    headloadBinary: Path | None,
    only: set[str] | None,
    store: ObjectStore | None = None,
) -> dict[str, Any]:
    results: dict[str, Any] = {"_load": [os.getloadavg()[0]], "_processes": len(server.processes())}
    storeCpu = store.cpuSeconds() if store is not None else 0.0
    notes: list[str] = []

    def figure(key: str, compute: Callable[[], Any]) -> Any:
        print(f"  {server.name}: {key} ...", end="", flush=True, file=sys.stderr)
        started = time.perf_counter()
        try:
            value = compute()
        except BenchError as e:
            print(f" FAILED: {e}", file=sys.stderr)
            notes.append(f"{key}: {e}")
            return None
        print(f" {value} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
        return value

    def record(keys: tuple[str, ...], compute: Callable[[], Any]) -> None:
        if only is not None and not set(keys) & only:
            return
        value = figure("+".join(keys), compute)
        values = value if isinstance(value, tuple) else (value,)
        for key, v in zip(keys, values, strict=False):
            results[key] = v

    # Summed over the server's processes; for several, the peak is the sum of
    # each one's own peak, an upper bound of their simultaneous peak.
    results["rss_start"] = (server.status("VmRSS") or 0) / MB
    results["_rss_start_each"] = [v / MB for v in server.statusEach("VmRSS")]
    manifestPath = "/v2/bench/app/manifests/latest"
    conn = server.connection()
    pushSmall(conn, "bench/app", data.config)
    pushSmall(conn, "bench/app", data.layer)
    putManifest(conn, "bench/app", "latest", data.manifest)
    conn.close()

    record(("push_mono",), lambda: pushMonolithic(server, "bench/blobs", data.pushMono))
    record(("push_chunked",), lambda: pushChunked(server, "bench/blobs", data.pushChunked, sizes.chunk))
    needsBlob = only is None or bool({"pull_1", "pull_4", "busy_p99", "busy_mbps"} & only)
    if results.get("push_mono") is None and needsBlob:
        # The pulls need this blob even when its push was not measured.
        figure("push_untimed", lambda: pushMonolithic(server, "bench/blobs", data.pushMono))
    record(("pull_1",), lambda: pull(server, "bench/blobs", data.pushMono, 1))
    record(("pull_4",), lambda: pull(server, "bench/blobs", data.pushMono, 4))
    record(("idle_p99",), lambda: idleLatency(server, manifestPath, sizes))
    record(("busy_p99", "busy_mbps"), lambda: latencyUnderTransfer(server, manifestPath, data, sizes))
    results["rss_peak"] = (server.status("VmHWM") or 0) / MB
    results["_rss_peak_each"] = [v / MB for v in server.statusEach("VmHWM")]
    results["_load"].append(os.getloadavg()[0])

    record(("get_rps", "get_p99"), lambda: wrk(server, manifestPath, sizes))
    record(("head_rps", "head_p99"), lambda: headload(server, manifestPath, sizes, headloadBinary))
    record(("put_ops",), lambda: manifestPuts(server, data, sizes))
    if only is None or {"tags_walk", "catalog_walk"} & only:
        figure("populate", lambda: populate(server, data, sizes))
        record(
            ("tags_walk", "tags_items", "tags_pages"),
            lambda: walkFigure(server, "/v2/bench/tags/tags/list", "tags", sizes),
        )
        record(
            ("catalog_walk", "catalog_items", "catalog_pages"),
            lambda: walkFigure(server, "/v2/_catalog", "repositories", sizes),
        )
    results["_load"].append(os.getloadavg()[0])
    if store is not None:
        results["store_cpu"] = store.cpuSeconds() - storeCpu
    results["_notes"] = notes
    return results


def walkFigure(server: Server, path: str, key: str, sizes: Sizes) -> tuple[float, int, int]:
    elapsed, items, pages = medianWalk(server, withQuery(path, f"n={sizes.pageSize}"), key, sizes.walks)
    if key == "tags" and items != sizes.tags:
        raise BenchError(f"tags walk found {items} tags, expected {sizes.tags}")
    if key == "repositories" and items < sizes.repositories:
        raise BenchError(f"catalog walk found {items} repositories, expected {sizes.repositories}+")
    return elapsed * 1000, items, pages


# -- the table --------------------------------------------------------------


def formatValue(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, tuple):
        value = value[0]
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


TIMES = "\N{MULTIPLICATION SIGN}"
COLUMNS = {
    "memory": "ociklein-memory",
    "fs": "ociklein-fs",
    "fs2": f"ociklein-fs{TIMES}2",
    "distribution": "distribution",
    "s3": "ociklein-s3",
    "distribution-s3": "distribution-s3",
}
# Each ratio: its label and the server it is relative to.
RATIOS = {
    "fs": ("fs/distribution", "distribution"),
    "fs2": (f"fs{TIMES}2/distribution", "distribution"),
    "s3": ("s3/distribution-s3", "distribution-s3"),
}


def number(value: Any) -> float | None:
    return value[0] if isinstance(value, tuple) else value


def table(results: dict[str, dict[str, Any]]) -> str:
    columns = [c for c in SERVERS if c in results]
    ratios = [c for c in RATIOS if c in results and RATIOS[c][1] in results]
    header = ["figure", *[COLUMNS[c] for c in columns], *[RATIOS[c][0] for c in ratios]]
    rows = [header, ["---"] * len(header)]
    for key, label, higherBetter in FIGURES:
        values = [results[c].get(key) for c in columns]
        if all(v is None for v in values):
            continue
        row = [label, *[formatValue(v) for v in values]]
        for c in ratios:
            dist = number(results[RATIOS[c][1]].get(key))
            mine = number(results[c].get(key))
            ratio = "—"
            if mine is not None and dist:
                ratio = f"{mine / dist:.2f}x" + (" ↑" if higherBetter else " ↓")
            row.append(ratio)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        if row[0] == "---":
            cells = ["-" * widths[0], *[("-" * (widths[i] - 1)) + ":" for i in range(1, len(header))]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rssNote(results: dict[str, dict[str, Any]]) -> str:
    """
    For servers of several processes, what the RSS sums are made of.
    """
    parts = []
    for name, figures in results.items():
        start, peak = figures.get("_rss_start_each") or [], figures.get("_rss_peak_each") or []
        if len(start) > 1 or len(peak) > 1:
            parts.append(
                f"{COLUMNS[name]} sums {len(peak or start)} processes: "
                f"at start {' + '.join(f'{v:.1f}' for v in start)} MB, "
                f"peaks {' + '.join(f'{v:.1f}' for v in peak)} MB"
            )
    return "; ".join(parts)


def pagingNote(results: dict[str, dict[str, Any]]) -> str:
    parts = []
    for name, figures in results.items():
        for what in ("tags", "catalog"):
            if figures.get(f"{what}_items") is not None:
                parts.append(f"{name} {what} {figures[f'{what}_items']} in {figures[f'{what}_pages']} pages")
    return "; ".join(parts)


# -- main -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes; under two minutes")
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help=f"comma-separated subset of {','.join(SERVERS)}"
    )
    parser.add_argument(
        "--access-log",
        choices=("yes", "no"),
        default="yes",
        help="no: run every server without its per-request access log\n"
        "(--access-log=no for ociklein, log.accesslog.disabled for Distribution);\n"
        "yes (default): each server's default, which logs every request",
    )
    parser.add_argument("--only", default=None, help="comma-separated figure keys to measure")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (logs, data, each server's storage;\n"
        "later servers' blob figures may then be lower, see README.md)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    servers = [s for s in args.servers.split(",") if s]
    if unknown := set(servers) - set(SERVERS):
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    only = set(args.only.split(",")) if args.only else None

    accessLog = args.access_log == "yes"

    # SIGTERM, and SIGINT even when started ignoring it (a background job),
    # take the same way out as Ctrl-C: through the finally below.
    SIGNALS.install()
    loadAtStart = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="ociklein-bench-"))
    results: dict[str, dict[str, Any]] = {}
    store = ObjectStore(workdir)
    started = time.time()
    try:
        print(f"generating test blobs in {workdir} ...", file=sys.stderr)
        layer = smallBlob(workdir / "layer", os.urandom(4096))
        config = smallBlob(workdir / "config", json.dumps({"architecture": "amd64", "os": "linux"}).encode())
        data = Data(
            pushMono=makeBlob(workdir / "blob-mono", sizes.blob),
            pushChunked=makeBlob(workdir / "blob-chunked", sizes.blob),
            background=makeBlob(workdir / "blob-background", sizes.blob),
            config=config,
            layer=layer,
            manifest=manifestBytes(config, [layer]),
        )
        headloadBinary = buildHeadload(workdir)
        for kind in servers:
            # Every server starts with nothing left to write back (from the
            # previous server, Distribution's unsynced blobs above all), so no
            # server's writes are throttled by another's dirty pages.
            os.sync()
            print(f"starting {kind} ...", file=sys.stderr)
            server = None
            try:
                server = startServer(kind, workdir, accessLog, store=store)
                onStore = store if kind in ON_SEAWEEDFS else None
                results[kind] = measure(server, data, sizes, headloadBinary, only, onStore)
            except BenchError as e:
                print(f"  {kind}: {e}", file=sys.stderr)
                results[kind] = {"_load": [], "_notes": [str(e)]}
            finally:
                if server is not None:
                    PROCESSES.stop(server.process)
                    if server.root is not None and not args.keep:
                        # Its blobs' pages are freed for the next server: on the VM
                        # the results were made on, page cache the guest has not
                        # touched before made writes twice as expensive in CPU.
                        shutil.rmtree(server.root, ignore_errors=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        PROCESSES.shutdown()
        store.stop()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        f"ociklein benchmark, {'quick' if args.quick else 'full'} run, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, {os.cpu_count()} CPUs; "
        f"blobs {sizes.blob // MiB} MiB, PATCH chunks {sizes.chunk // MiB} MiB, "
        f"wrk {sizes.wrkSeconds} s x {sizes.wrkConnections} connections, "
        f"{sizes.tags} tags / {sizes.repositories} repositories in pages of {sizes.pageSize}; "
        f"access logs {'as each server defaults (on)' if accessLog else 'off'}"
    )
    print()
    print(table(results))
    print()
    loads = ", ".join(f"{k} {'/'.join(f'{x:.1f}' for x in v['_load'])}" for k, v in results.items())
    print(f"load average (1 min) at start/middle/end of each server's run: {loads}")
    loadAtEnd = os.getloadavg()
    print(
        "load averages (1/5/15 min) at start of run "
        f"{'/'.join(f'{x:.2f}' for x in loadAtStart)}, at end {'/'.join(f'{x:.2f}' for x in loadAtEnd)}"
    )
    if note := rssNote(results):
        print(f"RSS: {note}")
    if note := pagingNote(results):
        print(f"paging: {note}")
    for name, figures in results.items():
        for note in figures.get("_notes", []):
            print(f"FAILED {name} {note}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 1 if any(figures.get("_notes") for figures in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
