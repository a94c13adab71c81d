"""
A small bounded cache of stored manifests, read by digest.

A manifest file never changes in place: it is created by a rename and
removed (or moved aside) by another.  So a file that still has the inode
and size it had when it was read still holds those bytes, and one C{stat}
tells whether a cached copy may be served, also when another process
sharing the root deleted or replaced the file meanwhile.  Tags are never
cached: they move, and are always read afresh.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Entry:
    path: str
    identity: tuple[int, int, int]
    size: int
    value: Any


def identity(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size)


class FileCache:
    """
    Small files by key, kept decoded, least recently used first out once
    files of more than C{maxBytes} in all are held; a file larger than
    C{maxFile} is never kept.
    """

    def __init__(self, maxBytes: int = 4 * 1024 * 1024, maxFile: int = 64 * 1024) -> None:
        self._entries: OrderedDict[object, _Entry] = OrderedDict()
        self._bytes = 0
        self._maxBytes = maxBytes
        self._maxFile = maxFile

    def get(self, key: object) -> Any:
        """
        What was kept of C{key}, if its file is still the one read, else
        L{None}; L{FileNotFoundError} if the file is gone.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        try:
            current = identity(os.stat(entry.path))
        except FileNotFoundError:
            self._drop(key)
            raise
        if current != entry.identity:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.value

    def read(self, key: object, path: str, decode: Callable[[bytes], _T]) -> _T:
        """
        Read the file C{path}, decode it, and keep that under C{key} if the
        file is small.
        """
        fd = os.open(path, os.O_RDONLY)
        try:
            stat = os.fstat(fd)
            chunks = []
            while chunk := os.read(fd, max(stat.st_size, 65536)):
                chunks.append(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        value = decode(data)
        if len(data) == stat.st_size and len(data) <= self._maxFile:
            self._drop(key)
            self._entries[key] = _Entry(path, identity(stat), len(data), value)
            self._bytes += len(data)
            while self._bytes > self._maxBytes:
                self._drop(next(iter(self._entries)))
        return value

    def _drop(self, key: object) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._bytes
