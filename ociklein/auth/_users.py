"""
The avatars of L{twisted.cred}: a caller with its rights, carried from the
login into the HTTP layer and the core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ANONYMOUS
from twisted.cred.portal import IRealm
from zope.interface import Attribute, Interface, implementer

from ociklein.auth._policy import Policy
from ociklein.auth._tokens import Grant


class IRegistryUser(Interface):
    """
    Who sent a request, and what they may do.
    """

    name: str | None = Attribute("The user name; None when anonymous.")
    catalog: bool = Attribute("Whether the catalog may be listed at all.")

    def may(action: str, repository: str) -> bool:
        """
        Whether C{action} (pull, push, delete) is allowed in C{repository}.
        """

    def listable(repository: str) -> bool:
        """
        Whether C{repository} appears in this caller's catalog.
        """


@implementer(IRegistryUser)
class PolicyUser:
    """
    A caller signed in with a password, or anonymous: the policy in force
    (read again on each question, so a reloaded policy applies at once).
    """

    catalog = True

    def __init__(self, name: str | None, policy: Callable[[], Policy]) -> None:
        self.name = name
        self._policy = policy

    def may(self, action: str, repository: str) -> bool:
        return action in self._policy().actions(self.name, repository)

    def listable(self, repository: str) -> bool:
        return self.may("pull", repository)


@implementer(IRegistryUser)
class TokenUser:
    """
    A caller with a bearer token: exactly what the token grants.  Its
    catalog is that of its subject under the policy, if the token grants
    the catalog at all.
    """

    def __init__(self, grant: Grant, policy: Callable[[], Policy]) -> None:
        self.grant = grant
        self.name = grant.subject or None
        self.catalog = grant.catalog
        self._policy = policy

    def may(self, action: str, repository: str) -> bool:
        granted = self.grant.repositories.get(repository)
        return granted is not None and (action in granted or "*" in granted)

    def listable(self, repository: str) -> bool:
        return self.catalog and "pull" in self._policy().actions(self.name, repository)


@implementer(IRealm)
class RegistryRealm:
    """
    Turns the avatar IDs of the checkers (a user name, a token's L{Grant},
    or anonymous) into L{IRegistryUser}s.
    """

    def __init__(self, policy: Callable[[], Policy]) -> None:
        self._policy = policy

    def requestAvatar(self, avatarId: Any, mind: object, *interfaces: Any) -> tuple[Any, Any, Any]:
        if IRegistryUser not in interfaces:
            raise NotImplementedError("only IRegistryUser avatars")
        user: Any
        if isinstance(avatarId, Grant):
            user = TokenUser(avatarId, self._policy)
        elif avatarId is ANONYMOUS:
            user = PolicyUser(None, self._policy)
        else:
            user = PolicyUser(avatarId.decode("utf-8"), self._policy)
        return IRegistryUser, user, lambda: None
