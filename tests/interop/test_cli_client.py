"""
The client verbs of the C{ociklein} command, run as a user would against
ociklein and Distribution: push, pull, copy, ls, tags, inspect, rm, login
and logout; progress on a terminal and log lines elsewhere, C{--json},
one-line errors and the exit statuses 0, 1 and 2.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from clicommand import fakeCredentialHelper, ociklein, runInTerminal, userEnvironment
from distributionfixture import Distribution
from interophelpers import skopeo
from ocilayout import ARTIFACT, artifactFor, makeImage, makeIndex, readLayout, writeLayout
from twistdprocess import freePort

from ociklein.client import ImageLayout

pytest_plugins = ["clientfixtures"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return userEnvironment(tmp_path / "user")


@pytest.mark.parametrize("target", ["fs", "distribution"], indirect=True)
def test_push_pull_copy_keep_digests(target: Any, env: dict[str, str], tmp_path: Path) -> None:
    """push, pull and copy exit 0 and keep every digest and byte; --json reports the digest."""
    index = makeIndex([("linux", "amd64"), ("linux", "arm64")])
    writeLayout(tmp_path / "in", index, "v1")
    ref = f"{target.address}/cli/app:v1"
    pushed = ociklein(env, "push", f"{tmp_path / 'in'}:v1", ref)
    assert pushed.returncode == 0, pushed.stderr
    assert index.digest in pushed.stdout and "pushed sha256:" in pushed.stderr
    pulled = ociklein(env, "pull", "--json", ref, str(tmp_path / "out"))
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["digest"] == index.digest and pulled.stderr == ""
    layoutIndex, blobs = readLayout(tmp_path / "out")
    assert layoutIndex["manifests"][0]["digest"] == index.digest
    assert blobs == {**index.blobs, index.digest: index.manifest}
    copied = ociklein(env, "copy", "--json", ref, f"{target.address}/cli/copy:v2")
    assert copied.returncode == 0, copied.stderr
    report = json.loads(copied.stdout)
    assert report["digest"] == index.digest and set(report["blobs"].values()) == {"mounted"}


@pytest.mark.parametrize("target", ["fs"], indirect=True)
def test_copy_with_referrers(target: Any, distribution: Any, env: dict[str, str], tmp_path: Path) -> None:
    """copy --referrers takes an image's referrers to another registry; copy without it, none."""
    image = makeImage(layers=2)
    artifact = artifactFor(image)
    layout = ImageLayout(writeLayout(tmp_path / "in", image, "v1"))
    for digest, data in {**artifact.blobs, artifact.digest: artifact.manifest}.items():
        layout.writeSmall(digest, data)
    layout.addManifest({**artifact.descriptor(), "artifactType": ARTIFACT}, None)
    source = f"{target.address}/cli/signed:v1"
    pushed = ociklein(env, "push", "--referrers", f"{tmp_path / 'in'}:v1", source)
    assert pushed.returncode == 0, pushed.stderr
    copies = {"with": f"{distribution.address}/cli/signed-{target.port}:v1", "without": ""}
    copies["without"] = copies["with"].replace("signed-", "unsigned-")
    for kind, destination in copies.items():
        argv = ["copy", "--json", *(["--referrers"] if kind == "with" else []), source, destination]
        copied = ociklein(env, *argv)
        assert copied.returncode == 0, copied.stderr
        report = json.loads(copied.stdout)
        assert report["digest"] == image.digest
        assert (artifact.digest in report["manifests"]) == (kind == "with")
        inspected = ociklein(env, "inspect", "--json", destination)
        assert inspected.returncode == 0, inspected.stderr
        referrers = [r["digest"] for r in json.loads(inspected.stdout)["referrers"]]
        assert referrers == ([artifact.digest] if kind == "with" else []), kind


@pytest.mark.parametrize("target", ["memory"], indirect=True)
def test_looking_verbs(target: Any, env: dict[str, str], tmp_path: Path) -> None:
    """ls, tags and inspect show what is there (text and --json); rm removes a tag's manifest."""
    image = makeImage(layers=2)
    writeLayout(tmp_path / "in", image, "v1")
    for tag in ("v1", "v2"):
        assert ociklein(env, "push", str(tmp_path / "in"), f"{target.address}/cli/look:{tag}").returncode == 0
    assert "cli/look" in ociklein(env, "ls", target.address).stdout.split()
    listed = json.loads(ociklein(env, "ls", "--json", target.address).stdout)
    assert "cli/look" in listed["repositories"]
    assert ociklein(env, "tags", f"{target.address}/cli/look").stdout.split() == ["v1", "v2"]
    text = ociklein(env, "inspect", f"{target.address}/cli/look:v1").stdout
    assert f"Digest:     {image.digest}" in text and "Platform:   linux/amd64" in text and "2 layers" in text
    report = json.loads(ociklein(env, "inspect", "--json", f"{target.address}/cli/look:v1").stdout)
    assert report["digest"] == image.digest and report["config"]["architecture"] == "amd64"
    assert report["size"] == sum(layer["size"] for layer in json.loads(image.manifest)["layers"])
    removed = ociklein(env, "rm", f"{target.address}/cli/look:v2")
    assert (removed.returncode, removed.stdout.strip()) == (0, f"deleted {target.address}/cli/look:v2")
    missing = ociklein(env, "inspect", f"{target.address}/cli/look:v2")
    assert missing.returncode == 1


@pytest.mark.parametrize("target", ["fs"], indirect=True)
def test_errors_are_one_line_with_exit_status_1(target: Any, env: dict[str, str]) -> None:
    """A registry or connection error is its OCI code and message on one line, exit status 1."""
    missing = ociklein(env, "inspect", f"{target.address}/cli/none:v1")
    assert missing.returncode == 1 and missing.stdout == ""
    [line] = missing.stderr.splitlines()
    assert line.startswith("ociklein inspect: MANIFEST_UNKNOWN: "), line
    asJson = ociklein(env, "tags", "--json", f"{target.address}/cli/none")
    assert asJson.returncode == 1
    assert json.loads(asJson.stdout)["error"]["code"] == "NAME_UNKNOWN"
    unreachable = ociklein(env, "ls", f"127.0.0.1:{freePort()}")
    assert unreachable.returncode == 1 and len(unreachable.stderr.splitlines()) == 1
    assert "CONNECTION_FAILED" in unreachable.stderr
    noLayout = ociklein(env, "push", "/nonexistent/layout:v1", f"{target.address}/cli/x:v1")
    assert noLayout.returncode == 1 and noLayout.stderr.startswith("ociklein push: LAYOUT_INVALID: ")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["push", "only-one-argument"],
        ["push", "--jobs", "0", "layout", "host:1/a:b"],
        ["push", "--tls-verify=maybe", "layout", "host:1/a:b"],
        ["inspect", "Not A Reference"],
        ["pull", "oci:layout", "elsewhere"],
        ["ls", "host:1/with/a/path"],
        ["login", "--creds", "x", "host:1"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A command line that cannot work exits 2 before any request, with a message on standard error."""
    from ociklein.cli import main

    try:
        status = main(argv)
    except SystemExit as e:
        status = int(e.code or 0)
    assert status == 2
    assert capsys.readouterr().err


@pytest.mark.parametrize("target", ["memory"], indirect=True)
def test_progress_in_a_terminal(target: Any, env: dict[str, str], tmp_path: Path) -> None:
    """On a terminal, a push draws progress bars per layer and overall with bytes and rate."""
    image = makeImage(layers=3)
    writeLayout(tmp_path / "in", image, "v1")
    status, output = runInTerminal(env, "push", f"{tmp_path / 'in'}:v1", f"{target.address}/cli/tty:v1")
    assert status == 0, output
    assert "\x1b[" in output  # drawn, not logged
    assert "━" in output and "/s" in output and "total" in output
    for digest in image.blobs:
        assert f"pushed {digest.partition(':')[2][:12]}" in output
    assert image.digest in output


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """
    Distribution behind htpasswd (Basic) authentication: alice / wonderland.
    """
    directory = tmp_path_factory.mktemp("protected")
    import bcrypt

    hashed = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(rounds=5)).decode()
    (directory / "htpasswd").write_text(f"alice:{hashed}\n")
    auth = f"  htpasswd:\n    realm: test\n    path: {directory / 'htpasswd'}\n"
    with Distribution(directory, auth=auth).start() as running:
        yield running


def test_login_logout_with_the_containers_auth_file(
    protected: Any, env: dict[str, str], tmp_path: Path
) -> None:
    """login checks and stores credentials where skopeo finds them; push uses them; logout forgets them."""
    writeLayout(tmp_path / "in", makeImage(layers=1), "v1")
    ref = f"{protected.address}/cli/private:v1"
    denied = ociklein(env, "push", str(tmp_path / "in"), ref)
    assert denied.returncode == 1 and "UNAUTHORIZED" in denied.stderr
    wrong = ociklein(env, "login", "-u", "alice", "-p", "nope", protected.address)
    assert wrong.returncode == 1 and len(wrong.stderr.splitlines()) == 1
    login = ociklein(
        env, "login", "-u", "alice", "--password-stdin", protected.address, input=b"wonderland\n"
    )
    assert login.returncode == 0, login.stderr
    authfile = Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    assert oct(authfile.stat().st_mode & 0o777) == "0o600"
    seen = subprocess.run(
        ["skopeo", "login", "--get-login", protected.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert seen.stdout.strip() == "alice", seen.stderr
    assert ociklein(env, "push", str(tmp_path / "in"), ref).returncode == 0
    assert ociklein(env, "logout", protected.address).returncode == 0
    assert ociklein(env, "tags", ref).returncode == 1
    assert ociklein(env, "logout", protected.address).returncode == 1


def test_docker_config_and_skopeo_login_are_read(protected: Any, env: dict[str, str], tmp_path: Path) -> None:
    """Credentials from ~/.docker/config.json, or written by skopeo login, serve ociklein."""
    docker = Path(env["HOME"]) / ".docker" / "config.json"
    docker.parent.mkdir()
    docker.write_text(
        json.dumps({"auths": {f"http://{protected.address}": {"auth": "YWxpY2U6d29uZGVybGFuZA=="}}})
    )
    assert ociklein(env, "ls", protected.address).returncode == 0
    docker.unlink()
    assert ociklein(env, "ls", protected.address).returncode == 1
    authfile = tmp_path / "skopeo-auth.json"
    skopeo("login", "--tls-verify=false", "--authfile", str(authfile), "-u", "alice", "-p", "wonderland",
           protected.address)  # fmt: skip
    assert ociklein(env, "ls", "--authfile", str(authfile), protected.address).returncode == 0


def test_credential_helpers_serve_the_verbs(protected: Any, env: dict[str, str], tmp_path: Path) -> None:
    """A helper named in ~/.docker/config.json (credHelpers, credsStore) gives the verbs their credentials."""
    env = {**env, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
    log = fakeCredentialHelper(tmp_path / "bin", "test", {protected.address: ("alice", "wonderland")})
    fakeCredentialHelper(tmp_path / "bin", "wrong", {protected.address: ("alice", "nope")})
    docker = Path(env["HOME"]) / ".docker" / "config.json"
    docker.parent.mkdir()
    docker.write_text(json.dumps({"credHelpers": {protected.address: "test"}}))
    assert ociklein(env, "ls", protected.address).returncode == 0
    assert log.read_text() == f"get {protected.address}\n"
    docker.write_text(json.dumps({"credsStore": "test"}))
    writeLayout(tmp_path / "in", makeImage(layers=1), "v1")
    pushed = ociklein(env, "push", str(tmp_path / "in"), f"{protected.address}/cli/helped:v1")
    assert pushed.returncode == 0, pushed.stderr
    docker.write_text(json.dumps({"credsStore": "wrong"}))
    denied = ociklein(env, "tags", f"{protected.address}/cli/helped")
    assert denied.returncode == 1 and "UNAUTHORIZED" in denied.stderr
