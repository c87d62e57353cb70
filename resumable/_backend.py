"""A Store's remote side: the fsspec filesystem it talks to, and one call on it run under the
`RetryPolicy`, its last failure translated into one of our errors (plus two back-end quirks the
Store's operations need: aborting an unfinished upload, and a listing entry's time).

Retry layering: whole-object operations (read_bytes, write_bytes, exists, delete, opening)
are retried here (`Backend.run`), so botocore's retries are off (``total_max_attempts=1``) and
s3fs's own loop is cut to one try. Streaming transfers on S3 (`open_read`/`open_write` parts)
cannot be replayed from here: their requests get botocore's "standard" retries with the same
attempt budget. A user's ``config_kwargs["retries"]`` wins. Below both, aiohttp resends an
idempotent request once when a kept-alive connection closes unanswered (RFC 9112). gcsfs's and
the Azure SDK's own retry loops are switched off for the same reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import types
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
import tenacity
from fsspec.spec import AbstractBufferedFile

from ._fetch import Deadline
from ._storage_errors import RetryPolicy, describe, raise_clean, safe_cause, translate
from ._urls import redact
from .errors import (
    ConfigurationError,
    ObjectNotFoundError,
    ResumableError,
    SourceUnreachableError,
    StorageError,
)

# the Store's logger: retries have always been reported as resumable._storage
log = logging.getLogger("resumable._storage")
T = TypeVar("T")

S3 = frozenset({"s3", "s3a"})
HTTP = frozenset({"http", "https"})

# environment variables the back end's client reads when it is made (part of the cache key)
_ENV_PREFIXES: dict[str, tuple[str, ...]] = {
    **{p: ("AWS_",) for p in S3},
    **{p: ("STORAGE_EMULATOR_HOST", "GOOGLE_", "GCLOUD_") for p in ("gs", "gcs")},
    **{p: ("AZURE_STORAGE_",) for p in ("az", "abfs", "abfss")},
}


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


def _ago(since: float) -> float:
    return time.monotonic() - since


def discard(f: Any) -> None:
    """Abandon an unfinished remote upload so that nothing appears (aborts S3 multipart)."""
    with contextlib.suppress(Exception):
        f.discard()
    if isinstance(f, AbstractBufferedFile):
        f.closed = True  # close() would otherwise commit what was written so far


def mtime(entry: dict[str, Any]) -> float | None:
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


class Backend:
    """The fsspec side of one Store: its filesystem (shared by Stores with equal settings, see
    `_cache`) and its calls, retried under `retry`. Pickles with the Store (no filesystem
    inside: each process builds its own)."""

    def __init__(
        self,
        protocol: str,
        options: dict[str, Any],
        options_token: str,
        retry: RetryPolicy,
        display: str,
    ) -> None:
        self._protocol = protocol
        self._options = options
        self._options_token = options_token
        self.retry = retry
        self.display = display
        # A retry phase: from the first failed attempt to the next success. Its first retry is
        # logged as a warning, the others at DEBUG (one line per phase, not one per attempt).
        self._retrying_since: float | None = None

    def fs(self, stream: bool = False) -> Any:
        """A filesystem for this process, shared by Stores with equal settings (see `_cache`)."""
        stream = stream and self._protocol in S3
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
        if self._protocol in S3:
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
        elif self._protocol in HTTP:
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
        if self._protocol in S3:
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

    def run(
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
        fs = self.fs()
        try:
            fs.call("GET", "b/{}", fs.split_path(url)[0], json_out=True)
        except FileNotFoundError:
            return True
        except Exception:
            return False  # cannot tell: the object's own answer stands
        return False

    def check_writable(self, url: str) -> None:
        if self._protocol in HTTP:
            raise StorageError(f"cannot write {redact(url)}: http(s) stores are read-only")
