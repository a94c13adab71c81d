"""
A real C{twistd ociregistry} process on 127.0.0.1, for the end-to-end tests.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) ')
_READY = b"ociklein listening on"


def twistdCommand() -> str:
    """
    The twistd beside this interpreter first: a virtualenv's own copy, even
    when its bin/ is not on PATH.
    """
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    return beside if os.path.exists(beside) else shutil.which("twistd") or "twistd"


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TwistdRegistry:
    """
    C{twistd -n ociregistry} with the given options, listening on a free
    port of 127.0.0.1 (over TLS when given a key and certificate), its
    output in C{logPath}.
    """

    def __init__(
        self,
        args: list[str],
        logPath: Path,
        tls: tuple[Path, Path] | None = None,
        openFiles: int | None = None,
    ) -> None:
        self.args = args
        self.logPath = logPath
        self.tls = tls
        self.openFiles = openFiles
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.twistd = twistdCommand()

    def command(self, *args: str) -> list[str]:
        """
        The command line of C{twistd -n ociregistry ARGS}.
        """
        return [self.twistd, "-n", "--pidfile=", "ociregistry", *args]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def start(self) -> TwistdRegistry:
        """
        Start and wait until it listens; a port taken by someone else
        between choosing and binding it is retried.
        """
        for _ in range(3):
            self.port = freePort()
            listen = f"tcp:{self.port}:interface=127.0.0.1"
            if self.tls is not None:
                key, cert = self.tls
                listen = f"ssl:{self.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
            command = self.command("--listen", listen, *self.args)
            logged = self.logPath.stat().st_size if self.logPath.exists() else 0
            with open(self.logPath, "ab") as log:
                self.process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=self._limitFiles
                )
            deadline = time.monotonic() + 30
            while self.process.poll() is None and time.monotonic() < deadline:
                with open(self.logPath, "rb") as log:
                    log.seek(logged)
                    if _READY in log.read():
                        return self
                time.sleep(0.05)
            self.kill()
        raise RuntimeError(f"twistd did not listen: {self.logPath.read_text(errors='replace')}")

    def _limitFiles(self) -> None:
        """
        In the child: lower both open-files limits, as C{ulimit -n} would.
        """
        if self.openFiles is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.openFiles, self.openFiles))

    def openDescriptors(self) -> int:
        """
        How many descriptors the process holds now.
        """
        assert self.process is not None
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def requests(self) -> list[tuple[str, str, int]]:
        """
        (method, path, status) of every request in twistd's access log so far.
        """
        return [
            (m["method"], m["path"], int(m["status"]))
            for m in _ACCESS.finditer(self.logPath.read_text(errors="replace"))
        ]
