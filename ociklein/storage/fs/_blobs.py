"""
Blobs and upload sessions on a filesystem.

A blob is one file named by its digest, written once by renaming a finished
upload into place.  Upload sessions are directories that outlive the
process, so a push interrupted by a restart can resume.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ociklein.interfaces import IBlobMaintenance, IBlobReader, IBlobStore, IUpload, StoredItem
from ociklein.storage._threads import inThread, resolveReactor
from ociklein.storage.fs._commit import atomicWrite
from ociklein.storage.fs._durable import (
    discardDir,
    ensureDir,
    fsyncDir,
    removeDurably,
    startWriteback,
    writeAll,
    writeParts,
)
from ociklein.storage.fs._maintenance import (
    blobUses,
    fencedRemove,
    listItems,
    pagedRepositories,
    quarantine,
    recordUse,
    storageNow,
    storedBytes,
)
from ociklein.storage.fs._paths import (
    UPLOAD_ID,
    UPLOAD_SUFFIX,
    blobPath,
    catalogName,
    checkDigest,
    checkInside,
    checkRepository,
    holderPath,
    holdersPath,
    isRepository,
    linkPath,
    page,
    repositoryPath,
)
from ociklein.storage.fs._root import cleanTmp, prepareRoot, probeWritable

if TYPE_CHECKING:
    from hashlib import _Hash

_log = Logger()

_ALGORITHMS = ("sha256", "sha512")
_HASH_CHUNK = 1024 * 1024
# Reads of a blob up to this size happen on the caller's thread.
_INLINE_READ = 64 * 1024
# An upload's data queued for its writer thread: up to _QUEUED bytes before
# a write waits, up to _BATCH bytes (and _IOV_MAX pieces) per system call, up
# to _TURN bytes per turn in the thread pool.  The queue is short because a
# PATCH is answered only once its queue is written: the client waits for it,
# on top of what the body pipe holds.
_QUEUED = 2 * 1024 * 1024
_BATCH = 1024 * 1024
_IOV_MAX = 1024  # Linux's limit for one writev
_TURN = 16 * 1024 * 1024
# While serving, an upload staged in tmp/ is left alone this many seconds
# after its creation even if unlocked: it may be about to be locked.
_SETTLE = 60.0


@implementer(IBlobReader)
class _FileReader:
    """
    An open blob file.  Holding the descriptor keeps the data readable even
    if the blob is deleted meanwhile.

    Small reads happen at once.  Larger ones run in the reactor's thread
    pool, so that a blob not in the page cache never stalls the reactor on
    the disk; and a reader that reads on from where it stopped (a download)
    has its next piece read meanwhile, so that the disk and the client's
    connection work at once: one piece ahead, never more.  The descriptor
    is closed only once no read of it is running, so that a number reused
    by another open file is never read.
    """

    def __init__(self, fd: int, size: int, reactor: IReactorThreads) -> None:
        self._fd: int | None = fd
        self.size = size
        self._reactor = reactor
        self._running = 0
        self._closing = False
        self._ahead: tuple[int, int, Deferred[bytes]] | None = None

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        if offset < 0:
            return fail(ValueError(f"negative offset {offset}"))
        want = min(length, self.size - offset)
        fd = self._fd
        if fd is None or self._closing or want <= 0:
            return succeed(b"")
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[:2] == (offset, want):
            reading = ahead[2]
        else:
            if ahead is not None:
                ahead[2].addErrback(lambda _: None)
            if want <= _INLINE_READ:
                try:
                    return succeed(_pread(fd, want, offset))
                except OSError as e:
                    return fail(e)
            reading = self._readInThread(fd, offset, want)
        following = offset + want
        wantNext = min(want, self.size - following)
        if wantNext > _INLINE_READ:
            self._ahead = (following, wantNext, self._readInThread(fd, following, wantNext))
        return reading

    def _readInThread(self, fd: int, offset: int, want: int) -> Deferred[bytes]:
        self._running += 1
        reading = inThread(self._reactor, _pread, fd, want, offset)

        def finished(result: object) -> object:
            self._running -= 1
            if self._closing and self._running == 0:
                self._closeNow()
            return result

        return reading.addBoth(finished)

    def close(self) -> None:
        self._closing = True
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[2].addErrback(lambda _: None)
        if self._running == 0:
            self._closeNow()

    def _closeNow(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _pread(fd: int, want: int, offset: int) -> bytes:
    """
    C{want} bytes from C{offset}, or fewer at the end of the file.
    """
    chunks = []
    while want > 0:
        chunk = os.pread(fd, want, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        want -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@implementer(IUpload)
class _FileUpload:
    """
    A session directory holding the data appended so far and the running
    sha256 of it, which is lost (and rebuilt by rereading) on restart.

    The data file is open only while a request uses the session, under an
    exclusive C{flock}: an idle session costs no descriptor, and two
    processes sharing the root never write one session at once.
    """

    def __init__(
        self,
        store: FilesystemBlobStore,
        uploadId: str,
        repository: str,
        fd: int | None,
        size: int,
        sha256: _Hash | None,
        directory: str | None = None,
    ) -> None:
        self._store = store
        self._directory = directory or os.path.join(store._root, "uploads", uploadId)
        self.uploadId = uploadId
        self.repository = repository
        self.size = size
        self._fd: int | None = fd
        self._sha256 = sha256
        self._error: BaseException | None = None
        self._ended = False
        self._idle: list[Deferred[None]] = []
        # Accepted data not yet written, the writer thread's to take; the
        # bytes in it; the writes waiting for it to shrink; whether a
        # thread is draining it, into which descriptor.
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._room: list[Deferred[None]] = []
        self._draining: int | None = None
        self._queuedFd: int | None = None

    def _open(self) -> int:
        """
        The data file's descriptor, opened and locked if it is not.  Fails
        with L{BlockingIOError} while another process holds the session,
        and with L{FileNotFoundError} once it has ended there.
        """
        if self._ended:
            raise ValueError(f"upload {self.uploadId} has ended")
        if self._fd is not None:
            return self._fd
        path = os.path.join(self._directory, "data")
        fd = os.open(checkInside(self._store._root, path), os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            stat = os.fstat(fd)
            # Locked, but is it still the session's file?  Another process
            # may have published it (renamed it away) before we locked it.
            if os.stat(path, follow_symlinks=False).st_ino != stat.st_ino:
                raise FileNotFoundError(errno.ENOENT, "upload data has moved", path)
        except BaseException:
            os.close(fd)
            raise
        self._resync(stat.st_size)
        self._fd = fd
        return fd

    def write(self, data: bytes) -> Deferred[None]:
        """
        Queue C{data} for a pool thread that appends and hashes what has
        queued, a batch per system call, while the reactor goes on reading:
        the thread never waits for the reactor between batches.  Fires once
        the data is queued, or, past L{_QUEUED} bytes, once the thread has
        caught up: a slow disk slows the client down.  A failed append
        fails the next write, L{flush}, L{digest} or L{commit}.
        """
        if self._error is not None:
            return fail(self._error)
        if self._room:  # the last write has not returned
            return fail(BlockingIOError(errno.EAGAIN, f"upload {self.uploadId} is being written"))
        try:
            fd = self._open()
        except (OSError, ValueError) as e:
            return fail(e)
        self._queue.append(data)
        self._queued += len(data)
        self.size += len(data)
        self._queuedFd = fd
        if self._draining is None and self._queued >= _BATCH:
            # A batch's worth, not every network read: one trip to the pool
            # per MiB at most.  Less waits for more, or for _whenIdle.
            self._drain(fd)
        if self._queued <= _QUEUED:
            return succeed(None)
        room: Deferred[None] = Deferred()
        self._room.append(room)
        return room

    def _drain(self, fd: int) -> None:
        self._draining = fd
        reactor = self._store._reactor
        drained = inThread(
            reactor, _drainQueue, fd, self._queue, self._sha256, partial(reactor.callFromThread, self._wrote)
        )
        drained.addBoth(self._drained)

    def _wrote(self, size: int) -> None:
        self._queued = max(0, self._queued - size)
        # Not as soon as there is room again but once half the queue is
        # free: the body pipe then hands over what waited meanwhile in one
        # piece and the next megabytes as they come, rather than joining a
        # megabyte on the reactor after every batch the thread writes.
        if self._queued <= _QUEUED // 2:
            self._wake(self._room, None)

    def _drained(self, result: object) -> None:
        fd, self._draining = self._draining, None
        if isinstance(result, Failure):
            # Part of the data may be on disk: the session cannot go on.
            self._error = result.value
            self._queue.clear()
            self._queued = 0
            self._wake(self._room, result)
        elif self._queue and fd is not None and (self._queued >= _BATCH or self._idle):
            # Queued after the thread found the queue empty, or left for the
            # next turn so that other disk work gets a thread.
            self._drain(fd)
            return
        self._wake(self._room, None)
        self._wake(self._idle, None)

    @staticmethod
    def _wake(waiting: list[Deferred[None]], result: object) -> None:
        ready = list(waiting)
        waiting.clear()
        for d in ready:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def _whenIdle(self) -> Deferred[None]:
        """
        Fires once no thread is writing queued data, so that the descriptor
        can be closed without a thread still writing to it (or to a file
        that reused its number).
        """
        if self._draining is None and self._queue and self._queuedFd is not None:
            self._drain(self._queuedFd)  # the rest, less than a batch
        if self._draining is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def flush(self) -> Deferred[None]:
        """
        Once the queued data is appended, it is in the page cache, which
        every process sharing the root sees; it is fsynced only when the
        blob is committed.
        """
        return Deferred.fromCoroutine(self._settled())

    async def _settled(self) -> None:
        """
        Wait until everything queued is written; raise what failed.
        """
        await self._whenIdle()
        if self._error is not None:
            raise self._error

    def digest(self, algorithm: str) -> Deferred[str]:
        return Deferred.fromCoroutine(self._digest(algorithm))

    async def _digest(self, algorithm: str) -> str:
        if algorithm not in _ALGORITHMS:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        await self._settled()
        own = self._open()
        if algorithm == "sha256" and self._sha256 is not None:
            return self._sha256.hexdigest()
        size = self.size
        # A duplicate, so that an abort closing ours cannot pull the
        # descriptor out from under the hashing thread.
        fd = os.dup(own)
        hashed = await inThread(self._store._reactor, _hashFile, fd, algorithm, size)
        if algorithm == "sha256" and self._fd is not None and self.size == size:
            self._sha256 = hashed.copy()
        return hashed.hexdigest()

    def commit(self, digest: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._commit(digest))

    async def _commit(self, digest: str) -> None:
        checkDigest(digest)
        await self._settled()
        self._open()
        size = self.size
        fd = self._detach()
        assert fd is not None
        store = self._store
        await inThread(
            store._reactor,
            _publish,
            store._root,
            fd,
            size,
            self._directory,
            checkInside(store._root, blobPath(store._root, digest)),
        )

    def abort(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._abort())

    async def _abort(self) -> None:
        self._queue.clear()  # what the thread has not taken yet is not written
        await self._whenIdle()
        fd = self._detach()
        if fd is not None:
            os.close(fd)
        await inThread(self._store._reactor, discardDir, self._store._root, self._directory)

    def close(self) -> None:
        """
        Release the data file (and its lock) until the next request.
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            self._whenIdle().addCallback(lambda _: os.close(fd))

    def _detach(self) -> int | None:
        """
        End the session in this process and hand over its descriptor.
        """
        self._store._forget(self)
        self._ended = True
        fd, self._fd = self._fd, None
        self._sha256 = None
        return fd

    def _release(self) -> None:
        """
        End the session in this process only, leaving its files alone.
        """
        fd = self._detach()
        if fd is not None:
            self._whenIdle().addCallback(lambda _: os.close(fd))

    def _resync(self, size: int) -> None:
        """
        Another process appended to the session: our size and running hash
        are stale.
        """
        if size != self.size and self._draining is None and not self._queue:  # our own writes explain it
            self.size = size
            self._sha256 = None


def _drainQueue(fd: int, queue: deque[bytes], sha256: _Hash | None, wrote: Callable[[int], object]) -> None:
    """
    Append what C{queue} holds to C{fd}, a batch at a time, telling
    C{wrote} each batch's size, until it is empty or L{_TURN} bytes are
    written (the rest waits for another turn in the pool, so that one
    upload does not hold a thread for its whole length).
    """
    written = 0
    while written < _TURN:
        parts: list[bytes] = []
        size = 0
        while size < _BATCH and len(parts) < _IOV_MAX:
            try:
                part = queue.popleft()
            except IndexError:  # empty, or cleared by an abort
                break
            parts.append(part)
            size += len(part)
        if not parts:
            return
        _append(fd, parts, size, sha256)
        written += size
        wrote(size)


def _append(fd: int, parts: list[bytes], size: int, sha256: _Hash | None) -> None:
    writeParts(fd, parts)
    # Written back as it comes rather than all at commit: a 512 MiB blob's
    # final fsync then waits milliseconds instead of a quarter second, and
    # the kernel is spared throttling a writer with a lot of dirty pages.
    startWriteback(fd, os.lseek(fd, 0, os.SEEK_CUR) - size, size)
    if sha256 is not None:
        for part in parts:
            sha256.update(part)


def _hashFile(fd: int, algorithm: str, size: int) -> _Hash:
    """
    Hash the first C{size} bytes of C{fd}, then close it.
    """
    try:
        hashed = hashlib.new(algorithm)
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(_HASH_CHUNK, size - offset), offset)
            if not chunk:
                raise OSError(f"upload data shorter than {size} bytes")
            hashed.update(chunk)
            offset += len(chunk)
        return hashed
    finally:
        os.close(fd)


def _publish(root: str, fd: int, size: int, directory: str, target: str) -> None:
    """
    Make the session's data the blob C{target}, then remove the session.

    A blob file already there of the same size is the same content (a
    digest names it), so it stays; one of another size is damaged and is
    replaced, atomically.  Either way the blob counts as written now: an
    existing copy gets a recorded use (which fails if a collector is
    removing it, and then ours replaces it), new data is stamped before it
    appears.
    """
    try:
        if _sizeOf(target) != size or not recordUse(target):
            os.utime(os.path.join(directory, "data"))
            os.fsync(fd)
            parent = os.path.dirname(target)
            ensureDir(parent)
            # Two processes publishing the same blob both rename onto one
            # name; the content is the same, so whichever lands last is fine.
            os.rename(os.path.join(directory, "data"), target)
            fsyncDir(parent)
    finally:
        os.close(fd)
    discardDir(root, directory)


def _sizeOf(path: str) -> int | None:
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except FileNotFoundError:
        return None


def _createSession(
    root: str, uploadId: str, repository: str, started: float, resumable: bool
) -> tuple[int, str]:
    """
    Build the session directory in tmp/ and rename it into uploads/, so a
    session is seen complete with its info file or not at all.  Returns the
    data file's descriptor, open for appending, and the session directory.

    A session no client can resume stays in tmp/ with its data file locked
    while this process lives; L{cleanTmp} removes it once the lock is free.
    """
    staging = os.path.join(root, "tmp", secrets.token_hex(16) + UPLOAD_SUFFIX)
    os.mkdir(staging)
    fd = -1
    try:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW
        fd = os.open(os.path.join(staging, "data"), flags, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not resumable:
            return fd, staging
        info = json.dumps({"repository": repository, "started": started}).encode()
        infoFd = os.open(os.path.join(staging, "info"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            writeAll(infoFd, info)
            os.fsync(infoFd)
        finally:
            os.close(infoFd)
        os.fsync(fd)
        fsyncDir(staging)
        uploads = os.path.join(root, "uploads")
        os.rename(staging, os.path.join(uploads, uploadId))
        fsyncDir(uploads)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return fd, os.path.join(uploads, uploadId)


def _readInfo(directory: str) -> tuple[str, float] | None:
    """
    The repository and start time of a session, or L{None} if it is gone
    or its info file is damaged.  Other errors (say C{EMFILE}) propagate
    rather than pass a live session off as dead.
    """
    try:
        fd = os.open(os.path.join(directory, "info"), os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb") as f:
            info = json.loads(f.read(65536))
        repository, started = info["repository"], info["started"]
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, TypeError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a planted symlink: not a session of ours
            return None
        raise
    if not isinstance(repository, str) or not isinstance(started, int | float):
        return None
    return repository, float(started)


def _sweepUploads(root: str, now: float, ttl: float) -> list[str]:
    """
    Remove every session started C{ttl} seconds or more before C{now}, and
    any whose info cannot be read.
    """
    uploads = os.path.join(root, "uploads")
    removed = []
    for name in os.listdir(uploads):
        if UPLOAD_ID.fullmatch(name) is None:
            continue
        directory = os.path.join(uploads, name)
        info = _readInfo(directory)
        if (info is None or now >= info[1] + ttl) and discardDir(root, directory):
            removed.append(name)
    return removed


def _sweep(root: str, now: float, ttl: float) -> list[str]:
    """
    The periodic sweep: expired sessions, and whatever dead or cut requests
    left in tmp/ (monolithic uploads whose lock is free, discarded
    directories, old temp files).
    """
    cleanTmp(root, settle=_SETTLE)
    return _sweepUploads(root, now, ttl)


def _openWithSize(path: str, flags: int) -> tuple[int, int] | None:
    """
    A descriptor of C{path} and the file's size, or L{None} if it is gone.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        return fd, os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise


def _linkPath(root: str, repository: str, digest: str) -> str:
    return checkInside(root, linkPath(repositoryPath(root, repository), digest))


def _holderPath(root: str, digest: str, repository: str) -> str:
    return checkInside(root, holderPath(root, digest, repository))


def _writeLink(root: str, repository: str, digest: str) -> None:
    """
    Write a link, or record a use of an existing one, and record a use of
    its blob if the blob is there.  The link's entry among the blob's
    holders comes first: a crash between the two leaves a stale holder
    (which readers check), never a link the holders miss.  Linking again
    repairs a missing holder.
    """
    holder = _holderPath(root, digest, repository)
    if not os.path.exists(holder):
        atomicWrite(root, holder, b"")
    path = _linkPath(root, repository, digest)
    if not recordUse(path):
        atomicWrite(root, path, b"")
    recordUse(blobPath(root, digest))


def _removeLink(root: str, repository: str, digest: str) -> bool:
    """
    Unlink the blob, then drop its holder entry; whether it was linked.
    """
    found = removeDurably(_linkPath(root, repository, digest))
    removeDurably(_holderPath(root, digest, repository))
    return found


def _removeUnusedLink(root: str, repository: str, digest: str, before: float) -> bool:
    """
    Remove a link unused since C{before}, and then its holder entry.
    """
    removed = fencedRemove(_linkPath(root, repository, digest), before)
    if removed:
        removeDurably(_holderPath(root, digest, repository))
    return removed


def _listHolders(root: str, digest: str) -> list[str]:
    try:
        entries = os.listdir(checkInside(root, holdersPath(root, digest)))
    except FileNotFoundError:
        return []
    return sorted(name for name in map(catalogName, entries) if isRepository(name))


@implementer(IBlobStore, IBlobMaintenance)
class FilesystemBlobStore:
    """
    Blobs under C{root/blobs}, links under C{root/repositories}, upload
    sessions under C{root/uploads}; sessions expire C{uploadTTL} seconds
    (by C{clock}) after they start.
    """

    def __init__(
        self,
        root: str,
        reactor: IReactorThreads | None = None,
        clock: IReactorTime | None = None,
        uploadTTL: float = 86400.0,
    ) -> None:
        prepareRoot(root)
        self._root = os.path.realpath(root)
        self._reactor = resolveReactor(reactor)
        self._clock = clock if clock is not None else cast(IReactorTime, self._reactor)
        self._ttl = uploadTTL
        self._uploads: dict[str, _FileUpload] = {}
        # Startup happens before serving, so this work may block.
        cleanTmp(self._root)
        _sweepUploads(self._root, self._clock.seconds(), self._ttl)

    @property
    def root(self) -> str:
        """
        The real path of the storage root, which a manifest backend on the
        same root shares (see L{FilesystemManifestBackend.fencesBlobsOf}).
        """
        return self._root

    @property
    def expiryInterval(self) -> float:
        """
        How often L{sweep} should run: often enough that a session outlives
        its TTL by at most half of it, and at least hourly.
        """
        return max(1.0, min(self._ttl / 2, 3600.0))

    def openUploadCount(self) -> int:
        """
        How many upload sessions this process holds open (the metrics' gauge).
        """
        return len(self._uploads)

    async def checkWritable(self) -> str | None:
        """
        L{None} when the root takes a new file now, else why not (what
        C{/readyz} asks).
        """
        try:
            await inThread(self._reactor, probeWritable, self._root)
        except OSError as e:
            return f"storage root is not writable: {e.strerror}"
        return None

    def close(self) -> None:
        """
        Release open session files; the sessions stay on disk for the next
        process.
        """
        for upload in list(self._uploads.values()):
            upload._release()

    def expireUploads(self) -> Deferred[list[str]]:
        """
        Remove expired sessions now; fires with their ids.
        """
        return Deferred.fromCoroutine(self._expireUploads())

    async def _expireUploads(self) -> list[str]:
        removed = await inThread(self._reactor, _sweep, self._root, self._clock.seconds(), self._ttl)
        for uploadId in removed:
            upload = self._uploads.get(uploadId)
            if upload is not None:
                upload._release()
        return removed

    def sweep(self) -> Deferred[None]:
        """
        L{expireUploads}, with a failure logged rather than raised: what a
        L{twisted.application.internet.TimerService} runs every
        L{expiryInterval} seconds.
        """

        def logged(failure: Any) -> None:
            _log.failure("Expiring upload sessions failed", failure)

        return self.expireUploads().addCallbacks(lambda _: None, logged)

    def _forget(self, upload: _FileUpload) -> None:
        if self._uploads.get(upload.uploadId) is upload:
            del self._uploads[upload.uploadId]

    def _blobPath(self, digest: str) -> str:
        return checkInside(self._root, blobPath(self._root, checkDigest(digest)))

    def stat(self, digest: str) -> Deferred[int | None]:
        return maybeDeferred(self._stat, digest)

    def _stat(self, digest: str) -> int | None:
        try:
            return os.stat(self._blobPath(digest), follow_symlinks=False).st_size
        except FileNotFoundError:
            return None

    def open(self, digest: str) -> Deferred[IBlobReader | None]:
        return maybeDeferred(self._open, digest)

    def _open(self, digest: str) -> IBlobReader | None:
        opened = _openWithSize(self._blobPath(digest), os.O_RDONLY)
        return None if opened is None else _FileReader(*opened, self._reactor)

    def link(self, repository: str, digest: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._link(repository, digest))

    async def _link(self, repository: str, digest: str) -> None:
        checkRepository(repository)
        checkDigest(digest)
        await inThread(self._reactor, _writeLink, self._root, repository, digest)

    def unlink(self, repository: str, digest: str) -> Deferred[bool]:
        return Deferred.fromCoroutine(self._unlink(repository, digest))

    async def _unlink(self, repository: str, digest: str) -> bool:
        checkRepository(repository)
        checkDigest(digest)
        return await inThread(self._reactor, _removeLink, self._root, repository, digest)

    def repositoriesHolding(self, digest: str, last: str | None, limit: int) -> Deferred[list[str]]:
        return Deferred.fromCoroutine(self._repositoriesHolding(digest, last, limit))

    async def _repositoriesHolding(self, digest: str, last: str | None, limit: int) -> list[str]:
        # A popular base layer may be linked in thousands of repositories:
        # list them in a thread.
        names = await inThread(self._reactor, _listHolders, self._root, checkDigest(digest))
        return page(names, last, limit)

    def isLinked(self, repository: str, digest: str) -> Deferred[bool]:
        return maybeDeferred(self._isLinked, repository, digest)

    def _isLinked(self, repository: str, digest: str) -> bool:
        path = _linkPath(self._root, checkRepository(repository), checkDigest(digest))
        return os.path.lexists(path) and os.path.lexists(self._blobPath(digest))

    def startUpload(self, repository: str, resumable: bool = True) -> Deferred[IUpload]:
        return Deferred.fromCoroutine(self._startUpload(repository, resumable))

    async def _startUpload(self, repository: str, resumable: bool) -> IUpload:
        checkRepository(repository)
        uploadId = secrets.token_urlsafe(24)
        started = self._clock.seconds()
        fd, directory = await inThread(
            self._reactor, _createSession, self._root, uploadId, repository, started, resumable
        )
        upload = _FileUpload(self, uploadId, repository, fd, 0, hashlib.sha256(), directory)
        if resumable:
            self._uploads[uploadId] = upload
        return upload

    def getUpload(self, uploadId: str) -> Deferred[IUpload | None]:
        return Deferred.fromCoroutine(self._getUpload(uploadId))

    async def _getUpload(self, uploadId: str) -> IUpload | None:
        if not isinstance(uploadId, str) or UPLOAD_ID.fullmatch(uploadId) is None:
            return None
        directory = checkInside(self._root, os.path.join(self._root, "uploads", uploadId))
        cached = self._uploads.get(uploadId)
        info = _readInfo(directory)
        expired = info is not None and self._clock.seconds() >= info[1] + self._ttl
        if info is None or expired:
            if cached is not None:
                cached._release()
            if expired:
                await inThread(self._reactor, discardDir, self._root, directory)
            return None
        repository = info[0]
        size = _sizeOf(os.path.join(directory, "data"))
        if size is None:
            if cached is not None:
                cached._release()
            return None
        if cached is not None:
            cached._resync(size)
            return cached
        # An empty session's running hash is known: the common POST here,
        # PUT with the whole blob there (another worker) needs no rehash.
        upload = _FileUpload(self, uploadId, repository, None, size, hashlib.sha256() if size == 0 else None)
        self._uploads[uploadId] = upload
        return upload

    # -- maintenance ------------------------------------------------------

    def now(self) -> Deferred[float]:
        return inThread(self._reactor, storageNow, self._root)

    def listBlobs(self, last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        return inThread(self._reactor, listItems, os.path.join(self._root, "blobs"), True, last, limit)

    def listLinkedRepositories(self, last: str | None, limit: int) -> Deferred[list[str]]:
        return inThread(self._reactor, pagedRepositories, self._root, last, limit)

    def listLinks(self, repository: str, last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        return maybeDeferred(self._listLinks, repository, last, limit)

    def _listLinks(self, repository: str, last: str | None, limit: int) -> Deferred[list[StoredItem]]:
        base = os.path.join(repositoryPath(self._root, checkRepository(repository)), "_links")
        found = inThread(self._reactor, listItems, base, False, last, limit)
        # A link is an empty file: its size says nothing of the blob.
        return found.addCallback(lambda items: [StoredItem(i.digest, 0, i.modified) for i in items])

    def touch(self, repository: str, digests: Sequence[str]) -> Deferred[list[str]]:
        return maybeDeferred(self._touch, repository, digests)

    def _touch(self, repository: str, digests: Sequence[str]) -> Deferred[list[str]]:
        checkRepository(repository)
        digests = [checkDigest(d) for d in digests]
        return inThread(
            self._reactor, blobUses, self._root, lambda d: _linkPath(self._root, repository, d), digests
        )

    def deleteLink(self, repository: str, digest: str, before: float) -> Deferred[bool]:
        return maybeDeferred(self._deleteLink, repository, digest, before)

    def _deleteLink(self, repository: str, digest: str, before: float) -> Deferred[bool]:
        checkRepository(repository)
        checkDigest(digest)
        return inThread(self._reactor, _removeUnusedLink, self._root, repository, digest, before)

    def deleteBlob(self, digest: str, before: float) -> Deferred[bool]:
        return maybeDeferred(self._deleteBlob, digest, before)

    def _deleteBlob(self, digest: str, before: float) -> Deferred[bool]:
        return inThread(self._reactor, fencedRemove, blobPath(self._root, checkDigest(digest)), before)

    def quarantineBlob(self, digest: str) -> Deferred[bool]:
        return maybeDeferred(self._quarantineBlob, digest)

    def _quarantineBlob(self, digest: str) -> Deferred[bool]:
        path = blobPath(self._root, checkDigest(digest))
        return inThread(self._reactor, quarantine, self._root, path, "blobs", digest)

    def storedBytes(self) -> Deferred[int]:
        return inThread(self._reactor, storedBytes, self._root)
