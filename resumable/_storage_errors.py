"""Storage failure handling: missing, already there, worth retrying, or permanent; and how
retries are paced (`RetryPolicy`).

fsspec back ends report failures in many shapes (s3fs turns botocore errors into builtin ones
and keeps the original as ``__cause__``; fsspec's HTTP ``info()`` turns *every* failure, even
"connection refused", into ``FileNotFoundError``). We therefore walk the whole cause chain and
let the most specific evidence decide; a bare ``FileNotFoundError`` only counts as "missing"
when nothing deeper says otherwise. Also here: turning a failure into one of our errors with
a redacted message (`translate`, through `_urls.redact`, used for every message we produce).
"""

from __future__ import annotations

import enum
import errno
import http.client
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tenacity

from ._urls import redact
from .errors import (
    ConfigurationError,
    ObjectExistsError,
    ObjectNotFoundError,
    ResumableError,
    SourceUnreachableError,
    StorageError,
)

try:
    from fsspec.exceptions import FSTimeoutError
except ImportError:  # pragma: no cover
    FSTimeoutError = ()


def _botocore() -> Any:
    """botocore's exceptions module if it is loaded, else None.

    Looked up, never imported: an exception from a library that was never imported cannot
    exist, and importing botocore and aiohttp up front would cost every process ~0.2 s.
    """
    return sys.modules.get("botocore.exceptions")


def _aiohttp() -> Any:
    return sys.modules.get("aiohttp")


class Kind(enum.Enum):
    MISSING = "missing"
    EXISTS = "exists"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchVersion"})
EXISTS_CODES = frozenset({"PreconditionFailed", "412"})
TRANSIENT_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
        "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
        "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestTimeout",
        "RequestTimeoutException", "PriorRequestNotComplete", "InternalError",
        "ServiceUnavailable", "OperationAborted", "ConditionalRequestConflict",
        "500", "502", "503", "504",
    }
)  # fmt: skip
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, n)
    for n in (
        "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "ETIMEDOUT", "EHOSTUNREACH",
        "ENETUNREACH", "ENETDOWN", "ENETRESET", "EPIPE", "EAGAIN", "EREMOTEIO",
    )
    if hasattr(errno, n)
)  # fmt: skip

_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,  # also asyncio.TimeoutError, aiohttp's ServerTimeoutError
    ConnectionError,  # refused, reset, aborted, broken pipe; http.client.RemoteDisconnected
    socket.gaierror,
    http.client.IncompleteRead,
    *((FSTimeoutError,) if isinstance(FSTimeoutError, type) else ()),
)


def chain(exc: BaseException) -> list[BaseException]:
    """The exception followed by its causes (explicit, else implicit), without cycles."""
    out: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(out) < 32:
        out.append(cur)
        seen.add(id(cur))
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    return out


def aws_code(exc: BaseException) -> tuple[str | None, int | None]:
    """(error code, HTTP status) of a botocore ClientError, else (None, None)."""
    boto = _botocore()
    if boto is None or not isinstance(exc, boto.ClientError):
        return None, None
    response = getattr(exc, "response", None) or {}
    code = (response.get("Error") or {}).get("Code")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return (str(code) if code is not None else None), status


def find_code(exc: BaseException, code: str) -> bool:
    """Whether any error in the chain is an S3 error with this code."""
    return any(aws_code(e)[0] == code for e in chain(exc))


def http_status(exc: BaseException) -> int | None:
    """HTTP status of an aiohttp response error or a botocore ClientError anywhere in the chain."""
    aiohttp = _aiohttp()
    for e in chain(exc):
        if aiohttp is not None and isinstance(e, aiohttp.ClientResponseError):
            response_status: int = e.status
            return response_status
        _code, status = aws_code(e)
        if status is not None:
            return status
    return None


def _classify_one(e: BaseException) -> Kind | None:
    cloud = _classify_cloud(e)
    if cloud is not None:
        return cloud
    boto, aiohttp = _botocore(), _aiohttp()
    if boto is not None and isinstance(e, boto.ClientError):
        code, status = aws_code(e)
        if code in NO_BUCKET_CODES:
            return Kind.PERMANENT  # a typo in the bucket name is not "no checkpoint yet"
        if code in MISSING_CODES or status == 404:
            return Kind.MISSING
        if code in EXISTS_CODES or status == 412:
            return Kind.EXISTS
        if code in TRANSIENT_CODES or status in TRANSIENT_STATUS:
            return Kind.TRANSIENT
        return Kind.PERMANENT
    if aiohttp is not None:
        if isinstance(e, aiohttp.ClientResponseError):
            if e.status in (404, 410):
                return Kind.MISSING
            if e.status == 412:
                return Kind.EXISTS
            return Kind.TRANSIENT if e.status in TRANSIENT_STATUS else Kind.PERMANENT
        if isinstance(e, aiohttp.ClientSSLError):
            return Kind.PERMANENT  # certificate trouble does not heal by waiting
        if isinstance(e, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
            return Kind.TRANSIENT
    if boto is not None:
        if isinstance(e, boto.SSLError):
            return Kind.PERMANENT
        if isinstance(e, (boto.ConnectionError, boto.HTTPClientError, boto.IncompleteReadError)):
            return Kind.TRANSIENT  # refused, DNS, connect/read timeout, connection closed
        if isinstance(e, boto.BotoCoreError):
            return Kind.PERMANENT  # no credentials, bad parameters, unknown region ...
    if isinstance(e, _NETWORK_ERRORS):
        return Kind.TRANSIENT
    if isinstance(e, FileExistsError):
        return Kind.EXISTS
    if isinstance(e, PermissionError):
        return Kind.PERMANENT
    return None  # undecided: look deeper (FileNotFoundError, OSError(EIO) from s3fs, ...)


def classify(exc: BaseException) -> Kind:
    """Decide what a failure from a remote store means; see the module docstring."""
    links = chain(exc)
    for e in links:
        kind = _classify_one(e)
        if kind is not None:
            return kind
    if isinstance(exc, FileNotFoundError):
        return Kind.MISSING
    for e in links:
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:
            return Kind.TRANSIENT
    return Kind.PERMANENT


def is_transient(exc: BaseException) -> bool:
    return classify(exc) is Kind.TRANSIENT


def describe(exc: BaseException) -> str:
    """A short, redacted reason: the most specific error in the chain."""
    links = chain(exc)
    aiohttp = _aiohttp()
    for e in links:
        cloud = _describe_cloud(e)
        if cloud is not None:
            return redact(cloud)
        code, status = aws_code(e)
        if code is not None:
            message = (getattr(e, "response", {}).get("Error") or {}).get("Message") or ""
            return redact(f"{code} (HTTP {status}): {message}".rstrip(": "))
        if aiohttp is not None and isinstance(e, aiohttp.ClientResponseError):
            return redact(f"HTTP {e.status} {e.message}")
    # fsspec's HTTP info() wraps every failure in FileNotFoundError(url): show what is below
    e = links[1] if isinstance(exc, FileNotFoundError) and len(links) > 1 else exc
    return redact(f"{type(e).__name__}: {e}")


def chain_is_clean(exc: BaseException) -> bool:
    """True if no message in the chain changes under `redact` (safe to attach as __cause__);
    suppressed contexts count too: they stay reachable as attributes."""
    todo, seen = [exc], set[int]()
    while todo and len(seen) < 64:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if redact(str(e)) != str(e) or redact(repr(e)) != repr(e):
            return False
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    return True


def translate(exc: BaseException, op: str, url: str, kind: Kind | None = None) -> ResumableError:
    """One of our errors for a failure of `op` on `url` (already redacted)."""
    kind = kind or classify(exc)
    reason = describe(exc)
    err: ResumableError
    if kind is Kind.MISSING:
        err = ObjectNotFoundError(f"{url} does not exist ({reason})")
        err.errno = errno.ENOENT
    elif kind is Kind.EXISTS:
        err = ObjectExistsError(f"cannot {op} {url}: it already exists ({reason})")
        err.errno = errno.EEXIST
    elif kind is Kind.TRANSIENT:
        err = SourceUnreachableError(f"cannot {op} {url}: unreachable ({reason})")
    else:
        hint = ""
        if find_code(exc, "NoSuchBucket"):
            hint = " - the bucket does not exist (check its name)"
        elif isinstance(exc, PermissionError) or http_status(exc) in (401, 403):
            hint = " - access denied (check credentials and permissions)"
        err = StorageError(f"cannot {op} {url}: {reason}{hint}")
    return err


def safe_cause(cause: BaseException) -> BaseException | None:
    """`cause` if no message in its chain holds a credential, else None."""
    return cause if chain_is_clean(cause) else None


def raise_clean(err: BaseException, cause: BaseException | None) -> None:
    """Raise `err` from `cause` (see `safe_cause`). Call it *after* the except block: raised
    inside one, the original failure would stay attached as ``__context__`` even with
    ``from None``, credentials and all."""
    if cause is not None:
        raise err from cause
    raise err


class Guarded:
    """Wraps a remote file so that errors while streaming surface as our error classes."""

    def __init__(self, f: Any, op: str, url: str) -> None:
        self._f, self._op, self._url = f, op, url

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._f, method)(*args)
        except (ResumableError, ValueError):  # ValueError: I/O on closed file, bad seek
            raise
        except Exception as exc:
            err, cause = translate(exc, self._op, self._url), safe_cause(exc)
        raise_clean(err, cause)

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._call("read", size)
        return data

    def readinto(self, b: Any) -> int:
        n: int = self._call("readinto", b)
        return n

    def write(self, data: Any) -> int:
        n: int = self._call("write", data)
        return n

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> Guarded:
        return self

    def __exit__(self, *exc: object) -> None:
        pass  # the Store's context manager owns the underlying file


# -- retry policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter, per-request timeouts, and a
    total deadline per fetch.

    The per-request timeouts bound a connect and the gap between two reads; a server that
    trickles one byte a second never trips them. `fetch_deadline_s` bounds a whole fetch
    (connect, body and retries): past it the read stops with SourceUnreachableError. Large
    objects earn one more second for every `fetch_min_rate` bytes received, so a legitimate
    multi-GB download on a slow link still completes while a server sending slower than that
    rate is cut off within ``fetch_deadline_s / (1 - rate / fetch_min_rate)``.
    """

    attempts: int = 6
    total_s: float = 60.0
    initial_s: float = 0.2
    max_backoff_s: float = 10.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    fetch_deadline_s: float = 300.0
    fetch_min_rate: float = 64 * 1024.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigurationError(
                f"retry attempts must be an integer >= 1, not {self.attempts!r}"
            )
        for field in ("total_s", "initial_s", "max_backoff_s"):
            if not getattr(self, field) >= 0:
                raise ConfigurationError(
                    f"retry {field} must be >= 0, not {getattr(self, field)!r}"
                )
        for field in ("connect_timeout_s", "read_timeout_s", "fetch_deadline_s", "fetch_min_rate"):
            if not getattr(self, field) > 0 or getattr(self, field) == float("inf"):
                raise ConfigurationError(f"{field} must be > 0, not {getattr(self, field)!r}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RetryPolicy:
        """Defaults, overridden by RESUMABLE_RETRY_ATTEMPTS, RESUMABLE_RETRY_TOTAL_S and
        RESUMABLE_FETCH_DEADLINE_S."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        for var, field, conv in (
            ("RESUMABLE_RETRY_ATTEMPTS", "attempts", int),
            ("RESUMABLE_RETRY_TOTAL_S", "total_s", float),
            ("RESUMABLE_FETCH_DEADLINE_S", "fetch_deadline_s", float),
        ):
            raw = env.get(var, "").strip()
            if raw:
                try:
                    kwargs[field] = conv(raw)
                except ValueError:
                    raise ConfigurationError(f"{var}={raw!r} is not a valid number") from None
        return cls(**kwargs)

    def retrying(
        self,
        before_sleep: Callable[[tenacity.RetryCallState], None],
        max_delay_s: float | None = None,
    ) -> tenacity.Retrying:
        """A tenacity controller retrying transient storage errors under this policy (and, if
        given, never starting an attempt after `max_delay_s`)."""
        total = self.total_s if max_delay_s is None else min(self.total_s, max_delay_s)
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts) | tenacity.stop_before_delay(total),
            wait=tenacity.wait_random_exponential(
                multiplier=self.initial_s, max=self.max_backoff_s
            ),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )


# -- Azure (azure-core, under adlfs) and GCS (gcsfs) ------------------------------------------

AZURE_PERMANENT_MISSING = frozenset({"ContainerNotFound"})  # like NoSuchBucket: a typo


def _azure() -> Any:
    return sys.modules.get("azure.core.exceptions")


def _classify_cloud(e: BaseException) -> Kind | None:
    """Azure SDK errors carry a status and an error code; gcsfs's HttpError a `code`."""
    az = _azure()
    if az is not None and isinstance(e, az.AzureError):
        if isinstance(e, (az.ServiceRequestError, az.ServiceResponseError)):
            return Kind.TRANSIENT  # refused, DNS, timeouts, connection dropped
        if isinstance(e, az.ClientAuthenticationError):
            return Kind.PERMANENT
        status = getattr(e, "status_code", None)
        code = str(getattr(e, "error_code", None) or "")
        if code in AZURE_PERMANENT_MISSING:
            return Kind.PERMANENT
        if isinstance(e, az.ResourceNotFoundError) or status == 404:
            return Kind.MISSING
        if isinstance(e, (az.ResourceExistsError, az.ResourceModifiedError)) or status == 412:
            return Kind.EXISTS
        if status in TRANSIENT_STATUS:
            return Kind.TRANSIENT
        return Kind.PERMANENT
    gcs = sys.modules.get("gcsfs.retry")
    if gcs is not None and isinstance(e, gcs.HttpError):
        status = getattr(e, "code", None)
        if status == 412:
            return Kind.EXISTS
        if status in TRANSIENT_STATUS:
            return Kind.TRANSIENT
        return Kind.PERMANENT
    return None


def _describe_cloud(e: BaseException) -> str | None:
    az = _azure()
    if az is not None and isinstance(e, az.HttpResponseError):
        status = getattr(e, "status_code", None)
        code = getattr(e, "error_code", None) or type(e).__name__
        return f"{code} (HTTP {status})"
    if az is not None and isinstance(e, az.AzureError):
        first = str(getattr(e, "message", "") or e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {first}".rstrip(": ")
    return None
