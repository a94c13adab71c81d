"""
The client verbs of the C{ociklein} command: push, pull, copy, ls, tags,
inspect, rm, login and logout, on L{ociklein.client}.  Credentials come
from the auth files skopeo, podman and docker share; errors from a registry
are printed as their OCI code and message on one line; the exit status is 0
on success, 1 on failure, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import getpass
import io
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from ociklein.cli._progress import LiveProgress, humanSize, progressFor
from ociklein.client import (
    Clients,
    CopyResult,
    LayoutReference,
    Progress,
    Reference,
    ReferenceError,
    RegistryClient,
    RegistryError,
    copy,
    lookupCredentials,
    parseLocation,
    parseReference,
    removeCredentials,
    splitLayoutTag,
    storeCredentials,
)
from ociklein.manifests import INDEX_TYPES

# A config blob bigger than this is not shown by inspect.
_MAX_CONFIG = 4 * 1024 * 1024


class UsageError(Exception):
    """
    The command line asks for something impossible: exit status 2.
    """


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _jobs(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("must be between 1 and 64")
    return value


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tls-verify",
        type=_boolean,
        default=True,
        metavar="BOOL",
        help="false: do not check certificates, and allow plain HTTP (as skopeo)",
    )
    common.add_argument("--ca-file", metavar="PEM", help="trust only these certificates")
    common.add_argument(
        "--authfile", metavar="FILE", help="the auth file (default: $REGISTRY_AUTH_FILE, ...)"
    )
    common.add_argument("--creds", metavar="USER:PASSWORD", help="credentials instead of the auth file's")
    common.add_argument("--json", action="store_true", help="print the result as JSON, no progress")
    return common


def _transfer() -> argparse.ArgumentParser:
    transfer = argparse.ArgumentParser(add_help=False)
    transfer.add_argument(
        "--jobs", type=_jobs, default=4, metavar="N", help="blobs moved at once (default 4)"
    )
    transfer.add_argument("--referrers", action="store_true", help="also copy the manifests that refer to it")
    return transfer


def register(subparsers: Any) -> None:
    """
    Add the client verbs to the C{ociklein} command.
    """
    common, transfer = _common(), _transfer()

    def verb(name: str, run: Callable[[argparse.Namespace], int], help: str, *parents: Any) -> Any:
        parser = subparsers.add_parser(name, help=help, description=help, parents=[common, *parents])
        parser.set_defaults(run=run)
        return parser

    push = verb("push", _push, "push an image of an OCI layout to a registry", transfer)
    push.add_argument("layout", metavar="LAYOUT[:TAG]")
    push.add_argument("reference", metavar="REF")
    pull = verb("pull", _pull, "pull an image into an OCI layout", transfer)
    pull.add_argument("reference", metavar="REF")
    pull.add_argument("layout", metavar="LAYOUT[:TAG]")
    copy_ = verb("copy", _copy, "copy an image between registries and OCI layouts (oci:DIR[:TAG])", transfer)
    copy_.add_argument("source", metavar="SRC")
    copy_.add_argument("destination", metavar="DST")
    ls = verb("ls", _ls, "list the repositories of a registry")
    ls.add_argument("registry", metavar="REGISTRY")
    tags = verb("tags", _tags, "list the tags of a repository")
    tags.add_argument("reference", metavar="REF")
    inspect = verb("inspect", _inspect, "show a manifest, its config, sizes, platforms and referrers")
    inspect.add_argument("reference", metavar="REF")
    rm = verb("rm", _rm, "delete a manifest (by tag: the manifest it names)")
    rm.add_argument("reference", metavar="REF")
    login = verb("login", _login, "check and store credentials for a registry")
    login.add_argument("registry", metavar="REGISTRY")
    login.add_argument("-u", "--username")
    login.add_argument("-p", "--password")
    login.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    logout = verb("logout", _logout, "forget the credentials of a registry")
    logout.add_argument("registry", metavar="REGISTRY")


# -- running -------------------------------------------------------------------------


def _env(args: argparse.Namespace) -> Mapping[str, str]:
    env = dict(os.environ)
    if args.authfile:
        env["REGISTRY_AUTH_FILE"] = args.authfile
    return env


def _credentials(args: argparse.Namespace, registries: list[str]) -> dict[str, tuple[str, str]]:
    if not args.creds:
        return {}
    user, colon, password = args.creds.partition(":")
    if not colon:
        raise UsageError("--creds takes USER:PASSWORD")
    return {registry: (user, password) for registry in registries}


def _clients(args: argparse.Namespace, reactor: Any, registries: list[str]) -> Clients:
    return Clients(
        reactor,
        tlsVerify=args.tls_verify,
        caFile=args.ca_file,
        credentials=_credentials(args, registries),
        env=_env(args),
        connections=getattr(args, "jobs", 4) + 2,
    )


def _fail(args: argparse.Namespace, code: str, message: str, status: int) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": {"code": code, "message": message}}), flush=True)
    print(f"ociklein {args.verb}: {code}: {message}", file=sys.stderr, flush=True)
    return status


def _run(args: argparse.Namespace, work: Callable[[Any], Coroutine[Any, Any, Any]]) -> int:
    """
    Run C{work(reactor)} to completion on the reactor; print its JSON or
    text result; map failures to an exit status.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    outcome: list[Any] = []

    def start() -> None:
        d = Deferred.fromCoroutine(work(reactor))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    try:
        reactor.callWhenRunning(start)  # type: ignore[attr-defined]
        reactor.run()  # type: ignore[attr-defined]
    except (UsageError, ReferenceError) as e:
        return _fail(args, "USAGE", str(e), 2)
    if not outcome:
        return _fail(args, "INTERRUPTED", "stopped before the end", 1)
    result = outcome[0]
    from twisted.python.failure import Failure

    if isinstance(result, Failure):
        error = result.value
        if isinstance(error, (UsageError, ReferenceError)):
            return _fail(args, "USAGE", str(error), 2)
        if isinstance(error, RegistryError):
            return _fail(args, error.code, error.message, 1)
        if isinstance(error, (OSError, ValueError)):
            return _fail(args, type(error).__name__.upper(), " ".join(str(error).split()), 1)
        return _fail(args, "INTERNAL", f"{type(error).__name__}: {error}", 1)
    return 0


def _emit(args: argparse.Namespace, document: Any, text: str) -> None:
    if args.json:
        print(json.dumps(document, indent=2), flush=True)
    elif text:
        print(text, flush=True)


# -- transfers --------------------------------------------------------------------------


def _copyVerb(
    args: argparse.Namespace, source: Reference | LayoutReference, destination: Reference | LayoutReference
) -> int:
    registries = [end.registry for end in (source, destination) if isinstance(end, Reference)]

    async def work(reactor: Any) -> None:
        clients = _clients(args, reactor, registries)
        progress = progressFor(args.json)
        started = time.monotonic()
        try:
            if isinstance(progress, LiveProgress):
                with progress:
                    result = await _doCopy(args, source, destination, clients, progress)
            else:
                result = await _doCopy(args, source, destination, clients, progress)
        finally:
            await clients.close()
        seconds = time.monotonic() - started
        counts = result.counts()
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no blobs"
        _emit(
            args,
            {
                "source": str(source),
                "destination": str(destination),
                "digest": result.digest,
                "mediaType": result.mediaType,
                "size": result.size,
                "manifests": result.manifests,
                "blobs": result.blobs,
                "bytes": result.bytes,
                "seconds": round(seconds, 3),
            },
            f"{destination}: {result.digest} ({summary}; {humanSize(result.bytes)} in {seconds:.1f} s)",
        )

    return _run(args, work)


async def _doCopy(
    args: argparse.Namespace,
    source: Reference | LayoutReference,
    destination: Reference | LayoutReference,
    clients: Clients,
    progress: Progress,
) -> CopyResult:
    return await copy(
        source, destination, clients=clients, referrers=args.referrers, jobs=args.jobs, progress=progress
    )


def _parse(parse: Callable[[str], Any], text: str, args: argparse.Namespace) -> Any:
    try:
        return parse(text)
    except ReferenceError as e:
        raise UsageError(str(e)) from None


def _guard(args: argparse.Namespace, run: Callable[[], int]) -> int:
    try:
        return run()
    except UsageError as e:
        return _fail(args, "USAGE", str(e), 2)


def _push(args: argparse.Namespace) -> int:
    return _guard(
        args,
        lambda: _copyVerb(args, splitLayoutTag(args.layout), _parse(_registryOnly, args.reference, args)),
    )


def _pull(args: argparse.Namespace) -> int:
    return _guard(
        args,
        lambda: _copyVerb(args, _parse(_registryOnly, args.reference, args), splitLayoutTag(args.layout)),
    )


def _copy(args: argparse.Namespace) -> int:
    return _guard(
        args,
        lambda: _copyVerb(
            args, _parse(parseLocation, args.source, args), _parse(parseLocation, args.destination, args)
        ),
    )


def _registryOnly(text: str) -> Reference:
    if text.startswith("oci:"):
        raise ReferenceError(f"{text!r}: a registry reference is needed here, not a layout")
    return parseReference(text)


# -- looking and deleting ---------------------------------------------------------------------


def _registryHost(text: str) -> str:
    host = text.removeprefix("docker://").split("://", 1)[-1].rstrip("/")
    if not host or "/" in host:
        raise UsageError(f"{text!r} is not a registry host[:port]")
    return host


def _oneClient(
    args: argparse.Namespace, registry: str, use: Callable[[RegistryClient], Coroutine[Any, Any, None]]
) -> int:
    async def work(reactor: Any) -> None:
        clients = _clients(args, reactor, [registry])
        try:
            await use(clients.get(registry))
        finally:
            await clients.close()

    return _run(args, work)


def _ls(args: argparse.Namespace) -> int:
    def run() -> int:
        registry = _registryHost(args.registry)

        async def use(client: RegistryClient) -> None:
            repositories = await client.catalog()
            _emit(args, {"registry": registry, "repositories": repositories}, "\n".join(repositories))

        return _oneClient(args, registry, use)

    return _guard(args, run)


def _tags(args: argparse.Namespace) -> int:
    def run() -> int:
        reference = _parse(_registryOnly, args.reference, args)

        async def use(client: RegistryClient) -> None:
            tags = await client.tags(reference.repository)
            _emit(
                args, {"name": f"{reference.registry}/{reference.repository}", "tags": tags}, "\n".join(tags)
            )

        return _oneClient(args, reference.registry, use)

    return _guard(args, run)


def _rm(args: argparse.Namespace) -> int:
    def run() -> int:
        reference = _parse(_registryOnly, args.reference, args)

        async def use(client: RegistryClient) -> None:
            await client.deleteManifest(reference.repository, reference.reference)
            _emit(args, {"deleted": str(reference)}, f"deleted {reference}")

        return _oneClient(args, reference.registry, use)

    return _guard(args, run)


def _inspect(args: argparse.Namespace) -> int:
    def run() -> int:
        reference = _parse(_registryOnly, args.reference, args)

        async def use(client: RegistryClient) -> None:
            report = await _report(client, reference)
            _emit(args, report, _reportText(report))

        return _oneClient(args, reference.registry, use)

    return _guard(args, run)


async def _report(client: RegistryClient, reference: Reference) -> dict[str, Any]:
    manifest = await client.getManifest(reference.repository, reference.reference)
    document = manifest.document()
    report: dict[str, Any] = {
        "name": str(reference),
        "digest": manifest.digest,
        "mediaType": manifest.mediaType,
        "manifestSize": len(manifest.content),
        "manifest": document,
    }
    if manifest.mediaType in INDEX_TYPES or "manifests" in document:
        report["platforms"] = [
            {
                "platform": _platform(child.get("platform") or {}),
                "digest": child.get("digest"),
                "size": child.get("size"),
            }
            for child in document.get("manifests") or []
        ]
    else:
        layers = document.get("layers") or []
        report["layers"] = [{"digest": layer.get("digest"), "size": layer.get("size")} for layer in layers]
        report["size"] = sum(int(layer.get("size") or 0) for layer in layers)
        config = document.get("config") or {}
        if isinstance(config, dict) and config.get("digest") and int(config.get("size") or 0) <= _MAX_CONFIG:
            sink = io.BytesIO()
            await client.pullBlob(reference.repository, str(config["digest"]), sink, int(config["size"]))
            try:
                report["config"] = json.loads(sink.getvalue())
            except ValueError:
                report["config"] = None
            if isinstance(report["config"], dict):
                report["platform"] = _platform(report["config"])
    report["referrers"] = await client.referrers(reference.repository, manifest.digest)
    return report


def _platform(document: dict[str, Any]) -> str:
    parts = [str(document.get("os") or "?"), str(document.get("architecture") or "?")]
    if document.get("variant"):
        parts.append(str(document["variant"]))
    return "/".join(parts)


def _reportText(report: dict[str, Any]) -> str:
    lines = [
        f"Name:       {report['name']}",
        f"Digest:     {report['digest']}",
        f"MediaType:  {report['mediaType']}",
    ]
    if "platforms" in report:
        lines.append(f"Platforms:  {len(report['platforms'])}")
        lines += [
            f"  {p['platform']:<16} {p['digest']}  {humanSize(p['size'] or 0)}" for p in report["platforms"]
        ]
    else:
        if report.get("platform"):
            lines.append(f"Platform:   {report['platform']}")
        lines.append(f"Size:       {humanSize(report['size'])} in {len(report['layers'])} layers")
        lines += [f"  {layer['digest']}  {humanSize(layer['size'] or 0)}" for layer in report["layers"]]
    lines.append(f"Referrers:  {len(report['referrers'])}")
    lines += [
        f"  {r.get('digest')}  {r.get('artifactType') or r.get('mediaType')}" for r in report["referrers"]
    ]
    return "\n".join(lines)


# -- credentials ---------------------------------------------------------------------


def _login(args: argparse.Namespace) -> int:
    def run() -> int:
        registry = _registryHost(args.registry)
        user = args.username
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = args.password
        if user is None or password is None:
            if not sys.stdin.isatty():
                raise UsageError("give -u USER and -p PASSWORD or --password-stdin")
            user = user or input("Username: ")
            password = password if password is not None else getpass.getpass("Password: ")
        args.creds = f"{user}:{password}"

        async def use(client: RegistryClient) -> None:
            await client.ping()
            path = storeCredentials(registry, user, password, _env(args))
            _emit(args, {"registry": registry, "authfile": str(path)}, "Login Succeeded")

        return _oneClient(args, registry, use)

    return _guard(args, run)


def _logout(args: argparse.Namespace) -> int:
    def run() -> int:
        registry = _registryHost(args.registry)
        env = _env(args)
        if lookupCredentials(registry, env) is None:
            return _fail(args, "NOT_LOGGED_IN", f"no credentials stored for {registry}", 1)
        changed = removeCredentials(registry, env)
        _emit(
            args,
            {"registry": registry, "authfiles": [str(p) for p in changed]},
            f"Removed login for {registry}",
        )
        return 0

    return _guard(args, run)
