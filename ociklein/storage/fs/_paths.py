"""
Names to paths under a filesystem storage root, from names checked by
L{ociklein.storage._checks}.
"""

from __future__ import annotations

import bisect
import errno
import os
import re
import stat

from ociklein.names import MAX_NAME_LENGTH, isName, isSupportedDigest
from ociklein.names import isTag as _isTag
from ociklein.storage._checks import checkDigest as checkDigest
from ociklein.storage._checks import checkRepository as checkRepository
from ociklein.storage._checks import checkTag as checkTag
from ociklein.storage._checks import shown as shown

UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")

MAX_REPOSITORY_LENGTH = MAX_NAME_LENGTH

# Every top-level directory of a storage root.
SUBDIRS = ("blobs", "repositories", "catalog", "holders", "uploads", "tmp")

# Suffix of an upload session directory staged (or kept, if not resumable) in tmp/.
UPLOAD_SUFFIX = ".upload"
# Suffix of a directory renamed into tmp/ only to be removed: garbage at once.
DISCARDED = ".del"


def isTag(name: str) -> bool:
    """
    Whether a directory entry is a tag file (and not something stray).
    """
    return _isTag(name)


def isRepository(name: str) -> bool:
    """
    Whether a decoded catalog entry is a repository name.
    """
    return isName(name)


def isDigest(text: str) -> bool:
    """
    Whether C{text} is a digest this backend stores.
    """
    return isSupportedDigest(text)


def checkInside(root: str, path: str, directories: set[str] | None = None) -> str:
    """
    Refuse (C{ELOOP}) a C{path} under C{root} that a symlink planted inside
    the root would lead elsewhere: every component that exists must be a
    real directory or file.  C{root} is absolute and has no symlinks.
    C{directories} holds components already found to be directories (by
    the same batch of writes), not looked at again; those found now are
    added.
    """
    if not path.startswith(root + os.sep):
        if os.path.realpath(path) != path:
            raise OSError(errno.ELOOP, "a symbolic link inside the storage root is not followed", path)
        return path
    # One lstat per component below the root, stopping at the first that
    # does not exist: what realpath would find, at a fraction of its cost
    # (it resolves every component from /, on every manifest GET).
    current = root
    for part in path[len(root) + 1 :].split(os.sep):
        current = os.path.join(current, part)
        if directories is not None and current in directories:
            continue
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return path
        if stat.S_ISLNK(mode):
            raise OSError(errno.ELOOP, "a symbolic link inside the storage root is not followed", path)
        if directories is not None and stat.S_ISDIR(mode):
            directories.add(current)
    return path


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


def linkPath(repositoryDirectory: str, digest: str) -> str:
    """
    C{<repository>/_links/<algorithm>/<hex>}: an empty file saying the blob
    belongs to the repository.
    """
    return digestPath(os.path.join(repositoryDirectory, "_links"), digest)


def catalogPath(root: str, repository: str) -> str:
    """
    The catalog entry of a repository: a flat file named with C{/} turned
    into C{+} (outside the grammar), so listing repositories is one listdir.
    """
    return os.path.join(root, "catalog", repository.replace("/", "+"))


def holdersPath(root: str, digest: str) -> str:
    """
    C{holders/<algorithm>/<hex>}: one empty file per repository the blob is
    linked in, named as in the catalog, so the repositories holding a blob
    are one listdir away.
    """
    return digestPath(os.path.join(root, "holders"), digest)


def holderPath(root: str, digest: str, repository: str) -> str:
    return os.path.join(holdersPath(root, digest), repository.replace("/", "+"))


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
