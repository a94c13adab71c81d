"""
Running the C{ociklein} command as a user would: a subprocess with its own
HOME and XDG directories (never the real ones), with a deadline.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

COMMAND_TIMEOUT = 120


def userEnvironment(home: Path) -> dict[str, str]:
    """
    The environment of a user whose home, runtime and config directories
    are under C{home}, with no auth file of the caller's.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}
    for name, sub in [("HOME", "home"), ("XDG_RUNTIME_DIR", "run"), ("XDG_CONFIG_HOME", "config")]:
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(home / sub)
    return env


def ociklein(
    env: dict[str, str], *args: str, input: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """
    C{ociklein ARGS...}; its exit status, standard output and error as text.
    """
    result = subprocess.run(
        [sys.executable, "-m", "ociklein.cli", *args],
        env=env,
        input=input,
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
        cwd=cwd,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def runInTerminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """
    Run C{ociklein ARGS} with a pseudo-terminal as its standard output and
    error; its exit status and everything it wrote there.
    """
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "ociklein.cli", *args],
        env={**env, "TERM": "xterm-256color", "COLUMNS": "120"},
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    output = b""
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the terminal closed: the process is done
                break
            if not data:
                break
            output += data
    os.close(main)
    return process.wait(10), output.decode(errors="replace")


def fakeCredentialHelper(
    directory: Path, name: str, answers: dict[str, tuple[str, str]], failure: str | None = None
) -> Path:
    """
    C{directory/docker-credential-NAME}, a credential helper that answers
    C{get SERVER} from C{answers}, says "credentials not found" for any
    other server (or fails with C{failure}), and appends each request it
    gets to C{directory/NAME.log}.
    """
    log = directory / f"{name}.log"
    cases = "".join(
        f'  "{server}") printf \'{{"ServerURL":"%s","Username":"{user}","Secret":"{secret}"}}\' "$server";;\n'
        for server, (user, secret) in answers.items()
    )
    notFound = 'echo "credentials not found in native keychain"; exit 1'
    fallback = f'echo "{failure}" >&2; exit 3' if failure else notFound
    script = directory / f"docker-credential-{name}"
    directory.mkdir(parents=True, exist_ok=True)
    script.write_text(
        "#!/bin/sh\n"
        "read -r server || true\n"
        f'echo "$1 $server" >> "{log}"\n'
        'case "$server" in\n'
        f"{cases}"
        f"  *) {fallback};;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return log
