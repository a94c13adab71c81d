"""
The pieces of access control on their own: policy files and their globs,
htpasswd files, the throttle of failed logins, and files re-read on change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from authhelpers import POLICY, htpasswd
from twisted.internet.task import Clock

from ociklein import errors
from ociklein.auth import LoginThrottle, Policy, PolicyError, WatchedFile, parseHtpasswd, parsePolicy
from ociklein.auth._policy import globToRegex

GLOBS = [
    ("**", "a", True),
    ("**", "a/b/c", True),
    ("team/*", "team/app", True),
    ("team/*", "team/app/sub", False),
    ("team/*", "team", False),
    ("team/*", "teams/app", False),
    ("public/**", "public/a", True),
    ("public/**", "public/a/b/c", True),
    ("public/**", "public", True),
    ("public/**", "publicity/a", False),
    ("**/cache", "cache", True),
    ("**/cache", "a/b/cache", True),
    ("**/cache", "a/b/cached", False),
    ("a/**/z", "a/z", True),
    ("a/**/z", "a/b/c/z", True),
    ("a/**/z", "a/b/c/y", False),
    ("lib-*", "lib-one", True),
    ("lib-*", "lib-one/two", False),
    ("a.b", "axb", False),
]


@pytest.mark.parametrize(("glob", "name", "matches"), GLOBS)
def test_globs(glob: str, name: str, matches: bool) -> None:
    """A * matches within one path segment, a ** segment any number of segments; dots are literal."""
    assert bool(globToRegex(glob).fullmatch(name)) is matches


def test_policy_grants() -> None:
    """Rules add up per user, group, 'authenticated' and 'anonymous'; anything not allowed is denied."""
    policy = parsePolicy(POLICY)
    assert policy.actions("alice", "x/y") == {"pull", "push", "delete"}
    assert policy.actions("bob", "team/app") == {"pull", "push"}
    assert policy.actions("bob", "team/app/deeper") == set()
    assert policy.actions("bob", "public/lib") == {"pull"}
    assert policy.actions("carol", "team/app") == {"pull"}
    assert policy.actions(None, "public/lib") == {"pull"}
    assert policy.actions(None, "team/app") == set()
    assert policy.actions("mallory", "public/x/y") == {"pull"}
    authenticated = parsePolicy(
        '[[allow]]\nrepositories = ["**"]\nwho = ["authenticated"]\nactions = ["pull"]\n'
    )
    assert authenticated.actions("anyone", "x") == {"pull"}
    assert authenticated.actions(None, "x") == set()


def test_default_policy() -> None:
    """Without an access file every signed-in user may do everything, anonymous nothing."""
    policy = Policy.allowAuthenticated()
    assert policy.actions("someone", "any/repo") == {"pull", "push", "delete"}
    assert policy.actions(None, "any/repo") == set()


BAD_POLICIES = [
    (
        '[[allow]]\nrepositories = ["**"]\nwho = ["bob"]\nactions = ["pull", "fly"]\n',
        "line 4: unknown action 'fly'",
    ),
    (
        '[[allow]]\nrepositories = ["**"]\nwho = ["bob"]\nactions = ["pull"]\n\n[[allow]]\n'
        'repositories = ["x"]\nwho = ["group:ghosts"]\nactions = ["pull"]\n',
        "line 8: unknown group 'ghosts'",
    ),
    (
        '[[allow]]\nrepositories = ["**"]\nwho = "bob"\nactions = ["pull"]\n',
        "line 3: who must be a non-empty list",
    ),
    ('[[allow]]\nrepositories = ["**"]\nactions = ["pull"]\n', "line 1: who must be a non-empty list"),
    (
        '[[allow]]\nrepositories = ["**"]\nwho = ["bob"]\nactions = ["pull"]\nwhen = "always"\n',
        "line 5: unknown key 'when'",
    ),
    ('[groups]\nadmins = "alice"\n', "line 2: group 'admins' must be a list"),
    ("[[allow]\nrepositories = 1\n", "line 1:"),
    (
        '[[allow]]\nrepositories = ["a/[bc]"]\nwho = ["bob"]\nactions = ["pull"]\n',
        "line 2: bad repository glob",
    ),
    ('[[alow]]\nrepositories = ["**"]\n', "unknown key 'alow'"),
]


@pytest.mark.parametrize(("text", "message"), BAD_POLICIES)
def test_bad_policy_names_the_line(text: str, message: str) -> None:
    """A policy file that cannot be used is one PolicyError naming its line."""
    with pytest.raises(PolicyError) as raised:
        parsePolicy(text)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_htpasswd_entries(tmp_path: Path) -> None:
    """bcrypt entries written by htpasswd -B are read; any other kind is refused by line."""
    htpasswd(tmp_path / "users", "alice", "secret")
    users = parseHtpasswd((tmp_path / "users").read_text())
    assert list(users) == ["alice"]
    assert users["alice"].startswith(b"$2y$04$")
    with pytest.raises(ValueError, match="line 2: user 'bob' has no bcrypt hash"):
        parseHtpasswd("alice:$2y$04$abc\nbob:$apr1$xyz$abc\n")
    with pytest.raises(ValueError, match="line 1: not a user:hash entry"):
        parseHtpasswd("garbage\n")


def test_throttle_per_address() -> None:
    """After five failed logins an address waits 1 s, then twice as long per failure; others never."""
    clock = Clock()
    throttle = LoginThrottle(clock)
    for _ in range(4):
        throttle.failed("10.0.0.1")
        throttle.check("10.0.0.1")
    throttle.failed("10.0.0.1")
    with pytest.raises(errors.OCIError) as raised:
        throttle.check("10.0.0.1")
    assert (raised.value.status, raised.value.code, raised.value.headers) == (
        429,
        "TOOMANYREQUESTS",
        {"Retry-After": "1"},
    )
    throttle.check("10.0.0.2")
    clock.advance(1)
    throttle.check("10.0.0.1")
    throttle.failed("10.0.0.1")
    with pytest.raises(errors.OCIError) as again:
        throttle.check("10.0.0.1")
    assert again.value.headers == {"Retry-After": "2"}
    clock.advance(2)
    throttle.succeeded("10.0.0.1")
    throttle.failed("10.0.0.1")
    throttle.check("10.0.0.1")


def test_watched_file_reloads(tmp_path: Path) -> None:
    """A watched file is re-read when it changes (once per interval); an unparsable change is ignored."""
    path = tmp_path / "access.toml"
    path.write_text(POLICY)
    clock = Clock()
    watched = WatchedFile(str(path), parsePolicy, clock, interval=1.0)
    assert watched.current().actions("dave", "x") == set()
    path.write_text(POLICY + '\n[[allow]]\nrepositories = ["x"]\nwho = ["dave"]\nactions = ["pull"]\n')
    assert watched.current().actions("dave", "x") == set()  # not checked again before the interval
    clock.advance(1)
    assert watched.current().actions("dave", "x") == {"pull"}
    assert watched.generation == 1
    path.write_text("[[allow]\n")
    clock.advance(1)
    assert watched.current().actions("dave", "x") == {"pull"}
    path.unlink()
    clock.advance(1)
    assert watched.current().actions("dave", "x") == {"pull"}
    assert watched.generation == 1
