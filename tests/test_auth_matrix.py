"""
The authorization matrix: anonymous, a wrong password, a read-only user, a
team user and an admin, against every route and method of the API and
/token, in Basic and in token mode, on both backends, through StubTreq and
on a live port.  Each cell asserts the exact status and error code.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from authhelpers import PASSWORDS, Authorized, basic, writeKey, writePolicy, writeUsers
from conftest import StubClient, serve
from helpers import digestOf, errorCode, header, pushBlob, pushImage, putManifest
from twisted.internet import reactor

from ociklein import Registry
from ociklein.auth import AccessControl, LoginThrottle

USERS = ["anonymous", "wrong", "reader", "team", "admin"]
LOGIN = {"reader": "carol", "team": "bob", "admin": "alice"}
REPOSITORIES = ["public/lib", "team/app", "admin/secret"]
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]

# What the policy of authhelpers grants, written out by hand.
RIGHTS: dict[str, dict[str, set[str]]] = {
    "anonymous": {"public/lib": {"pull"}},
    "wrong": {},
    "reader": {repository: {"pull"} for repository in REPOSITORIES},
    "team": {"public/lib": {"pull"}, "team/app": {"pull", "push"}},
    "admin": {repository: {"pull", "push", "delete"} for repository in REPOSITORIES},
}

# route: method: (the action it needs, its status when allowed)
REPOSITORY_ROUTES: dict[str, dict[str, tuple[str, int]]] = {
    "manifest": {
        "GET": ("pull", 200),
        "HEAD": ("pull", 200),
        "PUT": ("push", 201),
        "DELETE": ("delete", 202),
    },
    "uploads": {"POST": ("push", 202)},
    "upload": {
        "GET": ("push", 204),
        "HEAD": ("push", 204),
        "PATCH": ("push", 202),
        "PUT": ("push", 201),
        "DELETE": ("push", 204),
    },
    "blob": {"GET": ("pull", 200), "HEAD": ("pull", 200), "DELETE": ("delete", 202)},
    "tags": {"GET": ("pull", 200), "HEAD": ("pull", 200)},
    "referrers": {"GET": ("pull", 200), "HEAD": ("pull", 200)},
}
OTHER_ROUTES = ["base", "catalog", "token"]


def expected(mode: str, user: str, route: str, method: str, repository: str | None) -> tuple[int, str | None]:
    """
    The status and error code of one cell.
    """
    reading = method in ("GET", "HEAD")
    if route in REPOSITORY_ROUTES:
        assert repository is not None
        entry = REPOSITORY_ROUTES[route].get(method)
        if entry is None:
            return 405, "UNSUPPORTED"
        action, status = entry
        if action in RIGHTS[user].get(repository, set()):
            return status, None
        return (401, "UNAUTHORIZED") if user in ("anonymous", "wrong") else (403, "DENIED")
    if not reading:
        return 405, "UNSUPPORTED"
    if route == "token" and mode == "basic":
        return 404, "NAME_UNKNOWN"
    if user == "wrong" or (route == "base" and user == "anonymous"):
        return 401, "UNAUTHORIZED"
    return 200, None


CELLS = [
    (route, method, repository)
    for route in REPOSITORY_ROUTES
    for method in METHODS
    for repository in REPOSITORIES
] + [(route, method, None) for route in OTHER_ROUTES for method in METHODS]


def accessControl(directory: Path, mode: str) -> AccessControl:
    users = writeUsers(directory)
    policy = writePolicy(directory)
    key = str(writeKey(directory / "key.pem")) if mode == "token" else None
    access = AccessControl.fromFiles(reactor, htpasswd=str(users), access=str(policy), tokenKey=key)
    # The wrong password is tried on every cell: no throttling here.
    access.throttle = LoginThrottle(reactor, allowed=1_000_000)
    return access


@pytest_twisted.async_yield_fixture(params=["stub", "live"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    yield request.param


class Matrix:
    """
    One registry with access control, its state for the cells, and how each
    kind of caller signs in.
    """

    def __init__(self, client: Any, mode: str, directory: Path) -> None:
        self.client = client
        self.mode = mode
        self.directory = directory
        self.admin: Any = None
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.counter = 0

    async def tokenFor(self, user: str | None, password: str | None = None) -> Any:
        scopes = "&".join(f"scope=repository:{r}:pull,push,delete" for r in REPOSITORIES)
        login = Authorized(self.client, None if user is None else basic(user, password or PASSWORDS[user]))
        response = await login.request("GET", f"/token?service=ociklein&{scopes}&scope=registry:catalog:*")
        assert response.code == 200, response.body
        return json.loads(response.body)["token"]

    async def authorization(self, user: str, route: str) -> str | None:
        if user == "anonymous":
            return None
        if self.mode == "basic" or route == "token":
            return (
                basic("alice", "not-her-password")
                if user == "wrong"
                else basic(LOGIN[user], PASSWORDS[LOGIN[user]])
            )
        if user == "wrong":
            other = AccessControl.fromFiles(reactor, tokenKey=str(writeKey(self.directory / "other.pem")))
            assert other.issuer is not None
            return "Bearer " + other.issuer.issue("alice", [])["token"]
        return "Bearer " + await self.tokenFor(LOGIN[user])

    async def setUp(self) -> None:
        self.admin = Authorized(self.client, await self.authorization("admin", "manifest"))
        for repository in REPOSITORIES:
            self.manifests[repository] = await pushImage(self.admin, repository, "v1")

    def fresh(self) -> bytes:
        self.counter += 1
        return b"fresh-%d" % self.counter

    async def path(self, route: str, method: str, repository: str | None) -> tuple[str, dict[str, Any]]:
        """
        The path and arguments of one cell, creating what it acts on.
        """
        if route == "base":
            return "/v2/", {}
        if route == "catalog":
            return "/v2/_catalog", {}
        if route == "token":
            return "/token?service=ociklein&scope=repository:public/lib:pull", {}
        assert repository is not None
        digest, content = self.manifests[repository]
        allowed = method in REPOSITORY_ROUTES[route]
        if route == "manifest":
            reference = "v1"
            if method == "DELETE" and allowed:
                reference = f"doomed-{self.counter}"
                self.fresh()
                await putManifest(self.admin, repository, reference, content)
            return f"/v2/{repository}/manifests/{reference}", (
                {"data": content, "headers": {"Content-Type": json.loads(content)["mediaType"]}}
                if method == "PUT"
                else {}
            )
        if route == "uploads":
            return f"/v2/{repository}/blobs/uploads/", {}
        if route == "upload":
            response = await self.admin.request("POST", f"/v2/{repository}/blobs/uploads/")
            location = header(response, "Location")
            assert location is not None
            if method == "PATCH":
                return location, {"data": b"chunk"}
            if method == "PUT":
                return location + f"?digest={digestOf(b'')}", {}
            return location, {}
        if route == "blob":
            blob = json.loads(content)["config"]["digest"]
            if method == "DELETE" and allowed:
                blob = await pushBlob(self.admin, repository, self.fresh())
            return f"/v2/{repository}/blobs/{blob}", {}
        if route == "tags":
            return f"/v2/{repository}/tags/list", {}
        return f"/v2/{repository}/referrers/{digest}", {}


@pytest.mark.parametrize("mode", ["basic", "token"])
@pytest.mark.parametrize("user", USERS)
@pytest_twisted.ensureDeferred
async def test_matrix(backend: tuple[Any, Any], transport: str, mode: str, user: str, tmp_path: Path) -> None:
    """Every route and method answers each kind of caller with the status and code the policy implies."""
    registry = Registry(*backend, access=accessControl(tmp_path, mode))
    if transport == "stub":
        await runMatrix(StubClient(registry), mode, user, tmp_path)
        return
    async for live in serve(registry):
        await runMatrix(live, mode, user, tmp_path)


async def runMatrix(client: Any, mode: str, user: str, directory: Path) -> None:
    matrix = Matrix(client, mode, directory)
    await matrix.setUp()
    failures = []
    for route, method, repository in CELLS:
        path, kwargs = await matrix.path(route, method, repository)
        caller = Authorized(client, await matrix.authorization(user, route))
        response = await caller.request(method, path, **kwargs)
        status, code = expected(mode, user, route, method, repository)
        got: tuple[int, str | None] = (response.code, None)
        if response.code >= 400 and method != "HEAD":
            got = (response.code, errorCode(response))
        want = (status, code if method != "HEAD" else None)
        if got != want:
            failures.append(f"{method} {path}: {got} != {want}")
        if response.code == 401:
            challenge = header(response, "WWW-Authenticate") or ""
            if not challenge.startswith(
                "Bearer realm=" if mode == "token" and route != "token" else "Basic realm="
            ):
                failures.append(f"{method} {path}: challenge {challenge!r}")
        if route == "catalog" and method == "GET" and response.code == 200:
            visible = sorted(r for r, actions in RIGHTS[user].items() if "pull" in actions)
            if json.loads(response.body)["repositories"] != visible:
                failures.append(f"catalog of {user}: {response.body!r}")
    assert not failures, "\n".join(failures)


def test_matrix_size() -> None:
    """The matrix has a cell for every route and method, and checks each for every kind of caller."""
    assert len(CELLS) == 6 * 6 * 3 + 3 * 6
    assert len(CELLS) * len(USERS) == 630
