"""
Storage contracts.

The registry core holds every rule of the OCI Distribution Specification; a
backend only stores and finds bytes.  Methods return Deferreds so that remote
backends fit behind the same contract as the memory and filesystem ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class StorageUnavailable(Exception):
    """
    The store cannot be reached or is shedding load (a remote object store
    down or throttling): the request may succeed later.  Clients are told
    to retry after C{retryAfter} seconds, and nothing is half-done that a
    retry cannot finish.
    """

    def __init__(self, reason: str, retryAfter: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryAfter = retryAfter


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
        unusable; the caller aborts it.  A store may write behind (fire once
        the data is queued): its failure then fails the next C{write},
        C{flush}, C{digest} or C{commit}.  A write while an earlier one is
        still under way (its request gone, its thread not yet done) fails
        with L{BlockingIOError} and writes nothing: the session is busy.
        """

    def flush() -> Deferred[None]:
        """
        Make everything written so far durable and visible to every process
        sharing the store, before the client is told it was received.  A
        store whose writes are already shared (memory, one disk) does
        nothing.
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

        The blob counts as written at the commit (not at the last write):
        if it was already stored, the commit records a use of it, or
        stores it again if a garbage collector removed it meanwhile.
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


class IDigestFirst(Interface):
    """
    An upload session that can store its data as the blob itself, instead
    of copying it there at the commit, when it learns the digest before
    the data: a store whose commit is a copy (object storage) saves it.
    """

    def expectDigest(digest: str) -> None:
        """
        The session, still empty, is about to receive all its data in one
        request and then be committed as C{digest} (a well-formed digest)
        or aborted; no flush follows.  A session may ignore this.
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

        Linking again records a use of the link and of the blob, as
        L{IBlobMaintenance.touch} does (without failing if the blob is not
        stored yet).
        """

    def unlink(repository: str, digest: str) -> Deferred[bool]:
        """
        Hide blob C{digest} from C{repository}; L{False} if it was not there.
        """

    def isLinked(repository: str, digest: str) -> Deferred[bool]:
        """
        Whether blob C{digest} is visible in C{repository}.
        """

    def repositoriesHolding(digest: str, last: str | None, limit: int) -> Deferred[list[str]]:
        """
        Up to C{limit} names of repositories C{digest} is linked in, sorted,
        all greater than C{last}, found without scanning every repository
        (an index kept by L{link} and L{unlink}).

        A hint, not the truth: a name may be stale (the caller checks
        L{isLinked}), and a store may miss links it made before it kept the
        index.  Used to mount a blob when the client names no source.
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


# Maintenance: garbage collection, scrub and disk usage.
#
# Fencing.  A collector removes only what it found unreferenced *and*
# unused since a cutoff time C{before} (on the storage's own clock, see
# C{now}).  Writers record a use of what they reference (C{touch},
# C{touchManifests}, C{link}, C{commit}) after their own write is durable
# and before they acknowledge it.  A conditional delete and a use of the
# same object are linearizable: either the delete sees the use and keeps
# the object, or the use fails (reports the object missing) and the writer
# does not acknowledge.  docs/storage.md gives the argument.


@dataclass(frozen=True)
class StoredItem:
    """
    One stored blob, link or manifest as maintenance sees it.
    """

    digest: str
    # Bytes stored (for a manifest, possibly with the backend's own header).
    size: int
    # Seconds since the epoch, on the storage's clock, of the last write or
    # recorded use.
    modified: float


class IBlobMaintenance(Interface):
    """
    What garbage collection, scrub and du need of an L{IBlobStore}.

    Listings are sorted by digest (or name) and paged: up to C{limit}
    entries, all greater than C{last}.  Anything created or removed while a
    listing is paged may or may not appear in it.
    """

    def now() -> Deferred[float]:
        """
        The current time on the clock that stamps C{modified} (for a
        filesystem the kernel's, for an object store the server's).
        """

    def listBlobs(last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        """
        Stored blobs with their size and last write or use.
        """

    def listLinkedRepositories(last: str | None, limit: int) -> Deferred[list[str]]:
        """
        Names of the repositories that have (or had) at least one link.
        """

    def listLinks(repository: str, last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        """
        The links of C{repository} (C{size} 0), whether or not their blob
        is stored.
        """

    def touch(repository: str, digests: Sequence[str]) -> Deferred[list[str]]:
        """
        Record a use, now, of each blob of C{digests} and of its link in
        C{repository}; fire with the digests whose blob or link is missing
        (removed, or being removed by a collector).  Linearizable with
        L{deleteBlob} and L{deleteLink}.
        """

    def deleteLink(repository: str, digest: str, before: float) -> Deferred[bool]:
        """
        Remove the link of C{digest} in C{repository} if it was neither
        written nor used at or after C{before}; L{True} if it removed it.
        """

    def deleteBlob(digest: str, before: float) -> Deferred[bool]:
        """
        Remove blob C{digest} if it was neither written nor used at or
        after C{before}; L{True} if it removed it.  Links are left alone.
        """

    def quarantineBlob(digest: str) -> Deferred[bool]:
        """
        Move blob C{digest} aside (kept for inspection, no longer served),
        so that it is answered as unknown and can be pushed again; L{False}
        if it was not stored.
        """

    def expireUploads() -> Deferred[list[str]]:
        """
        Remove the upload sessions past their time to live; fire with
        their ids.
        """

    def storedBytes() -> Deferred[int]:
        """
        Every byte the storage holds, blobs, metadata and sessions included.
        """


class IManifestMaintenance(Interface):
    """
    What garbage collection and scrub need of an L{IManifestBackend}.  The
    same paging rules as L{IBlobMaintenance}.
    """

    def now() -> Deferred[float]:
        """
        The current time on the clock that stamps C{modified}.
        """

    def listManifests(repository: str, last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        """
        The manifests stored in C{repository}, with their last write or use.
        """

    def touchManifests(repository: str, digests: Sequence[str]) -> Deferred[list[str]]:
        """
        Record a use, now, of each manifest of C{digests} in C{repository};
        fire with those missing.  Linearizable with L{deleteManifestBefore}.
        """

    def deleteManifestBefore(repository: str, digest: str, before: float) -> Deferred[bool]:
        """
        Remove manifest C{digest} of C{repository} and its referrers entry
        if it was neither written nor used at or after C{before}; tags are
        left alone.  L{True} if it removed it.
        """

    def quarantineManifest(repository: str, digest: str) -> Deferred[bool]:
        """
        Move manifest C{digest} of C{repository} aside, so that it is
        answered as unknown and can be pushed again; L{False} if absent.
        """


class ITaggedManifestBackend(IManifestBackend):
    """
    A manifest backend that can store a manifest and tag it in one step.

    Optional: the core uses it when a backend provides it, so that a
    backend can make both writes durable together (one group commit for
    both instead of one each) while keeping their order.
    """

    def putTaggedManifest(
        repository: str,
        tags: Sequence[str],
        digest: str,
        mediaType: str,
        content: bytes,
        subject: str | None,
        descriptor: dict[str, Any],
    ) -> Deferred[None]:
        """
        L{putManifest}, then L{setTag} of each of C{tags} to C{digest}:
        after a crash part-way no tag points at a manifest not stored.
        """


class CollectionRefused(Exception):
    """
    Another garbage collection holds the storage's collector lease (or this
    one lost it): the message says which, in one line.
    """


class IHeldLease(Interface):
    """
    The collector lease, held by one running collection.
    """

    def check() -> None:
        """
        Raise L{CollectionRefused} unless the lease is still surely held:
        called before every deletion.
        """

    def release() -> Deferred[None]:
        """
        Give the lease up (unless another collection took it meanwhile).
        """


class ICollectorLease(Interface):
    """
    Optional, on an L{IBlobMaintenance} whose fenced deletions are not safe
    against a second collection at the same time (an object store, whose
    fences are shared marker objects): L{ociklein.maintenance.collect}
    holds its lease from before it reads the clock until its last deletion.
    """

    def acquireCollectorLease(owner: str) -> Deferred[IHeldLease]:
        """
        Take the lease for a collection described by C{owner} (host and
        process, for the message another collector gets), or fail with
        L{CollectionRefused} if a live collection holds it.
        """


class ITagReadingManifestBackend(IManifestBackend):
    """
    A manifest backend that reads a manifest by tag in one step.

    Optional: the core uses it for a manifest GET or HEAD by tag when a
    backend provides it, so that a remote backend can answer from what it
    keeps of immutable manifests after reading only the tag.
    """

    def getTaggedManifest(repository: str, tag: str) -> Deferred[tuple[str, str, bytes] | None]:
        """
        The digest C{tag} names and that manifest's media type and bytes,
        as L{IManifestBackend.resolveTag} then L{IManifestBackend.getManifest}
        would give them; L{None} if either is missing.
        """


@dataclass(frozen=True)
class FencedStore:
    """
    What L{IFencedManifestBackend.storeFenced} found: a referenced digest
    missing before anything was stored (then nothing was), or the digests
    that the uses recorded after the store found missing.
    """

    unknown: str | None
    lost: Sequence[str]


class IFencedManifestBackend(ITaggedManifestBackend, IManifestMaintenance):
    """
    A manifest backend that stores a manifest, tags it and records the uses
    that fence garbage collection (see "Fencing" above) in one step.

    Optional: the core uses it instead of L{ITaggedManifestBackend} and
    separate C{touch} and C{touchManifests} calls when C{fencesBlobsOf} its
    blob store, so that a storage where each step is a trip to a thread
    pool or the network makes the trip once per push.
    """

    def fencesBlobsOf(blobs: IBlobStore) -> bool:
        """
        Whether L{storeFenced} records uses of the blobs and links of
        C{blobs} (both on one storage) as C{blobs.touch} would.
        """

    def storeFenced(
        repository: str,
        digest: str,
        tags: Sequence[str],
        mediaType: str,
        content: bytes,
        subject: str | None,
        descriptor: dict[str, Any],
        blobs: Sequence[str],
        children: Sequence[str],
        check: bool,
    ) -> Deferred[FencedStore]:
        """
        In order: if C{check}, record a use of each of C{blobs} (and its
        link) and of each manifest of C{children}, and store nothing if one
        is missing (C{unknown}); store the manifest unless it is stored
        already, and point C{tags} at it, as L{putTaggedManifest}; once that
        is durable, record a use of each of C{blobs} and C{children} again,
        and then of the manifest; C{lost} lists those found missing, in
        that order.
        """
