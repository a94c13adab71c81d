"""
What the interoperability tests share: a real C{twistd ociregistry} process,
its access log, skopeo with a deadline, and plain HTTP requests for checking
what clients left in the registry.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

# Seconds any one client command may take before the test fails.
COMMAND_TIMEOUT = 60

_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) ')


@dataclass
class RunningRegistry:
    """
    A C{twistd ociregistry} listening on 127.0.0.1.
    """

    backend: str
    port: int
    process: subprocess.Popen[bytes]
    logPath: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def requests(self) -> list[tuple[str, str, int]]:
        """
        (method, path, status) of every request in twistd's access log so far.
        """
        return [
            (m["method"], m["path"], int(m["status"]))
            for m in _ACCESS.finditer(self.logPath.read_text(errors="replace"))
        ]


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def startRegistry(backend: str, directory: Path, tls: tuple[Path, Path] | None = None) -> RunningRegistry:
    """
    Start C{twistd ociregistry} with C{backend} (data and log in
    C{directory}), on plain HTTP or, given (key, certificate), on TLS.  A
    port taken by someone else between choosing and binding it is retried.
    """
    twistd = shutil.which("twistd") or os.path.join(os.path.dirname(sys.executable), "twistd")
    args = ["--backend=fs", "--root", str(directory / "root")] if backend == "fs" else []
    logPath = directory / "twistd.log"
    for _ in range(3):
        port = _freePort()
        listen = f"tcp:{port}:interface=127.0.0.1"
        if tls is not None:
            listen = f"ssl:{port}:interface=127.0.0.1:privateKey={tls[0]}:certKey={tls[1]}"
        command = [twistd, "-n", "--pidfile=", "ociregistry", "--listen", listen, *args]
        logged = logPath.stat().st_size if logPath.exists() else 0
        with open(logPath, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            with open(logPath, "rb") as log:
                log.seek(logged)
                if b"ociklein listening on" in log.read():
                    return RunningRegistry(backend, port, process, logPath)
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait(10)
            break
    raise RuntimeError(f"twistd did not listen: {logPath.read_text()}")


def stopRegistry(running: RunningRegistry) -> None:
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGTERM)
        try:
            running.process.wait(10)
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait(10)


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """
    Run skopeo with a deadline; fail the test with its output if it fails.
    Its standard output is kept as bytes, for byte-for-byte comparisons.
    """
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (apt-get install skopeo)")
    command = ["skopeo", "--insecure-policy", "--command-timeout", f"{COMMAND_TIMEOUT}s", *args]
    result = subprocess.run(command, capture_output=True, timeout=COMMAND_TIMEOUT + 5, check=False)
    if check and result.returncode != 0:
        stderr = result.stderr.decode(errors="replace")
        pytest.fail(f"{' '.join(command)} exited {result.returncode}:\n{stderr}")
    return result


def http(server: RunningRegistry, method: str, path: str, **kwargs: Any) -> requests.Response:
    """
    One plain HTTP request to the registry, on a fresh connection.
    """
    kwargs.setdefault("timeout", COMMAND_TIMEOUT)
    kwargs.setdefault("allow_redirects", False)
    with requests.Session() as session:
        return session.request(method, server.url + path, **kwargs)


def pushWithSkopeo(server: RunningRegistry, layout: Path, tag: str, repository: str, *flags: str) -> str:
    """
    Copy the image tagged C{tag} in an OCI layout to C{repository:tag}; the
    destination's C{docker://} reference.
    """
    reference = f"docker://{server.address}/{repository}:{tag}"
    skopeo("copy", "--dest-tls-verify=false", *flags, f"oci:{layout}:{tag}", reference)
    return reference
