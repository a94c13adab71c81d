"""
docs/auth.md, followed as written: each section with a console session
starts the twistd its C{sh} block shows, then runs every C{$} command in a
shell and compares what it prints with what the document says.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from twistdprocess import TwistdRegistry

DOC = Path(__file__).resolve().parent.parent / "docs" / "auth.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def sections() -> list[tuple[str, str]]:
    parts = re.split(r"^## ", DOC.read_text(), flags=re.MULTILINE)
    return [(part.splitlines()[0], part) for part in parts[1:] if "```console" in part]


def commands(console: str) -> list[tuple[str, str]]:
    """
    The (command, expected output) pairs of a console block.
    """
    pairs: list[tuple[str, str]] = []
    for line in console.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], ""))
        else:
            command, output = pairs[-1]
            pairs[-1] = (command, output + line + "\n")
    return pairs


def layout(directory: Path) -> None:
    """
    The ./alpine OCI layout the document starts from, tagged 3.20.
    """
    from ocilayout import makeImage, writeLayout  # tests/interop

    writeLayout(directory / "alpine", makeImage(layers=2), "3.20")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "interop"))
    sys.modules.pop("ocilayout", None)
    layout(tmp_path)
    return tmp_path


def start(twistd: str, workdir: Path, log: Path) -> TwistdRegistry:
    """
    The twistd of a C{sh} block, on a free port instead of 5000, in the
    document's directory.
    """
    words = shlex.split(twistd)[3:]
    listen = words.index("--listen")
    assert words[listen + 1] == "tcp:5000:interface=127.0.0.1", twistd
    del words[listen : listen + 2]
    server = TwistdRegistry(words, log)
    cwd = os.getcwd()
    os.chdir(workdir)  # the document's relative paths; the child inherits it
    try:
        return server.start()
    finally:
        os.chdir(cwd)


def test_auth_doc_runs_as_written(workdir: Path) -> None:
    """Every console session of docs/auth.md prints what the document says, against the twistd it shows."""
    ran = 0
    for title, text in sections():
        server: TwistdRegistry | None = None
        try:
            for kind, body in _BLOCK.findall(text):
                if kind == "toml":
                    (workdir / body.splitlines()[0].lstrip("# ").strip()).write_text(body)
                elif kind == "sh" and body.startswith("twistd -n ociregistry"):
                    assert server is None, title
                    server = start(body, workdir, workdir / f"twistd-{ran}.log")
                elif kind == "console":
                    address = server.address if server is not None else "127.0.0.1:5000"
                    for command, expected in commands(body):
                        result = subprocess.run(
                            ["bash", "-c", command.replace("127.0.0.1:5000", address)],
                            cwd=workdir,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,  # what a terminal shows
                            text=True,
                            timeout=120,
                        )
                        output = result.stdout.replace("\r\n", "\n").replace(address, "127.0.0.1:5000")
                        assert result.returncode == 0, (title, command, result.stdout)
                        assert output.rstrip("\n") == expected.rstrip("\n"), (title, command)
                        ran += 1
        finally:
            if server is not None:
                server.stop()
    assert ran >= 30
