"""
The C{twistd ociregistry} plugin: options, the INI configuration file, and
the service they describe.  Command line beats file beats defaults.  Every
value is checked here, before anything starts: a mistake is one line.
"""

from __future__ import annotations

import configparser
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python import usage

from ociklein import _logging
from ociklein._listening import (
    FAMILIES,
    InheritedEndpoint,
    acceptOneAtATime,
    exitOnStartupError,
    parseEndpoint,
    shareableFamily,
)
from ociklein._s3options import S3_DEFAULTS, S3_KEYS, S3_OPTIONS, checkS3, openS3, s3Numbers
from ociklein._workers import FIRST_INHERITED, WorkersService, dieWithParent
from ociklein.auth import AccessControl
from ociklein.core import DEFAULT_MAX_MANIFEST_BYTES
from ociklein.http._accesslog import parseNetworks
from ociklein.http._limits import DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, Limits, raiseFileLimit
from ociklein.maintenance._duration import parseDuration
from ociklein.registry import Registry, RegistryService

log = Logger()

SECTION = "ociregistry"
DEFAULTS: dict[str, Any] = {
    "listen": ["tcp:5000"],
    "backend": "memory",
    "root": "./ociregistry-data",
    **S3_DEFAULTS,
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
    # Operations: logs, health, metrics.
    "log-format": "text",
    "trusted-proxy": [],
    "admin-listen": [],
    "metrics": True,
    # Garbage collection inside the registry (ociklein.maintenance).
    "gc-interval": 0.0,
    "gc-grace": 3600.0,
    "gc-untagged": False,
}
# Keys holding several values: repeated options, whitespace-separated in the file.
_LISTS = frozenset({"listen", "trusted-proxy", "admin-listen"})
_SWITCHES = ("allow-sparse-manifests", "automatic-mount", "read-only", "gc-untagged")
_FILES = ("htpasswd", "access", "token-key", "token-public-key", "token-realm")
_CONVERT = {
    "max-manifest-bytes": int,
    "upload-ttl": float,
    "workers": int,
    "header-timeout": float,
    "idle-timeout": float,
}
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


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    flag = _BOOLEANS.get(str(value).strip().lower())
    if flag is None:
        raise usage.UsageError(f"--{key} must be yes or no, not {value!r}")
    return flag


class Options(usage.Options):
    """
    Options of C{twistd ociregistry}; see C{tap.cfg} for every key.
    """

    synopsis = "[options]"
    longdesc = "An OCI Distribution v1.1 container registry."
    optParameters = [
        ["backend", None, None, "Storage backend: memory, fs or s3. [default: memory]"],
        ["root", None, None, "Data directory of the fs backend. [default: ./ociregistry-data]"],
        *S3_OPTIONS,
        ["max-manifest-bytes", None, None, "Largest manifest accepted, in bytes. [default: 4194304]"],
        ["upload-ttl", None, None, "Seconds after which an upload session expires. [default: 86400]"],
        ["access-log", None, None, "Log one line per request: yes or no. [default: yes]"],
        ["workers", None, None, "Processes serving the fs or s3 backend on the same ports. [default: 1]"],
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
        # Operations: logs, health, metrics.
        ["log-format", None, None, "Log lines as text or json. [default: text]"],
        ["metrics", None, None, "Serve Prometheus metrics at /metrics: yes or no. [default: yes]"],
        # Garbage collection.
        ["gc-interval", None, None, "Collect garbage this often (15m, 6h, 1d); 0: never. [default: 0]"],
        ["gc-grace", None, None, "Never collect what was written or used this recently. [default: 1h]"],
        # Internal: set by the process that starts workers.
        ["worker", None, None, "(internal) Serve as worker N of another ociregistry process."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["trusted-proxy"] = []
        self["admin-listen"] = []
        self["inherit"] = []

    optFlags = [
        ["allow-sparse-manifests", None, "Accept manifests naming blobs or manifests the repository lacks."],
        ["automatic-mount", None, "Mount a blob named without from= from any repository it is in."],
        ["read-only", None, "Refuse every write (POST, PATCH, PUT, DELETE) with 405."],
        [
            "operations-elsewhere",
            None,
            "(internal) No health or metrics here: the parent has --admin-listen.",
        ],
        ["gc-untagged", None, "Periodic garbage collection also removes manifests no tag reaches."],
    ]

    def opt_listen(self, description: str) -> None:
        """
        A Twisted server endpoint string to listen on; repeatable. [default: tcp:5000]
        """
        self["listen"].append(description)

    def opt_trusted_proxy(self, network: str) -> None:
        """
        A reverse proxy's address or CIDR network, whose X-Forwarded-For and
        Forwarded headers name the client in the access log; repeatable.
        """
        self["trusted-proxy"].append(network)

    def opt_admin_listen(self, description: str) -> None:
        """
        An endpoint string for /livez, /readyz and /metrics alone, which
        the registry's ports then no longer answer; repeatable.
        """
        self["admin-listen"].append(description)

    def opt_inherit(self, socket: str) -> None:
        """
        (internal) FD:FAMILY, a listening socket inherited from the parent.
        """
        self["inherit"].append(socket)

    def opt_version(self) -> None:
        """
        Print ociklein's version and exit.
        """
        from ociklein import __version__

        print(f"ociklein {__version__}")
        sys.exit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        As a subcommand of twistd or twist, print a usage error as one line
        and exit, instead of their whole --help and the error.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            sys.stderr.write(f"{_program()} {SECTION}: {e}\n")
            sys.exit(2)

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
            found = ", ".join(f"[{s}]" for s in parser.sections()) or "none"
            raise usage.UsageError(f"no [{SECTION}] section in config file {path} (found {found})")
        values: dict[str, Any] = {}
        for key, value in parser.items(SECTION):
            if key not in DEFAULTS:
                raise usage.UsageError(f"unknown key {key!r} in [{SECTION}] of {path}")
            values[key] = value.split() if key in _LISTS else value
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
        # A file listing the defaults (as tap.cfg does) names the default root.
        rootGiven = self["root"] is not None or fromFile.get("root", DEFAULTS["root"]) != DEFAULTS["root"]
        for key, default in DEFAULTS.items():
            given = self[key] if key in self else None
            if given in (None, []) or (key in _SWITCHES and not given):
                self[key] = fromFile.get(key, default)
        self._checkAccess()
        self._checkNumbers()
        for key in ("access-log", *_SWITCHES):
            self[key] = _flag(key, self[key])
        if self["backend"] not in ("memory", "fs", "s3"):
            raise usage.UsageError(f"--backend must be memory, fs or s3, not {self['backend']!r}")
        if self["backend"] == "fs":
            self["root"] = _checkRoot(self["root"])
        elif rootGiven:
            raise usage.UsageError(
                f"--root is for --backend=fs; the {self['backend']} backend keeps nothing on disk"
            )
        if self["backend"] == "s3":
            self._checkS3()
        self._checkListen()
        self._checkOperations()
        if self["worker"] is not None:
            self["worker"] = int(self["worker"])
        _logging.install(getattr(self, "parent", None), self["log-format"], self["worker"] or 0)
        if getattr(self, "parent", None) is not None:
            # twist shows the log on the terminal until it starts logging:
            # the reason is already there.
            exitOnStartupError(f"{_program()} {SECTION}", echo=_program() != "twist")

    def _checkNumbers(self) -> None:
        for key, convert in _CONVERT.items():
            try:
                self[key] = convert(self[key])
            except (TypeError, ValueError):
                raise usage.UsageError(f"--{key} must be a number, not {self[key]!r}") from None
            if not self[key] > 0:  # also refuses nan
                raise usage.UsageError(f"--{key} must be positive")
            if not math.isfinite(self[key]):
                raise usage.UsageError(f"--{key} must be finite")
        s3Numbers(self)
        self["max-connections"] = _maxConnections(self["max-connections"])
        for key in ("gc-interval", "gc-grace"):
            try:
                self[key] = parseDuration(self[key])
            except ValueError as e:
                raise usage.UsageError(f"--{key}: {e}") from None

    def _checkListen(self) -> None:
        if not self["listen"]:
            raise usage.UsageError("--listen needs at least one endpoint")
        families = []
        for description in self["listen"]:
            try:
                endpoint = parseEndpoint(description)
            except ValueError as e:
                raise usage.UsageError(f"bad --listen {description!r}: {e}") from None
            families.append(shareableFamily(endpoint))
        if self["workers"] > 1:
            if self["backend"] == "memory":
                raise usage.UsageError("--workers above 1 needs --backend=fs or s3: memory is not shared")
            for description, family in zip(self["listen"], families, strict=True):
                if family is None:
                    raise usage.UsageError(
                        f"--workers above 1 needs tcp:, tcp6: or unix: endpoints, not {description!r}"
                    )
        self["families"] = families

    def _checkS3(self) -> None:
        checkS3(self)

    def _checkOperations(self) -> None:
        if self["log-format"] not in _logging.FORMATS:
            raise usage.UsageError(f"--log-format must be text or json, not {self['log-format']!r}")
        try:
            parseNetworks(self["trusted-proxy"])
        except ValueError as e:
            raise usage.UsageError(f"bad --trusted-proxy: {e}") from None
        self["metrics"] = _flag("metrics", self["metrics"])
        for description in self["admin-listen"]:
            try:
                parseEndpoint(description)
            except ValueError as e:
                raise usage.UsageError(f"bad --admin-listen {description!r}: {e}") from None


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


def _limits(options: Mapping[str, Any]) -> Limits:
    """
    The connection limits the options give.
    """
    return Limits(
        maxConnections=_maxConnections(options.get("max-connections")),
        headerTimeout=options.get("header-timeout", DEFAULT_HEADER_TIMEOUT),
        idleTimeout=options.get("idle-timeout", DEFAULT_IDLE_TIMEOUT),
    )


def _limitArguments(options: Mapping[str, Any]) -> list[str]:
    """
    The command-line options that hand the connection limits to a worker.
    """
    limits = _limits(options)
    return [
        f"--max-connections={limits.maxConnections or 'auto'}",
        f"--header-timeout={limits.headerTimeout}",
        f"--idle-timeout={limits.idleTimeout}",
    ]


def _program() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "twistd"
    return "twist" if name == "__main__.py" else name


def _checkRoot(root: str) -> str:
    """
    Refuse now, as a usage error rather than a traceback at startup, a root
    that is not a directory or that could not be created or written to.
    Nothing is created yet: that is for the service.
    """
    if not root:
        raise usage.UsageError("--root must name a directory")
    path = os.path.abspath(root)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if not os.path.isdir(path):
        raise usage.UsageError(f"--root {root}: {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise usage.UsageError(f"--root {root}: {path} is not writable")
    return root


def _accessArguments(options: Mapping[str, Any]) -> list[str]:
    """
    The access-control options handed to a worker process (files made
    absolute: a worker needs the same users, policies and keys).
    """
    files = [f"--{key}={os.path.abspath(options[key])}" for key in _FILES[:-1] if options.get(key)]
    names = ("token-realm", "token-issuer", "token-service")
    return files + [f"--{key}={options[key]}" for key in names if options.get(key)]


def accessControl(options: Mapping[str, Any], reactor: Any) -> AccessControl | None:
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


def _collector(registry: Registry, settings: Mapping[str, Any], reactor: Any) -> IService:
    """
    Periodic garbage collection of the registry's storage, in the first
    process only (workers share its root).
    """
    from ociklein.maintenance._service import CollectionService

    return CollectionService(
        registry.core.manifests,
        registry.core.blobs,
        parseDuration(settings["gc-interval"]),
        parseDuration(settings["gc-grace"]),
        bool(settings["gc-untagged"]),
        clock=reactor,
    )


def makeService(options: Mapping[str, Any], reactor: IReactorCore | None = None) -> IService:
    """
    The registry service the options describe: L{Options}, or any mapping
    of option names to values, the missing ones taking their defaults.
    """
    settings = {**DEFAULTS, **options}
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor  # type: ignore[assignment]
    raiseFileLimit()
    top = MultiService()
    registry, onStop = _makeRegistry(settings, reactor, top)
    worker = settings.get("worker") or 0
    inherited = list(settings.get("inherit") or [])
    if worker:
        dieWithParent()
    listen: list[Any] = list(settings["listen"])
    if inherited:
        listen = []
        for item in inherited:
            fd, _, family = item.partition(":")
            listen.append(InheritedEndpoint(reactor, int(fd), family))  # type: ignore[arg-type]
    service = registry.service(
        listen,
        reactor,
        onStop,
        accessLog=settings["access-log"],
        trustedProxies=settings["trusted-proxy"],
        limits=_limits(settings),
        metrics=settings["metrics"],
        adminListen=None if settings.get("operations-elsewhere") else settings["admin-listen"],
    )
    service.setServiceParent(top)
    if parseDuration(settings["gc-interval"]) and not worker:
        _collector(registry, settings, reactor).setServiceParent(top)
    extra = 0 if worker else settings["workers"] - 1
    if extra > 0:
        _addWorkers(settings, reactor, service, extra).setServiceParent(top)
    return top


def _makeRegistry(
    settings: dict[str, Any], reactor: IReactorCore | None, top: MultiService
) -> tuple[Registry, Any]:
    if settings["backend"] == "fs":
        from twisted.application.internet import TimerService

        from ociklein.storage.fs import FilesystemBlobStore, FilesystemManifestBackend

        root = settings["root"]
        try:
            blobs = FilesystemBlobStore(root, reactor=reactor, uploadTTL=settings["upload-ttl"])  # type: ignore[arg-type]
        except ValueError as e:
            raise usage.UsageError(f"--root: {e}") from None
        manifests = FilesystemManifestBackend(root, reactor=reactor)  # type: ignore[arg-type]
        sweeper = TimerService(blobs.expiryInterval, blobs.sweep)
        sweeper.clock = reactor
        sweeper.setServiceParent(top)
        log.info("ociklein backend: fs, root: {root}", root=root)
        return Registry(manifests, blobs, **_registryOptions(settings, reactor)), blobs.close
    if settings["backend"] == "s3":
        return _makeS3Registry(settings, reactor, top)
    log.warn("ociklein backend: memory; every image is lost when the process exits")
    return Registry(**_registryOptions(settings, reactor)), None


def _makeS3Registry(
    settings: dict[str, Any], reactor: IReactorCore | None, top: MultiService
) -> tuple[Registry, Any]:
    from twisted.application.internet import TimerService

    manifests, blobs, onStop = openS3(settings, reactor)
    # Every node sweeps expired sessions: sweeping is idempotent.
    sweeper = TimerService(blobs.expiryInterval, blobs.sweep)
    sweeper.clock = reactor
    sweeper.setServiceParent(top)
    log.info(
        "ociklein backend: s3, bucket: {bucket}, prefix: {prefix!r}, endpoint: {endpoint}",
        bucket=settings["s3-bucket"],
        prefix=settings["s3-prefix"],
        endpoint=settings["s3-endpoint"] or "AWS",
    )
    return Registry(manifests, blobs, **_registryOptions(settings, reactor)), onStop


def _registryOptions(settings: Mapping[str, Any], reactor: Any) -> dict[str, Any]:
    """
    The L{Registry} keyword arguments the options give.
    """
    return {
        "maxManifestBytes": settings["max-manifest-bytes"],
        "allowSparseManifests": bool(settings["allow-sparse-manifests"]),
        "automaticMount": bool(settings["automatic-mount"]),
        "access": accessControl(settings, reactor),
        "readOnly": bool(settings.get("read-only")),
    }


def _switchArguments(settings: Mapping[str, Any]) -> list[str]:
    """
    The command-line flags that hand the spec's optional parts switched on
    to a worker process.
    """
    return [f"--{key}" for key in _SWITCHES if settings.get(key)]


def _addWorkers(
    settings: dict[str, Any], reactor: Any, service: RegistryService, extra: int
) -> WorkersService:
    families = settings.get("families") or [shareableFamily(parseEndpoint(d)) for d in settings["listen"]]
    backend = settings["backend"]
    args = [
        f"--backend={backend}",
        *([f"--root={os.path.abspath(settings['root'])}"] if backend == "fs" else []),
        *(f"--{key}={settings[key]}" for key in S3_KEYS if backend == "s3"),
        f"--max-manifest-bytes={settings['max-manifest-bytes']}",
        f"--upload-ttl={settings['upload-ttl']}",
        f"--access-log={'yes' if settings['access-log'] else 'no'}",
        *_switchArguments(settings),
        *_accessArguments(settings),
        *_limitArguments(settings),
        f"--log-format={settings['log-format']}",
        f"--metrics={'yes' if settings['metrics'] else 'no'}",
        *(["--operations-elsewhere"] if settings["admin-listen"] else []),
        *(f"--trusted-proxy={network}" for network in settings["trusted-proxy"]),
        *(f"--inherit={FIRST_INHERITED + i}:{family}" for i, family in enumerate(families)),
    ]
    assert all(family in FAMILIES for family in families)

    log.info("ociklein serving with {count} processes", count=extra + 1)
    return WorkersService(reactor, extra, args, lambda: handedSockets(service))


def handedSockets(service: RegistryService) -> list[int]:
    """
    The descriptors of C{service}'s listening sockets, to hand to workers;
    from now on its ports accept one connection at a time, as the workers'
    do, so that the processes take turns.
    """
    ports: list[Any] = service.ports  # type: ignore[attr-defined]
    for port in ports:
        acceptOneAtATime(port)
    return [port.fileno() for port in ports]
