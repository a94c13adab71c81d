"""
What the interoperability tests share: a real C{twistd ociregistry} process,
its access log, skopeo with a deadline, and plain HTTP requests for checking
what clients left in the registry.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from twistdprocess import TwistdRegistry as RunningRegistry

# Seconds any one client command may take before the test fails.
COMMAND_TIMEOUT = 60


def startRegistry(
    backend: str, directory: Path, tls: tuple[Path, Path] | None = None, backendArgs: list[str] | None = None
) -> RunningRegistry:
    """
    Start C{twistd ociregistry} with C{backend} (data and log in
    C{directory}), or with C{backendArgs} (the backend and where its data
    is), on plain HTTP or, given (key, certificate), on TLS.
    """
    args = ["--backend=fs", "--root", str(directory / "root")] if backend == "fs" else []
    if backendArgs is not None:
        args = list(backendArgs)
    running = RunningRegistry(args, directory / "twistd.log", tls)
    return running.start()


def stopRegistry(running: RunningRegistry) -> None:
    running.stop()


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


def selfSignedCertificate(directory: Path) -> tuple[Path, Path]:
    """
    A fresh key and self-signed certificate for 127.0.0.1 in C{directory}:
    (key.pem, cert.pem); skips the test without openssl.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a certificate")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return key, cert
