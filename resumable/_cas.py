"""Compare-and-swap on one object, per back end: read an object with its version, replace it
only if it is still at that version (or create it only if absent).

This is what makes a zombie writer harmless: the mirror's manifest is replaced only if it is
still the one that writer last wrote or read. Versions are opaque strings:

- local directories (and file:// URLs): the SHA-256 of the content; a write takes an exclusive
  `flock` on a sidecar lock file (``.<name>.cas-lock``), compares, and replaces atomically
  (temp file, fsync, rename). The kernel drops the lock of a killed process, so nothing goes
  stale. Writers on other machines must see the same locks (NFS does; many FUSE mounts of
  buckets do not, and say so with ENOLCK/EOPNOTSUPP, which is reported as no support).
- S3: the ETag; ``If-Match: <etag>`` to replace, ``If-None-Match: *`` to create.
- GCS: the object's generation; ``ifGenerationMatch`` (0 to create).
- Azure Blob: the ETag; ``If-Match`` with the ETag to replace, ``If-None-Match: *`` to create.
- memory:// (one process): the SHA-256, under a process-wide lock.

Every function raises the back end's own exceptions (the Store classifies them); a failed
condition raises `Conflict` (a `FileExistsError`, so it classifies as "exists").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import durable

if TYPE_CHECKING:
    from ._fetch import Deadline

T = TypeVar("T")

LOCK_WAIT_S = 30.0  # how long a local writer waits for another's lock before giving up


class Conflict(FileExistsError):
    """The object is not at the version the write was conditioned on."""


class Unsupported(OSError):
    """This place offers no atomic conditional write."""


def content_version(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- local directories ------------------------------------------------------------------------

_local_locks: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


def _thread_lock(key: str) -> threading.Lock:
    with _local_guard:
        return _local_locks.setdefault(key, threading.Lock())


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing): flock excludes other open files,
    processes and machines (where the file system supports it); the thread lock covers file
    systems that emulate flock with per-process POSIX locks (NFS)."""
    tl = _thread_lock(str(path))
    if not tl.acquire(timeout=LOCK_WAIT_S):
        raise TimeoutError(errno.ETIMEDOUT, f"{path} stayed locked for {LOCK_WAIT_S:g} s")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            errno.ETIMEDOUT, f"{path} stayed locked for {LOCK_WAIT_S:g} s"
                        ) from None
                    time.sleep(0.01)
                except OSError as exc:
                    if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise Unsupported(
                            exc.errno, f"{path.parent} does not support file locks"
                        ) from None
                    raise
            yield
        finally:
            os.close(fd)  # drops the flock
    finally:
        tl.release()


def local_read(path: Path, limit: int) -> tuple[bytes, str]:
    """Up to `limit` bytes of the file and the version of its whole content."""
    with open(path, "rb") as f:
        data = f.read(limit)
        if len(data) < limit:
            return data, content_version(data)
        h = hashlib.sha256(data)  # over the limit: the caller refuses it; version it anyway
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return data, "sha256:" + h.hexdigest()


def local_write_if(path: Path, data: bytes, version: str | None) -> str:
    durable.make_dirs(path.parent)
    with _flocked(path.with_name(f".{path.name}.cas-lock")):
        try:
            with open(path, "rb") as f:
                current: str | None = content_version(f.read())
        except FileNotFoundError:
            current = None
        if current != version:
            raise Conflict(errno.EEXIST, f"{path} is at another version")
        durable.atomic_write_bytes(path, data)
    return content_version(data)


# -- memory:// ----------------------------------------------------------------------------------

_memory_lock = threading.Lock()


def memory_read(
    fs: Any, url: str, limit: int, deadline: Deadline | None = None
) -> tuple[bytes, str]:
    with _memory_lock:
        data = fs.cat_file(url)
    return data[:limit], content_version(data)


def memory_write_if(fs: Any, url: str, data: bytes, version: str | None) -> str:
    with _memory_lock:
        try:
            current: str | None = content_version(fs.cat_file(url))
        except FileNotFoundError:
            current = None
        if current != version:
            raise Conflict(errno.EEXIST, f"{url} is at another version")
        fs.pipe_file(url, data)
    return content_version(data)


def _on_loop(fs: Any, make: Callable[[], Awaitable[T]], deadline: Deadline | None = None) -> T:
    """Run the coroutine `make()` on the filesystem's event loop (under `deadline` if given)."""
    from fsspec.asyn import sync

    if deadline is not None:
        return deadline.run(fs.loop, make)
    result: T = sync(fs.loop, make)
    return result


# -- S3 -------------------------------------------------------------------------------------------


def s3_read(fs: Any, url: str, limit: int, deadline: Deadline | None = None) -> tuple[bytes, str]:
    """One GET: the body (at most `limit` bytes) and the ETag of the same object version."""
    bucket, key, _ = fs.split_path(url)

    async def get() -> tuple[bytes, str]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if limit > 0:
            kwargs["Range"] = f"bytes=0-{limit - 1}"
        try:
            resp = await fs._call_s3("get_object", **kwargs)
        except Exception as exc:
            if "InvalidRange" not in repr(exc) and "416" not in repr(getattr(exc, "args", "")):
                raise
            resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)  # empty object
        try:
            body = await resp["Body"].read()
        finally:
            resp["Body"].close()
        return body[:limit], resp["ETag"]

    return _on_loop(fs, get, deadline)


def s3_write_if(fs: Any, url: str, data: bytes, version: str | None) -> str:
    match = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
    out = fs.pipe_file(url, data, **match)
    etag: str = out["ETag"]
    return etag


# -- GCS ------------------------------------------------------------------------------------------


def gcs_read(fs: Any, url: str, limit: int, deadline: Deadline | None = None) -> tuple[bytes, str]:
    """The object's generation, then its bytes pinned to that generation."""
    bucket, key, _ = fs.split_path(url)

    async def get() -> tuple[bytes, str]:
        info = await fs._call("GET", "b/{}/o/{}", bucket, key, json_out=True)
        generation = str(info["generation"])
        headers = {"Range": f"bytes=0-{limit - 1}"} if limit > 0 else {}
        _h, body = await fs._call(
            "GET", "b/{}/o/{}", bucket, key, alt="media", generation=generation, headers=headers
        )
        return body[:limit], generation

    return _on_loop(fs, get, deadline)


def gcs_write_if(fs: Any, url: str, data: bytes, version: str | None) -> str:
    bucket, key, _ = fs.split_path(url)

    async def put() -> str:
        out = await fs._call(
            "POST",
            f"{fs._location}/upload/storage/v1/b/{bucket}/o",
            uploadType="media",
            name=key,
            ifGenerationMatch="0" if version is None else version,
            headers={"Content-Type": "application/octet-stream"},
            data=data,
            json_out=True,
        )
        return str(out["generation"])

    return _on_loop(fs, put)


# -- Azure Blob -----------------------------------------------------------------------------------


def _az_blob(fs: Any, url: str) -> Any:
    container, blob, _ = fs.split_path(url)
    return fs.service_client.get_blob_client(container, blob)


def az_read(fs: Any, url: str, limit: int, deadline: Deadline | None = None) -> tuple[bytes, str]:
    async def get() -> tuple[bytes, str]:
        async with _az_blob(fs, url) as bc:
            stream = await bc.download_blob(offset=0, length=limit if limit > 0 else None)
            body = await stream.readall()
            return body[:limit], stream.properties.etag

    return _on_loop(fs, get, deadline)


def az_write_if(fs: Any, url: str, data: bytes, version: str | None) -> str:
    from azure.core import MatchConditions

    async def put() -> str:
        async with _az_blob(fs, url) as bc:
            if version is None:
                out = await bc.upload_blob(data, overwrite=False)
            else:
                out = await bc.upload_blob(
                    data,
                    overwrite=True,
                    etag=version,
                    match_condition=MatchConditions.IfNotModified,
                )
            etag: str = out["etag"]
            return etag

    return _on_loop(fs, put)


_BACKENDS: dict[str, tuple[Callable[..., tuple[bytes, str]], Callable[..., str]]] = {
    **dict.fromkeys(("s3", "s3a"), (s3_read, s3_write_if)),
    **dict.fromkeys(("gs", "gcs"), (gcs_read, gcs_write_if)),
    **dict.fromkeys(("az", "abfs", "abfss"), (az_read, az_write_if)),
    "memory": (memory_read, memory_write_if),
}
ATOMIC_PROTOCOLS = frozenset(_BACKENDS)


def reader(protocol: str) -> Callable[..., tuple[bytes, str]] | None:
    """`read(fs, url, limit, deadline=None) -> (bytes, version)` for a remote protocol, None if
    it has none; a `_fetch.Deadline` bounds the whole read (memory:// cannot be slow)."""
    found = _BACKENDS.get(protocol)
    return found[0] if found else None


def writer(protocol: str) -> Callable[..., str] | None:
    """`write_if(fs, url, data, version) -> version` for a remote protocol, None if none."""
    found = _BACKENDS.get(protocol)
    return found[1] if found else None
