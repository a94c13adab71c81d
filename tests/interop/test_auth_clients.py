"""
Real clients signing in to a real C{twistd ociregistry} with access control,
in Basic mode and in built-in token mode: skopeo with C{--dest-creds} and
with C{skopeo login} + C{--authfile}, oras-py's login, and python-dxf's
token flow.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dxf
import oras.client
import pytest
import requests
from authhelpers import PASSWORDS, writeKey, writePolicy, writeUsers
from interophelpers import RunningRegistry, http, skopeo, stopRegistry
from ocilayout import makeImage, sha256, writeLayout

MODES = ["basic", "token"]


def startGuarded(mode: str, directory: Path, tls: tuple[Path, Path] | None = None) -> RunningRegistry:
    """
    An fs registry with the users and policy of authhelpers, taking Basic
    credentials or (in token mode) tokens from its own /token.
    """
    args = ["--htpasswd", str(writeUsers(directory)), "--access", str(writePolicy(directory))]
    if mode == "token":
        args += ["--token-key", str(writeKey(directory / "key.pem"))]
    root = ["--backend=fs", "--root", str(directory / "root")]
    running = RunningRegistry([*root, *args], directory / "twistd.log", tls)
    running.start()
    running.mode = mode  # type: ignore[attr-defined]
    return running


@pytest.fixture(scope="module", params=MODES)
def guarded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningRegistry]:
    running = startGuarded(request.param, tmp_path_factory.mktemp(f"auth-{request.param}"))
    yield running
    stopRegistry(running)


@pytest.fixture(scope="module", params=MODES)
def guardedTLS(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningRegistry, Path]]:
    """
    The same over TLS, and its certificate: python-dxf signs in over HTTPS only.
    """
    directory = tmp_path_factory.mktemp(f"auth-tls-{request.param}")
    key, cert = directory / "tls-key.pem", directory / "tls-cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    running = startGuarded(request.param, directory, (key, cert))
    yield running, cert
    stopRegistry(running)


def creds(user: str) -> str:
    return f"{user}:{PASSWORDS[user]}"


def layout(tmp_path: Path, layers: int = 1) -> Path:
    return writeLayout(tmp_path / "image", makeImage(layers=layers), "v1")


def test_skopeo_dest_creds(guarded: RunningRegistry, tmp_path: Path) -> None:
    """skopeo copies in with --dest-creds of a team user; without credentials, or elsewhere, it is refused."""
    target = f"docker://{guarded.address}/team/skopeo:v1"
    skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", creds("bob"), f"oci:{layout(tmp_path)}:v1", target
    )
    skopeo("inspect", "--tls-verify=false", "--creds", creds("carol"), target)
    anonymous = skopeo("inspect", "--tls-verify=false", "--no-creds", target, check=False)
    assert anonymous.returncode != 0
    assert b"authentication required" in anonymous.stderr or b"unauthorized" in anonymous.stderr.lower()
    denied = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds("bob"),
        f"oci:{tmp_path / 'image'}:v1",
        f"docker://{guarded.address}/admin/skopeo:v1",
        check=False,
    )
    assert denied.returncode != 0 and (b"403" in denied.stderr or b"denied" in denied.stderr.lower())


def test_skopeo_login_authfile(guarded: RunningRegistry, tmp_path: Path) -> None:
    """skopeo login writes an auth file later commands sign in with; the admin pushes, anyone pulls public."""
    authfile = str(tmp_path / "auth.json")
    wrong = skopeo(
        "login",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "-u",
        "alice",
        "-p",
        "wrong",
        guarded.address,
        check=False,
    )
    assert wrong.returncode != 0
    skopeo(
        "login",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "-u",
        "alice",
        "-p",
        PASSWORDS["alice"],
        guarded.address,
    )
    assert guarded.address in json.loads(Path(authfile).read_text())["auths"]
    public = f"docker://{guarded.address}/public/skopeo:v1"
    skopeo("copy", "--dest-tls-verify=false", "--authfile", authfile, f"oci:{layout(tmp_path)}:v1", public)
    skopeo(
        "copy",
        "--src-tls-verify=false",
        "--src-no-creds",
        public,
        f"oci:{tmp_path / 'out'}:v1",
    )
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--no-creds", public).stdout)
    assert inspected["Name"] == f"{guarded.address}/public/skopeo"
    skopeo("delete", "--tls-verify=false", "--authfile", authfile, public)
    gone = skopeo("inspect", "--tls-verify=false", "--authfile", authfile, public, check=False)
    assert gone.returncode != 0


def test_oras_login(guarded: RunningRegistry, tmp_path: Path) -> None:
    """oras-py logs in (credentials kept in its own config file) and pushes and pulls a file artifact."""
    backend = "basic" if guarded.mode == "basic" else "token"  # type: ignore[attr-defined]
    client = oras.client.OrasClient(hostname=guarded.address, insecure=True, auth_backend=backend)
    client.login("bob", PASSWORDS["bob"], hostname=guarded.address, config_path=str(tmp_path / "config.json"))
    (tmp_path / "notes.txt").write_text("signed in\n")
    target = f"{guarded.address}/team/oras:v1"
    response = client.push(target=target, files=[str(tmp_path / "notes.txt")], disable_path_validation=True)
    assert response.status_code == 201, response.text
    pulled = client.pull(target=target, outdir=str(tmp_path / "out"))
    assert [Path(p).read_text() for p in pulled] == ["signed in\n"]
    assert http(guarded, "GET", "/v2/team/oras/manifests/v1").status_code == 401


def test_dxf_token_flow(guardedTLS: tuple[RunningRegistry, Path], tmp_path: Path) -> None:
    """python-dxf answers the challenge (Basic, or a token from /token) and pushes, tags, lists and pulls."""
    guarded, cert = guardedTLS

    def signIn(client: dxf.DXF, response: requests.Response) -> None:
        client.authenticate("bob", PASSWORDS["bob"], response=response)

    def repository(name: str) -> dxf.DXF:
        return dxf.DXF(guarded.address, name, auth=signIn, tlsverify=str(cert), timeout=60)

    repo = repository("team/dxf")
    (tmp_path / "blob").write_bytes(b"dxf blob " * 1000)
    digest = repo.push_blob(str(tmp_path / "blob"))
    assert digest == sha256(b"dxf blob " * 1000)
    repo.set_alias("v1", digest)
    assert repo.list_aliases() == ["v1"]
    assert b"".join(repo.pull_blob(digest)) == b"dxf blob " * 1000
    if guarded.mode == "token":  # type: ignore[attr-defined]
        assert repo.token and repo.token.count(".") == 2
    with pytest.raises(requests.HTTPError) as refused:
        repository("admin/dxf").push_blob(str(tmp_path / "blob"))
    assert refused.value.response.status_code in (401, 403)
    assert http(guarded, "GET", "/v2/team/dxf/tags/list", verify=str(cert)).status_code == 401
