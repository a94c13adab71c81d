"""
The s3 backend over https: the session's SeaweedFS behind nginx as a TLS
proxy, with a certificate from a CA made for the test.  With
C{--s3-ca-file} naming that CA the registry works; without it, the start
fails with one line saying why.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from conftest import StubClient
from helpers import pushImage
from nginxfixture import Nginx
from seaweedfixture import SeaweedFS, s3Arguments
from twistdprocess import freePort
from twisted.python.usage import UsageError

from ociklein import Registry
from ociklein._s3options import s3Config
from ociklein.storage.s3 import S3BlobStore, S3Client, S3ManifestBackend
from ociklein.tap import Options


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """
    A CA, and a certificate it signed for 127.0.0.1: the CA file, the
    server's certificate and its key.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    caKey = ec.generate_private_key(ec.SECP256R1())
    caName = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ociklein test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(caName)
        .issuer_name(caName)
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(caKey.public_key()), critical=False)
        .sign(caKey, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(caName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()), critical=False)
        .sign(caKey, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture(scope="module")
def https(seaweedfs: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """
    The session's SeaweedFS behind nginx speaking TLS: its https endpoint
    and the CA file that verifies it.
    """
    directory = tmp_path_factory.mktemp("s3-tls")
    ca, certificate, key = _certificates(directory)
    port = freePort()
    http = f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {certificate};
        ssl_certificate_key {key};
        client_max_body_size 0;
        location / {{
            proxy_pass {seaweedfs.endpoint};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
    """
    nginx = Nginx(http, directory / "nginx", port).start()
    try:
        yield f"https://127.0.0.1:{port}", ca
    finally:
        nginx.stop()


def _arguments(seaweedfs: SeaweedFS, endpoint: str) -> list[str]:
    return [
        f"--s3-endpoint={endpoint}" if a.startswith("--s3-endpoint=") else a for a in s3Arguments(seaweedfs)
    ]


@pytest_twisted.ensureDeferred
async def test_caFileVerifiesTheStore(seaweedfs: SeaweedFS, https: tuple[str, Path]) -> None:
    """With --s3-ca-file naming the store's CA, the start-up check passes and images go through TLS."""
    endpoint, ca = https
    options = Options()
    options.parseOptions([*_arguments(seaweedfs, endpoint), f"--s3-ca-file={ca}"])
    client = S3Client(s3Config(options))
    try:
        stub = StubClient(Registry(S3ManifestBackend(client), S3BlobStore(client)))
        _, content = await pushImage(stub, "tls/app", "v1", layers=(b"over TLS " * 1000,))
        response = await stub.request("GET", "/v2/tls/app/manifests/v1")
        assert response.code == 200 and response.body == content
    finally:
        client.close()


def test_withoutCaFileStartFails(
    seaweedfs: SeaweedFS, https: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --s3-ca-file, a store the system CAs do not trust stops the start in one line."""
    endpoint, _ = https
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    with pytest.raises(UsageError) as raised:
        Options().parseOptions(_arguments(seaweedfs, endpoint))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("--backend=s3: bucket") and "CERTIFICATE_VERIFY_FAILED" in message, message
