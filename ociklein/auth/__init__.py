"""
Access control: users (htpasswd), per-repository policies (TOML), bearer
tokens (Docker's token protocol), built the L{twisted.cred} way.
"""

from ociklein.auth._access import BASE, CATALOG, AccessControl
from ociklein.auth._htpasswd import HtpasswdChecker, parseHtpasswd
from ociklein.auth._policy import Policy, PolicyError, parsePolicy
from ociklein.auth._throttle import LoginThrottle
from ociklein.auth._tokens import (
    BearerToken,
    Grant,
    IBearerToken,
    KeyFileError,
    TokenChecker,
    TokenIssuer,
    TokenVerifier,
    loadSigningKey,
    loadVerifyingKey,
)
from ociklein.auth._users import IRegistryUser, PolicyUser, RegistryRealm, TokenUser
from ociklein.auth._watched import WatchedFile

__all__ = [
    "BASE",
    "CATALOG",
    "AccessControl",
    "BearerToken",
    "Grant",
    "HtpasswdChecker",
    "IBearerToken",
    "IRegistryUser",
    "KeyFileError",
    "LoginThrottle",
    "Policy",
    "PolicyError",
    "PolicyUser",
    "RegistryRealm",
    "TokenChecker",
    "TokenIssuer",
    "TokenUser",
    "TokenVerifier",
    "WatchedFile",
    "loadSigningKey",
    "loadVerifyingKey",
    "parseHtpasswd",
    "parsePolicy",
]
