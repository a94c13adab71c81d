"""
The C{twistd ociregistry} plugin: options, the INI configuration file, and
the service they describe.  Command line beats file beats defaults.
"""

from __future__ import annotations

import configparser
import os
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from ociklein._workers import WorkersService, dieWithParent, isReusableTCP
from ociklein.auth import AccessControl
from ociklein.core import DEFAULT_MAX_MANIFEST_BYTES
from ociklein.http._limits import DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, Limits, raiseFileLimit
from ociklein.registry import Registry

log = Logger()

SECTION = "ociregistry"
DEFAULTS: dict[str, Any] = {
    "listen": ["tcp:5000"],
    "backend": "memory",
    "root": "./ociregistry-data",
    "s3-endpoint": "",
    "s3-bucket": "",
    "s3-region": "",
    "s3-prefix": "",
    "s3-credentials": "",
    "s3-ca-file": "",
    "s3-part-size": 8,
    "max-manifest-bytes": DEFAULT_MAX_MANIFEST_BYTES,
    "upload-ttl": 86400.0,
    "access-log": True,
    "workers": 1,
    # Optional parts of the distribution spec: a switch on the command line,
    # yes or no in the file.
    "allow-sparse-manifests": False,
    "automatic-mount": False,
    # Access control (ociklein.auth); see docs/auth.md.
    "htpasswd": None,
    "access": None,
    "token-key": None,
    "token-realm": None,
    "token-issuer": "ociklein",
    "token-service": "ociklein",
    "token-public-key": None,
    "read-only": False,
    # Bounds on what clients can hold (ociklein.http._limits).
    "max-connections": "auto",
    "header-timeout": DEFAULT_HEADER_TIMEOUT,
    "idle-timeout": DEFAULT_IDLE_TIMEOUT,
}
_SWITCHES = ("allow-sparse-manifests", "automatic-mount", "read-only")
_FILES = ("htpasswd", "access", "token-key", "token-public-key", "token-realm")
_CONVERT = {
    "max-manifest-bytes": int,
    "upload-ttl": float,
    "workers": int,
    "header-timeout": float,
    "idle-timeout": float,
    "s3-part-size": int,
}
_S3_KEYS = (
    "s3-endpoint",
    "s3-bucket",
    "s3-region",
    "s3-prefix",
    "s3-credentials",
    "s3-ca-file",
    "s3-part-size",
)
_BOOLEANS = {
    "yes": True,
    "true": True,
    "on": True,
    "1": True,
    "no": False,
    "false": False,
    "off": False,
    "0": False,
}


class Options(usage.Options):
    """
    Options of C{twistd ociregistry}; see C{tap.cfg} for every key.
    """

    synopsis = "[options]"
    longdesc = "An OCI Distribution v1.1 container registry."
    optParameters = [
        ["backend", None, None, "Storage backend: memory, fs or s3. [default: memory]"],
        ["root", None, None, "Data directory of the fs backend. [default: ./ociregistry-data]"],
        ["s3-endpoint", None, None, "URL of an S3-compatible store. [default: AWS S3]"],
        ["s3-bucket", None, None, "Bucket of the s3 backend, which must exist. [required for s3]"],
        ["s3-region", None, None, "Region of the bucket. [default: AWS config, else us-east-1]"],
        ["s3-prefix", None, None, "Key prefix, so several registries can share a bucket. [default: none]"],
        ["s3-credentials", None, None, "An AWS shared-credentials file. [default: AWS environment/config]"],
        ["s3-ca-file", None, None, "CA bundle to verify the endpoint's TLS with. [default: system CAs]"],
        [
            "s3-part-size",
            None,
            None,
            "Size of the parts uploads are stored in, in MiB, 5 to 64. [default: 8]",
        ],
        ["max-manifest-bytes", None, None, "Largest manifest accepted, in bytes. [default: 4194304]"],
        ["upload-ttl", None, None, "Seconds after which an upload session expires. [default: 86400]"],
        ["access-log", None, None, "Log one line per request: yes or no. [default: yes]"],
        ["workers", None, None, "Processes serving the fs backend on the same TCP ports. [default: 1]"],
        [
            "max-connections",
            None,
            None,
            "Open connections kept at most; auto: the open-files limit less a quarter (at most 256)"
            " kept for files. [default: auto]",
        ],
        ["header-timeout", None, None, "Seconds a client has to send a request's headers. [default: 30]"],
        [
            "idle-timeout",
            None,
            None,
            "Seconds a connection may make no progress sending a body or reading an answer. [default: 60]",
        ],
        ["config", "c", None, "An INI file with an [ociregistry] section of these options."],
        [
            "htpasswd",
            None,
            None,
            "Users: an htpasswd file of bcrypt entries (htpasswd -B); re-read on change.",
        ],
        [
            "access",
            None,
            None,
            "Per-repository policies: a TOML file; re-read on change. [default: users may all]",
        ],
        ["token-key", None, None, "PEM private key (EC P-256 or RSA): bearer tokens, served at /token."],
        [
            "token-realm",
            None,
            None,
            "URL of the token service clients are sent to. [default: this server's /token]",
        ],
        ["token-issuer", None, None, "Issuer (iss) of the tokens. [default: ociklein]"],
        ["token-service", None, None, "Service (aud) of the tokens. [default: ociklein]"],
        ["token-public-key", None, None, "PEM public key or certificate of an external token service."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    optFlags = [
        ["worker", None, "(internal) Serve as a worker started by another ociregistry process."],
        ["allow-sparse-manifests", None, "Accept manifests naming blobs or manifests the repository lacks."],
        ["automatic-mount", None, "Mount a blob named without from= from any repository it is in."],
        ["read-only", None, "Refuse every write (POST, PATCH, PUT, DELETE) with 405."],
    ]

    def opt_listen(self, description: str) -> None:
        """
        A Twisted server endpoint string to listen on; repeatable. [default: tcp:5000]
        """
        self["listen"].append(description)

    def _fromFile(self, path: str) -> dict[str, Any]:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path) as f:
                parser.read_file(f)
        except OSError as e:
            raise usage.UsageError(f"cannot read config file {path}: {e.strerror}") from None
        except configparser.Error as e:
            reason = " ".join(e.message.split())  # configparser's messages span lines
            raise usage.UsageError(f"bad config file {path}: {reason}") from None
        if not parser.has_section(SECTION):
            return {}
        values: dict[str, Any] = {}
        for key, value in parser.items(SECTION):
            if key not in DEFAULTS:
                raise usage.UsageError(f"unknown key {key!r} in [{SECTION}] of {path}")
            values[key] = value.split() if key == "listen" else value
        return values

    def _checkAccess(self) -> None:
        """
        Validate the access-control options by loading their files once, so
        that a bad file is a usage error naming it (and the line).
        """
        for key in _FILES:
            if self[key] == "":
                self[key] = None
        if self["token-key"] and self["token-public-key"]:
            raise usage.UsageError("--token-key (built-in token service) excludes --token-public-key")
        if self["token-public-key"] and not self["token-realm"]:
            raise usage.UsageError("--token-public-key needs --token-realm, the external token service's URL")
        if self["token-realm"] and not (self["token-key"] or self["token-public-key"]):
            raise usage.UsageError("--token-realm needs --token-key or --token-public-key")
        try:
            accessControl(self, None)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def postOptions(self) -> None:
        fromFile = self._fromFile(self["config"]) if self["config"] else {}
        for key, default in DEFAULTS.items():
            given = self[key] if key in self else None
            if given in (None, []) or (key in _SWITCHES and not given):
                self[key] = fromFile.get(key, default)
        self._checkAccess()
        for key, convert in _CONVERT.items():
            try:
                self[key] = convert(self[key])
            except (TypeError, ValueError):
                raise usage.UsageError(f"--{key} must be a number, not {self[key]!r}") from None
            if not self[key] > 0:  # also refuses nan
                raise usage.UsageError(f"--{key} must be positive")
        self["max-connections"] = _maxConnections(self["max-connections"])
        for key in ("access-log", *_SWITCHES):
            if not isinstance(self[key], bool):
                flag = _BOOLEANS.get(str(self[key]).strip().lower())
                if flag is None:
                    raise usage.UsageError(f"--{key} must be yes or no, not {self[key]!r}")
                self[key] = flag
        if self["backend"] not in ("memory", "fs", "s3"):
            raise usage.UsageError(f"--backend must be memory, fs or s3, not {self['backend']!r}")
        if self["backend"] == "s3":
            self._checkS3()
        from twisted.internet import reactor

        if not self["listen"]:
            raise usage.UsageError("--listen needs at least one endpoint")
        for description in self["listen"]:
            try:
                serverFromString(reactor, description)
            except Exception as e:  # a missing or unreadable TLS key is an OSError or an SSL error
                raise usage.UsageError(f"bad --listen {description!r}: {e}") from None
        if self["workers"] > 1:
            if self["backend"] == "memory":
                raise usage.UsageError("--workers above 1 needs --backend=fs or s3: memory is not shared")
            for description in self["listen"]:
                if not isReusableTCP(reactor, description):
                    raise usage.UsageError(f"--workers above 1 needs tcp: endpoints, not {description!r}")

    def _checkS3(self) -> None:
        """
        Refuse s3 options that cannot work, then try the bucket: a wrong
        endpoint, bucket or credentials stops the start with one line.
        """
        from urllib.parse import urlsplit

        if not self["s3-bucket"]:
            raise usage.UsageError("--backend=s3 needs --s3-bucket")
        endpoint = self["s3-endpoint"]
        if endpoint and (urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).netloc):
            raise usage.UsageError(f"--s3-endpoint must be an http:// or https:// URL, not {endpoint!r}")
        for key in ("s3-credentials", "s3-ca-file"):
            if self[key] and not os.access(self[key], os.R_OK):
                raise usage.UsageError(f"--{key} {self[key]}: cannot read the file")
        if not 5 <= self["s3-part-size"] <= 64:
            raise usage.UsageError("--s3-part-size must be from 5 to 64 (MiB)")
        try:
            s3Config(self).check()
        except ValueError as e:
            raise usage.UsageError(f"--backend=s3: {e}") from None


def s3Config(options: Options | dict[str, Any]) -> Any:
    """
    The L{ociklein.storage.s3.S3Config} the s3 options describe.
    """
    from ociklein.storage.s3 import S3Config

    return S3Config(
        options["s3-bucket"],
        endpoint=options["s3-endpoint"] or None,
        region=options["s3-region"] or None,
        prefix=options["s3-prefix"],
        credentialsFile=options["s3-credentials"] or None,
        caFile=options["s3-ca-file"] or None,
    )


def _maxConnections(value: Any) -> int | None:
    """
    A positive number of connections, or L{None} for auto.
    """
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--max-connections must be a number or auto, not {value!r}") from None
    if number <= 0:
        raise usage.UsageError("--max-connections must be positive")
    return number


def _limits(options: Options | dict[str, Any]) -> Limits:
    """
    The connection limits the options give.
    """
    return Limits(
        maxConnections=options.get("max-connections"),
        headerTimeout=options.get("header-timeout", DEFAULT_HEADER_TIMEOUT),
        idleTimeout=options.get("idle-timeout", DEFAULT_IDLE_TIMEOUT),
    )


def _limitArguments(options: Options | dict[str, Any]) -> list[str]:
    """
    The command-line options that hand the connection limits to a worker.
    """
    limits = _limits(options)
    return [
        f"--max-connections={limits.maxConnections or 'auto'}",
        f"--header-timeout={limits.headerTimeout}",
        f"--idle-timeout={limits.idleTimeout}",
    ]


def _registryOptions(options: Options | dict[str, Any]) -> dict[str, Any]:
    """
    The L{Registry} keyword arguments the options give.
    """
    return {
        "maxManifestBytes": options["max-manifest-bytes"],
        "allowSparseManifests": bool(options.get("allow-sparse-manifests", False)),
        "automaticMount": bool(options.get("automatic-mount", False)),
    }


def _switchArguments(options: Options | dict[str, Any]) -> list[str]:
    """
    The command-line flags that hand the spec's optional parts switched on
    to a worker process.
    """
    return [f"--{key}" for key in _SWITCHES if options.get(key)]


def accessControl(options: Options | dict[str, Any], reactor: Any) -> AccessControl | None:
    """
    The access control the options ask for; L{None} without any.
    """
    files = {key: options.get(key) for key in _FILES}
    if not any(files.values()):
        return None
    if reactor is None:
        from twisted.internet import reactor
    return AccessControl.fromFiles(
        reactor,
        htpasswd=files["htpasswd"],
        access=files["access"],
        tokenKey=files["token-key"],
        tokenPublicKey=files["token-public-key"],
        tokenRealm=files["token-realm"],
        tokenIssuer=options.get("token-issuer"),
        tokenService=options.get("token-service"),
    )


def makeService(options: Options | dict[str, Any], reactor: Any = None) -> IService:
    """
    The registry service the options describe.
    """
    backend = options["backend"]
    onStop = None
    raiseFileLimit()
    guard: dict[str, Any] = {
        "access": accessControl(options, reactor),
        "readOnly": bool(options.get("read-only")),
    }
    if backend == "fs":
        from ociklein.storage.fs import FilesystemBlobStore, FilesystemManifestBackend, prepareRoot

        root = options["root"]
        try:
            prepareRoot(root)
        except (OSError, ValueError) as e:
            raise usage.UsageError(f"--root {root}: {e}") from None
        blobs = FilesystemBlobStore(root, reactor=reactor, uploadTTL=options["upload-ttl"])
        manifests = FilesystemManifestBackend(root, reactor=reactor)
        registry = Registry(manifests, blobs, **_registryOptions(options), **guard)
        onStop = blobs.close
        log.info("ociklein backend: fs, root: {root}", root=root)
    elif backend == "s3":
        from ociklein.storage.s3 import S3BlobStore, S3Client, S3ManifestBackend

        client = S3Client(s3Config(options), reactor=reactor)
        s3Blobs = S3BlobStore(
            client, uploadTTL=options["upload-ttl"], partSize=options["s3-part-size"] * 1024 * 1024
        )
        registry = Registry(S3ManifestBackend(client), s3Blobs, **_registryOptions(options), **guard)

        def onStop() -> None:
            s3Blobs.close()
            client.close()

        log.info(
            "ociklein backend: s3, bucket: {bucket}, prefix: {prefix!r}, endpoint: {endpoint}",
            bucket=options["s3-bucket"],
            prefix=options["s3-prefix"],
            endpoint=options["s3-endpoint"] or "AWS",
        )
    else:
        registry = Registry(**_registryOptions(options), **guard)
        log.warn("ociklein backend: memory; every image is lost when the process exits")
    top = MultiService()
    accessLog = options.get("access-log", True)
    worker = bool(options.get("worker"))
    extraWorkers = 0 if worker else options.get("workers", 1) - 1
    if worker:
        dieWithParent()
    service = registry.service(
        list(options["listen"]),
        reactor,
        onStop,
        accessLog=accessLog,
        reusePort=worker or extraWorkers > 0,
        limits=_limits(options),
    )
    service.setServiceParent(top)
    if extraWorkers > 0:
        args = [
            f"--backend={backend}",
            f"--root={os.path.abspath(options['root'])}",
            *(f"--{key}={options[key]}" for key in _S3_KEYS if backend == "s3"),
            f"--max-manifest-bytes={options['max-manifest-bytes']}",
            f"--upload-ttl={options['upload-ttl']}",
            f"--access-log={'yes' if accessLog else 'no'}",
            *_switchArguments(options),
            *(f"--{key}={os.path.abspath(options[key])}" for key in _FILES[:-1] if options.get(key)),
            *(
                f"--{key}={options[key]}"
                for key in ("token-realm", "token-issuer", "token-service")
                if options.get(key)
            ),
            *_limitArguments(options),
        ]
        if reactor is None:
            from twisted.internet import reactor
        workers = WorkersService(reactor, extraWorkers, args, service.listening)  # type: ignore[attr-defined]
        workers.setServiceParent(top)
        log.info("ociklein serving with {count} processes", count=extraWorkers + 1)
    return top
