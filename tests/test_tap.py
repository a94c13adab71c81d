"""
The C{twistd ociregistry} plugin: option parsing, the INI file, the shipped
C{tap.cfg}, the service, and the real twistd command.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twistdprocess import twistdCommand
from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.python.usage import UsageError
from zope.interface.verify import verifyObject

from ociklein.registry import RegistryService
from ociklein.tap import DEFAULTS, SECTION, Options, _switchArguments, makeService

TAP_CFG = Path(__file__).resolve().parent.parent / "tap.cfg"
TWISTD = twistdCommand()

AUTH_DEFAULTS = {
    "htpasswd": None,
    "access": None,
    "token-key": None,
    "token-realm": None,
    "token-issuer": "ociklein",
    "token-service": "ociklein",
    "token-public-key": None,
    "read-only": False,
}

GC_DEFAULTS = {"gc-interval": 0.0, "gc-grace": 3600.0, "gc-untagged": False}

EXPECTED_DEFAULTS = {
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
    "s3-read-ahead": 4,
    "max-manifest-bytes": 4194304,
    "upload-ttl": 86400.0,
    "access-log": True,
    "workers": 1,
    "allow-sparse-manifests": False,
    "automatic-mount": False,
    **AUTH_DEFAULTS,
    "max-connections": None,
    "header-timeout": 30.0,
    "idle-timeout": 60.0,
    "log-format": "text",
    "trusted-proxy": [],
    "admin-listen": [],
    "metrics": True,
    **GC_DEFAULTS,
}


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def values(options: Options) -> dict[str, Any]:
    return {key: options[key] for key in EXPECTED_DEFAULTS}


def writeConfig(tmp_path: Path, text: str, name: str = "ociregistry.cfg") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    """Without arguments every option has its documented default."""
    options = parse()
    assert values(options) == EXPECTED_DEFAULTS
    assert type(options["max-manifest-bytes"]) is int
    assert type(options["upload-ttl"]) is float
    assert options["config"] is None
    assert set(DEFAULTS) == set(EXPECTED_DEFAULTS)


def test_listen_repeatable() -> None:
    """--listen may be given several times; all are kept, in order, replacing the default."""
    options = parse("--listen", "tcp:5001", "--listen=tcp:5002:interface=127.0.0.1", "--listen", "unix:/x")
    assert options["listen"] == ["tcp:5001", "tcp:5002:interface=127.0.0.1", "unix:/x"]


def test_config_file(tmp_path: Path) -> None:
    """--config reads every option from the [ociregistry] section, keys being long option names."""
    path = writeConfig(
        tmp_path,
        f"[{SECTION}]\n"
        "listen = tcp:6001\n    tcp:6002:interface=127.0.0.1\n"
        "backend = fs\nroot = /srv/oci\nmax-manifest-bytes = 1000\nupload-ttl = 2.5\naccess-log = no\n"
        "max-connections = 500\nheader-timeout = 5\nidle-timeout = 7\n",
    )
    for args in (("--config", path), ("-c", path), (f"--config={path}",)):
        assert values(parse(*args)) == EXPECTED_DEFAULTS | {
            "listen": ["tcp:6001", "tcp:6002:interface=127.0.0.1"],
            "backend": "fs",
            "root": "/srv/oci",
            "max-manifest-bytes": 1000,
            "upload-ttl": 2.5,
            "access-log": False,
            "workers": 1,
            "allow-sparse-manifests": False,
            "automatic-mount": False,
            **AUTH_DEFAULTS,
            "max-connections": 500,
            "header-timeout": 5.0,
            "idle-timeout": 7.0,
            "log-format": "text",
            "trusted-proxy": [],
            "admin-listen": [],
            "metrics": True,
            **GC_DEFAULTS,
        }


def test_precedence(tmp_path: Path) -> None:
    """The command line beats the file, which beats the defaults."""
    path = writeConfig(
        tmp_path, f"[{SECTION}]\nbackend = fs\nmax-manifest-bytes = 1000\nlisten = tcp:6001 tcp:6002\n"
    )
    options = parse("--max-manifest-bytes", "2000", "--listen", "tcp:7000", "--config", path)
    assert values(options) == EXPECTED_DEFAULTS | {
        "listen": ["tcp:7000"],
        "backend": "fs",
        "root": "./ociregistry-data",
        "max-manifest-bytes": 2000,
        "upload-ttl": 86400.0,
        "access-log": True,
        "workers": 1,
        "allow-sparse-manifests": False,
        "automatic-mount": False,
        **AUTH_DEFAULTS,
        "max-connections": None,
        "header-timeout": 30.0,
        "idle-timeout": 60.0,
        "log-format": "text",
        "trusted-proxy": [],
        "admin-listen": [],
        "metrics": True,
        **GC_DEFAULTS,
    }
    assert parse("--config", path, "--backend", "memory")["backend"] == "memory"
    assert parse("--config", path)["listen"] == ["tcp:6001", "tcp:6002"]


_BAD: list[tuple[list[str], str | None, str]] = [
    ([], f"[{SECTION}]\nbogus = 1\n", "unknown key 'bogus'"),
    ([], f"[{SECTION}]\nconfig = other.cfg\n", "unknown key 'config'"),
    ([], f"[{SECTION}]\nmax_manifest_bytes = 1\n", "unknown key 'max_manifest_bytes'"),
    ([], "backend = fs\n", "bad config file"),
    ([], "[ociregistr]\nbackend = fs\n", "no [ociregistry] section in config file"),
    ([], "", "(found none)"),
    ([], f"[{SECTION}]\nbackend = fs\nbackend = memory\n", "bad config file"),
    (["--config", "/nonexistent/oci.cfg"], None, "cannot read config file /nonexistent/oci.cfg"),
    (["--backend=bogus"], None, "--backend must be memory, fs or s3, not 'bogus'"),
    ([], f"[{SECTION}]\nbackend = s3\n", "--backend=s3 needs --s3-bucket"),
    (["--backend=s3", "--s3-bucket=b", "--s3-endpoint=host:9000"], None, "--s3-endpoint must be an http"),
    (["--backend=s3", "--s3-bucket=b", "--s3-part-size=4"], None, "--s3-part-size must be from 5 to 64"),
    (["--backend=s3", "--s3-bucket=b", "--s3-part-size=many"], None, "--s3-part-size must be a number"),
    (["--backend=s3", "--s3-bucket=b", "--s3-read-ahead=65"], None, "--s3-read-ahead must be from 0 to 64"),
    (["--backend=s3", "--s3-bucket=b", "--s3-read-ahead=x"], None, "--s3-read-ahead must be a number"),
    (["--backend=s3", "--s3-bucket=b", "--s3-credentials=/nowhere"], None, "--s3-credentials /nowhere"),
    (["--backend=s3", "--s3-bucket=b", "--s3-ca-file=/nowhere"], None, "--s3-ca-file /nowhere: cannot"),
    (["--max-manifest-bytes=abc"], None, "--max-manifest-bytes must be a number, not 'abc'"),
    (["--gc-interval=soon"], None, "--gc-interval: 'soon' is not a duration"),
    ([], f"[{SECTION}]\ngc-grace = -1h\n", "--gc-grace: '-1h' is not a duration"),
    (["--max-manifest-bytes=1.5"], None, "--max-manifest-bytes must be a number"),
    (["--max-manifest-bytes=-5"], None, "--max-manifest-bytes must be positive"),
    (["--max-manifest-bytes=0"], None, "--max-manifest-bytes must be positive"),
    ([], f"[{SECTION}]\nmax-manifest-bytes = lots\n", "--max-manifest-bytes must be a number, not 'lots'"),
    ([], f"[{SECTION}]\nmax-manifest-bytes =\n", "--max-manifest-bytes must be a number"),
    (["--upload-ttl=soon"], None, "--upload-ttl must be a number"),
    (["--upload-ttl=-1"], None, "--upload-ttl must be positive"),
    (["--upload-ttl=nan"], None, "--upload-ttl must be positive"),
    (["--access-log=maybe"], None, "--access-log must be yes or no, not 'maybe'"),
    ([], f"[{SECTION}]\naccess-log = sometimes\n", "--access-log must be yes or no, not 'sometimes'"),
    (["--listen", "bogus:1"], None, "bad --listen 'bogus:1'"),
    (["--listen", "tcp:abc"], None, "bad --listen 'tcp:abc'"),
    (["--listen", "tcp"], None, "bad --listen 'tcp'"),
    (["--listen", "tcp:5000", "--listen", ""], None, "bad --listen ''"),
    (["--listen", "ssl:5443:privateKey=/nonexistent/key.pem"], None, "bad --listen 'ssl:5443"),
    ([], f"[{SECTION}]\nlisten = tcp:5000 nope:1\n", "bad --listen 'nope:1'"),
    ([], f"[{SECTION}]\nlisten =\n", "--listen needs at least one endpoint"),
    ([], f"[{SECTION}]\nallow-sparse-manifests = perhaps\n", "--allow-sparse-manifests must be yes or no"),
    (["--upload-ttl=inf"], None, "--upload-ttl must be finite"),
    (["--max-manifest-bytes=0x10"], None, "--max-manifest-bytes must be a number"),
    (["--root=/tmp"], None, "--root is for --backend=fs"),
    ([], f"[{SECTION}]\nroot = /srv/x\n", "--root is for --backend=fs"),
    (["--backend=fs", "--root="], None, "--root must name a directory"),
    (["--backend=fs", "--root=/etc/hostname"], None, "/etc/hostname is not a directory"),
    (["--backend=fs", "--root=/etc/hostname/sub"], None, "/etc/hostname is not a directory"),
    (["--listen", "tcp:5000:interface=::1"], None, r"escape the colons of an IPv6 address"),
    (["--log-format=xml"], None, "--log-format must be text or json, not 'xml'"),
    (["--trusted-proxy=10.0.0.0/33"], None, "bad --trusted-proxy: '10.0.0.0/33' is not an address"),
    ([], f"[{SECTION}]\ntrusted-proxy = 10.0.0.1 nope\n", "bad --trusted-proxy: 'nope'"),
    (["--metrics=sometimes"], None, "--metrics must be yes or no, not 'sometimes'"),
    (
        ["--admin-listen=tcp:9100:interface=::1"],
        None,
        "bad --admin-listen 'tcp:9100",
    ),
]


@pytest.mark.parametrize(("args", "config", "message"), _BAD, ids=[m for _, _, m in _BAD])
def test_usage_errors(tmp_path: Path, args: list[str], config: str | None, message: str) -> None:
    """Unknown keys, missing files, bad backends, numbers and endpoints are one-line UsageErrors."""
    if config is not None:
        args = [*args, "--config", writeConfig(tmp_path, config)]
    with pytest.raises(UsageError) as raised:
        parse(*args)
    text = str(raised.value)
    assert message in text
    assert "\n" not in text


def test_ipv6_listen_escaped() -> None:
    """An IPv6 interface is written with escaped colons, as docs/deploy.md shows, and listens there."""
    options = parse("--listen", r"tcp6:0:interface=\:\:1")
    service = makeService(options, reactor=reactor)
    service.startService()
    try:
        [child] = [s for s in service if isinstance(s, RegistryService)]  # type: ignore[attr-defined]
        [port] = child.ports
        assert port.getHost().host == "::1"
    finally:
        service.stopService()


def test_make_service_partial_mapping(tmp_path: Path) -> None:
    """makeService fills in the defaults of every option a mapping leaves out."""
    service = makeService({"backend": "fs", "root": str(tmp_path / "data"), "listen": ["tcp:0"]})
    assert verifyObject(IService, service)
    assert (tmp_path / "data" / "blobs").is_dir()


def test_tap_cfg_parses_to_defaults() -> None:
    """The repository's tap.cfg parses cleanly and yields exactly the defaults."""
    assert values(parse("--config", str(TAP_CFG))) == EXPECTED_DEFAULTS


def test_tap_cfg_documents_every_key() -> None:
    """tap.cfg sets every key of the [ociregistry] section, each after a comment giving its default."""
    lines = TAP_CFG.read_text().splitlines()
    assert f"[{SECTION}]" in lines
    documented: dict[str, str] = {}
    for i, line in enumerate(lines):
        if line and not line[0].isspace() and "=" in line and not line.startswith("#"):
            key, _, value = (part.strip() for part in line.partition("="))
            comments = []
            for before in reversed(lines[:i]):
                if not before.startswith("#"):
                    break
                comments.append(before)
            assert comments, f"{key} has no comment"
            assert any(f"Default: {value}" in c for c in comments), (key, comments)
            documented[key] = value
    assert set(documented) == set(DEFAULTS)


def test_make_service_is_iservice() -> None:
    """makeService returns an IService, from Options or from a plain dict."""
    assert verifyObject(IService, makeService(parse("--listen", "tcp:0:interface=127.0.0.1")))
    assert verifyObject(IService, makeService({**EXPECTED_DEFAULTS, "listen": ["tcp:0"]}, reactor=reactor))


@pytest.mark.parametrize("backend", ["memory", "fs"])
@pytest_twisted.ensureDeferred
async def test_make_service_serves(tmp_path: Path, backend: str) -> None:
    """The service makeService builds listens on its endpoints, serves /v2/, and stops cleanly."""
    root = ["--root", str(tmp_path / "data")] if backend == "fs" else []
    options = parse("--listen", "tcp:0:interface=127.0.0.1", "--backend", backend, *root)
    service = makeService(options, reactor=reactor)
    service.startService()
    try:
        [child] = [s for s in service if isinstance(s, RegistryService)]  # type: ignore[attr-defined]
        [port] = child.ports
        response = await treq.get(f"http://127.0.0.1:{port.getHost().port}/v2/", persistent=False)
        assert response.code == 200
        assert json.loads(await treq.content(response)) == {}
    finally:
        await service.stopService()


def test_twistd_help_lists_plugin() -> None:
    """twistd --help lists the ociregistry subcommand."""
    result = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:1] == ["ociregistry"] for line in result.stdout.splitlines()), result.stdout


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--backend=bogus", "--backend must be memory, fs or s3, not 'bogus'"),
        ("--listen=ssl:0:privateKey=/nonexistent/key.pem", "bad --listen 'ssl:0:privateKey="),
    ],
)
def test_twistd_usage_error(tmp_path: Path, argument: str, message: str) -> None:
    """twistd ociregistry with a bad option exits non-zero with one line: no traceback, no --help."""
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "ociregistry", argument],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("twistd ociregistry: ") and message in line, line


@pytest.mark.parametrize(
    "args",
    [
        ["--backend=fs", "--root=/etc/hostname"],
        ["--config=CFG"],
        ["--upload-ttl=inf"],
        ["--backend=memory", "--root=/tmp/x"],
        ["--listen=tcp:5000:interface=::1"],
    ],
)
@pytest.mark.parametrize("command", ["twistd", "twist"])
def test_config_mistakes_are_one_line(tmp_path: Path, command: str, args: list[str]) -> None:
    """Each mistake of the issue's list, under twistd and twist: one line, non-zero exit, nothing started."""
    cfg = writeConfig(tmp_path, "[ociregistr]\nbackend = fs\n")
    args = [a.replace("CFG", cfg) for a in args]
    prefix = [TWISTD, "-n", "--pidfile="] if command == "twistd" else [sys.executable, "-m", "twisted"]
    result = subprocess.run([*prefix, "ociregistry", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    [line] = (result.stdout + result.stderr).splitlines()
    assert line.startswith(f"{command} ociregistry: "), line


def test_version() -> None:
    """twistd ociregistry --version prints ociklein's version and exits 0."""
    from ociklein import __version__

    result = subprocess.run([TWISTD, "ociregistry", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ociklein {__version__}\n"


@pytest.fixture
def takenPort() -> Iterator[int]:
    """A port of 127.0.0.1 another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_listen_failure_foreground(tmp_path: Path, takenPort: int, workers: int) -> None:
    """twistd -n on a port in use exits non-zero at once with one line on stderr and the reason in the log."""
    args = ["--backend=fs", f"--root={tmp_path / 'r'}", f"--workers={workers}"]
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "ociregistry", f"--listen=tcp:{takenPort}:interface=127.0.0.1", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    expected = f"cannot listen on tcp:{takenPort}:interface=127.0.0.1: Address already in use"
    assert result.stderr == f"twistd ociregistry: {expected}\n"
    assert expected in result.stdout
    assert "Traceback" not in result.stdout


def test_listen_failure_daemon(tmp_path: Path, takenPort: int) -> None:
    """A daemonizing twistd on a port in use exits non-zero, naming the failure, and leaves no daemon."""
    pidfile = tmp_path / "twistd.pid"
    listen = f"tcp:{takenPort}:interface=127.0.0.1"
    result = subprocess.run(
        [TWISTD, f"--pidfile={pidfile}", f"--logfile={tmp_path / 'log'}", "ociregistry", "--listen", listen],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode != 0
    assert f"cannot listen on {listen}: Address already in use" in result.stderr
    assert "Address already in use" in (tmp_path / "log").read_text()
    # The daemon removes its pid file just after reporting to the launcher;
    # on a loaded machine "just after" can take seconds.
    deadline = time.monotonic() + 60
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pidfile.exists()


@pytest.mark.parametrize("port", ["TAKEN", "99999"])
def test_listen_failure_twist(takenPort: int, port: str) -> None:
    """twist ociregistry on a port in use or out of range exits non-zero with one line."""
    port = port.replace("TAKEN", str(takenPort))
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "ociregistry", f"--listen=tcp:{port}:interface=127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1: " in line


@pytest_twisted.ensureDeferred
async def test_twistd_end_to_end(twistdRegistry: Callable[..., Any]) -> None:
    """A real twistd ociregistry answers GET /v2/ and logs its backend and listening address."""
    server = twistdRegistry("--backend=memory")
    response = await treq.get(f"{server.url}/v2/", persistent=False).addTimeout(10, reactor)
    assert response.code == 200
    assert response.headers.getRawHeaders("Docker-Distribution-API-Version") == ["registry/2.0"]
    assert json.loads(await treq.content(response)) == {}
    log = ""
    for _ in range(100):
        log = server.logPath.read_text()
        if "ociklein listening" in log:
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert "ociklein backend: memory" in log
    assert f"ociklein listening on tcp:{server.port}:interface=127.0.0.1 ({server.address})" in log
    assert "Traceback" not in log
    assert "Starting factory" not in log
    [access] = [line for line in log.splitlines() if "ociklein.access" in line]
    assert re.fullmatch(
        r'\S+Z \[ociklein\.access\] 127\.0\.0\.1 - "GET /v2/ HTTP/1\.1" 200 2 [\d.]+ "[^"]*" \w+', access
    )


@pytest_twisted.ensureDeferred
async def test_twistd_json_log(twistdRegistry: Callable[..., Any]) -> None:
    """With --log-format json, every line twistd writes is one JSON object; the access line has its fields."""
    server = twistdRegistry("--log-format=json", "--trusted-proxy=127.0.0.1")
    headers = {"X-Forwarded-For": "203.0.113.5", "X-Request-Id": "req-1"}
    response = await treq.get(f"{server.url}/v2/", headers=headers, persistent=False).addTimeout(10, reactor)
    await treq.content(response)
    server.stop()
    events = [json.loads(line) for line in server.logPath.read_text().splitlines()]
    [access] = [e for e in events if e["logger"] == "ociklein.access"]
    assert access["client"] == "203.0.113.5"
    assert access["request_id"] == "req-1"
    assert (access["method"], access["path"], access["status"]) == ("GET", "/v2/", 200)


@pytest.mark.parametrize(("given", "expected"), [("yes", True), ("on", True), ("NO", False), ("0", False)])
def test_access_log_flag(tmp_path: Path, given: str, expected: bool) -> None:
    """--access-log takes yes/no words from the command line and the file alike."""
    assert parse(f"--access-log={given}")["access-log"] is expected
    path = writeConfig(tmp_path, f"[{SECTION}]\naccess-log = {given}\n")
    assert parse("--config", path)["access-log"] is expected


# -- switches for the spec's optional parts --------------------------------


@pytest.mark.parametrize("switch", ["allow-sparse-manifests", "automatic-mount"])
def test_switches(tmp_path: Path, switch: str) -> None:
    """A switch is off by default, on by flag or by yes in the file; the flag beats the file's no."""
    assert parse()[switch] is False
    assert parse(f"--{switch}")[switch] is True
    for text, expected in (("yes", True), ("on", True), ("no", False), ("off", False)):
        path = writeConfig(tmp_path, f"[{SECTION}]\n{switch} = {text}\n")
        assert parse("--config", path)[switch] is expected
        assert parse("--config", path, f"--{switch}")[switch] is True


def test_switches_reach_workers() -> None:
    """The switches turned on are handed to worker processes as flags."""
    assert _switchArguments(parse()) == []
    assert _switchArguments(parse("--allow-sparse-manifests")) == ["--allow-sparse-manifests"]
    assert _switchArguments(parse("--automatic-mount", "--allow-sparse-manifests")) == [
        "--allow-sparse-manifests",
        "--automatic-mount",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-connections=0"], "--max-connections must be positive"),
        (["--max-connections=lots"], "--max-connections must be a number or auto, not 'lots'"),
        (["--header-timeout=-1"], "--header-timeout must be positive"),
        (["--idle-timeout=soon"], "--idle-timeout must be a number, not 'soon'"),
    ],
)
def test_bad_limits(args: list[str], message: str) -> None:
    """A bad connection limit or deadline is a one-line usage error."""
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        parse(*args)


def test_limits_reach_the_site() -> None:
    """--max-connections, --header-timeout and --idle-timeout are the served site's limits."""
    options = parse("--listen=tcp:0:interface=127.0.0.1", "--max-connections=77", "--header-timeout=5")
    assert options["max-connections"] == 77
    assert parse("--max-connections=auto")["max-connections"] is None
    service = makeService(options, reactor=reactor)
    [registry] = [s for s in service if isinstance(s, RegistryService)]  # type: ignore[attr-defined]
    [listening] = list(registry)
    limits = listening.factory.wrappedFactory.guard.limits
    assert limits.maxConnections == 77
    assert limits.headerTimeout == 5.0
    assert limits.idleTimeout == 60.0


def test_gc_interval_adds_collector() -> None:
    """--gc-interval adds a periodic collection to the service; without it there is none."""
    from ociklein.maintenance._service import CollectionService

    def collectors(*args: str) -> list[Any]:
        top = makeService(parse(*args), reactor=reactor)
        return [s for s in top if isinstance(s, CollectionService)]  # type: ignore[attr-defined]

    assert collectors() == []
    [collector] = collectors("--gc-interval", "15m", "--gc-grace", "0")
    assert collector.interval == 900.0


def _waitingClients(port: Any, count: int) -> list[Any]:
    """
    C{count} connections to C{port}, connected by the kernel and waiting in
    its backlog: the reactor does not run until the test yields.
    """
    import socket

    return [socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(count)]


class _Recording:
    """
    A factory of protocols that record their connections.
    """

    def __init__(self) -> None:
        from twisted.internet.protocol import Factory, Protocol

        self.accepted: list[Protocol] = []
        accepted = self.accepted

        class Recording(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)

        self.factory = Factory.forProtocol(Recording)

    def close(self, clients: list[Any]) -> None:
        for protocol in self.accepted:
            protocol.transport.abortConnection()  # type: ignore[union-attr]
        for client in clients:
            client.close()


@pytest_twisted.ensureDeferred
async def test_sharedPortAcceptsOneAtATime() -> None:
    """A port whose socket other processes share accepts one waiting connection per reactor turn."""
    from twisted.internet import reactor

    from ociklein._listening import acceptOneAtATime

    recording = _Recording()
    port: Any = reactor.listenTCP(0, recording.factory, interface="127.0.0.1")
    acceptOneAtATime(port)
    acceptOneAtATime(port)  # once is enough; twice changes nothing
    clients = _waitingClients(port, 5)
    try:
        port.doRead()
        assert len(recording.accepted) == 1
        port.doRead()
        port.doRead()
        assert len(recording.accepted) == 3
    finally:
        recording.close(clients)
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_handedAndInheritedSocketsAcceptOneAtATime() -> None:
    """The parent's ports, once their sockets are handed to workers, and a worker's inherited
    socket both accept one connection per reactor turn."""
    import os

    from twisted.internet import reactor

    from ociklein._listening import InheritedEndpoint
    from ociklein.tap import handedSockets

    recording = _Recording()
    parentPort: Any = reactor.listenTCP(0, recording.factory, interface="127.0.0.1")

    class Service:
        ports = [parentPort]

    [fd] = handedSockets(Service())  # type: ignore[arg-type]
    inherited = os.dup(fd)  # what the worker finds as descriptor 3
    workerPort: Any = await InheritedEndpoint(reactor, inherited, "INET").listen(recording.factory)
    os.close(inherited)
    clients = _waitingClients(parentPort, 4)
    try:
        parentPort.doRead()
        assert len(recording.accepted) == 1
        workerPort.doRead()
        assert len(recording.accepted) == 2
    finally:
        recording.close(clients)
        await workerPort.stopListening()
        await parentPort.stopListening()
