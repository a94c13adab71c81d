"""
Names checked again inside a backend, although the core already did: a key
or path built from an unchecked name is the one mistake a backend cannot
take back.  The grammars are those of L{ociklein.names}.
"""

from __future__ import annotations

from ociklein.names import isName, isSupportedDigest
from ociklein.names import isTag as _isTag


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
    Refuse a tag outside the spec's grammar; tags become file names and keys.
    """
    if not isinstance(tag, str) or not _isTag(tag):
        raise ValueError(f"invalid tag {shown(tag)}")
    return tag


def checkDigest(digest: str) -> str:
    """
    Refuse anything but a sha256 or sha512 digest; digests become paths and keys.
    """
    if not isinstance(digest, str) or not isSupportedDigest(digest):
        raise ValueError(f"invalid digest {shown(digest)}")
    return digest
