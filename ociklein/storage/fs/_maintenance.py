"""
What maintenance (garbage collection, scrub, du) needs of a filesystem root:
sorted walks with sizes and mtimes, uses recorded as mtimes, deletions
fenced against those uses, and a quarantine for corrupt files.

Every function here blocks; the backends call them in threads.

Fencing.  A use of a file is C{utime(path)} followed by C{stat(path)}; a
fenced deletion renames the file to a hidden name beside it, reads the
mtime of what it renamed, and removes it only if that mtime is older than
the cutoff, otherwise puts it back.  Rename and the path lookups are
atomic, so of a use and a deletion racing on one file, either the use
stamped the inode before the deletion read its mtime (the file is kept) or
the use's C{stat} finds the path gone (the user is told it is missing).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence

from ociklein.interfaces import StoredItem
from ociklein.storage.fs._durable import createTemp, ensureDir, fsyncDir, removeQuietly
from ociklein.storage.fs._paths import blobPath, isDigest, isRepository, page

# Suffix (then random hex) of a file a collector has renamed aside while it
# decides whether to delete it.  Never a valid digest, so never served.
HIDDEN = ".gc-"
# A hidden file this old was left by a collector that died mid-decision;
# putting it back is always safe (the next collection decides again).
_ORPHANED = 60.0

_ALGORITHMS = ("sha256", "sha512")


def storageNow(root: str) -> float:
    """
    The kernel's idea of now, as it stamps mtimes: the mtime of a new file.
    """
    fd, path = createTemp(root, ".now")
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        os.unlink(path)


def recordUse(path: str) -> bool:
    """
    Stamp C{path} as used now; L{False} if it is missing or a collector is
    removing it.  The C{stat} after the C{utime} is what makes a use and a
    fenced deletion linearizable: a C{utime} that reached an inode already
    renamed aside is caught by the path having gone.
    """
    try:
        os.utime(path)
        os.stat(path)
    except FileNotFoundError:
        return False
    return True


def recordUses(paths: Sequence[tuple[str, ...]], recorded: dict[str, bool] | None = None) -> list[int]:
    """
    L{recordUse} each group of paths; the indexes of groups with a path
    missing.  C{recorded} holds uses made just before (path to result), by
    the same thread for writes that are all on stable storage already: a
    path there is not used again, and new uses are added to it.
    """
    recorded = {} if recorded is None else recorded
    missing = []
    for i, group in enumerate(paths):
        found = True
        for path in group:
            if (used := recorded.get(path)) is None:
                used = recorded[path] = recordUse(path)
            found = found and used
        if not found:
            missing.append(i)
    return missing


def _restore(hidden: str, path: str) -> None:
    """
    Put a hidden file back under its name, unless a new copy was written
    there meanwhile (that copy, as recent, stays).
    """
    try:
        os.link(hidden, path)
    except FileExistsError:
        pass
    except FileNotFoundError:  # another collector restored it first
        return
    removeQuietly(hidden)
    fsyncDir(os.path.dirname(path))


def fencedRemove(path: str, before: float, inspect: Callable[[str], None] | None = None) -> bool:
    """
    Remove C{path} if its mtime (last write or use) is older than C{before};
    L{True} if removed.  C{inspect} sees the file, by its hidden name, just
    before it goes.
    """
    # A file used since the cutoff is not even hidden: while hidden it is
    # missing for readers, so that a client who was just told a manifest
    # is stored would be told it is unknown.  Only a use landing between
    # this look and the rename below still finds it hidden for a moment.
    try:
        if os.lstat(path).st_mtime >= before:
            return False
    except FileNotFoundError:
        return False
    hidden = f"{path}{HIDDEN}{secrets.token_hex(8)}"
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return False
    try:
        modified = os.lstat(hidden).st_mtime
    except FileNotFoundError:  # another collector restored it
        return False
    if modified >= before:
        _restore(hidden, path)
        return False
    if inspect is not None:
        inspect(hidden)
    try:
        os.unlink(hidden)
    except FileNotFoundError:
        return False
    fsyncDir(os.path.dirname(path))
    return True


def _recoverHidden(directory: str, name: str, now: float) -> None:
    """
    Put back a file a dead collector left hidden.
    """
    hidden = os.path.join(directory, name)
    try:
        if os.lstat(hidden).st_ctime > now - _ORPHANED:
            return  # a live collector is deciding
    except FileNotFoundError:
        return
    _restore(hidden, os.path.join(directory, name.partition(HIDDEN)[0]))


def _sortedEntries(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _digestFiles(base: str, fanned: bool, last: str | None) -> Iterator[tuple[str, str]]:
    """
    C{(digest, path)} of the files under C{base/<alg>/[<xx>/]<hex>} in
    digest order, after C{last}; hidden files left by a dead collector are
    put back on the way.
    """
    now = time.time()
    for algorithm in _sortedEntries(base):
        if algorithm not in _ALGORITHMS:
            continue
        top = os.path.join(base, algorithm)
        directories = (
            [os.path.join(top, fan) for fan in _sortedEntries(top) if f"{algorithm}:{fan}~" > (last or "")]
            if fanned
            else [top]
        )
        for directory in directories:
            for name in _sortedEntries(directory):
                if HIDDEN in name:
                    _recoverHidden(directory, name, now)
                    name = name.partition(HIDDEN)[0]
                digest = f"{algorithm}:{name}"
                if (last is None or digest > last) and isDigest(digest):
                    yield digest, os.path.join(directory, name)


def listItems(base: str, fanned: bool, last: str | None, limit: int) -> list[StoredItem]:
    """
    Up to C{limit} files under C{base} named by digest, with size and mtime.
    """
    found: list[StoredItem] = []
    seen: set[str] = set()
    for digest, path in _digestFiles(base, fanned, last):
        if len(found) >= limit:
            break
        if digest in seen:
            continue
        seen.add(digest)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        found.append(StoredItem(digest, st.st_size, st.st_mtime))
    return found


def linkedRepositories(root: str) -> list[str]:
    """
    Every repository with a C{_links} directory, sorted: a walk of
    C{repositories/}, whose internal directories start with C{_}.
    """
    found = []
    base = os.path.join(root, "repositories")

    def walk(directory: str, components: list[str]) -> None:
        entries = _sortedEntries(directory)
        if components and "_links" in entries:
            name = "/".join(components)
            if isRepository(name):
                found.append(name)
        for entry in entries:
            if not entry.startswith("_") and os.path.isdir(os.path.join(directory, entry)):
                walk(os.path.join(directory, entry), [*components, entry])

    walk(base, [])
    return sorted(found)


def pagedRepositories(root: str, last: str | None, limit: int) -> list[str]:
    return page(linkedRepositories(root), last, limit)


def storedBytes(root: str) -> int:
    """
    The apparent size of every file under the root.
    """
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                continue
    return total


def quarantine(root: str, path: str, where: str, digest: str) -> bool:
    """
    Move C{path} to C{quarantine/<where>/<alg>-<hex>.<time>}, out of the
    way of readers and of a fresh push; L{False} if it is not there.
    """
    directory = os.path.join(root, "quarantine", where)
    ensureDir(directory)
    target = os.path.join(directory, f"{digest.replace(':', '-')}.{time.time_ns()}")
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return False
    fsyncDir(os.path.dirname(path))
    fsyncDir(directory)
    return True


def blobUses(root: str, linkPath: Callable[[str], str], digests: Sequence[str]) -> list[str]:
    """
    Record a use of each blob and its link; the digests missing either.
    """
    missing = recordUses([(linkPath(d), blobPath(root, d)) for d in digests])
    return [digests[i] for i in missing]
