"""The single-writer lock of a progress directory: an exclusive POSIX lock on a file beside it.

Beside ``data/exp.h5.resumable/`` lies ``data/exp.h5.resumable.lock``: one writer at a time (a
POSIX lock, released by the kernel on death). It lies outside the directory so that it also
covers replacing the whole directory (installing a resumed source). A process also notes the
directories it holds locked: POSIX locks would let a second writer of the same process through,
and a forked child holds none of its parent's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from ._durable import make_dirs
from .errors import CheckpointLockedError, CheckpointWriteError

LOCK_SUFFIX = ".lock"

_HELD_LOCKS: set[str] = set()
_HELD_GUARD = threading.Lock()


def _forget_locks_after_fork() -> None:
    """A forked child holds none of its parent's POSIX locks (they are per process)."""
    global _HELD_GUARD
    _HELD_GUARD = threading.Lock()  # another thread may have held it at the fork
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_after_fork)


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    return missing


def lock_path_for(progress_dir: Path) -> Path:
    """The writer lock of a progress directory: a file *beside* it (``exp.h5.resumable.lock``),
    so that replacing the directory (installing a resumed source) happens under the lock."""
    return progress_dir.with_name(progress_dir.name + LOCK_SUFFIX)


class DirLock:
    """The single-writer lock of a progress directory: an exclusive POSIX lock on the file
    beside it (see `lock_path_for`); the kernel drops it when the holder dies.

    The lock file is removed on release (while still locked). A launch that opened the file
    just before it was removed would then lock an orphan: after locking, the file at the path
    must still be the one locked, else it tries again. POSIX locks belong to a process, so a
    forked child inherits the descriptor but not the lock, and closing its copy leaves the
    parent's lock in place.
    """

    def __init__(self, progress_dir: Path) -> None:
        self.path = lock_path_for(progress_dir)
        self._key = os.path.realpath(progress_dir)
        self._fd: int | None = None
        with _HELD_GUARD:
            if self._key in _HELD_LOCKS:
                raise CheckpointLockedError(
                    f"{progress_dir} is already open for writing in this process; "
                    "close the other ResumableSweep first"
                )
            self.created_dirs = _missing_dirs(self.path.parent)
            make_dirs(self.path.parent)
            for _attempt in range(100):
                fd = self._try_lock(progress_dir)
                if fd is not None:
                    break
            else:  # pragma: no cover - 100 holders releasing in a row
                raise CheckpointLockedError(f"{progress_dir}: could not take {self.path}")
            info = json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            )
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
            self._fd = fd
            self._pid = os.getpid()
            _HELD_LOCKS.add(self._key)

    def _try_lock(self, progress_dir: Path) -> int | None:
        """The locked descriptor, None if the file was replaced meanwhile (try again)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointWriteError(
                exc.errno,
                f"cannot open {self.path} for writing ({exc.strerror}); a checkpoint is "
                "opened for writing by its sweep: is the directory read-only?",
            ) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise CheckpointLockedError(
                    f"{progress_dir} is open for writing by another live process "
                    f"({holder or 'unknown holder'}); one writer at a time"
                ) from None
            raise
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        mine = os.fstat(fd)
        if now is None or (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)  # its holder removed it as we opened it: lock the new one
            return None
        return fd

    def release(self) -> None:
        """Drop the lock. In a forked child this only closes the inherited descriptor: POSIX
        locks belong to the process that took them, so the parent keeps its lock."""
        if self._fd is None:
            return
        with _HELD_GUARD:
            if os.getpid() == self._pid:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)  # still locked: nobody can be using it now
                _HELD_LOCKS.discard(self._key)
            os.close(self._fd)  # closing drops the POSIX lock (in the owner only)
            self._fd = None

    def release_and_tidy(self) -> None:
        """Release after a failed open: also remove the directories the lock created, if they
        are still empty (a refused launch leaves no trace)."""
        self.release()
        for d in self.created_dirs:
            try:
                d.rmdir()
            except OSError:
                break
