"""
The C{ociklein} command: client verbs (push, pull, copy, ...) and
maintenance verbs (gc, scrub, du), one module per family, each adding its
subcommands to one argparse parser.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# The modules that add verbs: each has C{register(subparsers)}, which adds
# its subcommands with C{set_defaults(run=function)}; C{function(args)}
# returns the exit status.
FAMILIES: tuple[str, ...] = ("ociklein.cli._client", "ociklein.cli._maintenance")


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ociklein", description="OCI registry client and maintenance tool")
    parser.add_argument("--version", action=_Version)
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in FAMILIES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run one verb; 0 on success, 1 on failure, 2 on a usage error.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_usage(sys.stderr)
        return 2
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
