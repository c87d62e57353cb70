"""A Store's local side: its operations on a directory (a path root or a file:// URL), every
write durable and atomic through `_durable.py`, every failure one of our errors.

A plain write is an atomic replace (temp file, fsync, rename); a create-only write is a complete
temp file link()ed into place, so the object appears whole and never over an existing one.
Failures are StorageErrors naming the path: ObjectNotFoundError for a missing file,
ObjectExistsError for a create over different content, StorageWriteError for a failed write.
The Store calls these for a local root with a path it built from a checked name
(`_urls.check_name`): nothing here joins names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from . import _durable as durable
from ._fetch import read_all
from ._storage_errors import Kind, translate
from .errors import CheckpointWriteError, ResumableError, StorageError, StorageWriteError

_READ_CHUNK = 1 << 20


def read_bounded(f: Any, limit: int) -> bytes:
    """Read a local file until EOF or `limit` bytes, whichever comes first."""
    return read_all(f, limit, _READ_CHUNK)


class _Passthrough(Exception):
    """Carries a caller's error through durable.atomic_writer, which would turn any OSError
    (our StorageErrors are OSErrors) into a CheckpointWriteError."""

    def __init__(self, exc: ResumableError) -> None:
        self.exc = exc


def local_error(exc: OSError, op: str, path: Path) -> ResumableError:
    kind = Kind.MISSING if exc.errno == errno.ENOENT else Kind.PERMANENT
    return translate(exc, op, str(path), kind)


def read_bytes(path: Path, limit: int) -> bytes:
    """The file's first `limit` bytes (all of it if shorter)."""
    try:
        with open(path, "rb") as f:
            return read_bounded(f, limit)
    except OSError as exc:
        raise local_error(exc, "read", path) from exc


def write_bytes(path: Path, data: bytes, create_only: bool) -> None:
    """`Store.write_bytes` on a local path: a durable atomic replace, or with `create_only` a
    create that never replaces (the same content already there counts as success)."""
    try:
        _write(path, data, create_only)
    except FileExistsError as exc:
        try:
            with open(path, "rb") as f:
                same = read_bounded(f, len(data) + 1) == data
        except OSError:
            same = False
        if not same:
            raise translate(exc, "create", str(path), Kind.EXISTS) from exc


def _write(path: Path, data: bytes, create_only: bool) -> None:
    shown = str(path)
    try:
        durable.make_dirs(path.parent)
        if not create_only:
            durable.atomic_write_bytes(path, data)
            return
        # complete temp file, then link(): appears whole, and never over an existing file
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                durable.write_all(fd, data, shown)
                durable.fsync_file(fd, shown, data_only=False)
            finally:
                os.close(fd)
            os.link(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        durable.fsync_dir(path.parent)
    except FileExistsError:
        raise
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageWriteError(exc.errno, f"cannot write {shown}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def open_write(path: Path) -> Iterator[BinaryIO]:
    """`Store.open_write` on a local path: the file appears only when the block exits cleanly
    (temp file, fsync, rename); on an exception the temp file is removed."""
    try:
        durable.make_dirs(path.parent)
        with durable.atomic_writer(path) as fh:
            try:
                yield fh
            except ResumableError as exc:  # e.g. the source of a copy was unreachable:
                raise _Passthrough(exc) from None  # not a local write failure
    except _Passthrough as wrapped:
        raise wrapped.exc from wrapped.exc.__cause__
    except CheckpointWriteError as exc:
        if isinstance(exc, StorageError):
            raise
        msg = f"cannot write {path}: {exc.strerror or exc}"
        raise StorageWriteError(exc.errno, msg) from exc


def open_read(path: Path) -> BinaryIO:
    """The file, open for reading (the caller closes it)."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise local_error(exc, "read", path) from exc


def delete(path: Path, *, missing_ok: bool) -> None:
    """Remove the file durably; ObjectNotFoundError if it is missing and not `missing_ok`."""
    try:
        path.unlink()
        durable.fsync_dir(path.parent)
    except FileNotFoundError as exc:
        if not missing_ok:
            raise local_error(exc, "delete", path) from exc
    except OSError as exc:
        raise local_error(exc, "delete", path) from exc


def list_dir(path: Path) -> dict[str, float | None]:
    """The files directly in the directory `path` and their modification times; {} if none."""
    found: dict[str, float | None] = {}
    try:
        with os.scandir(path) as it:
            for entry in it:
                if entry.is_file(follow_symlinks=False):
                    found[entry.name] = entry.stat(follow_symlinks=False).st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise local_error(exc, "list", path) from exc
    return found


def exists(path: Path) -> bool:
    """Whether anything is at `path`; other failures than "not there" raise."""
    try:
        path.stat()
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise local_error(exc, "check", path) from exc
