"""
Users from an Apache htpasswd file of bcrypt entries (C{htpasswd -B}), as
Distribution reads them, checked by a L{twisted.cred} checker.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import bcrypt
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from ociklein.auth._lru import BoundedCache
from ociklein.auth._watched import WatchedFile

_BCRYPT = ("$2a$", "$2b$", "$2y$")


def parseHtpasswd(text: str) -> dict[str, bytes]:
    """
    User names and their bcrypt hashes; a line that is not a bcrypt entry
    is a L{ValueError} naming the line.
    """
    users: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ValueError(f"line {number}: not a user:hash entry")
        if not hashed.startswith(_BCRYPT):
            raise ValueError(f"line {number}: user {user!r} has no bcrypt hash (write it with htpasswd -B)")
        users[user] = hashed.encode("ascii", "replace")
    return users


@implementer(ICredentialsChecker)
class HtpasswdChecker:
    """
    Checks user names and passwords against an htpasswd file, running
    bcrypt (100 ms and more per check) in a thread, and remembering a bounded
    number of verified passwords so that a client sending Basic credentials
    on every request pays bcrypt once.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: WatchedFile[dict[str, bytes]], reactor: Any, cacheSize: int = 1024) -> None:
        self.users = users
        self._reactor = reactor
        # Keys are keyed hashes of the password, never the password itself.
        self._key = os.urandom(32)
        self._verified: BoundedCache[tuple[str, bytes], bytes] = BoundedCache(cacheSize)
        self._checking: dict[tuple[str, bytes, bytes], Deferred[bool]] = {}
        self.bcryptRuns = 0

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        username = credentials.username
        name = username.decode("utf-8", "replace") if isinstance(username, bytes) else str(username)
        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        hashed = self.users.current().get(name)
        if hashed is None:
            return fail(UnauthorizedLogin("unknown user"))
        key = (name, hmac.new(self._key, password, hashlib.sha256).digest())
        if self._verified.get(key) == hashed:
            return succeed(name.encode("utf-8"))
        # Concurrent first requests with the same credentials share one bcrypt.
        inflight = (*key, hashed)
        checking = self._checking.get(inflight)
        if checking is None:
            self.bcryptRuns += 1
            checking = deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(), bcrypt.checkpw, password, hashed
            )
            self._checking[inflight] = checking
            checking.addBoth(self._checked, inflight)
        waiter: Deferred[bool] = Deferred()
        checking.addCallback(_relay, waiter)
        return waiter.addCallback(self._verdict, key, hashed, name)

    def _checked(self, result: Any, inflight: tuple[str, bytes, bytes]) -> bool:
        del self._checking[inflight]
        return result is True  # a hash bcrypt cannot read verifies nothing

    def _verdict(self, ok: Any, key: tuple[str, bytes], hashed: bytes, name: str) -> bytes:
        if ok is not True:
            raise UnauthorizedLogin("wrong password")
        self._verified.put(key, hashed)
        return name.encode("utf-8")


def _relay(ok: bool, waiter: Deferred[bool]) -> bool:
    waiter.callback(ok)
    return ok
