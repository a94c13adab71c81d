"""
The access-control options of C{twistd ociregistry}: bad files and
combinations are one-line usage errors, the service they build guards the
registry, and workers get the same options.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import pytest_twisted
import treq
from authhelpers import POLICY, basic, writeKey, writePolicy, writeUsers
from test_tap import TWISTD, parse
from twisted.internet import reactor
from twisted.python.usage import UsageError

from ociklein.tap import SECTION, _accessArguments, _switchArguments, makeService


def bad(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    users, policy = str(writeUsers(tmp_path)), str(writePolicy(tmp_path))
    (tmp_path / "bad.toml").write_text(
        POLICY.replace('actions = ["pull", "push"]', 'actions = ["pull", "fly"]')
    )
    (tmp_path / "md5").write_text("alice:$apr1$abc$def\n")
    (tmp_path / "notakey.pem").write_text("hello\n")
    key = str(writeKey(tmp_path / "key.pem"))
    return {
        "policy line": (
            ["--htpasswd", users, "--access", str(tmp_path / "bad.toml")],
            "line 12: unknown action 'fly'",
        ),
        "missing htpasswd": (["--htpasswd", str(tmp_path / "none")], "No such file or directory"),
        "not bcrypt": (["--htpasswd", str(tmp_path / "md5")], "line 1: user 'alice' has no bcrypt hash"),
        "not a key": (["--token-key", str(tmp_path / "notakey.pem")], "not an unencrypted PEM private key"),
        "both keys": (["--token-key", key, "--token-public-key", key], "excludes --token-public-key"),
        "no realm": (["--token-public-key", key], "--token-public-key needs --token-realm"),
        "realm alone": (["--token-realm", "https://x/token"], "--token-realm needs --token-key"),
        "read-only word": (
            ["--access", policy, "--config", str(tmp_path / "ro.cfg")],
            "--read-only must be yes or no",
        ),
    }


CASES = [
    "policy line",
    "missing htpasswd",
    "not bcrypt",
    "not a key",
    "both keys",
    "no realm",
    "realm alone",
    "read-only word",
]


@pytest.mark.parametrize("case", CASES)
def test_usage_errors(tmp_path: Path, case: str) -> None:
    """Bad access files, keys and combinations are one UsageError line naming the file (and line)."""
    (tmp_path / "ro.cfg").write_text(f"[{SECTION}]\nread-only = perhaps\n")
    args, message = bad(tmp_path)[case]
    with pytest.raises(UsageError) as raised:
        parse(*args)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_twistd_names_the_policy_line(tmp_path: Path) -> None:
    """twistd with a bad policy file exits non-zero with one line naming the file and the line."""
    args, message = bad(tmp_path)["policy line"]
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "ociregistry", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    [line] = [line for line in (result.stdout + result.stderr).splitlines() if "--access " in line]
    assert message in line and str(tmp_path / "bad.toml") in line


def test_read_only_from_file_and_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """read-only = yes in the file switches it on; workers get it and the access files, made absolute."""
    (tmp_path / "ro.cfg").write_text(f"[{SECTION}]\nread-only = yes\n")
    users = writeUsers(tmp_path)
    monkeypatch.chdir(tmp_path)
    options = parse(
        "--config", "ro.cfg", "--htpasswd", "htpasswd", "--token-key", str(writeKey(tmp_path / "k.pem"))
    )
    assert options["read-only"] is True
    assert _switchArguments(options) == ["--read-only"]
    assert _accessArguments(options) == [
        f"--htpasswd={users}",
        f"--token-key={tmp_path / 'k.pem'}",
        "--token-issuer=ociklein",
        "--token-service=ociklein",
    ]


@pytest_twisted.ensureDeferred
async def test_make_service_guards(tmp_path: Path) -> None:
    """The service built from --htpasswd and --access challenges anonymous callers, serves signed-in ones."""
    options = parse(
        "--listen", "tcp:0:interface=127.0.0.1", "--htpasswd", str(writeUsers(tmp_path)),
        "--access", str(writePolicy(tmp_path)),
    )  # fmt: skip
    service = makeService(options, reactor=reactor)
    service.startService()
    try:
        [child] = list(service)  # type: ignore[call-overload]
        [port] = await child.listening.addTimeout(10, reactor)
        url = f"http://127.0.0.1:{port.getHost().port}/v2/"
        anonymous = await treq.get(url, persistent=False)
        assert anonymous.code == 401
        await treq.content(anonymous)
        alice = await treq.get(
            url, headers={"Authorization": basic("alice", "alice-secret")}, persistent=False
        )
        assert alice.code == 200
        await treq.content(alice)
    finally:
        await service.stopService()
