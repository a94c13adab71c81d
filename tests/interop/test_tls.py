"""
skopeo against C{twistd ociregistry --listen ssl:...}: the TLS set-up the
README documents, with a freshly made self-signed certificate that skopeo
trusts through a certificate directory, with no insecure flag at all.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from interophelpers import RunningRegistry, selfSignedCertificate, skopeo, startRegistry, stopRegistry
from ocilayout import makeImage, writeLayout

pytest.importorskip("OpenSSL", reason="TLS listeners need twisted[tls]")


@pytest.fixture(params=["memory", "fs"])
def tlsServer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RunningRegistry, Path]]:
    """
    A registry on TLS only, and a directory holding its certificate as C{ca.crt}.
    """
    key, cert = selfSignedCertificate(tmp_path)
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(cert, certs / "ca.crt")
    running = startRegistry(request.param, tmp_path, tls=(key, cert))
    yield running, certs
    stopRegistry(running)


def test_skopeo_over_tls_with_trusted_certificate(
    tlsServer: tuple[RunningRegistry, Path], tmp_path: Path
) -> None:
    """skopeo pushes and inspects over TLS, trusting the registry only through the given certificate."""
    server, certs = tlsServer
    image = makeImage(layers=2)
    layout = writeLayout(tmp_path / "in", image, "v1")
    reference = f"docker://{server.address}/tls/image:v1"

    skopeo("copy", "--dest-cert-dir", str(certs), f"oci:{layout}:v1", reference)
    report = json.loads(skopeo("inspect", "--cert-dir", str(certs), reference).stdout)
    assert (report["Digest"], report["RepoTags"]) == (image.digest, ["v1"])
    assert skopeo("inspect", "--cert-dir", str(certs), "--raw", reference).stdout == image.manifest
    untrusted = skopeo("inspect", "--raw", reference, check=False)
    assert untrusted.returncode != 0
    assert b"certificate" in untrusted.stderr
