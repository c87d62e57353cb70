"""Slow servers: every fetch has a total deadline (issue 11, item 4).

A server that trickles a response one byte at a time never trips a per-read timeout; before
the fix `ResumableSweep(resume_from=...)` waited on it forever. These tests put real servers on
127.0.0.1 that trickle (a raw HTTP server, and a TCP proxy in front of the moto S3 server) and
check that reads stop at the deadline with `SourceUnreachableError` naming the redacted URL
and the deadline.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from resumable import ResumableSweep
from resumable._storage import RetryPolicy, Store
from resumable.errors import SourceUnreachableError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEADLINE_S = 2.0
POLICY = RetryPolicy(attempts=2, total_s=5.0, initial_s=0.01, fetch_deadline_s=DEADLINE_S)
SECRET = "s3kr1tTOKEN"


class _Trickler:
    """Accepts connections on 127.0.0.1 and answers each with `respond(conn)` in a thread."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._guard, args=(conn,), daemon=True).start()

    def _guard(self, conn: socket.socket) -> None:
        try:
            self.respond(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def respond(self, conn: socket.socket) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def trickle(self, conn: socket.socket, data: bytes, gap_s: float = 0.5) -> None:
        for i in range(len(data)):
            if self.stopped.is_set():
                return
            conn.sendall(data[i : i + 1])
            time.sleep(gap_s)

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.close()


class _SlowHTTP(_Trickler):
    """Answers every GET/HEAD with 200 at once, then sends the body one byte every 0.5 s."""

    body = b'{"format": "resumable-checkpoint", "padding": "' + b"x" * 500 + b'"}'

    def respond(self, conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(self.body)
        )
        conn.sendall(head)
        if not request.startswith(b"HEAD"):
            self.trickle(conn, self.body)


class _SlowProxy(_Trickler):
    """A TCP proxy to `upstream` that passes requests at once and trickles responses back."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        super().__init__()

    def respond(self, conn: socket.socket) -> None:
        up = socket.create_connection(self.upstream)
        self.conns.append(up)

        def forward() -> None:
            try:
                while chunk := conn.recv(65536):
                    up.sendall(chunk)
            except OSError:
                pass

        threading.Thread(target=forward, daemon=True).start()
        while not self.stopped.is_set():
            chunk = up.recv(65536)
            if not chunk:
                return
            self.trickle(conn, chunk, gap_s=0.3)


@pytest.fixture
def slow_http() -> Iterator[_SlowHTTP]:
    server = _SlowHTTP()
    try:
        yield server
    finally:
        server.stop()


def _url(server: _Trickler) -> str:
    return f"http://127.0.0.1:{server.port}/ckpt/?token={SECRET}"


def _check(err: BaseException, elapsed: float) -> None:
    text = str(err)
    assert "deadline of 2 s" in text, text
    assert "127.0.0.1" in text and SECRET not in text, text
    assert elapsed < DEADLINE_S + 4.0, f"took {elapsed:.1f} s for a {DEADLINE_S} s deadline"


def test_trickled_manifest_fails_at_the_deadline(slow_http: _SlowHTTP) -> None:
    store = Store(_url(slow_http), retry=POLICY)
    start = time.monotonic()
    with pytest.raises(SourceUnreachableError) as info:
        store.read_bytes("manifest.json", max_bytes=1 << 20)
    _check(info.value, time.monotonic() - start)


def test_trickled_stream_fails_at_the_deadline(slow_http: _SlowHTTP) -> None:
    store = Store(_url(slow_http), retry=POLICY)
    start = time.monotonic()
    with pytest.raises(SourceUnreachableError) as info, store.open_read("snap.npz") as f:
        while f.read(1 << 16):
            pass
    _check(info.value, time.monotonic() - start)


def test_resume_from_a_trickling_server_fails_within_the_deadline(
    slow_http: _SlowHTTP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESUMABLE_FETCH_DEADLINE_S", str(DEADLINE_S))
    monkeypatch.setenv("RESUMABLE_RETRY_ATTEMPTS", "2")
    start = time.monotonic()
    with pytest.raises(SourceUnreachableError) as info:
        ResumableSweep(
            [{"i": i} for i in range(3)],
            checkpoint_path=tmp_path / "ckpt",
            resume_from=_url(slow_http),
        )
    _check(info.value, time.monotonic() - start)
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").rglob("*.jsonl"))


def test_trickling_s3_endpoint_fails_at_the_deadline(
    s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store(s3_bucket, retry=POLICY).write_bytes("manifest.json", b"m" * 4000)
    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    proxy = _SlowProxy((host, int(port)))
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        store = Store(s3_bucket, retry=POLICY)
        start = time.monotonic()
        with pytest.raises(SourceUnreachableError) as info:
            store.read_bytes("manifest.json", max_bytes=1 << 20)
        elapsed = time.monotonic() - start
        assert "deadline of 2 s" in str(info.value) and elapsed < DEADLINE_S + 4.0
        start = time.monotonic()
        with pytest.raises(SourceUnreachableError, match="deadline of 2 s"):
            store.read_versioned("manifest.json", max_bytes=1 << 20)  # the CAS read of mirrors
        assert time.monotonic() - start < DEADLINE_S + 4.0
        start = time.monotonic()
        with pytest.raises(SourceUnreachableError), store.open_read("manifest.json") as f:
            f.read()
        assert time.monotonic() - start < 2 * DEADLINE_S + 4.0  # the lookup, then the read
    finally:
        proxy.stop()


def test_the_deadline_is_configured_and_checked() -> None:
    assert RetryPolicy().fetch_deadline_s == 300.0
    env = {"RESUMABLE_FETCH_DEADLINE_S": "7.5"}
    assert RetryPolicy.from_env(env).fetch_deadline_s == 7.5
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(ValueError, match="fetch_deadline_s"):
            RetryPolicy.from_env({"RESUMABLE_FETCH_DEADLINE_S": bad})


class _SteadyHTTP(_Trickler):
    """Sends a 640 KiB body as 20 chunks of 32 KiB, one every 0.1 s: about 2 s in all."""

    body = bytes(range(256)) * (20 * 128)

    def respond(self, conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.body))
        for i in range(0, len(self.body), 32 * 1024):
            conn.sendall(self.body[i : i + 32 * 1024])
            time.sleep(0.1)


def test_a_slow_but_steady_large_read_earns_more_time() -> None:
    """The deadline grows by one second per fetch_min_rate bytes received: a 2 s download at
    ~320 KiB/s passes a 1 s deadline with a 64 KiB/s minimum rate, and fails it without."""
    server = _SteadyHTTP()
    try:
        url = f"http://127.0.0.1:{server.port}/d"
        earning = RetryPolicy(attempts=1, fetch_deadline_s=1.0, fetch_min_rate=64 * 1024.0)
        data = Store(url, retry=earning).read_bytes("big", max_bytes=1 << 20)
        assert data == _SteadyHTTP.body
        strict = RetryPolicy(attempts=1, fetch_deadline_s=1.0, fetch_min_rate=1e12)
        with pytest.raises(SourceUnreachableError, match="deadline of 1 s"):
            Store(url, retry=strict).read_bytes("big", max_bytes=1 << 20)
    finally:
        server.stop()
