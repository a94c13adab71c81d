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
from dataclasses import dataclass


@dataclass(frozen=True)
class _Entry:
    path: str
    identity: tuple[int, int, int]
    data: bytes


def identity(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size)


class FileCache:
    """
    Whole small files by key, least recently used first out once more than
    C{maxBytes} are held; a file larger than C{maxFile} is never kept.
    """

    def __init__(self, maxBytes: int = 4 * 1024 * 1024, maxFile: int = 64 * 1024) -> None:
        self._entries: OrderedDict[object, _Entry] = OrderedDict()
        self._bytes = 0
        self._maxBytes = maxBytes
        self._maxFile = maxFile

    def get(self, key: object) -> bytes | None:
        """
        The cached bytes of C{key}, if its file is still the one read;
        L{FileNotFoundError} if the file is gone.
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
        return entry.data

    def read(self, key: object, path: str) -> bytes:
        """
        Read the file C{path} and keep it under C{key} if it is small.
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
        if len(data) == stat.st_size and len(data) <= self._maxFile:
            self._drop(key)
            self._entries[key] = _Entry(path, identity(stat), data)
            self._bytes += len(data)
            while self._bytes > self._maxBytes:
                self._drop(next(iter(self._entries)))
        return data

    def _drop(self, key: object) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.data)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._bytes
