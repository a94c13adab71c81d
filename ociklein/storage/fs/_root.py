"""
The storage root as a whole: creating and checking it at startup, and
removing what crashed writers left in its tmp/ directory.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time

from ociklein.storage.fs._durable import createTemp
from ociklein.storage.fs._paths import DISCARDED, SUBDIRS, UPLOAD_SUFFIX, shown

# Temp files are renamed away within moments of their creation, so one
# older than this was left by a crash, not by a live writer in another
# process sharing the root.
TMP_GRACE = 3600.0


def _uploadInUse(directory: str, now: float, grace: float) -> bool:
    """
    Whether a live process (this one or another sharing the root) still
    holds the lock on an upload staged in tmp/.  A killed writer's lock is
    released by the kernel, so its data can go at once.  One without a data
    file yet may be being created right now, unless it is old.
    """
    try:
        fd = os.open(os.path.join(directory, "data"), os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        try:
            return os.stat(directory, follow_symlinks=False).st_mtime > now - grace
        except FileNotFoundError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def cleanTmp(root: str, now: float | None = None, grace: float = TMP_GRACE, settle: float = 0.0) -> list[str]:
    """
    Remove what crashed writers left in tmp/: discarded directories at
    once, anything else once older than C{grace} seconds of wall time, so
    that the in-flight temp files of another live process are left alone.

    An upload staged in tmp/ goes once its lock is free, and it is older
    than C{settle} seconds: a live process (this one, when sweeping while
    serving) creates the data file a moment before it locks it.
    """
    tmp = os.path.join(root, "tmp")
    now = time.time() if now is None else now
    removed = []
    for entry in os.scandir(tmp):
        try:
            if entry.name.endswith(UPLOAD_SUFFIX) and entry.is_dir(follow_symlinks=False):
                young = entry.stat(follow_symlinks=False).st_mtime > now - settle
                if young or _uploadInUse(entry.path, now, grace):
                    continue
            elif not entry.name.endswith(DISCARDED):
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


def probeWritable(root: str) -> None:
    """
    Create and remove a file in the root's tmp/: an L{OSError} says why the
    root takes no writes.  Blocking.
    """
    fd, probe = createTemp(root, ".probe")
    os.close(fd)
    os.unlink(probe)


def prepareRoot(root: str) -> None:
    """
    Create the storage root and its directories if missing, and fail at
    startup with a one-line L{ValueError} if it cannot be used, rather
    than on the first push.
    """
    name = shown(root)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        if isinstance(e, FileExistsError | NotADirectoryError):
            raise ValueError(f"storage root {name} is not a directory") from None
        raise ValueError(f"cannot create storage root {name}: {e.strerror}") from None
    if not os.path.isdir(root):
        raise ValueError(f"storage root {name} is not a directory")
    try:
        for sub in SUBDIRS:
            path = os.path.join(root, sub)
            os.makedirs(path, exist_ok=True)
            if os.path.islink(path):
                raise ValueError(f"storage root {name}: {sub} is a symbolic link, which is never followed")
        probeWritable(root)
    except OSError as e:
        raise ValueError(f"storage root {name} is not writable: {e.strerror}") from None
