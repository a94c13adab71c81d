"""
The maintenance verbs of the C{ociklein} command: C{gc}, C{scrub} and
C{du}, working on a storage root or an s3 bucket directly (also while
registries serve it), configured like the registry (C{--config tap.cfg},
the same C{--s3-*} options, checked by the same code).

Exit statuses: 0 done (nothing wrong), 1 problems found or the work
failed, 2 a usage error or a root that cannot be used.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet.defer import Deferred

from ociklein.interfaces import CollectionRefused, StorageUnavailable
from ociklein.maintenance._duration import parseDuration as duration
from ociklein.maintenance._walk import Progress, noProgress

_SECTION = "ociregistry"
FORMAT_FILE = "ociklein-format"
FORMAT = "1"


class RootError(Exception):
    """
    A storage root the command cannot work on; one line for the user.
    """


def parseDuration(text: str) -> float:
    """
    C{0}, C{90s}, C{15m}, C{1h} or C{2d}, in seconds.
    """
    try:
        return duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _common(parser: argparse.ArgumentParser) -> None:
    from ociklein._s3options import S3_KEYS, S3_OPTIONS

    parser.add_argument("--config", "-c", metavar="FILE", help="an INI file with an [ociregistry] section")
    parser.add_argument("--backend", choices=["fs", "s3"], help="storage backend [default: fs]")
    parser.add_argument("--root", metavar="DIR", help="data directory of the fs backend")
    # The registry's own s3 options, with its help texts.
    helps = {name: text for name, _, _, text in S3_OPTIONS}
    for key in S3_KEYS:
        parser.add_argument(f"--{key}", dest=key, metavar="VALUE", help=helps[key].replace("%", "%%"))
    parser.add_argument("--json", action="store_true", help="print one JSON document, for scripts")


def register(subparsers: Any) -> None:
    """
    Add C{gc}, C{scrub} and C{du}.
    """
    gc = subparsers.add_parser(
        "gc",
        help="remove unreferenced blobs, links and manifests (safe while the registry serves)",
        description="Mark what tags and manifests reach, remove the rest; safe while the registry serves.",
    )
    _common(gc)
    gc.add_argument("--dry-run", action="store_true", help="remove nothing, print what would go")
    gc.add_argument(
        "--grace",
        type=parseDuration,
        default=3600.0,
        metavar="DURATION",
        help="never remove what was written or used this recently: 0, 90s, 15m, 1h [default: 1h]",
    )
    gc.add_argument(
        "--untagged", action="store_true", help="also remove manifests no tag reaches (with their blobs)"
    )
    gc.set_defaults(run=_gc)
    scrub = subparsers.add_parser(
        "scrub",
        help="hash every blob and manifest again; exit 1 on a problem",
        description="Hash every blob and manifest again and check that every manifest's blobs and "
        "children are there; exit 1 on a problem.",
    )
    _common(scrub)
    scrub.add_argument("--repair", action="store_true", help="move corrupt files to quarantine/")
    scrub.set_defaults(run=_scrub)
    du = subparsers.add_parser("du", help="bytes per repository, unique and shared")
    _common(du)
    du.set_defaults(run=_du)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """
    The backend, root and upload TTL: command line, then --config, then
    the registry's defaults.
    """
    fromFile: dict[str, str] = {}
    if args.config:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(args.config) as f:
                parser.read_file(f)
        except OSError as e:
            raise RootError(f"cannot read config file {args.config}: {e.strerror}") from None
        except configparser.Error as e:
            raise RootError(f"bad config file {args.config}: {' '.join(e.message.split())}") from None
        if parser.has_section(_SECTION):
            fromFile = dict(parser.items(_SECTION))
    backend = args.backend or fromFile.get("backend", "fs")
    if backend not in ("fs", "s3"):
        raise RootError(f"backend {backend!r} keeps nothing to maintain; use fs or s3")
    ttl = fromFile.get("upload-ttl", "86400")
    try:
        uploadTTL = float(ttl)
    except ValueError:
        raise RootError(f"upload-ttl must be a number, not {ttl!r}") from None
    if backend == "s3":
        return {"backend": backend, "upload-ttl": uploadTTL, **_s3Settings(args, fromFile)}
    root = args.root or fromFile.get("root")
    if not root:
        raise RootError("--root is required (or root in the --config file)")
    return {"backend": backend, "root": root, "upload-ttl": uploadTTL}


def _s3Settings(args: argparse.Namespace, fromFile: dict[str, str]) -> dict[str, Any]:
    """
    The s3 options (command line, then file, then the registry's
    defaults), checked as the registry checks them: the bucket is tried.
    """
    from twisted.python.usage import UsageError

    from ociklein._s3options import S3_DEFAULTS, S3_KEYS, checkS3

    settings: dict[str, Any] = {}
    for key in S3_KEYS:
        given = getattr(args, key)
        settings[key] = given if given is not None else fromFile.get(key, S3_DEFAULTS[key])
    try:
        checkS3(settings)
    except UsageError as e:
        raise RootError(str(e)) from None
    return settings


def checkRoot(root: str) -> None:
    """
    Refuse, in one line, a root that is missing, is not a storage root, or
    is laid out by an incompatible version.  Unlike the registry, the
    command never creates a root.
    """
    if not os.path.exists(root):
        raise RootError(f"storage root {root} does not exist")
    if not os.path.isdir(root):
        raise RootError(f"storage root {root} is not a directory")
    for name in ("blobs", "repositories"):
        if not os.path.isdir(os.path.join(root, name)):
            raise RootError(f"{root} is not an ociklein storage root (no {name}/ directory)")
    try:
        with open(os.path.join(root, FORMAT_FILE)) as f:
            found = f.read(64).strip()
    except FileNotFoundError:
        return
    except OSError as e:
        raise RootError(f"cannot read {FORMAT_FILE} of {root}: {e.strerror}") from None
    if found != FORMAT:
        raise RootError(f"storage root {root} has layout version {found!r}; this ociklein reads version 1")


def _open(settings: dict[str, Any]) -> tuple[Any, Any, Callable[[], None]]:
    """
    The manifest backend and blob store, and what closes them.
    """
    if settings["backend"] == "s3":
        from ociklein._s3options import openS3

        return openS3(settings)
    from ociklein.storage.fs import FilesystemBlobStore, FilesystemManifestBackend

    checkRoot(settings["root"])
    blobs = FilesystemBlobStore(settings["root"], uploadTTL=settings["upload-ttl"])
    return FilesystemManifestBackend(settings["root"]), blobs, blobs.close


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    """
    Counts of work done, shown on stderr when it is a terminal.
    """
    if not enabled or not sys.stderr.isatty():
        yield noProgress
        return
    from rich.console import Console
    from rich.progress import Progress as Bar
    from rich.progress import SpinnerColumn, TextColumn

    tasks: dict[str, Any] = {}
    columns = (SpinnerColumn(), TextColumn("{task.description}: {task.completed}"))
    with Bar(*columns, console=Console(stderr=True)) as bar:

        def advance(what: str, done: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=None)
            bar.advance(tasks[what], done)

        yield advance


def _run(args: argparse.Namespace, work: Callable[[Any, Any, Progress], Coroutine[Any, Any, int]]) -> int:
    """
    Open the storage, run C{work} under a reactor, close the storage; the
    exit status.
    """
    from twisted.internet.task import react

    try:
        settings = _settings(args)
        manifests, blobs, close = _open(settings)
    except (RootError, ValueError) as e:
        print(f"ociklein {args.verb}: {e}", file=sys.stderr)
        return 2
    status: list[int] = []

    async def main() -> None:
        try:
            with _progress(not args.json) as progress:
                status.append(await work(manifests, blobs, progress))
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            print(f"ociklein {args.verb}: {e.strerror or e}{where}", file=sys.stderr)
            status.append(1)
        except (CollectionRefused, StorageUnavailable) as e:
            print(f"ociklein {args.verb}: {e}", file=sys.stderr)
            status.append(1)
        finally:
            close()

    try:
        react(lambda reactor: Deferred.fromCoroutine(main()))
    except SystemExit:
        pass
    return status[0] if status else 1


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


def _emit(args: argparse.Namespace, document: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        for line in lines:
            print(line)


def _gc(args: argparse.Namespace) -> int:
    """
    Remove what no tag or manifest reaches; safe while the registry serves.
    """
    from ociklein.maintenance import collect

    async def work(manifests: Any, blobs: Any, progress: Progress) -> int:
        report = await collect(manifests, blobs, args.grace, args.untagged, args.dry_run, progress)
        verb = "would remove" if args.dry_run else "removed"
        lines = []
        for removed in report.removed:
            where = f"{removed.repository}@" if removed.repository else ""
            size = f" ({_size(removed.size)})" if removed.kind in ("blob", "manifest") else ""
            lines.append(f"{verb} {removed.kind} {where}{removed.digest}{size}")
        for problem in report.unreadable:
            lines.append(f"unreadable manifest {problem}")
        if report.unreadable:
            lines.append("gc: removed nothing: run `ociklein scrub --repair` first")
        else:
            kinds = [("manifest", "manifests"), ("link", "links"), ("blob", "blobs"), ("upload", "uploads")]
            counts = ", ".join(f"{report.count(kind)} {plural}" for kind, plural in kinds)
            lines.append(
                f"gc: {verb} {counts}; {'would free' if args.dry_run else 'freed'} "
                f"{_size(report.freedBytes)} ({report.freedBytes} bytes); "
                f"{_size(report.storedAfter)} stored"
            )
        _emit(args, report.asDict(), lines)
        return 1 if report.unreadable else 0

    return _run(args, work)


def _scrub(args: argparse.Namespace) -> int:
    from ociklein.maintenance import scrub

    async def work(manifests: Any, blobs: Any, progress: Progress) -> int:
        report = await scrub(manifests, blobs, args.repair, progress)
        lines = []
        for p in report.problems:
            where = f"{p.repository}@" if p.repository else ""
            repaired = " (moved to quarantine/)" if p.repaired else ""
            lines.append(f"{p.kind} {where}{p.digest}: {p.detail}{repaired}")
        lines.append(
            f"scrub: {report.blobs} blobs ({_size(report.blobBytes)}) and {report.manifests} manifests "
            f"checked, {len(report.problems)} problems"
        )
        _emit(args, report.asDict(), lines)
        return 1 if report.problems else 0

    return _run(args, work)


def _du(args: argparse.Namespace) -> int:
    from ociklein.maintenance import diskUsage

    async def work(manifests: Any, blobs: Any, progress: Progress) -> int:
        report = await diskUsage(manifests, blobs, progress)
        lines = [f"{'UNIQUE':>10} {'SHARED':>10} {'MANIFESTS':>10}  REPOSITORY"]
        for r in report.repositories:
            lines.append(
                f"{_size(r.unique):>10} {_size(r.shared):>10} {_size(r.manifestBytes):>10}  {r.repository}"
            )
        lines.append(
            f"total: {_size(report.blobBytes)} in {report.blobs} blobs "
            f"({_size(report.unlinkedBytes)} linked nowhere), {_size(report.manifestBytes)} of manifests; "
            f"{_size(report.storedBytes)} ({report.storedBytes} bytes) stored"
        )
        _emit(args, report.asDict(), lines)
        return 0

    return _run(args, work)
