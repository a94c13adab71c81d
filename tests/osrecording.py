"""
A recording fake of the os calls that make a write durable, to prove from
the sequence of calls (not from timing) that something was fsynced before
it was acknowledged.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class Event:
    """
    One call: C{kind} is the os function's name, C{path} the file or
    directory it acted on (for fsync, the path its descriptor was opened
    with), C{target} the new name of a rename or link.
    """

    kind: str
    path: str
    target: str | None = None


@dataclass
class OSRecorder:
    """
    Wraps C{os.open}, C{write}, C{fsync}, C{rename}, C{link}, C{mkdir},
    C{unlink} and C{close}, calling the real ones and recording each call, from any
    thread, in one list.  The test adds its own marks (an acknowledged
    response) with L{mark}.
    """

    events: list[Event] = field(default_factory=list)
    _paths: dict[int, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> OSRecorder:
        real = {
            name: getattr(os, name)
            for name in ["open", "close", "write", "fsync", "rename", "link", "mkdir", "unlink"]
        }

        def record(kind: str, path: str, target: str | None = None) -> None:
            with self._lock:
                self.events.append(Event(kind, os.path.abspath(path), target and os.path.abspath(target)))

        def opened(path: Any, *args: Any, **kwargs: Any) -> int:
            fd: int = real["open"](path, *args, **kwargs)
            if kwargs.get("dir_fd") is None and isinstance(path, str | bytes | os.PathLike):
                self._paths[fd] = os.path.abspath(os.fsdecode(path))
            return fd

        def closed(fd: int) -> None:
            self._paths.pop(fd, None)
            real["close"](fd)

        def onDescriptor(kind: str) -> Callable[..., Any]:
            def call(fd: int, *args: Any) -> Any:
                path = self._paths.get(fd)
                result = real[kind](fd, *args)
                if path is not None:
                    record(kind, path)
                return result

            return call

        def onPaths(kind: str) -> Callable[..., Any]:
            def call(path: Any, *args: Any, **kwargs: Any) -> Any:
                result = real[kind](path, *args, **kwargs)
                if isinstance(path, str | os.PathLike):
                    target = args[0] if kind in ("rename", "link") else None
                    record(kind, os.fspath(path), target and os.fspath(target))
                return result

            return call

        monkeypatch.setattr(os, "open", opened)
        monkeypatch.setattr(os, "close", closed)
        for kind in ["write", "fsync"]:
            monkeypatch.setattr(os, kind, onDescriptor(kind))
        for kind in ["rename", "link", "mkdir", "unlink"]:
            monkeypatch.setattr(os, kind, onPaths(kind))
        return self

    def mark(self, kind: str, path: str = "") -> int:
        """
        Record a test's own event; returns its index.
        """
        with self._lock:
            self.events.append(Event(kind, path))
            return len(self.events) - 1

    def count(self, kind: str, path: str | None = None) -> int:
        return sum(1 for e in self.events if e.kind == kind and (path is None or e.path == path))

    def durableBefore(self, path: str, before: int) -> list[str]:
        """
        What is missing, among the events before index C{before}, for the
        latest write of C{path} to be on stable storage: its data written to
        a temp file, that file fsynced after its last write, renamed onto
        C{path}, the parent directory fsynced after the rename, and every
        directory created on the way fsynced in its parent after creation.
        A temp file that is a hard link to another file needs that file
        fsynced after its last write, before the rename.  Empty when nothing
        is missing.
        """
        path = os.path.abspath(path)
        events = self.events[:before]
        renames = [i for i, e in enumerate(events) if e.kind == "rename" and e.target == path]
        if not renames:
            return [f"no rename onto {path}"]
        renamed = renames[-1]
        temp = events[renamed].path
        links = [e.path for e in events[:renamed] if e.kind == "link" and e.target == temp]
        if links:
            temp = links[-1]
        problems = []
        writes = [i for i, e in enumerate(events[:renamed]) if e.kind == "write" and e.path == temp]
        lastWrite = writes[-1] if writes else -1
        if not any(e.kind == "fsync" and e.path == temp for e in events[lastWrite + 1 : renamed]):
            problems.append(f"{temp} not fsynced between its last write and its rename onto {path}")
        parent = os.path.dirname(path)
        if not any(e.kind == "fsync" and e.path == parent for e in events[renamed + 1 :]):
            problems.append(f"{parent} not fsynced after the rename onto {path}")
        for i, e in enumerate(events):
            if e.kind == "mkdir" and (path + "/").startswith(e.path + "/"):
                grand = os.path.dirname(e.path)
                if not any(f.kind == "fsync" and f.path == grand for f in events[i + 1 :]):
                    problems.append(f"{grand} not fsynced after creating {e.path}")
        return problems
