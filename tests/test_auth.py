"""
Access control over HTTP: challenges, empty logins, read-only mode, the
mount source check, the filtered catalog, the cache of verified passwords,
files re-read without a restart, throttled logins, and logs without
credentials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from authhelpers import PASSWORDS, POLICY, Authorized, basic, htpasswd, writePolicy, writeUsers
from conftest import StubClient, serve
from helpers import errorCode, header, pushBlob, pushImage, startUpload
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.logger import globalLogPublisher

from ociklein import Registry
from ociklein.auth import AccessControl

EMPTY_LOGIN = "Basic Og=="  # what skopeo answers a Basic challenge with when it has no credentials


def guarded(
    tmp_path: Path, backend: tuple[Any, Any] | None = None, **kwargs: Any
) -> tuple[Registry, StubClient]:
    access = AccessControl.fromFiles(
        reactor,
        htpasswd=str(writeUsers(tmp_path)),
        access=str(writePolicy(tmp_path)),
        reloadInterval=0,
    )
    registry = Registry(*(backend or ()), access=access, **kwargs)
    return registry, StubClient(registry)


def as_(client: Any, user: str) -> Authorized:
    return Authorized(client, basic(user, PASSWORDS[user]))


@pytest_twisted.ensureDeferred
async def test_empty_login_is_anonymous(tmp_path: Path) -> None:
    """An empty Basic login pulls what anonymous may pull, and is challenged elsewhere and on /v2/."""
    _, client = guarded(tmp_path)
    await pushImage(as_(client, "alice"), "public/lib", "v1")
    empty = Authorized(client, EMPTY_LOGIN)
    assert (await empty.request("GET", "/v2/public/lib/manifests/v1")).code == 200
    assert (await client.request("GET", "/v2/public/lib/manifests/v1")).code == 200
    for path in ("/v2/", "/v2/team/app/tags/list"):
        response = await empty.request("GET", path)
        assert (response.code, errorCode(response)) == (401, "UNAUTHORIZED")
        assert header(response, "WWW-Authenticate") == 'Basic realm="ociklein"'


@pytest_twisted.ensureDeferred
async def test_malformed_authorization(tmp_path: Path) -> None:
    """Undecodable Basic credentials and unknown schemes are 401 with the challenge, never a 500."""
    _, client = guarded(tmp_path)
    for value in ("Basic !!!", "Basic " + "YWxpY2U=", "Digest x", "Bearer abc", "Basic", "\u00e9t\u00e9"):
        response = await Authorized(client, value).request("GET", "/v2/public/lib/tags/list")
        assert (response.code, errorCode(response)) == (401, "UNAUTHORIZED"), value
        assert header(response, "WWW-Authenticate") == 'Basic realm="ociklein"'


WRITES = [
    ("PUT", "/v2/repo/manifests/v1"),
    ("DELETE", "/v2/repo/manifests/v1"),
    ("POST", "/v2/repo/blobs/uploads/"),
    ("PATCH", "/v2/repo/blobs/uploads/some-id"),
    ("PUT", "/v2/repo/blobs/uploads/some-id"),
    ("DELETE", "/v2/repo/blobs/uploads/some-id"),
    ("DELETE", "/v2/repo/blobs/sha256:" + "0" * 64),
]


@pytest_twisted.ensureDeferred
async def test_read_only(backend: tuple[Any, Any]) -> None:
    """In read-only mode every write is 405 UNSUPPORTED with the spec's JSON body; reads still work."""
    writable = StubClient(Registry(*backend))
    digest, _ = await pushImage(writable, "repo", "v1")
    client = StubClient(Registry(*backend, readOnly=True))
    for method, path in WRITES:
        response = await client.request(method, path, data=b"x")
        assert (response.code, errorCode(response)) == (405, "UNSUPPORTED"), (method, path)
        assert "POST" not in (header(response, "Allow") or "")
    assert (await client.request("GET", "/v2/repo/manifests/v1")).code == 200
    assert (await client.request("GET", "/v2/repo/tags/list")).code == 200
    assert (await writable.request("GET", f"/v2/repo/manifests/{digest}")).code == 200


@pytest_twisted.ensureDeferred
async def test_read_only_with_users(tmp_path: Path) -> None:
    """Read-only mode refuses even the admin's writes, before asking who is calling."""
    _, client = guarded(tmp_path, readOnly=True)
    for user in (None, "alice"):
        caller = Authorized(client, None if user is None else basic(user, PASSWORDS[user]))
        response = await caller.request("POST", "/v2/team/app/blobs/uploads/")
        assert (response.code, errorCode(response)) == (405, "UNSUPPORTED")
    assert (await as_(client, "alice").request("GET", "/v2/")).code == 200


@pytest_twisted.ensureDeferred
async def test_mount_needs_pull_on_source(tmp_path: Path, backend: tuple[Any, Any]) -> None:
    """A mount from a repository the caller may not pull falls back to a new upload session (202)."""
    _, client = guarded(tmp_path, backend)
    alice, bob = as_(client, "alice"), as_(client, "bob")
    secret = await pushBlob(alice, "admin/secret", b"secret layer")
    public = await pushBlob(alice, "public/lib", b"public layer")

    refused = await bob.request("POST", f"/v2/team/app/blobs/uploads/?mount={secret}&from=admin/secret")
    assert refused.code == 202
    assert (header(refused, "Location") or "").startswith("/v2/team/app/blobs/uploads/")
    assert (await bob.request("HEAD", f"/v2/team/app/blobs/{secret}")).code == 404

    mounted = await bob.request("POST", f"/v2/team/app/blobs/uploads/?mount={public}&from=public/lib")
    assert mounted.code == 201
    assert (await bob.request("HEAD", f"/v2/team/app/blobs/{public}")).code == 200


@pytest_twisted.ensureDeferred
async def test_catalog_pages_only_visible(tmp_path: Path, backend: tuple[Any, Any]) -> None:
    """The catalog lists only repositories the caller may pull, page by page, hidden ones not counting."""
    _, client = guarded(tmp_path, backend)
    alice = as_(client, "alice")
    names = [f"admin/r{i:02d}" for i in range(6)] + ["public/a", "public/b", "public/c", "team/x", "zzz"]
    for name in names:
        await pushImage(alice, name, "v1")
    seen, path = [], "/v2/_catalog?n=2"
    while path:
        response = await as_(client, "bob").request("GET", path)
        assert response.code == 200
        page = json.loads(response.body)["repositories"]
        assert len(page) <= 2
        seen.extend(page)
        link = header(response, "Link")
        path = link[1 : link.index(">")] if link else ""
    assert seen == ["public/a", "public/b", "public/c", "team/x"]
    anonymous = await client.request("GET", "/v2/_catalog")
    assert json.loads(anonymous.body)["repositories"] == ["public/a", "public/b", "public/c"]
    everything = await alice.request("GET", "/v2/_catalog")
    assert json.loads(everything.body)["repositories"] == sorted(names)


@pytest_twisted.ensureDeferred
async def test_bcrypt_once_per_credentials(tmp_path: Path) -> None:
    """A client sending Basic credentials on every request, even many at once, costs one bcrypt."""
    registry, client = guarded(tmp_path)
    await pushImage(as_(client, "alice"), "team/app", "v1")
    assert registry.access is not None and registry.access.passwords is not None
    checker = registry.access.passwords
    before = checker.bcryptRuns
    bob = as_(client, "bob")
    responses = await gatherResults(
        [ensureDeferred(bob.request("GET", "/v2/team/app/manifests/v1")) for _ in range(8)]
    )
    assert [r.code for r in responses] == [200] * 8
    for _ in range(5):
        assert (await bob.request("GET", "/v2/team/app/manifests/v1")).code == 200
    assert checker.bcryptRuns == before + 1


@pytest_twisted.ensureDeferred
async def test_verified_password_cache_is_bounded(tmp_path: Path) -> None:
    """The caches of verified credentials hold at most their size, whatever clients send."""
    registry, client = guarded(tmp_path)
    access = registry.access
    assert access is not None and access.passwords is not None
    access._verified._size = access.passwords._verified._size = 2  # type: ignore[attr-defined]
    for user in ("alice", "bob", "carol", "alice"):
        assert (await as_(client, user).request("GET", "/v2/")).code == 200
    assert len(access._verified) == 2 and len(access.passwords._verified) == 2  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_htpasswd_reloaded(tmp_path: Path) -> None:
    """Users added, removed or given a new password in the htpasswd file count at once, without a restart."""
    _, client = guarded(tmp_path)
    users = tmp_path / "htpasswd"
    dave = Authorized(client, basic("dave", "dave-pw"))
    assert (await dave.request("GET", "/v2/")).code == 401
    htpasswd(users, "dave", "dave-pw")
    assert (await dave.request("GET", "/v2/")).code == 200
    bob = as_(client, "bob")
    assert (await bob.request("GET", "/v2/")).code == 200
    htpasswd(users, "bob", "new-password")
    assert (await bob.request("GET", "/v2/")).code == 401  # the cached old password is forgotten
    assert (await Authorized(client, basic("bob", "new-password")).request("GET", "/v2/")).code == 200
    users.write_text(
        "".join(line + "\n" for line in users.read_text().splitlines() if not line.startswith("dave:"))
    )
    assert (await dave.request("GET", "/v2/")).code == 401


@pytest_twisted.ensureDeferred
async def test_policy_reloaded(tmp_path: Path) -> None:
    """A policy change counts at once for signed-in callers; a broken policy file keeps the previous rules."""
    _, client = guarded(tmp_path)
    await pushImage(as_(client, "alice"), "team/app", "v1")
    carol = as_(client, "carol")
    response = await carol.request("DELETE", "/v2/team/app/manifests/v1")
    assert (response.code, errorCode(response)) == (403, "DENIED")
    policy = tmp_path / "access.toml"
    policy.write_text(
        POLICY + '\n[[allow]]\nrepositories = ["team/*"]\nwho = ["carol"]\nactions = ["delete"]\n'
    )
    assert (await carol.request("DELETE", "/v2/team/app/manifests/v1")).code == 202
    policy.write_text("[[allow]\nbroken")
    assert (await carol.request("GET", "/v2/team/app/tags/list")).code == 200


@pytest_twisted.ensureDeferred
async def test_failed_logins_throttled(tmp_path: Path) -> None:
    """Repeated wrong passwords from one address get 429 and Retry-After; anonymous pulls still work."""
    _, client = guarded(tmp_path)
    await pushImage(as_(client, "alice"), "public/lib", "v1")
    wrong = Authorized(client, basic("alice", "guess"))
    codes = [(await wrong.request("GET", "/v2/")).code for _ in range(6)]
    assert codes == [401] * 5 + [429]
    response = await wrong.request("GET", "/v2/")
    assert (response.code, errorCode(response)) == (429, "TOOMANYREQUESTS")
    assert header(response, "Retry-After") == "1"
    response = await as_(client, "alice").request("GET", "/v2/")
    assert response.code == 429  # the right password too: no guessing through the throttle
    assert (await client.request("GET", "/v2/public/lib/manifests/v1")).code == 200


@pytest_twisted.ensureDeferred
async def test_credentials_never_logged(tmp_path: Path) -> None:
    """Neither passwords nor Authorization headers appear in any log event, failed logins included."""
    _, client = guarded(tmp_path)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await Authorized(client, basic("alice", "hunter2-typo")).request("GET", "/v2/")
        await as_(client, "bob").request("POST", "/v2/admin/secret/blobs/uploads/")
        await startUpload(as_(client, "alice"), "team/app")
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = repr(events)
    for secret in ("hunter2-typo", PASSWORDS["alice"], PASSWORDS["bob"], basic("bob", PASSWORDS["bob"])[6:]):
        assert secret not in text


@pytest_twisted.ensureDeferred
async def test_default_cost_htpasswd(tmp_path: Path) -> None:
    """An entry at htpasswd's default bcrypt cost verifies, off the reactor thread."""
    users = tmp_path / "htpasswd"
    htpasswd(users, "erin", "erin-pw", cost=None)
    access = AccessControl.fromFiles(reactor, htpasswd=str(users))
    client = StubClient(Registry(access=access))
    assert (await Authorized(client, basic("erin", "erin-pw")).request("GET", "/v2/")).code == 200
    assert (await Authorized(client, basic("erin", "wrong")).request("GET", "/v2/")).code == 401


@pytest_twisted.ensureDeferred
async def test_checker_remembers_verified_passwords(tmp_path: Path) -> None:
    """The htpasswd checker runs bcrypt once per user and password, and again once the user's hash changes."""
    registry, _ = guarded(tmp_path)
    assert registry.access is not None and registry.access.passwords is not None
    checker = registry.access.passwords
    credentials = UsernamePassword(b"bob", PASSWORDS["bob"].encode())
    assert await checker.requestAvatarId(credentials) == b"bob"
    assert await checker.requestAvatarId(credentials) == b"bob"
    assert checker.bcryptRuns == 1
    with pytest.raises(UnauthorizedLogin):
        await checker.requestAvatarId(UsernamePassword(b"bob", b"wrong"))
    htpasswd(tmp_path / "htpasswd", "bob", PASSWORDS["bob"])  # same password, new salt
    assert await checker.requestAvatarId(credentials) == b"bob"
    assert checker.bcryptRuns == 3


@pytest_twisted.ensureDeferred
async def test_access_log_names_the_user(tmp_path: Path) -> None:
    """The access log line of a request names its signed-in user, '-' for anonymous, never the password."""
    registry, _ = guarded(tmp_path)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        async for live in serve(registry):
            assert (await as_(live, "carol").request("GET", "/v2/")).code == 200
            assert (await live.request("GET", "/v2/")).code == 401
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e["ociklein_line"]() for e in events if "ociklein_line" in e]
    [signedIn] = [line for line in lines if " carol " in line]
    assert '"GET /v2/ HTTP/1.1" 200' in signedIn
    assert any(" - " in line and '"GET /v2/ HTTP/1.1" 401' in line for line in lines)
    assert PASSWORDS["carol"] not in repr(events)
