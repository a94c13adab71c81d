"""
Helpers shared by the filesystem blob store and manifest backend: name
checks, the mapping of names to paths, and crash-safe writes.

The backend re-checks every name itself, although the core already did:
a path built from an unchecked name is the one mistake a filesystem
backend cannot take back.
"""

from __future__ import annotations

import bisect
import fcntl
import os
import re
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import ParamSpec, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool

_P = ParamSpec("_P")
_R = TypeVar("_R")

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")

MAX_REPOSITORY_LENGTH = 255

# Every top-level directory of a storage root.
SUBDIRS = ("blobs", "repositories", "catalog", "uploads", "tmp")

# Temp files are renamed away within moments of their creation, so one
# older than this was left by a crash, not by a live writer in another
# process sharing the root.
TMP_GRACE = 3600.0

# Suffix of an upload session directory staged (or kept, if not resumable) in tmp/.
UPLOAD_SUFFIX = ".upload"
# Suffix of a directory renamed into tmp/ only to be removed: garbage at once.
_DISCARDED = ".del"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def checkRepository(repository: str) -> str:
    """
    Refuse a repository name outside the spec's grammar, so that no name
    can climb out of the root or collide with an internal C{_} directory.
    """
    if (
        not isinstance(repository, str)
        or len(repository) > MAX_REPOSITORY_LENGTH
        or _REPOSITORY.fullmatch(repository) is None
    ):
        raise ValueError(f"invalid repository name {_shown(repository)}")
    return repository


def checkTag(tag: str) -> str:
    """
    Refuse a tag outside the spec's grammar; tags become file names.
    """
    if not isinstance(tag, str) or _TAG.fullmatch(tag) is None:
        raise ValueError(f"invalid tag {_shown(tag)}")
    return tag


def checkDigest(digest: str) -> str:
    """
    Refuse anything but a sha256 or sha512 digest; digests become paths.
    """
    if not isinstance(digest, str) or _DIGEST.fullmatch(digest) is None:
        raise ValueError(f"invalid digest {_shown(digest)}")
    return digest


def isTag(name: str) -> bool:
    """
    Whether a directory entry is a tag file (and not something stray).
    """
    return _TAG.fullmatch(name) is not None


def isRepository(name: str) -> bool:
    """
    Whether a decoded catalog entry is a repository name.
    """
    return len(name) <= MAX_REPOSITORY_LENGTH and _REPOSITORY.fullmatch(name) is not None


def isDigest(text: str) -> bool:
    """
    Whether C{text} is a digest this backend stores.
    """
    return _DIGEST.fullmatch(text) is not None


def digestPath(base: str, digest: str) -> str:
    """
    C{base/<algorithm>/<hex>}: digests map to two path components.
    """
    algorithm, _, encoded = digest.partition(":")
    return os.path.join(base, algorithm, encoded)


def blobPath(root: str, digest: str) -> str:
    """
    C{blobs/<algorithm>/<hex[:2]>/<hex>}: fanned out so no directory holds
    every blob.
    """
    algorithm, _, encoded = digest.partition(":")
    return os.path.join(root, "blobs", algorithm, encoded[:2], encoded)


def repositoryPath(root: str, repository: str) -> str:
    """
    The directory of a repository: one directory per name component, beside
    the C{_}-prefixed internal directories no component may start with.
    """
    return os.path.join(root, "repositories", *repository.split("/"))


def catalogPath(root: str, repository: str) -> str:
    """
    The catalog entry of a repository: a flat file named with C{/} turned
    into C{+} (outside the grammar), so listing repositories is one listdir.
    """
    return os.path.join(root, "catalog", repository.replace("/", "+"))


def catalogName(entry: str) -> str:
    """
    The repository name of a catalog entry.
    """
    return entry.replace("+", "/")


def page(names: list[str], last: str | None, limit: int) -> list[str]:
    """
    The same paging as the memory backend: sorted names after C{last}.
    """
    start = 0 if last is None else bisect.bisect_right(names, last)
    return names[start : start + limit]


def resolveReactor(reactor: IReactorThreads | None) -> IReactorThreads:
    """
    The given reactor, or the installed one, imported only when needed.
    """
    if reactor is not None:
        return reactor
    from twisted.internet import reactor as installed

    return cast(IReactorThreads, installed)


def inThread(
    reactor: IReactorThreads, f: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
) -> Deferred[_R]:
    """
    Run blocking disk work in the reactor's thread pool.
    """
    return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)


def writeAll(fd: int, data: bytes) -> None:
    """
    C{os.write} until every byte is written; a short write is not an error.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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


def createTemp(root: str, suffix: str = ".tmp") -> tuple[int, str]:
    """
    A new file in C{root/tmp}, with a random name and C{O_EXCL} so that
    processes sharing the root never write the same temp file.
    """
    while True:
        path = os.path.join(root, "tmp", secrets.token_hex(16) + suffix)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        return fd, path


def removeQuietly(path: str) -> None:
    """
    Remove a file that may already be gone.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomicWrite(root: str, path: str, data: bytes) -> None:
    """
    Replace C{path} with C{data} so that a reader, another process or a
    crash sees the old file or the new one, never a torn or missing one.
    """
    fd, temp = createTemp(root)
    try:
        try:
            writeAll(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        parent = os.path.dirname(path)
        ensureDir(parent)
        os.rename(temp, path)
    except BaseException:
        removeQuietly(temp)
        raise
    fsyncDir(parent)


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
    hidden = os.path.join(root, "tmp", secrets.token_hex(16) + _DISCARDED)
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return False
    shutil.rmtree(hidden, ignore_errors=True)
    return True


def _uploadInUse(directory: str) -> bool:
    """
    Whether a live process (this one or another sharing the root) still
    holds the lock on an upload staged in tmp/.  A killed writer's lock is
    released by the kernel, so its data can go at once.
    """
    try:
        fd = os.open(os.path.join(directory, "data"), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def cleanTmp(root: str, now: float | None = None, grace: float = TMP_GRACE) -> list[str]:
    """
    Remove what crashed writers left in tmp/: discarded directories at
    once, anything else once older than C{grace} seconds of wall time, so
    that the in-flight temp files of another live process are left alone.
    """
    tmp = os.path.join(root, "tmp")
    now = time.time() if now is None else now
    removed = []
    for entry in os.scandir(tmp):
        try:
            if entry.name.endswith(UPLOAD_SUFFIX) and entry.is_dir(follow_symlinks=False):
                if _uploadInUse(entry.path):
                    continue
            elif not entry.name.endswith(_DISCARDED):
                if entry.stat(follow_symlinks=False).st_mtime > now - grace:
                    continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(entry.name)
    return removed


def prepareRoot(root: str) -> None:
    """
    Create the storage root and its directories if missing, and fail at
    startup with a one-line L{ValueError} if it cannot be used, rather
    than on the first push.
    """
    shown = _shown(root)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        if isinstance(e, FileExistsError | NotADirectoryError):
            raise ValueError(f"storage root {shown} is not a directory") from None
        raise ValueError(f"cannot create storage root {shown}: {e.strerror}") from None
    if not os.path.isdir(root):
        raise ValueError(f"storage root {shown} is not a directory")
    try:
        for name in SUBDIRS:
            os.makedirs(os.path.join(root, name), exist_ok=True)
        fd, probe = createTemp(root, ".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"storage root {shown} is not writable: {e.strerror}") from None


class SortedListings:
    """
    The sorted entries of directories, read again only when a directory's
    mtime changes, so paging through 10,000 tags lists the directory once
    rather than once a page.

    A listing is kept only once its directory has been still for a second:
    two changes by different processes within one timestamp tick would
    otherwise leave the same mtime on different contents.
    """

    _SETTLED_NS = 1_000_000_000

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._cache: OrderedDict[str, tuple[int, list[str]]] = OrderedDict()

    def names(self, directory: str, select: Callable[[str], str | None]) -> list[str]:
        """
        The sorted names C{select} makes of the entries of C{directory}
        (skipping those it maps to L{None}); L{FileNotFoundError} if the
        directory does not exist.
        """
        mtime = os.stat(directory).st_mtime_ns
        cached = self._cache.get(directory)
        if cached is not None and cached[0] == mtime:
            self._cache.move_to_end(directory)
            return cached[1]
        names = sorted(name for name in map(select, os.listdir(directory)) if name is not None)
        if time.time_ns() - mtime > self._SETTLED_NS:
            self._cache[directory] = (mtime, names)
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return names
