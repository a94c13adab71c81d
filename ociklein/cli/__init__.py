"""
The C{ociklein} command: client verbs (push, pull, copy, ...) and
maintenance verbs (gc, scrub, du), one module per family, each adding its
subcommands to one argparse parser.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# The modules that add verbs: each has C{register(subparsers)}, which adds
# its subcommands with C{set_defaults(run=function)}; C{function(args)}
# returns the exit status.
FAMILIES: tuple[str, ...] = ("ociklein.cli._client", "ociklein.cli._maintenance")
# The family of each verb, so that running one imports only its own family
# (the maintenance verbs import the storage contracts and the registry
# core, which a copy does not need).  A test checks it against FAMILIES.
VERBS: dict[str, str] = {
    **dict.fromkeys(
        ("push", "pull", "copy", "ls", "tags", "inspect", "rm", "login", "logout"), "ociklein.cli._client"
    ),
    **dict.fromkeys(("gc", "scrub", "du"), "ociklein.cli._maintenance"),
}


class _Version(argparse.Action):
    """
    C{--version}, looked up only when asked for: reading the installed
    package's metadata costs a noticeable part of every verb's start.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from ociklein import __version__

        print(f"ociklein {__version__}")
        parser.exit()


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """
    The command's parser: with every verb, or only the family of the verb
    C{argv} names.
    """
    parser = argparse.ArgumentParser(prog="ociklein", description="OCI registry client and maintenance tool")
    parser.add_argument("--version", action=_Version)
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    words = [word for word in (sys.argv[1:] if argv is None else argv) if not word.startswith("-")]
    family = VERBS.get(words[0]) if words else None
    for name in FAMILIES if family is None else (family,):
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run one verb; 0 on success, 1 on failure, 2 on a usage error.
    """
    parser = _parser(argv)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_usage(sys.stderr)
        return 2
    return int(args.run(args))


def run() -> None:
    """
    The C{ociklein} command: L{main}, then exit without the interpreter's
    teardown.  Freeing the few hundred modules Twisted loaded takes 30-60 ms,
    a fifth of the command's start; every file a verb writes is closed (and
    fsynced where it matters) before L{main} returns, so only the standard
    streams need flushing.
    """
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        status = status or 1
    os._exit(status)


if __name__ == "__main__":
    run()
