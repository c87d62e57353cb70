"""Where checkpoints live: a local directory or any fsspec URL, behind one small `Store` API.

Local writes are durable atomic replaces (`_durable.py`, through `_localdir.py`); remote writes
are single PUTs or multipart uploads, so an object appears complete or not at all. The point of
this module is telling failures apart: a *missing* resume source means a fresh start, an
*unreachable* one must be an error (silently redoing a week of work is the worst outcome).
Transient failures are retried with bounded exponential backoff and full jitter (tenacity),
then surface as `SourceUnreachableError`; permanent ones (403, no such bucket) fail at once as
`StorageError`. Which calls are retried where, and how each back end's own retries are cut so
that ours own them: `_backend.py`. Credentials never appear in messages: URLs are redacted and
storage_options are never shown.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import fsspec
import fsspec.utils

from . import _cas, _localdir
from ._backend import HTTP, S3, Backend, discard, mtime
from ._fetch import Deadline, RemoteReader, read_all
from ._localdir import local_error, read_bounded
from ._storage_errors import (
    Guarded,
    Kind,
    RetryPolicy,
    classify,
    find_code,
    is_transient,
    translate,
)
from ._urls import check_name, is_url, join, redact
from .errors import (
    ConfigurationError,
    IntegrityError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    ResumableError,
    SourceUnreachableError,
    StorageError,
    StorageWriteError,
)

__all__ = [
    "ObjectExistsError",
    "RetryPolicy",
    "Store",
    "StorageWriteError",
]

_UNCONDITIONAL_MAX = 1 << 26  # largest object write_if compares where it cannot be atomic
_BLOCK_SIZE = 16 << 20  # S3 part size / read-ahead block for streaming transfers
# back ends whose "wb" files upload on close and can abort (discard) an unfinished upload
_STREAMING_WRITE = S3 | {"gs", "gcs", "abfs", "abfss", "az"}


class Store:
    """A directory-like place: a local path or any fsspec URL (file://, s3://, gs://,
    memory://, http(s):// read-only). Safe to use from threads, and after os.fork()."""

    def __init__(
        self,
        root: str,
        storage_options: dict[str, Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not isinstance(root, str) or not root.strip() or "\x00" in root:
            raise ConfigurationError(
                f"storage root must be a non-empty path or URL, not {redact(repr(root))}"
            )
        self.root = root
        self.display = redact(root)
        self.retry = retry if retry is not None else RetryPolicy.from_env()
        options = dict(storage_options or {})
        options_token = fsspec.utils.tokenize(options)
        self._protocol = "file"
        self.local_path: Path | None = None
        if "::" in root.split("://", 1)[0]:
            raise ConfigurationError(f"chained fsspec URLs are not supported: {self.display}")
        if not is_url(root):
            self.local_path = Path(root).expanduser().absolute()
        else:
            scheme = root.split("://", 1)[0].lower()
            try:
                parts = urlsplit(root)
            except ValueError as exc:
                raise ConfigurationError(f"invalid storage URL {self.display}: {exc}") from None
            if scheme == "file":
                if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
                    raise ConfigurationError(f"unsupported file URL {self.display}")
                self.local_path = Path(unquote(parts.path) or "/")
            else:
                try:
                    fsspec.get_filesystem_class(scheme)
                except (ValueError, ImportError) as exc:
                    raise ConfigurationError(
                        f"unsupported storage URL {self.display}: {redact(str(exc))}"
                    ) from None
                self._protocol = scheme
        self.is_local = self.local_path is not None
        self._backend = Backend(self._protocol, options, options_token, self.retry, self.display)

    def __repr__(self) -> str:
        return f"Store({self.display!r})"

    def url(self, name: str) -> str:
        """Full URL (or local path, for a path root) of the child object `name`."""
        return join(self.root, name)

    def _path(self, name: str) -> Path:
        assert self.local_path is not None
        return self.local_path.joinpath(*check_name(name))

    # -- operations ------------------------------------------------------------------------

    def read_bytes(self, name: str, *, max_bytes: int) -> bytes:
        """The whole object, at most `max_bytes` long (IntegrityError if larger: reading stops
        at max_bytes + 1, so a huge object never lands in memory)."""
        if max_bytes < 0:
            raise ConfigurationError(f"max_bytes must be >= 0, not {max_bytes!r}")
        url = self.url(name)
        if self.is_local:
            data = _localdir.read_bytes(self._path(name), max_bytes + 1)
        else:
            deadline = Deadline("read", redact(url), self.retry)
            fs = self._backend.fs()
            if getattr(fs, "async_impl", False):

                def fetch() -> bytes:  # retried whole: a stream cannot resume in the middle
                    reader = RemoteReader(
                        fs, self._protocol, url, deadline, lambda fn: fn(), max_bytes + 1
                    )
                    try:
                        return read_all(reader.open(head=False), max_bytes + 1)
                    finally:
                        reader.close()

                data = self._backend.run("read", url, fetch, deadline=deadline)
            else:  # in-process filesystems (memory://): nothing can be slow
                data = self._backend.run("read", url, lambda: self._read_remote(url, max_bytes + 1))
        if len(data) > max_bytes:
            raise IntegrityError(f"{redact(url)} is larger than the allowed {max_bytes} bytes")
        return data

    def _read_remote(self, url: str, limit: int) -> bytes:
        fs = self._backend.fs()
        if self._protocol in HTTP:  # stream: servers may ignore Range and send everything
            with fs.open(url, "rb", block_size=0) as f:
                return read_bounded(f, limit)
        try:
            data: bytes = fs.cat_file(url, start=0, end=limit)  # one ranged GET
            return data
        except Exception as exc:
            if find_code(exc, "InvalidRange"):  # a range from 0 is unsatisfiable only if empty
                return b""
            raise

    def write_bytes(self, name: str, data: bytes, *, create_only: bool = False) -> None:
        """Store `data` whole: a durable atomic replace locally, one PUT remotely.

        `create_only` never replaces an object: If-None-Match on S3, link() locally. If the
        object already holds exactly `data` that counts as success (a retried PUT whose first
        response was lost looks just like that, and aiohttp itself resends idempotent PUTs on
        dropped connections); different content raises ObjectExistsError.
        """
        data = bytes(data)
        url = self.url(name)
        if self.is_local:
            _localdir.write_bytes(self._path(name), data, create_only)
            return
        self._backend.check_writable(url)

        conditional = _cas.writer(self._protocol) if create_only else None

        def put() -> None:
            try:
                if conditional is not None:  # fsspec's mode="create" is not honoured everywhere
                    conditional(self._backend.fs(), url, data, None)
                    return
                self._backend.fs().pipe_file(
                    url, data, mode="create" if create_only else "overwrite"
                )
            except Exception as exc:
                if classify(exc) is Kind.EXISTS:
                    try:
                        same = self._read_remote(url, len(data) + 1) == data
                    except Exception as read_exc:
                        if is_transient(read_exc):
                            raise
                        same = False
                    if not same:
                        raise translate(exc, "create", redact(url), Kind.EXISTS) from None
                    return
                raise

        self._backend.run("write", url, put)

    # -- compare-and-swap (see _cas.py) ----------------------------------------------------

    @property
    def supports_cas(self) -> bool:
        """Whether `write_if` is atomic here (a local directory, S3, GCS, Azure, memory://)."""
        return self.is_local or self._protocol in _cas.ATOMIC_PROTOCOLS

    def read_versioned(self, name: str, *, max_bytes: int) -> tuple[bytes, str]:
        """The whole object (bounded like read_bytes) and its version, read together: the
        token `write_if` takes. ObjectNotFoundError if there is none."""
        url = self.url(name)
        if self.is_local:
            path = self._path(name)
            try:
                data, version = _cas.local_read(path, max_bytes + 1)
            except OSError as exc:
                raise local_error(exc, "read", path) from exc
        else:
            read = _cas.reader(self._protocol)
            if read is None:  # no versions here: the content stands for one
                data = self.read_bytes(name, max_bytes=max_bytes)
                return data, _cas.content_version(data)
            deadline = Deadline("read", redact(url), self.retry)  # see _fetch.py
            data, version = self._backend.run(
                "read",
                url,
                lambda: read(self._backend.fs(), url, max_bytes + 1, deadline),
                deadline=deadline,
            )
        if len(data) > max_bytes:
            raise IntegrityError(f"{redact(url)} is larger than the allowed {max_bytes} bytes")
        return data, version

    def write_if(self, name: str, data: bytes, *, version: str | None) -> str:
        """Compare-and-swap: store `data` only if the object is still at `version` (None: only
        if there is none); return the new version. ObjectChangedError if another writer got
        there first. Where `supports_cas` is False this is a read, compare and write: racy,
        for callers that were told so (MirrorOptions.allow_unconditional).

        A write whose response was lost may have landed: when the condition fails, an object
        holding exactly `data` counts as this write (its version is returned).
        """
        data = bytes(data)
        url = self.url(name)
        shown = redact(url)
        write = _cas.writer(self._protocol)
        if not self.is_local:
            self._backend.check_writable(url)

        def changed() -> ObjectChangedError:
            what = "created" if version is None else "replaced"
            return ObjectChangedError(
                errno.EEXIST, f"cannot write {shown}: it was {what} by another writer meanwhile"
            )

        def ours() -> str | None:
            try:
                found, current = self.read_versioned(name, max_bytes=len(data))
            except (ObjectNotFoundError, IntegrityError):
                return None
            return current if found == data else None

        def attempt() -> str:
            try:
                if self.is_local:
                    return _cas.local_write_if(self._path(name), data, version)
                assert write is not None
                return write(self._backend.fs(), url, data, version)
            except _cas.Unsupported as exc:
                raise StorageError(
                    f"cannot write {shown} conditionally: {exc.strerror}; see "
                    "MirrorOptions.allow_unconditional"
                ) from None
            except Exception as exc:
                if isinstance(exc, ResumableError) or classify(exc) is not Kind.EXISTS:
                    raise
                mine = ours()
                if mine is None:
                    raise changed() from None
                return mine

        if self.is_local:
            try:
                return attempt()
            except TimeoutError as exc:  # another writer holds the lock: try again later
                raise SourceUnreachableError(f"cannot write {shown}: {exc.strerror}") from None
            except OSError as exc:
                if isinstance(exc, ResumableError):
                    raise
                raise local_error(exc, "write", self._path(name)) from exc
        if write is not None:
            return self._backend.run("write", url, attempt)
        # no conditional writes here: read, compare, write (not atomic; see above)
        try:
            current: str | None = self.read_versioned(name, max_bytes=_UNCONDITIONAL_MAX)[1]
        except ObjectNotFoundError:
            current = None
        if current != version:
            mine = ours()
            if mine is None:
                raise changed()
            return mine
        self.write_bytes(name, data)
        return _cas.content_version(data)

    @contextlib.contextmanager
    def open_write(self, name: str) -> Iterator[BinaryIO]:
        """Stream a large object. It appears only when the block exits cleanly; on an
        exception nothing appears (temp file removed / multipart upload aborted)."""
        url = self.url(name)
        if self.is_local:
            with _localdir.open_write(self._path(name)) as fh:
                yield fh
            return
        self._backend.check_writable(url)
        if self._protocol not in _STREAMING_WRITE:  # e.g. memory://: spool, then one put
            with tempfile.TemporaryFile() as spool:
                yield spool
                self._backend.run("write", url, lambda: self._put_spool(spool, url))
            return
        # no request yet: S3 uploads parts as the buffer fills and completes on close
        f = self._backend.run(
            "open",
            url,
            lambda: self._backend.fs(stream=True).open(url, "wb", block_size=_BLOCK_SIZE),
            retry=False,
        )
        try:
            # Guarded forwards the rest of the file API through __getattr__: a BinaryIO in
            # behaviour, not in its declared type
            yield Guarded(f, "write", redact(url))  # type: ignore[misc]
            self._backend.run("finish writing", url, f.close, retry=False)
        except BaseException:
            discard(f)
            raise

    def _put_spool(self, spool: Any, url: str) -> None:
        spool.seek(0)
        self._backend.fs().pipe_file(url, spool.read())

    @contextlib.contextmanager
    def open_read(self, name: str) -> Iterator[BinaryIO]:
        """Stream an object; read it sequentially (plain HTTP servers cannot seek). Errors
        are classified like read_bytes."""
        url = self.url(name)
        if self.is_local:
            with _localdir.open_read(self._path(name)) as local:
                yield local
            return
        fs = self._backend.fs()
        if getattr(fs, "async_impl", False):
            # HTTP, S3, GCS, Azure: one deadline for the whole stream (see _fetch.py); on
            # object stores each ranged GET is retried on its own under our policy (what is
            # read is hash-checked by the caller, so no pinning to one version is needed)
            deadline = Deadline("read", redact(url), self.retry)
            f = RemoteReader(
                fs,
                self._protocol,
                url,
                deadline,
                lambda fn: self._backend.run("read", url, fn, deadline=deadline),
            ).open()
        else:
            f = self._backend.run("open", url, lambda: self._backend.fs().open(url, "rb"))
        try:
            # Guarded: a BinaryIO in behaviour (see open_write), not in its declared type
            yield Guarded(f, "read", redact(url))  # type: ignore[misc]
        finally:
            with contextlib.suppress(Exception):
                f.close()

    def delete(self, name: str, *, missing_ok: bool = True) -> None:
        """Remove an object; ObjectNotFoundError if it is missing and not `missing_ok`."""
        url = self.url(name)
        if self.is_local:
            _localdir.delete(self._path(name), missing_ok=missing_ok)
            return
        self._backend.check_writable(url)
        seen = missing_ok

        def rm() -> None:
            nonlocal seen
            if not seen:  # S3 deletes of missing keys succeed, so look first (once)
                if not self._exists_remote(url):
                    raise translate(FileNotFoundError(url), "delete", redact(url), Kind.MISSING)
                seen = True
            try:
                self._backend.fs().rm_file(url)
            except Exception as exc:
                if classify(exc) is not Kind.MISSING:
                    raise

        self._backend.run("delete", url, rm)

    def list_dir(self, name: str) -> dict[str, float | None]:
        """The objects directly under the directory `name`: {child name: modification time
        (seconds since the epoch; None if the back end does not say)}. Empty if there is none;
        unreachable or forbidden raises, like every read."""
        url = self.url(name)
        if self.is_local:
            return _localdir.list_dir(self._path(name))
        if self._protocol in HTTP:
            raise StorageError(f"cannot list {redact(url)}: http(s) stores have no listing")

        def ls() -> dict[str, float | None]:
            fs = self._backend.fs()
            with contextlib.suppress(Exception):
                fs.invalidate_cache(url)  # other writers change listings: never reuse one
            try:
                entries = fs.ls(url, detail=True)
            except Exception as exc:
                if classify(exc) is Kind.MISSING:
                    return {}
                raise
            return {
                str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: mtime(e)
                for e in entries
                if e.get("type") == "file"
            }

        return self._backend.run("list", url, ls)

    def copy(self, src: str, dst: str) -> None:
        """Copy the object `src` to `dst` in this store, server-side where the store offers it
        (S3 CopyObject, GCS rewrite): no data passes through this process. `dst` appears
        complete or not at all; ObjectNotFoundError if `src` is missing."""
        src_url, dst_url = self.url(src), self.url(dst)
        if self.is_local:
            with self.open_read(src) as fin, self.open_write(dst) as fout:
                shutil.copyfileobj(fin, fout, 8 << 20)
            return
        self._backend.check_writable(dst_url)
        self._backend.run("copy", src_url, lambda: self._backend.fs().copy(src_url, dst_url))

    def exists(self, name: str) -> bool:
        """Whether something exists under `name`. Never False because the store could not be
        reached: that raises SourceUnreachableError (fsspec's exists() would say False)."""
        url = self.url(name)
        if self.is_local:
            return _localdir.exists(self._path(name))
        deadline = Deadline("check", redact(url), self.retry)
        return self._backend.run(
            "check", url, lambda: self._exists_remote(url, deadline), deadline=deadline
        )

    def _exists_remote(self, url: str, deadline: Deadline | None = None) -> bool:
        fs = self._backend.fs()
        try:
            if deadline is not None and getattr(fs, "async_impl", False):
                deadline.run(fs.loop, lambda: fs._info(url))
            else:
                fs.info(url)
            return True
        except Exception as exc:
            if classify(exc) is Kind.MISSING:
                return False
            raise
