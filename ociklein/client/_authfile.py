"""
Credentials in the auth files skopeo, podman and docker share: a JSON
object whose C{auths} map a registry to C{{"auth": base64("user:password")}}.
They are read in the containers tools' order and written where C{podman
login} writes, so that a login with either tool serves the other.  A file
may instead name credential helpers, as docker's does: C{credHelpers} maps
a registry to one, C{credsStore} names one for every registry; helper
C{NAME} is the program C{docker-credential-NAME}, asked with C{get}.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ociklein.client._files import replaceFile


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or os.path.expanduser("~"))


def authFiles(env: Mapping[str, str] | None = None) -> list[Path]:
    """
    The files credentials are looked up in, first match wins:
    C{$REGISTRY_AUTH_FILE}, C{$XDG_RUNTIME_DIR/containers/auth.json},
    C{~/.config/containers/auth.json}, C{~/.docker/config.json}.
    """
    env = os.environ if env is None else env
    if env.get("REGISTRY_AUTH_FILE"):
        return [Path(env["REGISTRY_AUTH_FILE"])]
    files = []
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    config = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else _home(env) / ".config"
    files.append(config / "containers" / "auth.json")
    files.append(_home(env) / ".docker" / "config.json")
    return files


def loginFile(env: Mapping[str, str] | None = None) -> Path:
    """
    Where a login is written: the first file of L{authFiles} (podman's and
    skopeo's choice).
    """
    return authFiles(env)[0]


def _key(entry: str) -> str:
    """
    An C{auths} key as a bare C{host[:port]}: docker writes some with a
    scheme and a path (C{https://index.docker.io/v1/}).
    """
    key = entry.split("://", 1)[-1].split("/", 1)[0]
    return "docker.io" if key in ("index.docker.io", "registry-1.docker.io") else key


def _load(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable auth file ({e})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: not a JSON object")
    return document


# How long a credential helper may take (one that asks for a passphrase
# on a terminal gets this long to be answered).
HELPER_TIMEOUT = 60.0
# Docker's name for Docker Hub in auth files and helpers.
_DOCKER_HUB = "https://index.docker.io/v1/"


def _askHelper(
    name: str, registry: str, env: Mapping[str, str] | None, required: bool
) -> tuple[str, str] | None:
    """
    Ask C{docker-credential-NAME get} for C{registry}'s credentials:
    L{None} when it has none (or, unless C{required}, when it is not
    installed).
    """
    environment = dict(os.environ if env is None else env)
    program = shutil.which(f"docker-credential-{name}", path=environment.get("PATH"))
    if program is None:
        if required:
            raise ValueError(f"credential helper docker-credential-{name} is not on PATH")
        return None
    server = _DOCKER_HUB if registry == "docker.io" else registry
    try:
        answer = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            env=environment,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ValueError(f"credential helper docker-credential-{name}: {e}") from None
    said = " ".join(answer.stdout.decode(errors="replace").split())
    if answer.returncode != 0:
        if "credentials not found" in said.lower():
            return None
        message = said or " ".join(answer.stderr.decode(errors="replace").split())
        raise ValueError(f"credential helper docker-credential-{name} failed: {message}")
    try:
        document = json.loads(answer.stdout)
        user, secret = document["Username"], document["Secret"]
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"credential helper docker-credential-{name} did not answer JSON") from None
    if not isinstance(user, str) or not isinstance(secret, str):
        raise ValueError(f"credential helper docker-credential-{name} did not answer strings")
    if user == "<token>":
        raise ValueError(f"credential helper docker-credential-{name} gave an identity token, not supported")
    return user, secret


def _fromHelpers(
    document: dict[str, Any], wanted: str, env: Mapping[str, str] | None
) -> tuple[str, str] | None:
    """
    What C{document}'s helpers say for C{wanted}: its own helper first
    (which must be installed), then the file's store for every registry.
    """
    helpers = document.get("credHelpers")
    if isinstance(helpers, dict):
        for entry, name in helpers.items():
            if _key(entry) == wanted and isinstance(name, str) and name:
                return _askHelper(name, wanted, env, required=True)
    store = document.get("credsStore")
    if isinstance(store, str) and store:
        return _askHelper(store, wanted, env, required=False)
    return None


def lookupCredentials(registry: str, env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """
    (user, password) stored for C{registry}, or L{None}: in each auth file
    in turn, from its credential helpers (as docker asks them: the
    registry's own, then the store), then from its C{auths}.
    """
    wanted = _key(registry)
    for path in authFiles(env):
        document = _load(path)
        found = _fromHelpers(document, wanted, env)
        if found is not None:
            return found
        auths = document.get("auths")
        if not isinstance(auths, dict):
            continue
        for entry, value in auths.items():
            if _key(entry) != wanted or not isinstance(value, dict) or not value.get("auth"):
                continue
            try:
                user, _, password = base64.b64decode(value["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise ValueError(f"{path}: the entry for {entry} is not base64 of user:password") from None
            return user, password
    return None


def _save(path: Path, document: dict[str, Any]) -> None:
    """
    Replace C{path} atomically, readable by its owner only.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    replaceFile(path, json.dumps(document, indent="\t").encode() + b"\n", mode=0o600)


def storeCredentials(registry: str, user: str, password: str, env: Mapping[str, str] | None = None) -> Path:
    """
    Record C{user} and C{password} for C{registry} in L{loginFile}, keeping
    every other entry; the file written.
    """
    path = loginFile(env)
    document = _load(path)
    auths = document.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise ValueError(f"{path}: auths is not an object")
    for entry in [entry for entry in auths if _key(entry) == _key(registry)]:
        del auths[entry]
    auths[_key(registry)] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    _save(path, document)
    return path


def removeCredentials(registry: str, env: Mapping[str, str] | None = None) -> list[Path]:
    """
    Forget C{registry} in every auth file that names it; the files changed.
    """
    changed = []
    for path in authFiles(env):
        document = _load(path)
        auths = document.get("auths")
        if not isinstance(auths, dict):
            continue
        entries = [entry for entry in auths if _key(entry) == _key(registry)]
        if entries:
            for entry in entries:
                del auths[entry]
            _save(path, document)
            changed.append(path)
    return changed
