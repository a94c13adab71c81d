"""
The README's Python example of ociklein.client, run as written against a
real registry: it pushes an image and pulls it into an OCI layout.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clicommand import COMMAND_TIMEOUT, userEnvironment

pytest_plugins = ["clientfixtures"]

README = Path(__file__).resolve().parents[2] / "README.md"


def clientExample() -> str:
    """
    The README's Python code block that uses ociklein.client.
    """
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    [example] = [block for block in blocks if "from ociklein.client import" in block]
    return example


@pytest.mark.parametrize("target", ["fs"], indirect=True)
def test_readme_example_pushes_and_pulls(target: Any, tmp_path: Path) -> None:
    """The README's ociklein.client example pushes an image and pulls it back with the same digest."""
    code = clientExample().replace("127.0.0.1:5000", target.address)
    (tmp_path / "example.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env=userEnvironment(tmp_path / "user"),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    pushed = re.search(r"pushed (sha256:[0-9a-f]{64}) tags: \['v1'\]", result.stdout)
    pulled = re.search(r"pulled (sha256:[0-9a-f]{64}) into hello-layout/", result.stdout)
    assert pushed and pulled and pushed.group(1) == pulled.group(1), result.stdout
    index = json.loads((tmp_path / "hello-layout" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == pushed.group(1)
