"""
Crash-safe file operations: every write is a temp file, fsync, rename, then
an fsync of the directory (put together in L{ociklein.storage.fs._commit}),
so a reader, another process or a power cut sees the old file or the new
one, never a torn or missing one.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from ociklein.storage.fs._paths import DISCARDED

_T = TypeVar("_T")


def writeAll(fd: int, data: bytes) -> None:
    """
    C{os.write} until every byte is written; a short write is not an error.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def writeParts(fd: int, parts: list[bytes]) -> None:
    """
    Write C{parts} one after the other, in as few C{os.writev} calls as
    the kernel allows: no copy of them joined.
    """
    views = [memoryview(part) for part in parts if part]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _loadWriteback() -> Callable[[int, int, int], None]:
    """
    C{sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)} where the
    C library has it, else nothing.
    """
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, length: None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]

    def startWriteback(fd: int, offset: int = 0, length: int = 0) -> None:
        """
        Start writing C{length} bytes of C{fd} from C{offset} (0: to the
        end) to the disk, without waiting.  Only a hint, never instead of
        an fsync: the fsync that follows finds less (or nothing) left to
        write, and the page cache holds fewer dirty pages meanwhile.
        """
        function(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    return startWriteback


_SYNC_FILE_RANGE_WRITE = 2
startWriteback = _loadWriteback()


def fsyncDir(path: str) -> None:
    """
    Make a rename, creation or removal in C{path} durable.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensureDir(path: str) -> None:
    """
    Create C{path} and missing parents, fsyncing each parent so the new
    directory survives a crash.  Racing creators are fine.
    """
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    ensureDir(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    fsyncDir(parent)


def _newInTmp(root: str, suffix: str, create: Callable[[str], _T]) -> tuple[_T, str]:
    """
    C{create(path)} at a new random name in C{root/tmp}, another name if
    that one exists, so that processes sharing the root never collide.
    """
    while True:
        path = os.path.join(root, "tmp", secrets.token_hex(16) + suffix)
        try:
            return create(path), path
        except FileExistsError:
            continue


def createTemp(root: str, suffix: str = ".tmp") -> tuple[int, str]:
    """
    A new file in C{root/tmp}, with a random name and C{O_EXCL} so that
    processes sharing the root never write the same temp file.
    """
    return _newInTmp(root, suffix, lambda path: os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))


def linkTemp(root: str, source: str) -> str:
    """
    A new name in C{root/tmp} for the file C{source} (a hard link), to be
    renamed into place as a second name of the same data.
    """
    return _newInTmp(root, ".tmp", partial(os.link, source))[1]


def removeQuietly(path: str) -> None:
    """
    Remove a file that may already be gone.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def removeDurably(path: str) -> bool:
    """
    Remove the file C{path}; L{False} if it was not there.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsyncDir(os.path.dirname(path))
    return True


def discardDir(root: str, path: str) -> bool:
    """
    Make directory C{path} vanish at once by renaming it into tmp/, then
    remove it; L{False} if it was already gone.
    """
    hidden = os.path.join(root, "tmp", secrets.token_hex(16) + DISCARDED)
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return False
    shutil.rmtree(hidden, ignore_errors=True)
    return True
