"""
Docker's bearer-token protocol: the JWTs a token service signs, and their
checking (signature, issuer, audience, expiry, scope) by the registry.
Signatures are joserfc's; only asymmetric algorithms are accepted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Attribute, Interface, implementer

# Seconds of disagreement tolerated between the clocks of the token service
# and the registry.
LEEWAY = 60
DEFAULT_LIFETIME = 300
_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_SCOPE = re.compile(r"(?P<type>[a-z]+):(?P<name>.+):(?P<actions>[a-z*]+(?:,[a-z*]+)*)")
# A token names at most this many repositories: tokens are cached, and
# their size is the client's to choose.
MAX_SCOPES = 32


class KeyFileError(ValueError):
    """
    A key file that cannot be used for tokens.
    """


def _algorithm(key: Any) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        algorithm = _CURVES.get(key.curve.name)
        if algorithm is None:
            raise KeyFileError(f"EC curve {key.curve.name} is not supported (use P-256)")
        return algorithm
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise KeyFileError(f"RSA keys need 2048 bits or more, this one has {key.key_size}")
        return "RS256"
    raise KeyFileError("not an EC or RSA key")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}") from None


def loadSigningKey(path: str) -> tuple[Any, str]:
    """
    The joserfc key and algorithm of a PEM private key (EC P-256 or RSA).
    """
    pem = _read(path)
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {e}") from None
    algorithm = _algorithm(key)
    joseKey = ECKey.import_key(pem) if algorithm.startswith("ES") else RSAKey.import_key(pem)
    return joseKey, algorithm


def loadVerifyingKey(path: str) -> tuple[Any, str]:
    """
    The joserfc key and algorithm of a PEM public key or certificate.
    """
    pem = _read(path)
    try:
        if b"CERTIFICATE" in pem:
            key: Any = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path} is not a PEM public key or certificate: {e}") from None
    algorithm = _algorithm(key)
    public = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    joseKey = ECKey.import_key(public) if algorithm.startswith("ES") else RSAKey.import_key(public)
    return joseKey, algorithm


def parseScope(scope: str) -> tuple[str, str, frozenset[str]] | None:
    """
    C{repository:NAME:pull,push} as (type, name, actions); L{None} if
    malformed.
    """
    match = _SCOPE.fullmatch(scope)
    if match is None:
        return None
    return match["type"], match["name"], frozenset(match["actions"].split(","))


@dataclass(frozen=True)
class Grant:
    """
    What a verified token grants: its subject ("" when anonymous), actions
    per repository, the catalog, and until when.
    """

    subject: str
    repositories: dict[str, frozenset[str]]
    catalog: bool
    expires: float


class TokenIssuer:
    """
    Signs tokens for the built-in token service.
    """

    def __init__(
        self,
        key: Any,
        algorithm: str,
        issuer: str,
        service: str,
        clock: IReactorTime,
        lifetime: int = DEFAULT_LIFETIME,
    ) -> None:
        self._key = key
        self._algorithm = algorithm
        self.issuer = issuer
        self.service = service
        self._clock = clock
        self.lifetime = lifetime

    def issue(self, subject: str, access: list[dict[str, Any]]) -> dict[str, Any]:
        """
        The token service's answer granting C{access} to C{subject}.
        """
        now = int(self._clock.seconds())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
            "jti": os.urandom(16).hex(),
            "access": access,
        }
        token = jwt.encode({"alg": self._algorithm, "typ": "JWT"}, claims, self._key)
        issued = datetime.fromtimestamp(self._clock.seconds(), UTC)
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.lifetime,
            "issued_at": issued.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


class TokenVerifier:
    """
    Checks a token's signature (with one key, one algorithm: never C{none}),
    issuer, audience, expiry and the shape of its access claim.
    """

    def __init__(self, key: Any, algorithm: str, issuer: str, service: str, clock: IReactorTime) -> None:
        self._key = key
        self._algorithms = [algorithm]
        self.issuer = issuer
        self.service = service
        self._clock = clock
        self._claims = jwt.JWTClaimsRegistry(
            now=lambda: int(clock.seconds()),
            leeway=LEEWAY,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": service},
            exp={"essential": True},
        )

    def verify(self, token: str) -> Grant:
        """
        The grant of a valid token; L{UnauthorizedLogin} otherwise.
        """
        try:
            decoded = jwt.decode(token, self._key, algorithms=self._algorithms)
            self._claims.validate(decoded.claims)
        except (JoseError, ValueError, TypeError) as e:
            raise UnauthorizedLogin(f"invalid token: {e}") from None
        claims = decoded.claims
        access = claims.get("access", [])
        subject = claims.get("sub", "")
        if not isinstance(access, list) or not isinstance(subject, str) or len(access) > MAX_SCOPES:
            raise UnauthorizedLogin("invalid token: malformed access claim")
        repositories: dict[str, frozenset[str]] = {}
        catalog = False
        for entry in access:
            if not isinstance(entry, dict):
                raise UnauthorizedLogin("invalid token: malformed access claim")
            kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
            if not isinstance(name, str) or not isinstance(actions, list):
                raise UnauthorizedLogin("invalid token: malformed access claim")
            granted = frozenset(a for a in actions if isinstance(a, str))
            if kind == "repository":
                repositories[name] = repositories.get(name, frozenset()) | granted
            elif kind == "registry" and name == "catalog" and granted & {"*", "list"}:
                catalog = True
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > self._clock.seconds() + LEEWAY:
            raise UnauthorizedLogin("invalid token: not yet valid")
        return Grant(subject, repositories, catalog, float(claims["exp"]))


class IBearerToken(Interface):
    """
    Credentials: a bearer token as the client sent it.
    """

    token: str = Attribute("The token.")


@implementer(IBearerToken)
@dataclass(frozen=True)
class BearerToken:
    token: str


@implementer(ICredentialsChecker)
class TokenChecker:
    """
    The L{twisted.cred} checker of bearer tokens; the avatar ID it returns is
    the token's L{Grant}.
    """

    credentialInterfaces = (IBearerToken,)

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier
        self.verifications = 0

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        self.verifications += 1
        try:
            return succeed(self.verifier.verify(credentials.token))
        except UnauthorizedLogin as e:
            return fail(e)
