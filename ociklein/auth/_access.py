"""
Access control as the HTTP layer sees it: who sent a request (through a
L{twisted.cred} portal), whether they may do what it asks, the challenge
that tells a client how to sign in, and the built-in token service.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ANONYMOUS, AllowAnonymousAccess
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from ociklein import errors
from ociklein.auth._htpasswd import HtpasswdChecker, parseHtpasswd
from ociklein.auth._lru import BoundedCache
from ociklein.auth._policy import ACTIONS, Policy, parsePolicy
from ociklein.auth._throttle import LoginThrottle
from ociklein.auth._tokens import (
    LEEWAY,
    MAX_SCOPES,
    BearerToken,
    TokenChecker,
    TokenIssuer,
    TokenVerifier,
    loadSigningKey,
    loadVerifyingKey,
    parseScope,
)
from ociklein.auth._users import IRegistryUser, RegistryRealm, TokenUser
from ociklein.auth._watched import WatchedFile
from ociklein.names import isName

BASE = "base"
CATALOG = "catalog"
_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::\d+)?|\[[0-9A-Fa-f:.]+\](?::\d+)?")
# Asked for pull or push in a repository, a token gets both where the
# policy allows: clients such as oras-py take a token for pull (checking
# which blobs exist) and then push with that same token.  Delete is only
# granted when asked for.
_UPGRADABLE = frozenset({"pull", "push"})
_SCOPE_ACTIONS = {"pull": "pull", "push": "pull,push", "delete": "delete"}


def _scope(action: str, repository: str | None) -> str | None:
    """
    The scope a challenge asks a token for.
    """
    if repository is not None:
        return f"repository:{repository}:{_SCOPE_ACTIONS[action]}"
    return "registry:catalog:*" if action == CATALOG else None


def _clientAddress(request: IRequest) -> str:
    return str(getattr(request.getClientAddress(), "host", "?"))


def _basicCredentials(value: bytes) -> tuple[bytes, bytes] | None:
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None


class AccessControl:
    """
    Authenticates and authorizes the requests of one registry.

    Verified credentials are remembered by their exact C{Authorization}
    header (Basic: until the htpasswd file changes; tokens: until they
    expire), so a client that sends them on every request pays neither
    bcrypt nor a signature check, nor the portal, more than once.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        users: WatchedFile[dict[str, bytes]] | None = None,
        policy: WatchedFile[Policy] | None = None,
        issuer: TokenIssuer | None = None,
        verifier: TokenVerifier | None = None,
        tokenRealm: str | None = None,
        throttle: LoginThrottle | None = None,
        realmName: str = "ociklein",
        cacheSize: int = 1024,
        clock: IReactorTime | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._users = users
        self._policyFile = policy
        self._defaultPolicy = Policy.allowAuthenticated()
        self.issuer = issuer
        self.verifier = verifier
        self.tokenRealm = tokenRealm
        self.throttle = throttle if throttle is not None else LoginThrottle(self._clock)
        self.realmName = realmName
        self._basicChallenge = f'Basic realm="{realmName}"'
        self.realm = RegistryRealm(self.policy)
        self.portal = Portal(self.realm, [AllowAnonymousAccess()])
        self.passwords: HtpasswdChecker | None = None
        self.tokens: TokenChecker | None = None
        if users is not None:
            self.passwords = HtpasswdChecker(users, reactor)
            self.portal.registerChecker(self.passwords)
        if verifier is not None:
            self.tokens = TokenChecker(verifier)
            self.portal.registerChecker(self.tokens)
        self.anonymous: Any = self.realm.requestAvatar(ANONYMOUS, None, IRegistryUser)[1]
        self._verified: BoundedCache[bytes, tuple[Any, int, float]] = BoundedCache(cacheSize)

    @property
    def tokenMode(self) -> bool:
        return self.verifier is not None

    def policy(self) -> Policy:
        """
        The policy in force: the access file's, reloaded when it changes.
        """
        if self._policyFile is None:
            return self._defaultPolicy
        return self._policyFile.current()

    def _usersGeneration(self) -> int:
        if self._users is None:
            return 0
        self._users.current()
        return self._users.generation

    # -- challenges -------------------------------------------------------

    def challenge(self, request: IRequest, scope: str | None = None, error: str | None = None) -> str:
        """
        The C{WWW-Authenticate} value telling a client how to sign in.
        """
        if not self.tokenMode:
            return self._basicChallenge
        assert self.verifier is not None
        realm = self.tokenRealm
        if realm is None:
            host = (request.getHeader(b"host") or b"").decode("latin-1")
            if not _HOST.fullmatch(host):
                host = "localhost"
            scheme = "https" if request.isSecure() else "http"
            realm = f"{scheme}://{host}/token"
        parts = [f'realm="{realm}"', f'service="{self.verifier.service}"']
        if scope is not None:
            parts.append(f'scope="{scope}"')
        if error is not None:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    # -- authentication ---------------------------------------------------

    async def _login(self, request: IRequest, credentials: Any, onFailure: Callable[[], Exception]) -> Any:
        try:
            _, user, _ = await self.portal.login(credentials, None, IRegistryUser)
        except UnauthorizedLogin:
            raise onFailure() from None
        return user

    async def _passwordUser(self, request: IRequest, header: bytes, value: bytes, challenge: str) -> Any:
        """
        The user of Basic credentials; empty ones are anonymous (skopeo
        answers a challenge with an empty login).
        """
        credentials = _basicCredentials(value)
        if credentials is None:
            raise errors.unauthorized(challenge, {"reason": "malformed Basic credentials"})
        if credentials[0] == b"":
            return self.anonymous
        cached = self._cached(request, header)
        if cached is not None:
            return cached
        if self.passwords is None:
            raise errors.unauthorized(challenge)
        address = _clientAddress(request)
        self.throttle.check(address)

        def failed() -> Exception:
            self.throttle.failed(address)
            return errors.unauthorized(challenge, {"reason": "wrong user name or password"})

        generation = self._usersGeneration()
        user = await self._login(request, UsernamePassword(*credentials), failed)
        self.throttle.succeeded(address)
        self._verified.put(header, (user, generation, math.inf))
        return user

    def _cached(self, request: IRequest, header: bytes) -> Any:
        """
        The user of an C{Authorization} header verified before and still
        valid (the htpasswd file unchanged, the token unexpired); L{None}
        otherwise.  The hot path: no bcrypt, no signature, no portal.
        """
        entry = self._verified.get(header)
        if entry is None:
            return None
        user, generation, expires = entry
        if expires == math.inf:
            # Throttled first: a blocked address learns nothing, not even
            # that a guess matches credentials verified earlier.
            if self.throttle.watching:
                self.throttle.check(_clientAddress(request))
            if generation == self._usersGeneration():
                return user
        elif self._clock.seconds() < expires:
            return user
        self._verified.pop(header)
        return None

    async def _tokenUser(self, request: IRequest, header: bytes, value: bytes, scope: str | None) -> Any:
        def failed() -> Exception:
            return errors.unauthorized(
                self.challenge(request, scope, "invalid_token"), {"reason": "invalid token"}
            )

        try:
            token = value.strip().decode("ascii")
        except UnicodeDecodeError:
            raise failed() from None
        user = await self._login(request, BearerToken(token), failed)
        self._verified.put(header, (user, 0, user.grant.expires + LEEWAY))
        return user

    async def identify(self, request: IRequest, scope: str | None = None) -> Any:
        """
        The L{IRegistryUser} who sent C{request}; 401 for credentials that
        do not verify, 429 while its address is throttled.
        """
        header = request.getHeader(b"authorization")
        if not header:
            return self.anonymous
        cached = self._cached(request, header)
        if cached is not None:
            return cached
        scheme, _, value = header.strip().partition(b" ")
        scheme = scheme.lower()
        if scheme == b"bearer" and self.tokenMode:
            return await self._tokenUser(request, header, value, scope)
        if scheme == b"basic":
            if self.tokenMode:
                return self.anonymous  # registries in token mode take tokens only
            return await self._passwordUser(request, header, value, self.challenge(request, scope))
        raise errors.unauthorized(
            self.challenge(request, scope), {"reason": "unsupported authorization scheme"}
        )

    # -- authorization ----------------------------------------------------

    async def authorize(self, request: IRequest, action: str, repository: str | None = None) -> Any:
        """
        The caller of C{request} if it may do C{action} (C{base},
        C{catalog}, or pull, push, delete in C{repository}); else 401 with a
        challenge (anonymous, or a token lacking a scope its user could
        get) or 403.
        """
        header = request.getHeader(b"authorization")
        user = self._cached(request, header) if header else self.anonymous
        if user is None:
            user = await self.identify(request, _scope(action, repository))
        if repository is not None and user.may(action, repository):
            return user
        return self._judge(request, user, action, repository)

    def _judge(self, request: IRequest, user: Any, action: str, repository: str | None) -> Any:
        scope = _scope(action, repository)
        isToken = isinstance(user, TokenUser)
        if action == BASE:
            if user.name is None and not isToken:
                raise errors.unauthorized(self.challenge(request))
            return user
        if action == CATALOG:
            if self.tokenMode and not user.catalog:
                raise errors.unauthorized(
                    self.challenge(request, scope, "insufficient_scope" if isToken else None)
                )
            return user
        assert repository is not None
        if user.name is None:
            raise errors.unauthorized(
                self.challenge(request, scope, "insufficient_scope" if isToken else None)
            )
        if isToken and (self.issuer is None or action in self.policy().actions(user.name, repository)):
            raise errors.unauthorized(self.challenge(request, scope, "insufficient_scope"))
        raise errors.denied(action, repository)

    # -- the built-in token service ---------------------------------------

    async def issueToken(self, request: IRequest, service: str | None, scopes: list[str]) -> dict[str, Any]:
        """
        A token for the caller (Basic credentials or anonymous) granting the
        requested scopes, trimmed to what the policy allows (pull and push
        go together, see L{_UPGRADABLE}).
        """
        if self.issuer is None:
            raise errors.OCIError(404, "NAME_UNKNOWN", "no token service here", {})
        if service is not None and service != self.issuer.service:
            raise errors.OCIError(400, "UNSUPPORTED", "unknown service", {"service": service})
        name: str | None = None
        header = request.getHeader(b"authorization")
        if header and header.strip()[:6].lower() == b"basic ":
            user = await self._passwordUser(request, header, header.strip()[6:], self._basicChallenge)
            name = user.name
        elif header:
            raise errors.unauthorized(self._basicChallenge, {"reason": "Basic credentials only"})
        policy = self.policy()
        access: list[dict[str, Any]] = []
        for scope in [s for given in scopes for s in given.split()][:MAX_SCOPES]:
            parsed = parseScope(scope)
            if parsed is None:
                continue
            kind, repository, requested = parsed
            if kind == "registry" and repository == "catalog":
                access.append({"type": "registry", "name": "catalog", "actions": ["*"]})
            elif kind == "repository" and isName(repository):
                wanted = set(ACTIONS) if "*" in requested else set(requested)
                if wanted & _UPGRADABLE:
                    wanted |= _UPGRADABLE
                granted = sorted(policy.actions(name, repository) & wanted)
                access.append({"type": "repository", "name": repository, "actions": granted})
        return self.issuer.issue(name or "", access)

    # -- construction from files --------------------------------------------

    @classmethod
    def fromFiles(
        cls,
        reactor: Any,
        *,
        htpasswd: str | None = None,
        access: str | None = None,
        tokenKey: str | None = None,
        tokenPublicKey: str | None = None,
        tokenRealm: str | None = None,
        tokenIssuer: str | None = None,
        tokenService: str | None = None,
        reloadInterval: float = 1.0,
        clock: IReactorTime | None = None,
    ) -> AccessControl:
        """
        Access control from the operator's files; L{ValueError} (naming the
        file, and the line where there is one) for any that cannot be used.
        """

        clock = clock if clock is not None else reactor

        def watch(path: str, parse: Callable[[str], Any], option: str) -> WatchedFile[Any]:
            try:
                return WatchedFile(path, parse, clock, reloadInterval)
            except OSError as e:
                raise ValueError(f"--{option} {path}: {e.strerror}") from None
            except ValueError as e:
                raise ValueError(f"--{option} {path}: {e}") from None

        users = watch(htpasswd, parseHtpasswd, "htpasswd") if htpasswd else None
        policy = watch(access, parsePolicy, "access") if access else None
        issuer = verifier = None
        issuerName, serviceName = tokenIssuer or "ociklein", tokenService or "ociklein"
        if tokenKey:
            key, algorithm = loadSigningKey(tokenKey)
            issuer = TokenIssuer(key, algorithm, issuerName, serviceName, clock)
            verifier = TokenVerifier(key, algorithm, issuerName, serviceName, clock)
        elif tokenPublicKey:
            key, algorithm = loadVerifyingKey(tokenPublicKey)
            verifier = TokenVerifier(key, algorithm, issuerName, serviceName, clock)
        return cls(
            reactor,
            users=users,
            policy=policy,
            issuer=issuer,
            verifier=verifier,
            tokenRealm=tokenRealm,
            clock=clock,
        )
