"""Durable writes on local disk: atomic replace with fsyncs, and fsync'd appends.

Everything that records progress locally goes through here, so the rules live in one place:
write a temporary file in the same directory, flush, fsync, rename over the target, fsync the
directory. A failed fsync is never retried as if nothing happened (the kernel may already have
dropped the dirty pages): it surfaces as `CheckpointWriteError`.

Every file operation of the checkpoint (open, write, fsync, fdatasync, rename, unlink, mkdir,
directory fsync, truncate, removing a tree) goes through `ops`, one small `FileOps` object, so
that a test can record them and rebuild every state a power cut could leave
(scripts/crash_states.py). In production `ops` is the plain `os` functions: the cost is one
attribute lookup per call.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CheckpointWriteError, ResumableError

_fdatasync = getattr(os, "fdatasync", os.fsync)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class FileOps:
    """The file operations the checkpoint uses; `ops` is the one instance in force.

    A recorder (tests, scripts/crash_states.py) subclasses it, calls through to these and notes
    each operation; `use_ops` installs it for a while. Code calls ``durable.ops.NAME(...)``.
    Each looks its `os` function up when called (so a test may still patch `os`).
    """

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        return os.open(path, flags, mode)

    def write(self, fd: int, data: Any) -> int:
        return os.write(fd, data)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        return os.pread(fd, n, offset)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        _fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, src: Any, dst: Any) -> None:
        os.replace(src, dst)

    def rename(self, src: Any, dst: Any) -> None:
        os.rename(src, dst)

    def unlink(self, path: Any) -> None:
        os.unlink(path)

    def mkdir(self, path: Any) -> None:
        os.mkdir(path)

    def rmtree(self, path: Any) -> None:
        shutil.rmtree(path, ignore_errors=True)


ops = FileOps()


@contextlib.contextmanager
def use_ops(recorder: FileOps) -> Iterator[FileOps]:
    """Route every checkpoint file operation through `recorder` while the block runs."""
    global ops
    previous, ops = ops, recorder
    try:
        yield recorder
    finally:
        ops = previous


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (created, renamed or removed files) durable."""
    fd = ops.open(path, os.O_RDONLY | _O_DIRECTORY)
    try:
        ops.fsync(fd)
    except OSError as exc:
        raise CheckpointWriteError(
            exc.errno, f"fsync of directory {os.fspath(path)!r} failed: {exc.strerror}"
        ) from exc
    finally:
        ops.close(fd)


def make_dirs(path: str | os.PathLike[str]) -> None:
    """Create a directory and its missing parents, making each new entry durable."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for created in reversed(missing):
        try:
            ops.mkdir(created)
        except FileExistsError:
            if not created.is_dir():
                raise CheckpointWriteError(
                    17, f"cannot create directory {os.fspath(created)!r}: a file is in the way"
                ) from None
        except OSError as exc:
            raise CheckpointWriteError(
                exc.errno, f"cannot create directory {os.fspath(path)!r}: {exc.strerror}"
            ) from exc
    for created in reversed(missing):
        fsync_dir(created.parent)


def fsync_file(fd: int, name: str, *, data_only: bool = True) -> None:
    """fsync (or fdatasync) an open file descriptor, translating failure to CheckpointWriteError."""
    try:
        (ops.fdatasync if data_only else ops.fsync)(fd)
    except OSError as exc:
        raise CheckpointWriteError(exc.errno, f"fsync of {name!r} failed: {exc.strerror}") from exc


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")


@contextlib.contextmanager
def _replacing(tmp: Path, target: Path) -> Iterator[None]:
    """Around the code that writes and syncs `tmp` (closing it too): then rename it over
    `target` and sync the directory. On any failure `tmp` is removed, `target` is left as it
    was, and an OSError becomes a CheckpointWriteError naming `target`."""
    try:
        yield
        ops.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            ops.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, ResumableError):
            raise CheckpointWriteError(
                exc.errno, f"writing {os.fspath(target)!r} failed: {exc.strerror or exc}"
            ) from exc
        raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file; on clean exit it atomically and durably replaces `path`.

    The previous content of `path` stays intact until the new one is complete on disk. On an
    exception the temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    tmp = _temp_name(target)
    try:
        fh = open(tmp, "xb")  # noqa: SIM115 - closed below on every path
    except OSError as exc:
        raise CheckpointWriteError(
            exc.errno, f"cannot create {os.fspath(tmp)!r}: {exc.strerror}"
        ) from exc
    with _replacing(tmp, target), fh:
        yield fh
        fh.flush()
        fsync_file(fh.fileno(), os.fspath(target), data_only=False)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically and durably replace `path` with `data` (temp file, fsync, rename, dir fsync)."""
    target = Path(path)
    tmp = _temp_name(target)
    try:
        fd = ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise CheckpointWriteError(
            exc.errno, f"cannot create {os.fspath(tmp)!r}: {exc.strerror}"
        ) from exc
    with _replacing(tmp, target):
        try:
            write_all(fd, data, os.fspath(target))
            fsync_file(fd, os.fspath(target), data_only=False)
        finally:
            ops.close(fd)


def create_durable_file(path: str | os.PathLike[str], data: bytes = b"") -> None:
    """Create a new file (it must not exist) with `data`, durably, entry included."""
    target = Path(path)
    try:
        fd = ops.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise CheckpointWriteError(
            exc.errno, f"cannot create {os.fspath(target)!r}: {exc.strerror}"
        ) from exc
    try:
        if data:
            write_all(fd, data, os.fspath(target))
        fsync_file(fd, os.fspath(target), data_only=False)
    finally:
        ops.close(fd)
    fsync_dir(target.parent)


def write_all(fd: int, data: bytes, name: str) -> None:
    """Write all of `data` to `fd` (os.write may write less than asked)."""
    view = memoryview(data)
    try:
        while view:
            written = ops.write(fd, view)
            view = view[written:]
    except OSError as exc:
        raise CheckpointWriteError(exc.errno, f"writing {name!r} failed: {exc.strerror}") from exc


def rename_durably(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename `src` to `dst` (through `ops`); the caller fsyncs the directories."""
    ops.rename(src, dst)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a directory tree (through `ops`), ignoring errors."""
    ops.rmtree(path)


PAUSE_ENV = "RESUMABLE_TEST_PAUSE"


def pause_point(name: str) -> None:
    """A test hook: with ``RESUMABLE_TEST_PAUSE=<name>:<flag file>`` in the environment, create
    the flag file and wait (at most 120 s) until the test deletes it. Lets a test hold a process
    at a named instant (e.g. "install") to race a second launch against it. A no-op otherwise."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec or spec.partition(":")[0] != name:
        return
    flag = Path(spec.partition(":")[2])
    flag.write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
