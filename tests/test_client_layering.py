"""
The client is a layer of its own: ociklein.client and the client verbs
speak HTTP and import none of the server (ociklein.core, ociklein.http,
ociklein.storage, Klein), which also keeps the command's start short.
"""

from __future__ import annotations

import json
import subprocess
import sys


def modulesAfter(code: str) -> list[str]:
    """
    The modules a fresh interpreter has loaded once it ran C{code}.
    """
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return list(json.loads(result.stdout))


def test_client_imports_none_of_the_server() -> None:
    """Importing ociklein.client and registering the client verbs loads no server module."""
    modules = modulesAfter(
        "import argparse, ociklein.client, ociklein.cli._client\n"
        "ociklein.cli._client.register(argparse.ArgumentParser().add_subparsers())"
    )
    server = [
        name
        for name in modules
        if name in ("klein", "werkzeug", "ociklein.core", "ociklein.registry", "importlib.metadata")
        or name.startswith(("ociklein.http", "ociklein.storage", "ociklein.auth"))
    ]
    assert server == []


def test_a_client_verb_imports_no_maintenance() -> None:
    """Parsing a client verb's command line registers only the client verbs: no maintenance, no core."""
    modules = modulesAfter(
        "import ociklein.cli\n"
        "argv = ['copy', '--json', 'a/b:c', 'oci:d']\n"
        "ociklein.cli._parser(argv).parse_args(argv)"
    )
    assert "ociklein.cli._client" in modules
    assert [n for n in modules if n.startswith(("ociklein.maintenance", "ociklein.cli._maintenance"))] == []
    assert "ociklein.core" not in modules


def test_every_verb_is_mapped_to_its_family() -> None:
    """ociklein.cli.VERBS names exactly the verbs each family registers."""
    import argparse
    import importlib

    from ociklein.cli import FAMILIES, VERBS

    registered = {}
    for family in FAMILIES:
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(family).register(subparsers)
        registered.update(dict.fromkeys(subparsers.choices, family))
    assert registered == VERBS
