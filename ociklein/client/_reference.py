"""
Where an image is: a registry reference (C{host[:port]/repository[:tag]
[@digest]}, as docker and skopeo write them) or an OCI image layout on disk
(C{oci:DIR[:TAG]}, as skopeo writes it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ociklein.names import isDigestShaped, isName, isTag

DOCKER_HUB = "docker.io"


class ReferenceError(ValueError):
    """
    A reference that does not parse; its message says why, in one line.
    """


@dataclass(frozen=True)
class Reference:
    """
    An image in a registry: at a tag, at a digest, or (neither) at C{latest}.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """
        What goes after C{/manifests/}: the digest when there is one.
        """
        return self.digest or self.tag or "latest"

    def withReference(self, reference: str | None) -> Reference:
        """
        The same repository at another tag or digest.
        """
        if reference is None:
            return Reference(self.registry, self.repository)
        if isDigestShaped(reference):
            return Reference(self.registry, self.repository, digest=reference)
        return Reference(self.registry, self.repository, tag=reference)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class LayoutReference:
    """
    An image in an OCI image layout directory, at a tag (or, with none, the
    only image of the layout).
    """

    path: str
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


def _isRegistryHost(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def parseReference(text: str) -> Reference:
    """
    Parse C{[docker://]host[:port]/repository[:tag][@digest]}; a name
    without a registry host means Docker Hub, as for docker.
    """
    rest = text.removeprefix("docker://")
    rest, _, digest = rest.partition("@")
    if digest and not isDigestShaped(digest):
        raise ReferenceError(f"{text!r}: {digest!r} is not a digest")
    first, slash, remainder = rest.partition("/")
    if slash and _isRegistryHost(first):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
        if "/" not in path:
            path = f"library/{path}"
    repository, tag = path, None
    colon = path.rfind(":")
    if colon > path.rfind("/"):
        repository, tag = path[:colon], path[colon + 1 :]
        if not isTag(tag):
            raise ReferenceError(f"{text!r}: {tag!r} is not a tag")
    if not registry or not isName(repository):
        raise ReferenceError(f"{text!r}: {repository!r} is not a repository name")
    return Reference(registry, repository, tag, digest or None)


def splitLayoutTag(text: str) -> LayoutReference:
    """
    Split C{DIR[:TAG]}: a last colon followed by a tag, not a path, ends the
    directory.
    """
    head, colon, tag = text.rpartition(":")
    if colon and head and "/" not in tag and isTag(tag):
        return LayoutReference(head, tag)
    return LayoutReference(text)


def parseLocation(text: str) -> Reference | LayoutReference:
    """
    A C{copy} endpoint: C{oci:DIR[:TAG]} for a layout, anything else (with
    or without C{docker://}) for a registry.
    """
    if text.startswith("oci:"):
        return splitLayoutTag(text.removeprefix("oci:"))
    return parseReference(text)
