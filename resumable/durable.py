"""Durable writes on local disk: atomic replace with fsyncs, and fsync'd appends.

Everything that records progress locally goes through here, so the rules live in one place:
write a temporary file in the same directory, flush, fsync, rename over the target, fsync the
directory. A failed fsync is never retried as if nothing happened (the kernel may already have
dropped the dirty pages): it surfaces as `CheckpointWriteError`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import CheckpointWriteError, ResumableError

_fdatasync = getattr(os, "fdatasync", os.fsync)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (created, renamed or removed files) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        raise CheckpointWriteError(
            exc.errno, f"fsync of directory {os.fspath(path)!r} failed: {exc.strerror}"
        ) from exc
    finally:
        os.close(fd)


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
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointWriteError(
            exc.errno, f"cannot create directory {os.fspath(path)!r}: {exc.strerror}"
        ) from exc
    for created in reversed(missing):
        fsync_dir(created.parent)


def fsync_file(fd: int, name: str, *, data_only: bool = True) -> None:
    """fsync (or fdatasync) an open file descriptor, translating failure to CheckpointWriteError."""
    try:
        (_fdatasync if data_only else os.fsync)(fd)
    except OSError as exc:
        raise CheckpointWriteError(exc.errno, f"fsync of {name!r} failed: {exc.strerror}") from exc


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")


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
    try:
        with fh:
            yield fh
            fh.flush()
            fsync_file(fh.fileno(), os.fspath(target), data_only=False)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, ResumableError):
            raise CheckpointWriteError(
                exc.errno, f"writing {os.fspath(target)!r} failed: {exc.strerror or exc}"
            ) from exc
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically and durably replace `path` with `data`."""
    with atomic_writer(path) as fh:
        fh.write(data)


def create_durable_file(path: str | os.PathLike[str], data: bytes = b"") -> None:
    """Create a new file (it must not exist) with `data`, durably, entry included."""
    target = Path(path)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise CheckpointWriteError(
            exc.errno, f"cannot create {os.fspath(target)!r}: {exc.strerror}"
        ) from exc
    try:
        if data:
            write_all(fd, data, os.fspath(target))
        fsync_file(fd, os.fspath(target), data_only=False)
    finally:
        os.close(fd)
    fsync_dir(target.parent)


def write_all(fd: int, data: bytes, name: str) -> None:
    """Write all of `data` to `fd` (os.write may write less than asked)."""
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except OSError as exc:
        raise CheckpointWriteError(exc.errno, f"writing {name!r} failed: {exc.strerror}") from exc


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
