"""Where checkpoints live: a local directory or any fsspec URL, behind one small `Store` API.

Local writes are durable atomic replaces (`durable.py`); remote writes are single PUTs or
multipart uploads, so an object appears complete or not at all. The point of this module is
telling failures apart: a *missing* resume source means a fresh start, an *unreachable* one
must be an error (silently redoing a week of work is the worst outcome). Transient failures
are retried with bounded exponential backoff and full jitter (tenacity), then surface as
`SourceUnreachableError`; permanent ones (403, no such bucket) fail at once as `StorageError`.

Retry layering: whole-object operations (read_bytes, write_bytes, exists, delete, opening)
are retried here, so botocore's retries are off (``total_max_attempts=1``) and s3fs's own loop
is cut to one try. Streaming transfers on S3 (`open_read`/`open_write` parts) cannot be
replayed from here: their requests get botocore's "standard" retries with the same attempt
budget. A user's ``config_kwargs["retries"]`` wins. Below both, aiohttp resends an idempotent
request once when a kept-alive connection closes unanswered (RFC 9112). Credentials never
appear in messages: URLs are redacted and storage_options are never shown.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote, unquote, urlsplit

import fsspec
import fsspec.utils
import tenacity
from fsspec.spec import AbstractBufferedFile

from . import _cas, durable
from ._fetch import Deadline, RemoteReader, read_all
from ._storage_errors import (
    Guarded,
    Kind,
    RetryPolicy,
    classify,
    describe,
    find_code,
    is_transient,
    raise_clean,
    redact,
    safe_cause,
    translate,
)
from .errors import (
    CheckpointWriteError,
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
    "clear_cache",
    "is_url",
    "join",
    "redact",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_READ_CHUNK = 1 << 20
_UNCONDITIONAL_MAX = 1 << 26  # largest object write_if compares where it cannot be atomic
_BLOCK_SIZE = 16 << 20  # S3 part size / read-ahead block for streaming transfers
_S3 = frozenset({"s3", "s3a"})
_HTTP = frozenset({"http", "https"})
_QUOTED = _HTTP | {"file"}  # schemes whose paths are percent-encoded
# back ends whose "wb" files upload on close and can abort (discard) an unfinished upload
_STREAMING_WRITE = _S3 | {"gs", "gcs", "abfs", "abfss", "az"}
# environment variables the back end's client reads when it is made (part of the cache key)
_ENV_PREFIXES: dict[str, tuple[str, ...]] = {
    **{p: ("AWS_",) for p in _S3},
    **{p: ("STORAGE_EMULATOR_HOST", "GOOGLE_", "GCLOUD_") for p in ("gs", "gcs")},
    **{p: ("AZURE_STORAGE_",) for p in ("az", "abfs", "abfss")},
}


def is_url(s: str) -> bool:
    """True for "scheme://..." strings (s3://, file://, memory://, http(s)://); False for paths."""
    return bool(_URL_RE.match(s))


def _check_name(name: str) -> list[str]:
    """Split a relative object name into its parts, rejecting anything that could escape."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"object name must be a non-empty string, not {name!r}")
    bad = next((c for c in name if ord(c) < 32 or ord(c) == 127 or c in "\\?#"), None)
    if bad is not None:
        raise ConfigurationError(f"object name {name!r} contains the forbidden character {bad!r}")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ConfigurationError(
            f"object name {name!r} must be relative, without empty, '.' or '..' parts"
        )
    return parts


def join(base: str, name: str) -> str:
    """The child `name` ("a/b.json" allowed) of a directory path or URL; a query string or
    fragment on the base (e.g. a container SAS token) stays at the end, where it belongs."""
    _check_name(name)
    if not is_url(base):
        return os.path.join(base, name)
    scheme = base.split("://", 1)[0]
    try:
        parts = urlsplit(base)
    except ValueError as exc:
        raise ConfigurationError(f"invalid URL {redact(base)}: {exc}") from None
    child = quote(name, safe="/!$&'()*+,;=:@~") if scheme.lower() in _QUOTED else name
    path = f"{parts.path.rstrip('/')}/{child}"
    query = f"?{parts.query}" if parts.query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{scheme}://{parts.netloc}{path}{query}{fragment}"


def _read_bounded(f: Any, limit: int) -> bytes:
    """Read until EOF or `limit` bytes, whichever comes first (short reads allowed)."""
    chunks, n = [], 0
    while n < limit:
        chunk = f.read(min(_READ_CHUNK, limit - n))
        if not chunk:
            break
        chunks.append(chunk)
        n += len(chunk)
    return b"".join(chunks)


class _Passthrough(Exception):
    """Carries a caller's error through durable.atomic_writer, which would turn any OSError
    (our StorageErrors are OSErrors) into a CheckpointWriteError."""

    def __init__(self, exc: ResumableError) -> None:
        self.exc = exc


def _discard(f: Any) -> None:
    """Abandon an unfinished remote upload so that nothing appears (aborts S3 multipart)."""
    with contextlib.suppress(Exception):
        f.discard()
    if isinstance(f, AbstractBufferedFile):
        f.closed = True  # close() would otherwise commit what was written so far


# Filesystem instances, per process: building an s3fs client costs 0.1-0.3 s, and fsspec
# instances (event loop, sessions) must not cross a fork. Ours are built outside fsspec's own
# cache (skip_instance_cache) because we tune them (retries, timeouts); the key includes the
# AWS_* environment, which botocore reads when the client is made.
_cache: dict[tuple[Any, ...], Any] = {}
_cache_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _cache_lock
    _cache_lock = threading.Lock()
    _cache.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def clear_cache() -> None:
    """Forget the filesystem instances Stores share (e.g. after changing credentials)."""
    with _cache_lock:
        _cache.clear()


def _local_error(exc: OSError, op: str, path: Path) -> ResumableError:
    kind = Kind.MISSING if exc.errno == errno.ENOENT else Kind.PERMANENT
    return translate(exc, op, str(path), kind)


def _ago(since: float) -> float:
    return time.monotonic() - since


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
        self._options = dict(storage_options or {})
        self._options_token = fsspec.utils.tokenize(self._options)
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
        # A retry phase: from the first failed attempt to the next success. Its first retry is
        # logged as a warning, the others at DEBUG (one line per phase, not one per attempt).
        self._retrying_since: float | None = None

    def __repr__(self) -> str:
        return f"Store({self.display!r})"

    def url(self, name: str) -> str:
        """Full URL (or local path, for a path root) of the child object `name`."""
        return join(self.root, name)

    def _path(self, name: str) -> Path:
        assert self.local_path is not None
        return self.local_path.joinpath(*_check_name(name))

    # -- filesystems and retries -----------------------------------------------------------

    def _fs(self, stream: bool = False) -> Any:
        """A filesystem for this process, shared by Stores with equal settings (see `_cache`)."""
        stream = stream and self._protocol in _S3
        prefixes = _ENV_PREFIXES.get(self._protocol, ())
        env = tuple(sorted(kv for kv in os.environ.items() if kv[0].startswith(prefixes)))
        key = (
            os.getpid(),
            self._protocol,
            stream,
            self.retry,
            self._options_token,
            env,
        )
        with _cache_lock:
            fs = _cache.get(key)
            if fs is None:
                fs = _cache[key] = self._make_fs(stream=stream)
        return fs

    def _make_fs(self, *, stream: bool) -> Any:
        opts = dict(self._options)
        policy = self.retry
        if self._protocol in _S3:
            config = dict(opts.get("config_kwargs") or {})
            config.setdefault("connect_timeout", policy.connect_timeout_s)
            config.setdefault("read_timeout", policy.read_timeout_s)
            if "retries" not in config:
                config["retries"] = (
                    {"mode": "standard", "total_max_attempts": policy.attempts}
                    if stream
                    else {"total_max_attempts": 1}  # NB {"max_attempts": 1} would mean 2
                )
            opts["config_kwargs"] = config
            opts.setdefault("use_listings_cache", False)  # other processes write too
        elif self._protocol in _HTTP:
            import aiohttp

            client = dict(opts.get("client_kwargs") or {})
            client.setdefault(
                "timeout",
                aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=policy.connect_timeout_s,
                    sock_read=policy.read_timeout_s,
                ),
            )
            opts["client_kwargs"] = client
        try:
            fs = fsspec.filesystem(self._protocol, skip_instance_cache=True, **opts)
        except Exception as exc:  # never show the options: they may hold keys
            raise ConfigurationError(
                f"cannot set up storage for {self.display}: {type(exc).__name__}"
            ) from None
        if self._protocol in _S3:
            fs.retries = 1  # s3fs's own loop (no jitter) would multiply our attempts
        unretried = getattr(getattr(type(fs), "_request", None), "__wrapped__", None)
        if self._protocol in ("gs", "gcs") and unretried is not None:
            # gcsfs retries every request 6 times (sleeping 1+2+4+8+16 s) whatever it is told:
            # this instance calls the undecorated request, so our policy alone retries
            fs._request = types.MethodType(unretried, fs)
        retry_policy = getattr(getattr(fs, "service_client", None), "_config", None)
        retry_policy = getattr(retry_policy, "retry_policy", None)
        if (
            self._protocol in ("az", "abfs", "abfss")
            and retry_policy is not None
            and hasattr(retry_policy, "total_retries")
        ):
            # the Azure SDK retries 3 times, 15 s apart and more: ours owns retries (and the
            # policy object is shared by every blob client this filesystem makes)
            retry_policy.total_retries = 0
        return fs

    def _run(
        self,
        op: str,
        url: str,
        fn: Callable[[], T],
        *,
        retry: bool = True,
        deadline: Deadline | None = None,
    ) -> T:
        """Call `fn`, retrying transient failures under the policy (never past `deadline`);
        raise our errors."""
        shown = redact(url)
        attempts, start = 0, time.monotonic()

        def attempt() -> T:
            nonlocal attempts
            if deadline is not None:
                deadline.check()
            attempts += 1
            return fn()

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            first = self._retrying_since is None
            if first:
                self._retrying_since = time.monotonic()
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "%s %s failed (attempt %d of at most %d), retrying in %.2f s%s: %s",
                op,
                shown,
                state.attempt_number,
                self.retry.attempts,
                state.next_action.sleep if state.next_action else 0.0,
                "; further retries are logged at DEBUG until it succeeds" if first else "",
                describe(exc) if exc else "?",
            )

        try:
            if not retry:
                return attempt()
            left = None if deadline is None else max(0.0, deadline.remaining())
            result = self.retry.retrying(before_sleep, left)(attempt)
            since, self._retrying_since = self._retrying_since, None
            if since is not None:
                log.info("%s reachable again after %.1f s of retries", self.display, _ago(since))
            return result
        except ResumableError:
            raise
        except Exception as exc:
            err = translate(exc, op, shown)
            if isinstance(err, ObjectNotFoundError) and self._no_such_bucket(url):
                err = StorageError(
                    f"cannot {op} {shown}: the bucket does not exist (check its name)"
                )
            if retry and isinstance(err, SourceUnreachableError):
                elapsed = time.monotonic() - start
                plural = "s" * (attempts != 1)
                err = SourceUnreachableError(
                    f"{err} after {attempts} attempt{plural} in {elapsed:.1f} s"
                )
            cause = safe_cause(exc)
        raise_clean(err, cause)
        raise AssertionError("unreachable")  # pragma: no cover

    def _no_such_bucket(self, url: str) -> bool:
        """GCS answers a missing bucket like a missing object (404): ask about the bucket, so
        that a typo in its name is an error, never a fresh start (S3 and Azure say so)."""
        if self._protocol not in ("gs", "gcs"):
            return False
        fs = self._fs()
        try:
            fs.call("GET", "b/{}", fs.split_path(url)[0], json_out=True)
        except FileNotFoundError:
            return True
        except Exception:
            return False  # cannot tell: the object's own answer stands
        return False

    def _check_writable(self, url: str) -> None:
        if self._protocol in _HTTP:
            raise StorageError(f"cannot write {redact(url)}: http(s) stores are read-only")

    # -- operations ------------------------------------------------------------------------

    def read_bytes(self, name: str, *, max_bytes: int) -> bytes:
        """The whole object, at most `max_bytes` long (IntegrityError if larger: reading stops
        at max_bytes + 1, so a huge object never lands in memory)."""
        if max_bytes < 0:
            raise ConfigurationError(f"max_bytes must be >= 0, not {max_bytes!r}")
        url = self.url(name)
        if self.is_local:
            path = self._path(name)
            try:
                with open(path, "rb") as f:
                    data = _read_bounded(f, max_bytes + 1)
            except OSError as exc:
                raise _local_error(exc, "read", path) from exc
        else:
            deadline = Deadline("read", redact(url), self.retry)
            fs = self._fs()
            if getattr(fs, "async_impl", False):

                def fetch() -> bytes:  # retried whole: a stream cannot resume in the middle
                    reader = RemoteReader(
                        fs, self._protocol, url, deadline, lambda fn: fn(), max_bytes + 1
                    )
                    try:
                        return read_all(reader.open(head=False), max_bytes + 1)
                    finally:
                        reader.close()

                data = self._run("read", url, fetch, deadline=deadline)
            else:  # in-process filesystems (memory://): nothing can be slow
                data = self._run("read", url, lambda: self._read_remote(url, max_bytes + 1))
        if len(data) > max_bytes:
            raise IntegrityError(f"{redact(url)} is larger than the allowed {max_bytes} bytes")
        return data

    def _read_remote(self, url: str, limit: int) -> bytes:
        fs = self._fs()
        if self._protocol in _HTTP:  # stream: servers may ignore Range and send everything
            with fs.open(url, "rb", block_size=0) as f:
                return _read_bounded(f, limit)
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
            path = self._path(name)
            try:
                self._write_local(path, data, create_only)
            except FileExistsError as exc:
                try:
                    with open(path, "rb") as f:
                        same = _read_bounded(f, len(data) + 1) == data
                except OSError:
                    same = False
                if not same:
                    raise translate(exc, "create", str(path), Kind.EXISTS) from exc
            return
        self._check_writable(url)

        conditional = _cas.writer(self._protocol) if create_only else None

        def put() -> None:
            try:
                if conditional is not None:  # fsspec's mode="create" is not honoured everywhere
                    conditional(self._fs(), url, data, None)
                    return
                self._fs().pipe_file(url, data, mode="create" if create_only else "overwrite")
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

        self._run("write", url, put)

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
                raise _local_error(exc, "read", path) from exc
        else:
            read = _cas.reader(self._protocol)
            if read is None:  # no versions here: the content stands for one
                data = self.read_bytes(name, max_bytes=max_bytes)
                return data, _cas.content_version(data)
            deadline = Deadline("read", redact(url), self.retry)  # see _fetch.py
            data, version = self._run(
                "read",
                url,
                lambda: read(self._fs(), url, max_bytes + 1, deadline),
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
            self._check_writable(url)

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
                return write(self._fs(), url, data, version)
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
                raise _local_error(exc, "write", self._path(name)) from exc
        if write is not None:
            return self._run("write", url, attempt)
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

    def _write_local(self, path: Path, data: bytes, create_only: bool) -> None:
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
            raise StorageWriteError(
                exc.errno, f"cannot write {shown}: {exc.strerror or exc}"
            ) from exc

    @contextlib.contextmanager
    def open_write(self, name: str) -> Iterator[BinaryIO]:
        """Stream a large object. It appears only when the block exits cleanly; on an
        exception nothing appears (temp file removed / multipart upload aborted)."""
        url = self.url(name)
        if self.is_local:
            path = self._path(name)
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
            return
        self._check_writable(url)
        if self._protocol not in _STREAMING_WRITE:  # e.g. memory://: spool, then one put
            with tempfile.TemporaryFile() as spool:
                yield spool
                self._run("write", url, lambda: self._put_spool(spool, url))
            return
        # no request yet: S3 uploads parts as the buffer fills and completes on close
        f = self._run(
            "open",
            url,
            lambda: self._fs(stream=True).open(url, "wb", block_size=_BLOCK_SIZE),
            retry=False,
        )
        try:
            # Guarded forwards the rest of the file API through __getattr__: a BinaryIO in
            # behaviour, not in its declared type
            yield Guarded(f, "write", redact(url))  # type: ignore[misc]
            self._run("finish writing", url, f.close, retry=False)
        except BaseException:
            _discard(f)
            raise

    def _put_spool(self, spool: Any, url: str) -> None:
        spool.seek(0)
        self._fs().pipe_file(url, spool.read())

    @contextlib.contextmanager
    def open_read(self, name: str) -> Iterator[BinaryIO]:
        """Stream an object; read it sequentially (plain HTTP servers cannot seek). Errors
        are classified like read_bytes."""
        url = self.url(name)
        if self.is_local:
            path = self._path(name)
            try:
                local = open(path, "rb")  # noqa: SIM115 - closed by the with below
            except OSError as exc:
                raise _local_error(exc, "read", path) from exc
            with local:
                yield local
            return
        fs = self._fs()
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
                lambda fn: self._run("read", url, fn, deadline=deadline),
            ).open()
        else:
            f = self._run("open", url, lambda: self._fs().open(url, "rb"))
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
            path = self._path(name)
            try:
                path.unlink()
                durable.fsync_dir(path.parent)
            except FileNotFoundError as exc:
                if not missing_ok:
                    raise _local_error(exc, "delete", path) from exc
            except OSError as exc:
                raise _local_error(exc, "delete", path) from exc
            return
        self._check_writable(url)
        seen = missing_ok

        def rm() -> None:
            nonlocal seen
            if not seen:  # S3 deletes of missing keys succeed, so look first (once)
                if not self._exists_remote(url):
                    raise translate(FileNotFoundError(url), "delete", redact(url), Kind.MISSING)
                seen = True
            try:
                self._fs().rm_file(url)
            except Exception as exc:
                if classify(exc) is not Kind.MISSING:
                    raise

        self._run("delete", url, rm)

    def list_dir(self, name: str) -> dict[str, float | None]:
        """The objects directly under the directory `name`: {child name: modification time
        (seconds since the epoch; None if the back end does not say)}. Empty if there is none;
        unreachable or forbidden raises, like every read."""
        url = self.url(name)
        if self.is_local:
            path = self._path(name)
            found: dict[str, float | None] = {}
            try:
                with os.scandir(path) as it:
                    for entry in it:
                        if entry.is_file(follow_symlinks=False):
                            found[entry.name] = entry.stat(follow_symlinks=False).st_mtime
            except (FileNotFoundError, NotADirectoryError):
                return {}
            except OSError as exc:
                raise _local_error(exc, "list", path) from exc
            return found
        if self._protocol in _HTTP:
            raise StorageError(f"cannot list {redact(url)}: http(s) stores have no listing")

        def ls() -> dict[str, float | None]:
            fs = self._fs()
            with contextlib.suppress(Exception):
                fs.invalidate_cache(url)  # other writers change listings: never reuse one
            try:
                entries = fs.ls(url, detail=True)
            except Exception as exc:
                if classify(exc) is Kind.MISSING:
                    return {}
                raise
            return {
                str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: _mtime(e)
                for e in entries
                if e.get("type") == "file"
            }

        return self._run("list", url, ls)

    def copy(self, src: str, dst: str) -> None:
        """Copy the object `src` to `dst` in this store, server-side where the store offers it
        (S3 CopyObject, GCS rewrite): no data passes through this process. `dst` appears
        complete or not at all; ObjectNotFoundError if `src` is missing."""
        src_url, dst_url = self.url(src), self.url(dst)
        if self.is_local:
            with self.open_read(src) as fin, self.open_write(dst) as fout:
                shutil.copyfileobj(fin, fout, 8 << 20)
            return
        self._check_writable(dst_url)
        self._run("copy", src_url, lambda: self._fs().copy(src_url, dst_url))

    def exists(self, name: str) -> bool:
        """Whether something exists under `name`. Never False because the store could not be
        reached: that raises SourceUnreachableError (fsspec's exists() would say False)."""
        url = self.url(name)
        if self.is_local:
            path = self._path(name)
            try:
                path.stat()
                return True
            except (FileNotFoundError, NotADirectoryError):
                return False
            except OSError as exc:
                raise _local_error(exc, "check", path) from exc
        deadline = Deadline("check", redact(url), self.retry)
        return self._run(
            "check", url, lambda: self._exists_remote(url, deadline), deadline=deadline
        )

    def _exists_remote(self, url: str, deadline: Deadline | None = None) -> bool:
        fs = self._fs()
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


def _mtime(entry: dict[str, Any]) -> float | None:
    """An fsspec listing entry's modification time in epoch seconds (each back end names it
    differently: S3 LastModified, GCS mtime/updated, Azure last_modified, memory created)."""
    for key in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = entry.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            import datetime

            try:
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None
