"""
A real nginx (Debian's /usr/sbin/nginx) in the foreground, with its prefix,
pid file, logs and temp files in a directory of its own, serving an C{http}
block given as text (for example, a configuration read from the docs).
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
user {user};
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
{http}
}}
"""


class Nginx:
    """
    nginx running C{http} (the inside of an C{http} block) from
    C{directory}; C{port} is where it is expected to listen, for L{start}
    to wait on.
    """

    def __init__(self, http: str, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.config = directory / "nginx.conf"
        self.config.parent.mkdir(parents=True, exist_ok=True)
        text = _MAIN.format(user=getpass.getuser(), directory=directory, http=http)
        self.config.write_text(text)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def errorLog(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 20) -> Nginx:
        """
        Start nginx and wait until its port accepts connections.
        """
        command = [NGINX, "-p", str(self.directory), "-e", str(self.directory / "error.log")]
        command += ["-c", str(self.config)]
        test = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
        if test.returncode != 0:
            raise RuntimeError(f"nginx refuses the configuration:\n{test.stderr}")
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{self.errorLog}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on {self.port}:\n{self.errorLog}")

    def stop(self) -> None:
        """
        Stop nginx (a fast shutdown) and its worker, bounded in time.
        """
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()  # its worker ends when it finds its master gone
            self.process.wait(10)
