"""
Credentials from docker's credential helpers: C{credHelpers} (one helper
per registry) and C{credsStore} (one for all) in an auth file, each helper
a C{docker-credential-NAME} program asked with C{get} and the server on
standard input, as docker asks them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from clicommand import fakeCredentialHelper, userEnvironment

from ociklein.client import lookupCredentials


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = userEnvironment(tmp_path / "user")
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return env


def dockerConfig(env: dict[str, str], document: dict[str, object]) -> None:
    path = Path(env["HOME"]) / ".docker" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def test_a_registry_s_own_helper_comes_first(env: dict[str, str], tmp_path: Path) -> None:
    """credHelpers' helper for a registry answers for it, before credsStore and auths."""
    own = fakeCredentialHelper(tmp_path / "bin", "own", {"registry.example:5000": ("alice", "s3cret")})
    store = fakeCredentialHelper(tmp_path / "bin", "store", {"registry.example:5000": ("bob", "other")})
    dockerConfig(
        env,
        {
            "credHelpers": {"registry.example:5000": "own"},
            "credsStore": "store",
            "auths": {"registry.example:5000": {"auth": "Y2Fyb2w6eA=="}},
        },
    )
    assert lookupCredentials("registry.example:5000", env) == ("alice", "s3cret")
    assert own.read_text() == "get registry.example:5000\n"
    assert not store.exists()


def test_the_store_answers_for_every_registry_then_auths(env: dict[str, str], tmp_path: Path) -> None:
    """credsStore answers for any registry; what it does not know comes from auths, else nothing."""
    answers = {"one.example": ("alice", "a"), "https://index.docker.io/v1/": ("hub", "h")}
    fakeCredentialHelper(tmp_path / "bin", "store", answers)
    dockerConfig(env, {"credsStore": "store", "auths": {"two.example": {"auth": "Y2Fyb2w6eA=="}}})
    assert lookupCredentials("one.example", env) == ("alice", "a")
    assert lookupCredentials("docker.io", env) == ("hub", "h")
    assert lookupCredentials("two.example", env) == ("carol", "x")
    assert lookupCredentials("three.example", env) is None


def test_a_missing_store_is_ignored_but_a_missing_own_helper_is_an_error(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A credsStore not installed falls back to auths; a registry's own helper not installed is an error."""
    dockerConfig(env, {"credsStore": "absent", "auths": {"two.example": {"auth": "Y2Fyb2w6eA=="}}})
    assert lookupCredentials("two.example", env) == ("carol", "x")
    dockerConfig(env, {"credHelpers": {"two.example": "absent"}})
    with pytest.raises(ValueError, match="docker-credential-absent is not on PATH"):
        lookupCredentials("two.example", env)


def test_a_failing_helper_is_one_clear_error(env: dict[str, str], tmp_path: Path) -> None:
    """A helper failing for another reason than unknown credentials is an error naming it and its message."""
    fakeCredentialHelper(tmp_path / "bin", "broken", {}, failure="the keychain is locked")
    dockerConfig(env, {"credsStore": "broken"})
    with pytest.raises(ValueError, match="docker-credential-broken failed: the keychain is locked"):
        lookupCredentials("one.example", env)
