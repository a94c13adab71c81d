"""
Bearer tokens: the built-in token service at /token, tokens of an external
token service, and every way a token can be wrong.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from authhelpers import PASSWORDS, Authorized, basic, writeKey, writePolicy, writePublicKey, writeUsers
from conftest import StubClient
from helpers import errorCode, header, pushImage
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from twisted.internet import reactor
from twisted.internet.task import Clock

from ociklein import Registry
from ociklein.auth import AccessControl, TokenIssuer

ALL = "&".join(f"scope=repository:{r}:pull,push,delete" for r in ("public/lib", "team/app", "admin/secret"))


def tokenRegistry(tmp_path: Path, kind: str = "ec", clock: Any = None) -> tuple[Registry, StubClient]:
    access = AccessControl.fromFiles(
        reactor,
        htpasswd=str(writeUsers(tmp_path)),
        access=str(writePolicy(tmp_path)),
        tokenKey=str(writeKey(tmp_path / "key.pem", kind)),
        clock=clock,
    )
    registry = Registry(access=access)
    return registry, StubClient(registry)


async def token(client: Any, user: str | None, query: str = ALL) -> dict[str, Any]:
    login = Authorized(client, None if user is None else basic(user, PASSWORDS[user]))
    response = await login.request("GET", f"/token?service=ociklein&{query}")
    assert response.code == 200, response.body
    assert header(response, "Content-Type") == "application/json"
    return json.loads(response.body)  # type: ignore[no-any-return]


def claims(answer: dict[str, Any]) -> dict[str, Any]:
    payload = answer["token"].split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def bearer(client: Any, value: str) -> Authorized:
    return Authorized(client, f"Bearer {value}")


@pytest.mark.parametrize("kind", ["ec", "rsa"])
@pytest_twisted.ensureDeferred
async def test_token_service_trims_to_policy(tmp_path: Path, kind: str) -> None:
    """/token answers Docker's token JSON, granting what the policy allows of what was asked (EC, RSA)."""
    # Pull and push go together (oras-py pushes with the token it got for
    # pull); delete only when asked for.
    _, client = tokenRegistry(tmp_path, kind)
    answer = await token(client, "bob", ALL + "&scope=registry:catalog:*&scope=bogus")
    assert set(answer) == {"token", "access_token", "expires_in", "issued_at"}
    assert answer["token"] == answer["access_token"] and answer["expires_in"] == 300
    granted = claims(answer)
    assert (granted["iss"], granted["aud"], granted["sub"]) == ("ociklein", "ociklein", "bob")
    assert granted["exp"] - granted["iat"] == 300
    assert granted["access"] == [
        {"type": "repository", "name": "public/lib", "actions": ["pull"]},
        {"type": "repository", "name": "team/app", "actions": ["pull", "push"]},
        {"type": "repository", "name": "admin/secret", "actions": []},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]
    upgraded = claims(await token(client, "bob", "scope=repository:team/app:pull"))
    assert upgraded["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    admin = claims(await token(client, "alice", "scope=repository:team/app:pull"))
    assert admin["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    anonymous = claims(
        await token(client, None, "scope=repository:public/lib:pull,push repository:team/app:pull")
    )
    assert anonymous["sub"] == ""
    assert anonymous["access"] == [
        {"type": "repository", "name": "public/lib", "actions": ["pull"]},
        {"type": "repository", "name": "team/app", "actions": []},
    ]


@pytest_twisted.ensureDeferred
async def test_token_service_refusals(tmp_path: Path) -> None:
    """/token refuses a wrong password (401, Basic challenge), another service (400), a bearer (401)."""
    _, client = tokenRegistry(tmp_path)
    wrong = await Authorized(client, basic("bob", "nope")).request("GET", "/token?service=ociklein")
    assert (wrong.code, errorCode(wrong)) == (401, "UNAUTHORIZED")
    assert header(wrong, "WWW-Authenticate") == 'Basic realm="ociklein"'
    other = await client.request("GET", "/token?service=elsewhere")
    assert (other.code, errorCode(other)) == (400, "UNSUPPORTED")
    bearerLogin = await bearer(client, "x").request("GET", "/token?service=ociklein")
    assert bearerLogin.code == 401
    post = await client.request("POST", "/token")
    assert (post.code, errorCode(post)) == (405, "UNSUPPORTED")


@pytest_twisted.ensureDeferred
async def test_token_flow(tmp_path: Path) -> None:
    """The challenge names realm, service and scope; a token for that scope is accepted; /v2/ takes any."""
    _, client = tokenRegistry(tmp_path)
    response = await client.request("POST", "/v2/team/app/blobs/uploads/")
    assert (response.code, errorCode(response)) == (401, "UNAUTHORIZED")
    assert header(response, "WWW-Authenticate") == (
        'Bearer realm="http://registry.test/token",service="ociklein",scope="repository:team/app:pull,push"'
    )
    base = await client.request("GET", "/v2/")
    assert header(base, "WWW-Authenticate") == 'Bearer realm="http://registry.test/token",service="ociklein"'
    bob = bearer(client, (await token(client, "bob", "scope=repository:team/app:pull,push"))["token"])
    await pushImage(bob, "team/app", "v1")
    assert (await bob.request("GET", "/v2/team/app/manifests/v1")).code == 200
    assert (await bob.request("GET", "/v2/")).code == 200
    anonymous = bearer(client, (await token(client, None, "scope=repository:team/app:pull"))["token"])
    assert (await anonymous.request("GET", "/v2/")).code == 200
    refused = await anonymous.request("GET", "/v2/team/app/manifests/v1")
    assert (refused.code, errorCode(refused)) == (401, "UNAUTHORIZED")


@pytest_twisted.ensureDeferred
async def test_insufficient_scope(tmp_path: Path) -> None:
    """A token lacking a scope gets 401 insufficient_scope if its user could get it, else 403."""
    _, client = tokenRegistry(tmp_path)
    bob = bearer(client, (await token(client, "bob", "scope=repository:public/lib:pull"))["token"])
    again = await bob.request("GET", "/v2/team/app/tags/list")
    assert (again.code, errorCode(again)) == (401, "UNAUTHORIZED")
    assert 'scope="repository:team/app:pull",error="insufficient_scope"' in (
        header(again, "WWW-Authenticate") or ""
    )
    denied = await bob.request("GET", "/v2/admin/secret/tags/list")
    assert (denied.code, errorCode(denied)) == (403, "DENIED")
    catalog = await bob.request("GET", "/v2/_catalog")
    assert catalog.code == 401
    assert 'scope="registry:catalog:*"' in (header(catalog, "WWW-Authenticate") or "")


def forged(tmp_path: Path, **overrides: Any) -> str:
    """
    A token signed by the registry's own key, with the given claims changed.
    """
    key = ECKey.import_key((tmp_path / "key.pem").read_bytes())
    now = int(reactor.seconds())
    payload = {
        "iss": "ociklein",
        "aud": "ociklein",
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}],
    }
    payload.update(overrides)
    return jwt.encode({"alg": "ES256"}, {k: v for k, v in payload.items() if v is not None}, key)


def _b64(document: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


BAD_TOKENS = {
    "expired": lambda tmp: forged(tmp, exp=int(reactor.seconds()) - 120),
    "not yet valid": lambda tmp: forged(tmp, nbf=int(reactor.seconds()) + 600),
    "no expiry": lambda tmp: forged(tmp, exp=None),
    "wrong issuer": lambda tmp: forged(tmp, iss="someone-else"),
    "wrong audience": lambda tmp: forged(tmp, aud="another-registry"),
    "wrong signature": lambda tmp: (
        ECKey.generate_key("P-256")
        and jwt.encode(
            {"alg": "ES256"},
            json.loads(base64.urlsafe_b64decode(forged(tmp).split(".")[1] + "==")),
            ECKey.generate_key("P-256"),
        )
    ),
    "tampered": lambda tmp: ".".join(
        [forged(tmp).split(".")[0], _b64({**_claims(forged(tmp)), "sub": "bob"}), forged(tmp).split(".")[2]]
    ),
    "alg none": lambda tmp: _b64({"alg": "none", "typ": "JWT"}) + "." + forged(tmp).split(".")[1] + ".",
    "RS256 with the EC key": lambda tmp: jwt.encode(
        {"alg": "RS256"}, _claims(forged(tmp)), RSAKey.generate_key(2048)
    ),
    "garbage": lambda tmp: "not.a.token",
    "malformed access": lambda tmp: forged(tmp, access="everything"),
}


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
@pytest_twisted.ensureDeferred
async def test_bad_tokens(tmp_path: Path, case: str) -> None:
    """Expired, early, foreign, re-signed, tampered, unsigned, malformed tokens: 401 invalid_token."""
    _, client = tokenRegistry(tmp_path)
    admin = bearer(client, (await token(client, "alice", "scope=repository:team/app:push,pull"))["token"])
    await pushImage(admin, "team/app", "v1")
    assert (await bearer(client, forged(tmp_path)).request("GET", "/v2/team/app/tags/list")).code == 200
    response = await bearer(client, BAD_TOKENS[case](tmp_path)).request("GET", "/v2/team/app/tags/list")
    assert (response.code, errorCode(response)) == (401, "UNAUTHORIZED")
    assert 'error="invalid_token"' in (header(response, "WWW-Authenticate") or "")


@pytest_twisted.ensureDeferred
async def test_token_verified_once_until_expiry(tmp_path: Path) -> None:
    """A token sent on every request is verified once, and refused once it expires (with 60 s of leeway)."""
    clock = Clock()
    clock.advance(reactor.seconds())
    registry, client = tokenRegistry(tmp_path, clock=clock)
    access = registry.access
    assert access is not None and access.tokens is not None
    user = bearer(client, (await token(client, "carol", "scope=repository:team/app:pull"))["token"])
    for _ in range(5):
        assert (await user.request("GET", "/v2/team/app/tags/list")).code == 404
    assert access.tokens.verifications == 1
    clock.advance(300 + 59)
    assert (await user.request("GET", "/v2/team/app/tags/list")).code == 404
    clock.advance(2)
    assert (await user.request("GET", "/v2/team/app/tags/list")).code == 401


@pytest_twisted.ensureDeferred
async def test_external_token_service(tmp_path: Path) -> None:
    """With an external token service's public key, its tokens work and clients go to its realm."""
    private = writeKey(tmp_path / "external.pem")
    external = AccessControl.fromFiles(
        reactor, tokenKey=str(private), tokenIssuer="auth.example", tokenService="reg"
    )
    access = AccessControl.fromFiles(
        reactor,
        tokenPublicKey=str(writePublicKey(private, tmp_path / "external.pub")),
        tokenRealm="https://auth.example/token",
        tokenIssuer="auth.example",
        tokenService="reg",
    )
    client = StubClient(Registry(access=access))
    challenge = await client.request("GET", "/v2/x/tags/list")
    assert header(challenge, "WWW-Authenticate") == (
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:x:pull"'
    )
    assert external.issuer is not None and isinstance(external.issuer, TokenIssuer)
    grant = [{"type": "repository", "name": "x", "actions": ["pull", "push"]}]
    user = bearer(client, external.issuer.issue("someone", grant)["token"])
    await pushImage(user, "x", "v1")
    assert (await user.request("GET", "/v2/x/manifests/v1")).code == 200
    denied = await user.request("DELETE", "/v2/x/manifests/v1")
    assert denied.code == 401 and 'error="insufficient_scope"' in (header(denied, "WWW-Authenticate") or "")
    noToken = await client.request("GET", "/token")
    assert noToken.code == 404


@pytest_twisted.ensureDeferred
async def test_challenge_realm_from_a_sane_host_only(tmp_path: Path) -> None:
    """The challenge's realm names the Host the client asked for, unless that Host could break the header."""
    _, client = tokenRegistry(tmp_path)
    good = await client.request("GET", "/v2/", headers={"Host": "registry.example:5000"})
    assert (
        header(good, "WWW-Authenticate")
        == 'Bearer realm="http://registry.example:5000/token",service="ociklein"'
    )
    evil = await client.request("GET", "/v2/", headers={"Host": 'x",realm="http://evil'})
    assert header(evil, "WWW-Authenticate") == 'Bearer realm="http://localhost/token",service="ociklein"'


@pytest_twisted.ensureDeferred
async def test_scopes_bounded(tmp_path: Path) -> None:
    """/token grants at most 32 scopes, and a token listing more repositories is refused."""
    _, client = tokenRegistry(tmp_path)
    many = "&".join(f"scope=repository:public/r{i}:pull" for i in range(40))
    assert len(claims(await token(client, None, many))["access"]) == 32
    crowded = forged(
        tmp_path, access=[{"type": "repository", "name": f"r{i}", "actions": ["pull"]} for i in range(33)]
    )
    response = await bearer(client, crowded).request("GET", "/v2/r1/tags/list")
    assert response.code == 401
