"""
How the client verbs show a transfer: a live display per blob and overall
(bytes, rate, time left) on a terminal, a log line per blob otherwise, and
nothing but the final JSON with C{--json}.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from ociklein.client import Progress


def _short(digest: str) -> str:
    return digest.partition(":")[2][:12] or digest


def humanSize(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover


class LogProgress(Progress):
    """
    One line per finished blob and per manifest, for logs and pipes.
    """

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.starts: dict[str, float] = {}

    def started(self, digest: str, size: int, action: str) -> None:
        self.starts[digest] = time.monotonic()

    def finished(self, digest: str, size: int, outcome: str) -> None:
        line = f"{outcome} {digest} ({humanSize(size)}"
        started = self.starts.pop(digest, None)
        if started is not None and outcome in ("pushed", "pulled"):
            seconds = max(time.monotonic() - started, 1e-6)
            line += f", {humanSize(size / seconds)}/s"
        print(line + ")", file=self.out, flush=True)

    def manifest(self, digest: str, mediaType: str, where: str) -> None:
        print(f"manifest {digest} ({mediaType}) -> {where}", file=self.out, flush=True)


class LiveProgress(Progress):
    """
    rich's live progress bars: one per blob in flight, and one overall.
    """

    def __init__(self, out: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        self.display = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=out),
            transient=False,
        )
        self.overall = self.display.add_task("total", total=0)
        self.tasks: dict[str, Any] = {}
        self.done: dict[str, int] = {}

    def __enter__(self) -> LiveProgress:
        self.display.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.display.stop()

    def _total(self) -> None:
        total = sum(self.display.tasks[t].total or 0 for t in self.tasks.values())
        self.display.update(self.overall, total=total, completed=sum(self.done.values()))

    def started(self, digest: str, size: int, action: str) -> None:
        self.tasks[digest] = self.display.add_task(f"{action} {_short(digest)}", total=size)
        self.done[digest] = 0
        self._total()

    def advanced(self, digest: str, done: int) -> None:
        task = self.tasks.get(digest)
        if task is not None:
            self.done[digest] = done
            self.display.update(task, completed=done)
            self._total()

    def finished(self, digest: str, size: int, outcome: str) -> None:
        task = self.tasks.get(digest)
        if task is None:
            self.display.console.print(f"{outcome} {_short(digest)} ({humanSize(size)})")
            return
        self.done[digest] = size
        self.display.update(task, completed=size, description=f"{outcome} {_short(digest)}")
        self._total()


def progressFor(jsonOutput: bool, out: IO[str] | None = None) -> Progress:
    """
    The display that suits where the output goes.
    """
    out = out or sys.stderr
    if jsonOutput:
        return Progress()
    if out.isatty():
        return LiveProgress(out)
    return LogProgress(out)
