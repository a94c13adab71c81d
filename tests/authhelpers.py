"""
What the access-control tests share: users written by the real C{htpasswd
-B}, the policy of issue 11's example, signing keys, and a client that adds
credentials to every request.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}

# alice administers everything, bob pushes to team/*, carol reads
# everything, anonymous callers pull public/**.
POLICY = """\
[groups]
admins = ["alice"]

[[allow]]
repositories = ["**"]
who = ["group:admins"]
actions = ["pull", "push", "delete"]

[[allow]]
repositories = ["team/*"]
who = ["bob"]
actions = ["pull", "push"]

[[allow]]
repositories = ["**"]
who = ["carol"]
actions = ["pull"]

[[allow]]
repositories = ["public/**"]
who = ["anonymous"]
actions = ["pull"]
"""


def htpasswd(path: Path, user: str, password: str, cost: int | None = 4) -> None:
    """
    Add C{user} to the htpasswd file C{path} with Apache's own tool, at a
    low bcrypt cost unless C{cost} is L{None} (htpasswd's default).
    """
    if shutil.which("htpasswd") is None:
        pytest.fail("htpasswd is not installed (apt-get install apache2-utils)")
    flags = ["-bB"] if cost is None else ["-bB", "-C", str(cost)]
    if not path.exists():
        flags[0] += "c"
    subprocess.run(["htpasswd", *flags, str(path), user, password], check=True, capture_output=True)


def writeUsers(directory: Path, passwords: dict[str, str] = PASSWORDS) -> Path:
    path = directory / "htpasswd"
    for user, password in passwords.items():
        htpasswd(path, user, password)
    return path


def writePolicy(directory: Path, text: str = POLICY) -> Path:
    path = directory / "access.toml"
    path.write_text(text)
    return path


def writeKey(path: Path, kind: str = "ec") -> Path:
    """
    A fresh unencrypted PEM private key: EC P-256 or RSA 2048.
    """
    key: Any = (
        ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    )
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def writePublicKey(private: Path, path: Path) -> Path:
    key: Any = serialization.load_pem_private_key(private.read_bytes(), None)
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Authorized:
    """
    A test client (StubClient or LiveClient) that sends C{authorization}
    with every request.
    """

    def __init__(self, client: Any, authorization: str | None) -> None:
        self.client = client
        self.authorization = authorization

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", None) or {})
        if self.authorization is not None:
            headers["Authorization"] = self.authorization
        return await self.client.request(method, path, headers=headers, **kwargs)
