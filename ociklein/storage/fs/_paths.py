"""
Names to paths under a filesystem storage root.

The backend re-checks every name itself, although the core already did:
a path built from an unchecked name is the one mistake a filesystem
backend cannot take back.  The grammars are those of L{ociklein.names}.
"""

from __future__ import annotations

import bisect
import errno
import os
import re
import stat

from ociklein.names import MAX_NAME_LENGTH, isName, isSupportedDigest
from ociklein.names import isTag as _isTag

UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")

MAX_REPOSITORY_LENGTH = MAX_NAME_LENGTH

# Every top-level directory of a storage root.
SUBDIRS = ("blobs", "repositories", "catalog", "holders", "uploads", "tmp")

# Suffix of an upload session directory staged (or kept, if not resumable) in tmp/.
UPLOAD_SUFFIX = ".upload"
# Suffix of a directory renamed into tmp/ only to be removed: garbage at once.
DISCARDED = ".del"


def shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def checkRepository(repository: str) -> str:
    """
    Refuse a repository name outside the spec's grammar, so that no name
    can climb out of the root or collide with an internal C{_} directory.
    """
    if not isinstance(repository, str) or not isName(repository):
        raise ValueError(f"invalid repository name {shown(repository)}")
    return repository


def checkTag(tag: str) -> str:
    """
    Refuse a tag outside the spec's grammar; tags become file names.
    """
    if not isinstance(tag, str) or not _isTag(tag):
        raise ValueError(f"invalid tag {shown(tag)}")
    return tag


def checkDigest(digest: str) -> str:
    """
    Refuse anything but a sha256 or sha512 digest; digests become paths.
    """
    if not isinstance(digest, str) or not isSupportedDigest(digest):
        raise ValueError(f"invalid digest {shown(digest)}")
    return digest


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


def checkInside(root: str, path: str) -> str:
    """
    Refuse (C{ELOOP}) a C{path} under C{root} that a symlink planted inside
    the root would lead elsewhere: every component that exists must be a
    real directory or file.  C{root} is absolute and has no symlinks.
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
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return path
        if stat.S_ISLNK(mode):
            raise OSError(errno.ELOOP, "a symbolic link inside the storage root is not followed", path)
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
