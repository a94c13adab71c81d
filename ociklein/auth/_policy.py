"""
Per-repository access policies, read from a TOML file: who may pull, push
and delete in which repositories.  Anything not allowed is denied.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ociklein.auth._lru import BoundedCache

ACTIONS = ("pull", "push", "delete")
ANONYMOUS = "anonymous"
AUTHENTICATED = "authenticated"

_TABLE = re.compile(r"\s*\[\[\s*allow\s*\]\]")
_HEADER = re.compile(r"\s*\[")
_LINE = re.compile(r"\(at line (\d+), column \d+\)")


class PolicyError(ValueError):
    """
    A policy file that cannot be used; the message names the line.
    """


def globToRegex(pattern: str) -> re.Pattern[str]:
    """
    A repository glob as a regular expression: C{*} matches within one path
    segment, a C{**} segment any number of segments (zero included).
    """
    segments = pattern.split("/")
    out = []
    for i, segment in enumerate(segments):
        if segment == "**":
            if len(segments) == 1:
                out.append(r"[^/]+(?:/[^/]+)*")
            elif i == 0:
                out.append(r"(?:[^/]+/)*")
            else:
                out.append(r"(?:/[^/]+)*")
            continue
        if i > 0 and not (i == 1 and segments[0] == "**"):
            out.append("/")
        if segment == "*":
            out.append(r"[^/]+")
        else:
            out.append("".join(r"[^/]*" if c == "*" else re.escape(c) for c in segment))
    return re.compile("".join(out))


@dataclass(frozen=True)
class Rule:
    repositories: tuple[re.Pattern[str], ...]
    who: frozenset[str]
    actions: frozenset[str]


class Policy:
    """
    The rules in force: L{actions} answers what one caller may do in one
    repository.
    """

    def __init__(self, rules: Iterable[Rule], groups: dict[str, frozenset[str]]) -> None:
        self.rules = tuple(rules)
        self.groups = groups
        # Answers by (user, repository): a policy never changes (a reloaded
        # file is a new Policy), and the same few pairs come back on every
        # request of a client.
        self._answers: BoundedCache[tuple[str | None, str], frozenset[str]] = BoundedCache(4096)

    @classmethod
    def allowAuthenticated(cls) -> Policy:
        """
        The policy without an access file: every signed-in user may do
        everything, anonymous callers nothing.
        """
        return cls([Rule((globToRegex("**"),), frozenset([AUTHENTICATED]), frozenset(ACTIONS))], {})

    def _principals(self, user: str | None) -> set[str]:
        if user is None:
            return {ANONYMOUS}
        found = {ANONYMOUS, AUTHENTICATED, user}
        found.update(f"group:{name}" for name, members in self.groups.items() if user in members)
        return found

    def actions(self, user: str | None, repository: str) -> frozenset[str]:
        """
        What C{user} (L{None}: anonymous) may do in C{repository}.
        """
        answer = self._answers.get((user, repository))
        if answer is None:
            answer = self._actions(user, repository)
            self._answers.put((user, repository), answer)
        return answer

    def _actions(self, user: str | None, repository: str) -> frozenset[str]:
        principals = self._principals(user)
        granted: set[str] = set()
        for rule in self.rules:
            if rule.who.isdisjoint(principals) or rule.actions <= granted:
                continue
            if any(pattern.fullmatch(repository) for pattern in rule.repositories):
                granted |= rule.actions
        return frozenset(granted)


def _lineOf(text: str, table: int | None, key: str | None) -> int:
    """
    The line of C{key} in the C{table}-th C{[[allow]]} table (or in
    C{[groups]} when C{table} is L{None}), for error messages.
    """
    lines = text.splitlines()
    start = 0
    if table is None:
        start = next((n for n, line in enumerate(lines) if re.match(r"\s*\[\s*groups\s*\]", line)), 0)
    else:
        starts = [n for n, line in enumerate(lines) if _TABLE.match(line)]
        start = starts[table] if table < len(starts) else 0
    if key is not None:
        for n in range(start + 1, len(lines)):
            if _HEADER.match(lines[n]):
                break
            if re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", lines[n]):
                return n + 1
    return start + 1


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return value
    return None


def parsePolicy(text: str) -> Policy:
    """
    Parse a policy file; raise L{PolicyError} naming the offending line.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        found = _LINE.search(str(e))
        line = found.group(1) if found else "?"
        raise PolicyError(f"line {line}: {_LINE.sub('', str(e)).strip()}") from None

    def fail(table: int | None, key: str | None, reason: str) -> PolicyError:
        return PolicyError(f"line {_lineOf(text, table, key)}: {reason}")

    for key in document:
        if key not in ("groups", "allow"):
            raise PolicyError(f"line {_lineOf(text, None, key)}: unknown key {key!r} (groups or allow)")
    groups: dict[str, frozenset[str]] = {}
    rawGroups = document.get("groups", {})
    if not isinstance(rawGroups, dict):
        raise fail(None, "groups", "groups must be a table of name = [users]")
    for name, members in rawGroups.items():
        if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
            raise fail(None, name, f"group {name!r} must be a list of user names")
        groups[name] = frozenset(members)
    rawRules = document.get("allow", [])
    if not isinstance(rawRules, list):
        raise fail(None, "allow", "allow must be an array of tables: [[allow]]")
    rules = []
    for n, raw in enumerate(rawRules):
        for key in raw:
            if key not in ("repositories", "who", "actions"):
                raise fail(n, key, f"unknown key {key!r} (repositories, who or actions)")
        for key in ("repositories", "who", "actions"):
            if _strings(raw.get(key)) is None:
                raise fail(n, key if key in raw else None, f"{key} must be a non-empty list of strings")
        for action in raw["actions"]:
            if action not in ACTIONS:
                raise fail(n, "actions", f"unknown action {action!r} (pull, push or delete)")
        for who in raw["who"]:
            if who.startswith("group:") and who[6:] not in groups:
                raise fail(n, "who", f"unknown group {who[6:]!r}")
        for pattern in raw["repositories"]:
            if any(c in pattern for c in "?[]{}\\") or "//" in pattern:
                raise fail(n, "repositories", f"bad repository glob {pattern!r}")
        patterns = tuple(globToRegex(p) for p in raw["repositories"])
        rules.append(Rule(patterns, frozenset(raw["who"]), frozenset(raw["actions"])))
    return Policy(rules, groups)
