"""
CNCF Distribution (Debian's C{docker-registry}) on a free port of
127.0.0.1, with a generated config and a temporary root: the reference
registry that ociklein's clients are checked against.

    from distributionfixture import Distribution
    with Distribution(tmp_path).start() as registry: ...

or the C{distribution} pytest fixture (one per session), loaded with
C{pytest_plugins = ["distributionfixture"]}.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twistdprocess import freePort

BINARY = "/usr/bin/docker-registry"


class Distribution:
    """
    C{docker-registry serve} with filesystem storage in C{directory}, delete
    enabled; C{auth} is an extra YAML block under C{auth:} (htpasswd or
    token), indented by four spaces.
    """

    def __init__(self, directory: Path, auth: str | None = None) -> None:
        self.directory = directory
        self.auth = auth
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def config(self) -> str:
        auth = f"auth:\n{self.auth}" if self.auth else ""
        return (
            "version: 0.1\n"
            "log:\n"
            "  level: warn\n"
            "  formatter: text\n"
            "storage:\n"
            "  filesystem:\n"
            f"    rootdirectory: {self.directory / 'root'}\n"
            "  delete:\n"
            "    enabled: true\n"
            "  cache:\n"
            "    blobdescriptor: inmemory\n"
            "http:\n"
            f"  addr: 127.0.0.1:{self.port}\n"
            "  secret: ociklein-tests\n"
            f"{auth}"
        )

    def start(self) -> Distribution:
        """
        Start it and return once C{/v2/} answers (any status: with auth it
        is 401); a port taken in between is retried.
        """
        binary = shutil.which("docker-registry") or BINARY
        if not Path(binary).exists():
            pytest.fail("docker-registry is not installed (apt-get install docker-registry)")
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            self.port = freePort()
            config = self.directory / "config.yml"
            config.write_text(self.config())
            with open(self.directory / "registry.log", "ab") as log:
                self.process = subprocess.Popen(
                    [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
                )
            deadline = time.monotonic() + 30
            while self.process.poll() is None and time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"{self.url}/v2/", timeout=2).close()
                    return self
                except urllib.error.HTTPError:
                    return self
                except OSError:
                    time.sleep(0.05)
            self.stop()
        log = (self.directory / "registry.log").read_text(errors="replace")
        raise RuntimeError(f"docker-registry did not start:\n{log}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def __enter__(self) -> Distribution:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@pytest.fixture(scope="session")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    """
    One Distribution for the session; each test works in its own repositories.
    """
    with Distribution(tmp_path_factory.mktemp("distribution")).start() as running:
        yield running
