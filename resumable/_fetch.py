"""Remote reads under a total deadline (connect, body and retries together).

aiohttp's and botocore's timeouts bound a connect and the gap between two reads, so a server
that sends one byte every couple of seconds holds a read forever. Here every step of a fetch
from an asynchronous fsspec back end (HTTP, S3, GCS, Azure) runs on the filesystem's event
loop under ``asyncio.wait_for`` with whatever is left of one `Deadline`, which cancels the
request cleanly when time is up. The deadline is `RetryPolicy.fetch_deadline_s`, plus one
second per `RetryPolicy.fetch_min_rate` bytes received (so large objects on slow but honest
links still arrive). Past it: `SourceUnreachableError` naming the redacted URL and the deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import io
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._storage_errors import RetryPolicy, find_code, http_status
from .errors import SourceUnreachableError

T = TypeVar("T")
HTTP = frozenset({"http", "https"})
BLOCK = 16 << 20  # bytes per ranged GET when streaming from an object store
_INNER_TIMEOUT_SLACK_S = 0.05
# one class since Python 3.11, three before
_TIMEOUTS = (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)


class Deadline:
    """The time one fetch of `url` (already redacted) may take; see the module docstring."""

    def __init__(self, op: str, url: str, policy: RetryPolicy) -> None:
        self.op, self.url = op, url
        self.seconds = policy.fetch_deadline_s
        self.rate = policy.fetch_min_rate
        self.start = time.monotonic()
        self.received = 0

    def remaining(self) -> float:
        return self.seconds + self.received / self.rate - (time.monotonic() - self.start)

    def error(self) -> SourceUnreachableError:
        elapsed = time.monotonic() - self.start
        return SourceUnreachableError(
            f"cannot {self.op} {self.url}: unreachable (no complete answer within the fetch "
            f"deadline of {self.seconds:g} s, RESUMABLE_FETCH_DEADLINE_S; {self.received} bytes "
            f"arrived in {elapsed:.1f} s: the server is stalled or too slow)"
        )

    def check(self) -> None:
        if self.remaining() <= 0:
            raise self.error()

    def run(self, loop: asyncio.AbstractEventLoop, make: Callable[[], Awaitable[T]]) -> T:
        """Run the coroutine `make()` on `loop` within the time left; cancel it when time is up."""
        left = self.remaining()
        if left <= 0:
            raise self.error()

        async def bounded() -> T:
            return await asyncio.wait_for(make(), left)

        future = asyncio.run_coroutine_threadsafe(bounded(), loop)
        try:
            return future.result(timeout=left + 5.0)
        except _TIMEOUTS:
            if self.remaining() > _INNER_TIMEOUT_SLACK_S:
                raise  # a per-request timeout inside (sock_read, ...): transient, retried
            future.cancel()
            raise self.error() from None


def is_end_of_object(exc: BaseException) -> bool:
    """A ranged read that starts at or past the end of an object."""
    return find_code(exc, "InvalidRange") or http_status(exc) == 416


class RemoteReader:
    """Sequential reads of one object on an asynchronous filesystem, each step under `deadline`
    and (through `call`) retried under the store's policy.

    HTTP servers may ignore Range, so HTTP streams one GET; object stores get ranged GETs of
    `BLOCK` bytes (read ahead and buffered, seekable once the size is known), each of which
    can be retried on its own.
    """

    def __init__(
        self,
        fs: Any,
        protocol: str,
        url: str,
        deadline: Deadline,
        call: Callable[[Callable[[], Any]], Any],
        block: int = BLOCK,
    ) -> None:
        self._fs, self._url, self._deadline, self._call = fs, url, deadline, call
        self._block = max(1, min(block, BLOCK))
        self._http = protocol in HTTP
        self._f: Any = None
        self._pos = 0
        self._size: int | None = None
        self._eof = False
        self._buf = b""
        self._buf_start = 0

    def _run(self, make: Callable[[], Awaitable[T]]) -> T:
        return self._deadline.run(self._fs.loop, make)

    def open(self, head: bool = True) -> RemoteReader:
        """Find the object (missing and unreachable raise here, before any data is read);
        `head=False` skips the size lookup on object stores (the first ranged GET tells)."""
        if self._http:
            self._f = self._call(lambda: self._run(self._open_http))
        elif head:
            info = self._call(lambda: self._run(lambda: self._fs._info(self._url)))
            size = info.get("size")
            self._size = size if type(size) is int and size >= 0 else None
        return self

    async def _open_http(self) -> Any:
        # size given: no HEAD first; read(0) sends the GET and raises for its status
        f = await self._fs.open_async(self._url, "rb", size=0)
        try:
            await f.read(0)
        except BaseException:
            await f.close()
            raise
        return f

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return read_all(self, 1 << 62)
        if size == 0 or self._eof:
            return b""
        if self._http:  # not retried: the stream cannot be replayed from the middle
            data: bytes = self._run(lambda: self._f.read(size))
            if not data:
                self._eof = True
            self._pos += len(data)
            self._deadline.received += len(data)
            return data
        out: list[bytes] = []
        want = size
        while want > 0:
            if not self._buf_start <= self._pos < self._buf_start + len(self._buf):
                if self._size is not None and self._pos >= self._size:
                    break
                start = self._pos
                block = self._call(functools.partial(self._range, start))
                self._deadline.received += len(block)
                self._buf_start, self._buf = start, block
                if not block:
                    break
            offset = self._pos - self._buf_start
            piece = self._buf[offset : offset + want]
            out.append(piece)
            self._pos += len(piece)
            want -= len(piece)
            if len(self._buf) < self._block and self._pos >= self._buf_start + len(self._buf):
                self._size = self._buf_start + len(self._buf)  # a short block: the end
        return b"".join(out)

    def _range(self, start: int) -> bytes:
        end = start + self._block
        if self._size is not None:
            end = min(end, self._size)
            if start >= end:
                return b""
        try:
            data: bytes = self._run(lambda: self._fs._cat_file(self._url, start=start, end=end))
            return data
        except Exception as exc:
            if is_end_of_object(exc):
                return b""
            raise

    def seekable(self) -> bool:
        return not self._http and self._size is not None

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if not self.seekable():
            raise io.UnsupportedOperation("this stream is read sequentially")
        assert self._size is not None
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        memoryview(b).cast("B")[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            with contextlib.suppress(Exception):  # a response we no longer need
                asyncio.run_coroutine_threadsafe(f.close(), self._fs.loop).result(timeout=5.0)


def read_all(reader: Any, limit: int, block: int = BLOCK) -> bytes:
    """Read until EOF or `limit` bytes, whichever comes first (short reads allowed), `block`
    bytes a call (a ranged GET from an object store; a local file reads 1 MiB at a time)."""
    chunks, n = [], 0
    while n < limit:
        chunk = reader.read(min(block, limit - n))
        if not chunk:
            break
        chunks.append(chunk)
        n += len(chunk)
    return b"".join(chunks)
