"""
docs/deploy.md, tried: nginx runs the guide's reverse-proxy configuration as
it is written there (read from the doc, so the two cannot drift), in front
of a real twistd ociregistry, and skopeo pushes and pulls a multi-layer
image through it, a layer over 100 MiB included; a blob over 100 MiB also
goes up in one monolithic request and in OCI chunks.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from interophelpers import selfSignedCertificate
from nginxfixture import NGINX, Nginx
from twistdprocess import TwistdRegistry, freePort
from twisted.python.failure import Failure

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
BIG = 101 * 1024 * 1024

pytestmark = pytest.mark.skipif(
    not (os.path.exists(NGINX) and shutil.which("skopeo") and shutil.which("openssl")),
    reason="needs nginx, skopeo and openssl",
)


def documentedNginx() -> str:
    """
    The nginx configuration of docs/deploy.md, between its markers.
    """
    text = DEPLOY.read_text()
    match = re.search(
        r"<!-- nginx-config: begin -->\n```nginx\n(.*?)```\n<!-- nginx-config: end -->", text, re.S
    )
    assert match is not None, "docs/deploy.md has no marked nginx configuration"
    return match.group(1)


def localize(config: str, registryPort: int, nginxPort: int, cert: Path, key: Path) -> str:
    """
    The documented configuration with only what must differ on a test
    machine replaced: ports, the certificate, and no IPv6 listener (a test
    container may have no IPv6).
    """
    replacements = [
        ("server 127.0.0.1:5000;", f"server 127.0.0.1:{registryPort};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{nginxPort} ssl;"),
        ("listen [::]:443 ssl;\n", ""),
        ("/etc/ssl/registry.example/fullchain.pem", str(cert)),
        ("/etc/ssl/registry.example/privkey.pem", str(key)),
    ]
    for old, new in replacements:
        assert old in config, f"docs/deploy.md's nginx configuration lost {old!r}"
        config = config.replace(old, new)
    return config


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    key, cert = selfSignedCertificate(tmp_path)
    return cert, key


@pytest.fixture
def proxied(
    twistdRegistry: Callable[..., TwistdRegistry], tmp_path: Path, certificate: tuple[Path, Path]
) -> Iterator[tuple[TwistdRegistry, Nginx]]:
    """ociklein (fs, trusting 127.0.0.1 as its proxy) behind nginx running the documented configuration."""
    registry = twistdRegistry("--backend=fs", f"--root={tmp_path / 'root'}", "--trusted-proxy=127.0.0.1")
    port = freePort()
    cert, key = certificate
    nginx = Nginx(localize(documentedNginx(), registry.port, port, cert, key), tmp_path / "nginx", port)
    nginx.start()
    yield registry, nginx
    nginx.stop()


def _connection(port: int) -> http.client.HTTPSConnection:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=120, context=context)


def _request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = _connection(port)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layout(directory: Path, big: bytes) -> Path:
    """
    An OCI layout of one image: a config and three layers, one of them
    C{big} (random bytes, so stored as they are).
    """
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers = [big, os.urandom(4096), os.urandom(300_000)]
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    )
    descriptors = []
    for content, mediaType in [(config.encode(), "application/vnd.oci.image.config.v1+json")] + [
        (layer, "application/vnd.oci.image.layer.v1.tar") for layer in layers
    ]:
        (blobs / _digest(content).split(":")[1]).write_bytes(content)
        descriptors.append({"mediaType": mediaType, "digest": _digest(content), "size": len(content)})
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptors[0],
            "layers": descriptors[1:],
        }
    ).encode()
    (blobs / _digest(manifest).split(":")[1]).write_bytes(manifest)
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _digest(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "1.0"},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    return directory


def _skopeo(*args: str) -> None:
    result = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_skopeo_through_documented_nginx(proxied: tuple[TwistdRegistry, Nginx], tmp_path: Path) -> None:
    """skopeo pushes and pulls a multi-layer image, one layer over 100 MiB, through the documented nginx."""
    registry, nginx = proxied
    big = os.urandom(BIG)
    source = _layout(tmp_path / "source", big)
    target = f"docker://127.0.0.1:{nginx.port}/deploy/app:1.0"
    # Layers go up and come down as they are, not recompressed on the way.
    _skopeo("copy", "--preserve-digests", "--dest-tls-verify=false", f"oci:{source}:1.0", target)
    pulled = f"oci:{tmp_path / 'pulled'}:1.0"
    _skopeo(
        "copy",
        "--preserve-digests",
        "--dest-oci-accept-uncompressed-layers",
        "--src-tls-verify=false",
        target,
        pulled,
    )
    pulled = tmp_path / "pulled" / "blobs" / "sha256"
    assert (pulled / hashlib.sha256(big).hexdigest()).read_bytes() == big
    assert sorted(p.name for p in pulled.iterdir()) == sorted(
        p.name for p in (source / "blobs" / "sha256").iterdir()
    )
    # The layers went up streamed (PATCH) and the big one came down whole.
    requests = registry.requests()
    assert any(m == "PATCH" and s == 202 for m, _, s in requests)
    assert ("GET", f"/v2/deploy/app/blobs/sha256:{hashlib.sha256(big).hexdigest()}", 200) in requests


def test_monolithic_and_chunked_big_blob(proxied: tuple[TwistdRegistry, Nginx]) -> None:
    """A blob over 100 MiB goes up through nginx in one POST and in OCI chunks, and comes back whole."""
    _, nginx = proxied
    big = os.urandom(BIG)
    digest = _digest(big)
    octets = {"Content-Type": "application/octet-stream"}
    status, headers, body = _request(
        nginx.port, "POST", f"/v2/deploy/mono/blobs/uploads/?digest={digest}", big, octets
    )
    assert status == 201, body
    status, headers, _ = _request(nginx.port, "POST", "/v2/deploy/chunked/blobs/uploads/")
    assert status == 202
    location = headers["Location"]
    chunk = 32 * 1024 * 1024
    for start in range(0, BIG, chunk):
        part = big[start : start + chunk]
        contentRange = {"Content-Range": f"{start}-{start + len(part) - 1}"}
        status, headers, body = _request(nginx.port, "PATCH", location, part, {**octets, **contentRange})
        assert status == 202, body
        location = headers["Location"]
    status, _, body = _request(nginx.port, "PUT", f"{location}?digest={digest}")
    assert status == 201, body
    for repository in ("mono", "chunked"):
        connection = _connection(nginx.port)
        connection.request("GET", f"/v2/deploy/{repository}/blobs/{digest}")
        response = connection.getresponse()
        assert response.status == 200
        hashed = hashlib.sha256()
        while data := response.read(1024 * 1024):
            hashed.update(data)
        connection.close()
        assert "sha256:" + hashed.hexdigest() == digest


def test_forwarded_client_and_request_id(proxied: tuple[TwistdRegistry, Nginx]) -> None:
    """Through nginx the access log names the client nginx forwarded for, and nginx's request id is echoed."""
    registry, nginx = proxied
    status, headers, _ = _request(nginx.port, "GET", "/v2/", headers={"X-Forwarded-For": "203.0.113.9"})
    assert status == 200
    requestId = headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", requestId), requestId  # nginx's $request_id
    line = ""
    deadline = time.monotonic() + 10
    while not line and time.monotonic() < deadline:
        lines = [entry for entry in registry.logPath.read_text().splitlines() if requestId in entry]
        line = lines[0] if lines else ""
        time.sleep(0.05)
    assert ' 203.0.113.9 - "GET /v2/ HTTP/1.1" 200 ' in line, line


def test_documented_endpoint_strings(certificate: tuple[Path, Path]) -> None:
    """Every endpoint string of docs/deploy.md's table parses; the loopback ones (IPv6 escaped too) listen."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory
    from twisted.internet.protocol import Protocol as _Protocol

    table = DEPLOY.read_text().split("| what | endpoint string |")[1].split("\n\n")[0]
    strings = re.findall(r"\| `((?:tcp|tcp6|ssl|unix):[^`]+)` \|", table)
    assert r"tcp6:5000:interface=\:\:1" in strings
    assert len(strings) >= 8
    cert, key = certificate
    for description in strings:
        description = re.sub(r"privateKey=[^:]+", f"privateKey={key}", description)
        description = re.sub(r"certKey=[^:]+", f"certKey={cert}", description)
        description = re.sub(r"extraCertChain=[^:]+", f"extraCertChain={cert}", description)
        endpoint = serverFromString(reactor, description)
        if "interface=127.0.0.1" in description or r"interface=\:\:1" in description:
            local = re.sub(r"^(tcp6?|ssl):\d+", r"\1:0", description)
            port = serverFromString(reactor, local).listen(Factory.forProtocol(_Protocol))
            listening: list[Any] = []
            port.addBoth(listening.append)
            assert not isinstance(listening[0], Failure), (description, listening[0])
            assert listening[0].getHost().host in ("127.0.0.1", "::1")
            listening[0].stopListening()
        assert endpoint is not None
