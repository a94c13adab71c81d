"""
Storage contracts.

The registry core holds every rule of the OCI Distribution Specification; a
backend only stores and finds bytes.  Methods return Deferreds so that remote
backends fit behind the same contract as the memory and filesystem ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class IBlobReader(Interface):
    """
    An open blob, read in bounded pieces so that no caller holds it whole.

    A reader stays valid after the blob is deleted, until it is closed.
    """

    size: int = Attribute("The blob's length in bytes.")

    def read(offset: int, length: int) -> Deferred[bytes]:
        """
        Read up to C{length} bytes from C{offset}; fewer only at the end.
        """

    def close() -> None:
        """
        Release the reader's resources; closing it again does nothing.
        """


class IUpload(Interface):
    """
    An upload session: data appended in order, published as a blob only
    once its digest is known to be right.
    """

    uploadId: str = Attribute("An unguessable identifier of the session.")
    repository: str = Attribute("The repository the session belongs to.")
    size: int = Attribute("How many bytes the session holds so far.")

    def write(data: bytes) -> Deferred[None]:
        """
        Append C{data}.  The next write waits for this Deferred.

        A failure (for example L{OSError} with C{ENOSPC}) leaves the session
        unusable; the caller aborts it.
        """

    def digest(algorithm: str) -> Deferred[str]:
        """
        The hex digest of everything written so far with C{algorithm}
        (C{"sha256"} or C{"sha512"}).
        """

    def commit(digest: str) -> Deferred[None]:
        """
        Publish the data as the blob C{digest} (already verified by the
        caller) and end the session.  Durable when the Deferred fires.
        """

    def abort() -> Deferred[None]:
        """
        End the session and discard its data.
        """

    def close() -> None:
        """
        Release what the session holds for the request using it (open
        files, locks), so that an idle session costs no descriptor.  The
        session lives on; its next write, digest or commit takes them
        again.  Called by the one request that uses the session, at its end.
        """


class IBlobStore(Interface):
    """
    Content-addressed blobs, stored once, made visible per repository by
    links, and the upload sessions that create them.
    """

    def stat(digest: str) -> Deferred[int | None]:
        """
        The size of blob C{digest}, or L{None} if it is not stored.
        """

    def open(digest: str) -> Deferred[IBlobReader | None]:
        """
        Open blob C{digest} for reading, or L{None} if it is not stored.
        """

    def link(repository: str, digest: str) -> Deferred[None]:
        """
        Make the stored blob C{digest} visible in C{repository}.
        """

    def unlink(repository: str, digest: str) -> Deferred[bool]:
        """
        Hide blob C{digest} from C{repository}; L{False} if it was not there.
        """

    def isLinked(repository: str, digest: str) -> Deferred[bool]:
        """
        Whether blob C{digest} is visible in C{repository}.
        """

    def startUpload(repository: str, resumable: bool = True) -> Deferred[IUpload]:
        """
        Open a new, empty upload session for C{repository}.

        A session that is not C{resumable} (a monolithic upload, whose id no
        client knows) need not outlive the process: a store may discard it
        when it restarts.  Only resumable sessions are found by L{getUpload}.
        """

    def getUpload(uploadId: str) -> Deferred[IUpload | None]:
        """
        The live session C{uploadId}, or L{None} if unknown or expired.

        A store shared by several processes fails with L{BlockingIOError}
        (here, or from the session's first write, digest or commit) while
        another process is using the session.
        """


class IManifestBackend(Interface):
    """
    Manifests stored byte for byte per repository, tags pointing at them,
    the list of repositories and the referrers index.
    """

    def getManifest(repository: str, digest: str) -> Deferred[tuple[str, bytes] | None]:
        """
        The media type and exact bytes of manifest C{digest} in
        C{repository}, or L{None}.
        """

    def putManifest(
        repository: str,
        digest: str,
        mediaType: str,
        content: bytes,
        subject: str | None,
        descriptor: dict[str, Any],
    ) -> Deferred[None]:
        """
        Store a manifest.  When C{subject} is given, record C{descriptor}
        in the referrers index of C{subject} in C{repository}.
        """

    def deleteManifest(repository: str, digest: str) -> Deferred[bool]:
        """
        Remove manifest C{digest}, every tag on it and its referrers entry;
        L{False} if it was not there.
        """

    def resolveTag(repository: str, tag: str) -> Deferred[str | None]:
        """
        The digest C{tag} points at, or L{None}.
        """

    def setTag(repository: str, tag: str, digest: str) -> Deferred[None]:
        """
        Point C{tag} at C{digest}, atomically replacing any previous target.
        """

    def deleteTag(repository: str, tag: str) -> Deferred[bool]:
        """
        Remove C{tag}; L{False} if it was not there.
        """

    def listTags(repository: str, last: str | None, limit: int) -> Deferred[list[str] | None]:
        """
        Up to C{limit} tags of C{repository} sorted, all greater than
        C{last}; L{None} if the repository is unknown.
        """

    def listRepositories(last: str | None, limit: int) -> Deferred[list[str]]:
        """
        Up to C{limit} repository names sorted, all greater than C{last}.
        """

    def referrers(repository: str, subject: str) -> Deferred[list[dict[str, Any]]]:
        """
        The descriptors recorded for manifests whose subject is C{subject}.
        """
