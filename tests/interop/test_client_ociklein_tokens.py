"""
ociklein.client and the C{ociklein} command against ociklein's own token
mode (C{--htpasswd}, C{--access}, C{--token-key}): the bearer flow with
the built-in C{/token} service, per-repository rights, and a mount whose
token covers two repositories.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from authhelpers import PASSWORDS, writeKey, writePolicy, writeUsers
from clicommand import ociklein, userEnvironment
from ocilayout import makeImage, writeLayout
from twistdprocess import TwistdRegistry
from twisted.internet import reactor

from ociklein.client import Clients, RegistryError, copy


@pytest.fixture(scope="module")
def tokenRegistry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwistdRegistry]:
    """
    ociklein with users, the access policy of tests/authhelpers.py and bearer tokens.
    """
    directory = tmp_path_factory.mktemp("tokens")
    args = [
        "--htpasswd", str(writeUsers(directory)),
        "--access", str(writePolicy(directory)),
        "--token-key", str(writeKey(directory / "key.pem")),
    ]  # fmt: skip
    running = TwistdRegistry(args, directory / "twistd.log").start()
    yield running
    running.stop()


def clientsAs(user: str, registry: TwistdRegistry) -> Clients:
    return Clients(
        reactor, credentials={registry.address: (user, PASSWORDS[user])}, env={"HOME": "/nonexistent"}
    )


@pytest_twisted.ensureDeferred
async def test_token_mode_rights_and_mounts(tokenRegistry: TwistdRegistry, tmp_path: Path) -> None:
    """bob pushes to team/* with ociklein's tokens, is denied elsewhere; alice mounts across repositories."""
    image = makeImage(layers=2)
    source = f"oci:{writeLayout(tmp_path / 'in', image, 'v1')}:v1"
    address = tokenRegistry.address
    bob = clientsAs("bob", tokenRegistry)
    try:
        assert (await copy(source, f"{address}/team/app:v1", clients=bob)).digest == image.digest
        with pytest.raises(RegistryError) as raised:
            await copy(source, f"{address}/other/app:v1", clients=bob)
        assert raised.value.code in ("DENIED", "UNAUTHORIZED"), raised.value
    finally:
        await bob.close()
    alice = clientsAs("alice", tokenRegistry)
    try:
        mounted = await copy(f"{address}/team/app:v1", f"{address}/other/app:v1", clients=alice)
        assert mounted.counts() == {"mounted": 3}
    finally:
        await alice.close()


def test_cli_login_and_pull_with_token_mode(tokenRegistry: TwistdRegistry, tmp_path: Path) -> None:
    """login stores carol's password; pull goes through the token flow; her push is refused in one line."""
    env = userEnvironment(tmp_path / "user")
    image = makeImage(layers=1)
    writeLayout(tmp_path / "in", image, "v1")
    address = tokenRegistry.address
    login = ociklein(env, "login", "-u", "carol", "--password-stdin", address, input=b"carol-secret\n")
    assert login.returncode == 0, login.stderr
    refused = ociklein(env, "push", str(tmp_path / "in"), f"{address}/team/carol:v1")
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
    push = ociklein(
        env, "push", "--creds", "bob:bob-secret", str(tmp_path / "in"), f"{address}/team/carol:v1"
    )
    assert push.returncode == 0, push.stderr
    pulled = ociklein(env, "pull", f"{address}/team/carol:v1", str(tmp_path / "out"))
    assert pulled.returncode == 0, pulled.stderr
    assert image.digest in pulled.stdout
