"""Tests for resumable._storage against real parts: local dirs, memory://, a moto S3 server via
s3fs, python's http.server, and a fault-injecting proxy in front of the S3 server."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import pickle
import socket
import time
from pathlib import Path

import pytest

from resumable._storage import (
    ObjectExistsError,
    RetryPolicy,
    StorageWriteError,
    Store,
)
from resumable._urls import is_url, join, redact
from resumable.errors import (
    CheckpointWriteError,
    ConfigurationError,
    IntegrityError,
    ObjectNotFoundError,
    ResumableError,
    SourceUnreachableError,
    StorageError,
)

# small budgets so unreachable cases finish in well under a second
FAST = RetryPolicy(
    attempts=3, total_s=3.0, initial_s=0.01, max_backoff_s=0.05, connect_timeout_s=1.0,
    read_timeout_s=3.0,
)  # fmt: skip
PATIENT = RetryPolicy(attempts=12, total_s=20.0, initial_s=0.005, max_backoff_s=0.02)


def _not_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, StorageError) and not isinstance(exc, SourceUnreachableError)


# -- pure helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        ("s3://b/k", True),
        ("http://h/x", True),
        ("https://h", True),
        ("file:///x", True),
        ("memory://x", True),
        ("gs://b", True),
        ("/tmp/x", False),
        ("rel/x", False),
        ("C:\\x", False),
        ("", False),
        ("file:/x", False),
    ],
)
def test_is_url(s: str, expected: bool) -> None:
    assert is_url(s) is expected


@pytest.mark.parametrize(
    ("base", "name", "expected"),
    [
        ("/data/run", "m.json", "/data/run/m.json"),
        ("/data/run/", "a/b.json", "/data/run/a/b.json"),
        ("rel", "m.json", "rel/m.json"),
        ("s3://bucket", "m.json", "s3://bucket/m.json"),
        ("s3://bucket/pre/", "a/m.json", "s3://bucket/pre/a/m.json"),
        ("memory://x", "m.json", "memory://x/m.json"),
        ("memory:///x", "m.json", "memory:///x/m.json"),
        ("https://h/dir?sv=1&sig=abc", "m.json", "https://h/dir/m.json?sv=1&sig=abc"),
        ("https://h/dir/?t=1#frag", "m.json", "https://h/dir/m.json?t=1#frag"),
        ("https://h", "a b.json", "https://h/a%20b.json"),
        ("https://h:8080/d", "x%y", "https://h:8080/d/x%25y"),
        ("file:///tmp/a%20b", "c d", "file:///tmp/a%20b/c%20d"),
        ("s3://b/p", "a b", "s3://b/p/a b"),
    ],
)
def test_join(base: str, name: str, expected: str) -> None:
    assert join(base, name) == expected


@pytest.mark.parametrize(
    "name", ["", "..", "a/../b", "/abs", "a//b", "a/", ".", "./a", "a\x00b", "a\\b", "a?b", "a#b"]
)
def test_bad_names_rejected(name: str, tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    with pytest.raises(ConfigurationError) as info:
        store.url(name)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ResumableError)
    with pytest.raises(ConfigurationError):
        join("s3://b/p", name)


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ("https://user:pa55w0rd@host/x", "pa55w0rd", "https://***@host/x"),
        ("s3://AKIAXX:topsecret@bucket/k", "topsecret", "bucket/k"),
        (
            "GET https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAFAKE%2F20240101&X-Amz-Signature=deadbeef failed",
            "deadbeef",
            "X-Amz-Algorithm=REDACTED&X-Amz-Credential=REDACTED",
        ),
        ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAFAKE", "AKIAFAKE", "k?"),
        (
            "https://b/k?AWSAccessKeyId=AKIAOLD&Expires=1&Signature=oldsig",
            "oldsig",
            "Expires=REDACTED",
        ),
        ("https://b/k?AWSAccessKeyId=AKIAOLD&Expires=1", "AKIAOLD", "Expires=REDACTED"),
        ("https://acct.blob.core.windows.net/c/d?sv=2022&sig=sasSIG%3D", "sasSIG", "sv=REDACTED"),
        ("https://h/x?token=tok123#frag", "tok123", "#REDACTED"),
        ("https://h/x?X-Amz-Security-Token=sess1", "sess1", "https://h/x?"),
        ("https://h/x?access_token=at1&page=2", "at1", "page=REDACTED"),
        ("https://h/x?a=1;api_key=k9", "k9", "a=REDACTED;api_key=REDACTED"),
        ("storage.googleapis.com/b?X-Goog-Signature=gsig", "gsig", "googleapis"),
        ("error: 'https://u:p4ss@h/a' and \"http://h2/b?sig=zz\"", "p4ss", "http://h2/b?sig="),
    ],
)
def test_redact(text: str, secret: str, kept: str) -> None:
    out = redact(text)
    assert secret not in out
    assert kept in out


def test_redact_leaves_plain_text_and_clean_urls_alone() -> None:
    for text in ["no url here", "/tmp/a?b=c", "s3://bucket/key", "https://h/x?page=REDACTED"]:
        assert redact(text) == text
    assert "zz" not in redact("a http://h/b?sig=zz b https://u:zz@h c")


def test_retry_policy_validation_and_env() -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigurationError):
        RetryPolicy(total_s=-1)
    with pytest.raises(ConfigurationError):
        RetryPolicy(connect_timeout_s=0)
    p = RetryPolicy.from_env({"RESUMABLE_RETRY_ATTEMPTS": "3", "RESUMABLE_RETRY_TOTAL_S": "1.5"})
    assert (p.attempts, p.total_s) == (3, 1.5)
    assert RetryPolicy.from_env({}) == RetryPolicy()
    with pytest.raises(ConfigurationError, match="RESUMABLE_RETRY_ATTEMPTS"):
        RetryPolicy.from_env({"RESUMABLE_RETRY_ATTEMPTS": "many"})


def test_store_roots(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        Store("")
    with pytest.raises(ConfigurationError):
        Store("nosuchproto://x/y")
    with pytest.raises(ConfigurationError):
        Store("simplecache::s3://b/k")
    local = Store(f"file://{tmp_path}/a%20b")
    assert local.is_local and local.local_path == tmp_path / "a b"
    rel = Store("some/rel")
    assert rel.is_local and rel.local_path == Path.cwd() / "some/rel"
    remote = Store("https://u:pw@h/d?sig=s3cr3t", retry=FAST)
    assert not remote.is_local and remote.local_path is None
    assert "s3cr3t" not in remote.display and "pw" not in remote.display
    assert "s3cr3t" not in repr(remote)
    clone = pickle.loads(pickle.dumps(remote))
    assert clone.root == remote.root and clone.retry == FAST


# -- local and memory -----------------------------------------------------------------------------


@pytest.fixture(params=["path", "file-url", "memory"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "path":
        return Store(str(tmp_path / "store"))
    if request.param == "file-url":
        return Store((tmp_path / "store").as_uri())
    return Store(f"memory://resumable-tests/{tmp_path.name}", retry=FAST)


def test_round_trip(any_store: Store) -> None:
    store = any_store
    assert not store.exists("a/b.json")
    store.write_bytes("a/b.json", b"one")
    assert store.exists("a/b.json")
    assert store.read_bytes("a/b.json", max_bytes=3) == b"one"
    store.write_bytes("a/b.json", b"two!")
    assert store.read_bytes("a/b.json", max_bytes=100) == b"two!"
    with pytest.raises(IntegrityError):
        store.read_bytes("a/b.json", max_bytes=3)
    store.write_bytes("empty", b"")
    assert store.read_bytes("empty", max_bytes=0) == b""
    with store.open_write("big.bin") as f:
        for i in range(4):
            f.write(bytes([i]) * 1000)
    with store.open_read("big.bin") as f:
        assert f.read() == b"".join(bytes([i]) * 1000 for i in range(4))
    store.delete("a/b.json")
    assert not store.exists("a/b.json")
    store.delete("a/b.json")  # missing_ok
    with pytest.raises(ObjectNotFoundError):
        store.delete("a/b.json", missing_ok=False)


def test_missing_is_object_not_found(any_store: Store) -> None:
    for call in (
        lambda: any_store.read_bytes("nope.json", max_bytes=10),
        lambda: any_store.open_read("nope.json").__enter__(),
    ):
        with pytest.raises(ObjectNotFoundError) as info:
            call()
        assert isinstance(info.value, FileNotFoundError)
        assert "nope.json" in str(info.value)


def test_create_only(any_store: Store) -> None:
    any_store.write_bytes("m.json", b"first", create_only=True)
    any_store.write_bytes("m.json", b"first", create_only=True)  # same bytes: idempotent
    with pytest.raises(ObjectExistsError) as info:
        any_store.write_bytes("m.json", b"second", create_only=True)
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, StorageError)
    with pytest.raises(ObjectExistsError):
        any_store.write_bytes("m.json", b"firs", create_only=True)  # a prefix is not the same
    assert any_store.read_bytes("m.json", max_bytes=10) == b"first"


def test_open_write_aborted_leaves_nothing(any_store: Store) -> None:
    any_store.write_bytes("keep.bin", b"old")
    for name in ("new.bin", "keep.bin"):
        with pytest.raises(RuntimeError), any_store.open_write(name) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert not any_store.exists("new.bin")
    assert any_store.read_bytes("keep.bin", max_bytes=10) == b"old"
    if any_store.local_path is not None:
        assert sorted(p.name for p in any_store.local_path.iterdir()) == ["keep.bin"]


def test_open_write_keeps_the_callers_errors(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    unreachable = SourceUnreachableError("cannot read s3://b/k: unreachable")
    with pytest.raises(SourceUnreachableError) as info, store.open_write("copy.bin") as f:
        f.write(b"partial")
        raise unreachable  # e.g. the remote source of a copy went away: not a local failure
    assert info.value is unreachable and not isinstance(info.value, CheckpointWriteError)
    assert list(tmp_path.iterdir()) == []


def test_local_durable_write_leaves_no_temp_files(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.write_bytes("x/y/z.json", b"1")
    store.write_bytes("x/y/z.json", b"2", create_only=False)
    store.write_bytes("x/y/c.json", b"3", create_only=True)
    assert sorted(p.name for p in (tmp_path / "x/y").iterdir()) == ["c.json", "z.json"]


def test_local_errors_are_not_missing(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "file").write_bytes(b"x")
    store = Store(str(tmp_path))
    with pytest.raises(StorageError) as info:
        store.read_bytes("dir.json", max_bytes=10)
    assert not isinstance(info.value, ObjectNotFoundError)
    with pytest.raises(StorageError) as info:
        store.read_bytes("file/below", max_bytes=10)
    assert not isinstance(info.value, ObjectNotFoundError)
    assert store.exists("file/below") is False
    with pytest.raises(StorageWriteError) as winfo:
        store.write_bytes("file/below", b"x")
    assert isinstance(winfo.value, CheckpointWriteError) and isinstance(winfo.value, StorageError)


# -- S3 (moto) ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_s3_round_trip(s3_bucket: str) -> None:
    store = Store(f"{s3_bucket}/run1", retry=FAST)
    assert not store.exists("m.json")
    store.write_bytes("m.json", b'{"a": 1}')
    assert store.exists("m.json")
    assert store.read_bytes("m.json", max_bytes=100) == b'{"a": 1}'
    with pytest.raises(IntegrityError):
        store.read_bytes("m.json", max_bytes=4)
    store.write_bytes("sub/empty", b"")
    assert store.read_bytes("sub/empty", max_bytes=10) == b""
    with store.open_write("snap.bin") as f:
        f.write(b"x" * 100_000)
    with store.open_read("snap.bin") as f:
        assert f.read() == b"x" * 100_000
    store.delete("m.json")
    assert not store.exists("m.json")
    with pytest.raises(ObjectNotFoundError):
        store.delete("m.json", missing_ok=False)


@pytest.mark.integration
def test_s3_missing_key_vs_missing_bucket(s3_bucket: str) -> None:
    store = Store(s3_bucket, retry=FAST)
    with pytest.raises(ObjectNotFoundError):
        store.read_bytes("nope.json", max_bytes=10)
    with pytest.raises(ObjectNotFoundError):
        store.open_read("nope.json").__enter__()
    typo = Store(s3_bucket + "-typo", retry=FAST)
    for call in (
        lambda: typo.read_bytes("m.json", max_bytes=10),
        lambda: typo.exists("m.json"),
        lambda: typo.open_read("m.json").__enter__(),
        lambda: typo.write_bytes("m.json", b"1"),
    ):
        with pytest.raises(StorageError) as info:
            call()
        assert _not_unreachable(info.value) and not isinstance(info.value, FileNotFoundError)
        assert "bucket does not exist" in str(info.value) and "-typo" in str(info.value)


@pytest.mark.integration
def test_s3_create_only_uses_if_none_match(s3_bucket: str) -> None:
    store = Store(s3_bucket, retry=FAST)
    store.write_bytes("m.json", b"first", create_only=True)
    store.write_bytes("m.json", b"first", create_only=True)  # same bytes: idempotent
    for other in (b"second", b"firs", b"first!"):
        with pytest.raises(ObjectExistsError):
            store.write_bytes("m.json", other, create_only=True)
    assert store.read_bytes("m.json", max_bytes=10) == b"first"


@pytest.mark.integration
def test_s3_aborted_small_upload_leaves_nothing(s3_bucket: str) -> None:
    store = Store(s3_bucket, retry=FAST)
    store.write_bytes("keep.bin", b"old")
    for name in ("new.bin", "keep.bin"):
        with pytest.raises(RuntimeError), store.open_write(name) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert not store.exists("new.bin")
    assert store.read_bytes("keep.bin", max_bytes=10) == b"old"


@pytest.mark.integration
def test_npz_through_streams(s3_bucket: str, tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    for store in (Store(s3_bucket, retry=FAST), Store(str(tmp_path))):
        with store.open_write("state.npz") as f:
            np.savez(f, a=np.arange(10), b=np.ones((2, 3)))  # S3: an unseekable stream
        with store.open_read("state.npz") as f, np.load(f, allow_pickle=False) as z:
            assert z["a"].sum() == 45 and z["b"].shape == (2, 3)


@pytest.mark.integration
def test_s3_aborted_multipart_upload_leaves_nothing(s3_server, s3_bucket: str) -> None:
    store = Store(s3_bucket, retry=FAST)
    block = os.urandom(1 << 20)
    with pytest.raises(RuntimeError), store.open_write("snap.npz") as f:
        for _ in range(17):  # > one 16 MiB part: a multipart upload is under way
            f.write(block)
        raise RuntimeError("preempted")
    assert not store.exists("snap.npz")
    bucket = s3_bucket.removeprefix("s3://")
    assert not s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads")
    with store.open_write("snap.npz") as f:
        for _ in range(17):
            f.write(block)
    with store.open_read("snap.npz") as f:
        assert f.read(len(block)) == block
    assert store.read_bytes("snap.npz", max_bytes=17 << 20)[-len(block) :] == block


@pytest.mark.integration
def test_s3_unreachable_and_credentials_never_shown(refused_url: str) -> None:
    store = Store(
        "s3://bucket/run",
        storage_options={"endpoint_url": refused_url, "key": "AKIAFAKEKEY", "secret": "SeCrEt"},
        retry=FAST,
    )
    start = time.monotonic()
    for call in (
        lambda: store.read_bytes("m.json", max_bytes=10),
        lambda: store.exists("m.json"),
        lambda: store.write_bytes("m.json", b"1"),
        lambda: store.open_read("m.json").__enter__(),
    ):
        with pytest.raises(SourceUnreachableError) as info:
            call()
        text = str(info.value) + repr(info.value.__cause__)
        assert "s3://bucket/run/m.json" in text
        assert "SeCrEt" not in text and "AKIAFAKEKEY" not in text
    assert time.monotonic() - start < 5


@pytest.mark.integration
def test_s3_forbidden_is_not_retried(s3_bucket: str, fault_proxy) -> None:
    store = Store(s3_bucket, retry=FAST)
    fault_proxy.inject(("error", 403))
    with pytest.raises(StorageError) as info:
        store.read_bytes("m.json", max_bytes=10)
    assert _not_unreachable(info.value) and "access denied" in str(info.value)
    assert fault_proxy.stats["requests"] == 1


@pytest.mark.integration
def test_s3_retries_through_flaky_proxy(s3_bucket: str, fault_proxy) -> None:
    store = Store(s3_bucket, retry=PATIENT)
    fault_proxy.set_rates(error_rate=0.2, drop_rate=0.15)
    for i in range(6):
        store.write_bytes(f"k{i}", b"v%d" % i)
    for i in range(6):
        assert store.read_bytes(f"k{i}", max_bytes=10) == b"v%d" % i
        assert store.exists(f"k{i}")
    assert fault_proxy.stats["error"] > 0 and fault_proxy.stats["drop"] > 0


@pytest.mark.integration
def test_s3_attempts_are_not_multiplied(s3_bucket: str, fault_proxy) -> None:
    store = Store(s3_bucket, retry=FAST)
    store.write_bytes("m.json", b"1")
    fault_proxy.stats.clear()
    fault_proxy.inject(("error", 500), "error")  # two failures, then the third attempt succeeds
    assert store.read_bytes("m.json", max_bytes=10) == b"1"
    assert fault_proxy.stats["requests"] == 3
    fault_proxy.stats.clear()
    fault_proxy.inject(("error", 500), "error", ("error", 500), "error")
    with pytest.raises(SourceUnreachableError, match="after 3 attempts"):
        store.read_bytes("m.json", max_bytes=10)
    assert fault_proxy.stats["requests"] == FAST.attempts  # botocore and s3fs add none


@pytest.mark.integration
def test_dropped_pooled_connection_is_resent_once_by_aiohttp(s3_bucket: str, fault_proxy) -> None:
    # RFC 9112 lets a client resend an idempotent request once when a kept-alive connection
    # closes without an answer; aiohttp does, below our retry layer (documented, not counted)
    store = Store(s3_bucket, retry=RetryPolicy(attempts=1, initial_s=0.01))
    store.write_bytes("m.json", b"1")
    fault_proxy.stats.clear()
    fault_proxy.inject("drop")
    assert store.read_bytes("m.json", max_bytes=10) == b"1"
    assert fault_proxy.stats["requests"] == 2
    fault_proxy.inject("drop", "drop")
    with pytest.raises(SourceUnreachableError, match="after 1 attempt "):
        store.read_bytes("m.json", max_bytes=10)


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["drop", "refuse"])
def test_s3_fully_down_is_unreachable_within_bounds(s3_bucket: str, fault_proxy, mode) -> None:
    policy = RetryPolicy(attempts=2, total_s=1.0, initial_s=0.01, max_backoff_s=0.05)
    store = Store(s3_bucket, retry=policy)
    store.write_bytes("m.json", b"1")
    fault_proxy.down(mode)
    start = time.monotonic()
    with pytest.raises(SourceUnreachableError):
        store.read_bytes("m.json", max_bytes=10)
    with pytest.raises(SourceUnreachableError):
        store.exists("m.json")  # never a silent False
    assert time.monotonic() - start < 2 * (policy.total_s + 0.5)
    fault_proxy.up()
    assert store.read_bytes("m.json", max_bytes=10) == b"1"


@pytest.mark.integration
def test_s3_create_only_with_lost_response_is_not_a_clash(s3_bucket: str, fault_proxy) -> None:
    store = Store(s3_bucket, retry=FAST)
    fault_proxy.inject("lose")  # the PUT lands, its response never arrives; we retry
    store.write_bytes("m.json", b"mine", create_only=True)
    assert store.read_bytes("m.json", max_bytes=10) == b"mine"
    fault_proxy.inject("lose")
    with pytest.raises(ObjectExistsError):  # a different writer's object is still a clash
        store.write_bytes("m.json", b"other", create_only=True)


@pytest.mark.integration
def test_s3_read_bytes_is_bounded_on_the_wire(s3_bucket: str, fault_proxy) -> None:
    store = Store(s3_bucket, retry=FAST)
    store.write_bytes("huge", b"z" * (4 << 20))
    fault_proxy.stats.clear()
    with pytest.raises(IntegrityError):
        store.read_bytes("huge", max_bytes=1000)
    assert fault_proxy.stats["bytes_out"] < 10_000


@pytest.mark.integration
def test_s3_streaming_retries_per_request(s3_bucket: str, fault_proxy) -> None:
    store = Store(s3_bucket, retry=FAST)
    fault_proxy.inject("error")  # the upload's PUT fails once; botocore retries it
    with store.open_write("snap.bin") as f:
        f.write(b"s" * 1000)
    fault_proxy.inject("drop")
    with store.open_read("snap.bin") as f:
        assert f.read() == b"s" * 1000


@pytest.mark.integration
def test_s3_store_shared_by_threads(s3_bucket: str) -> None:
    store = Store(s3_bucket, retry=FAST)

    def work(t: int) -> None:
        for i in range(5):
            store.write_bytes(f"t{t}/{i}", b"%d-%d" % (t, i))
            assert store.read_bytes(f"t{t}/{i}", max_bytes=10) == b"%d-%d" % (t, i)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))


@pytest.mark.integration
@pytest.mark.slow
def test_store_survives_fork(s3_bucket: str) -> None:
    store = Store(s3_bucket, retry=FAST)
    store.write_bytes("parent", b"p")  # builds the parent's filesystem instance
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's event loop or sessions
        code = 1
        try:
            store.write_bytes("child", store.read_bytes("parent", max_bytes=1) + b"c")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.read_bytes("child", max_bytes=10) == b"pc"


# -- HTTP -----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_http_read(http_server) -> None:
    root, base = http_server
    (root / "run").mkdir()
    (root / "run" / "m.json").write_bytes(b'{"n": 1}')
    (root / "run" / "big.bin").write_bytes(b"b" * 300_000)
    store = Store(f"{base}/run", retry=FAST)
    assert store.read_bytes("m.json", max_bytes=100) == b'{"n": 1}'
    with pytest.raises(IntegrityError):
        store.read_bytes("big.bin", max_bytes=1000)
    with store.open_read("big.bin") as f:
        assert f.read(10) == b"b" * 10
        assert len(f.read()) == 300_000 - 10
    assert store.exists("m.json") and not store.exists("nope.json")
    with pytest.raises(ObjectNotFoundError):
        store.read_bytes("nope.json", max_bytes=100)
    with pytest.raises(ObjectNotFoundError):
        store.open_read("nope.json").__enter__()
    with pytest.raises(StorageError, match="read-only"):
        store.write_bytes("m.json", b"x")
    with pytest.raises(StorageError, match="read-only"):
        store.delete("m.json")


@pytest.mark.integration
@pytest.mark.parametrize("shape", ["query", "userinfo"])
def test_http_credentials_in_root_are_kept_and_redacted(http_server, shape: str) -> None:
    root, base = http_server
    (root / "m.json").write_bytes(b"ok")
    if shape == "query":
        url, shown = f"{base}/?token=hunter2", "nope.json?token=REDACTED"
    else:
        url, shown = base.replace("http://", "http://user:hunter2@"), "http://***@127.0.0.1"
    store = Store(url, retry=FAST)
    assert store.read_bytes("m.json", max_bytes=10) == b"ok"
    with pytest.raises(ObjectNotFoundError) as info:
        store.read_bytes("nope.json", max_bytes=10)
    assert shown in str(info.value) and "hunter2" not in str(info.value)
    assert info.value.__cause__ is None  # the raw cause names the secret: not attached
    assert "hunter2" not in store.display + repr(store)


@pytest.mark.integration
def test_http_forbidden_and_unavailable(http_server) -> None:
    root, base = http_server
    (root / "m.json").write_bytes(b"ok")
    store = Store(base, retry=FAST)
    http_server.set_status("/m.json", 403)
    for call in (lambda: store.read_bytes("m.json", max_bytes=10), lambda: store.exists("m.json")):
        with pytest.raises(StorageError) as info:
            call()
        assert _not_unreachable(info.value) and not isinstance(info.value, FileNotFoundError)
    http_server.set_status("/m.json", 503)
    with pytest.raises(SourceUnreachableError):
        store.read_bytes("m.json", max_bytes=10)
    with pytest.raises(SourceUnreachableError):
        store.exists("m.json")
    http_server.fail_times("/m.json", 2, 503)
    assert store.read_bytes("m.json", max_bytes=10) == b"ok"


@pytest.mark.integration
def test_http_retries_are_logged_redacted(http_server, caplog) -> None:
    root, base = http_server
    (root / "m.json").write_bytes(b"ok")
    store = Store(f"{base}/?sig=topsecret", retry=FAST)
    http_server.fail_times("/m.json", 2, 503)
    with caplog.at_level(logging.WARNING, logger="resumable._storage"):
        assert store.read_bytes("m.json", max_bytes=10) == b"ok"
    assert "retrying" in caplog.text and "topsecret" not in caplog.text


@pytest.mark.integration
def test_http_timeout_is_unreachable() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        policy = RetryPolicy(attempts=1, connect_timeout_s=0.5, read_timeout_s=0.2)
        store = Store(f"http://127.0.0.1:{silent.getsockname()[1]}", retry=policy)
        start = time.monotonic()
        with pytest.raises(SourceUnreachableError, match="Timeout"):
            store.read_bytes("m.json", max_bytes=10)
        assert time.monotonic() - start < 2


@pytest.mark.integration
def test_total_time_bounds_many_attempts(refused_url: str) -> None:
    policy = RetryPolicy(attempts=1000, total_s=0.4, initial_s=0.02, max_backoff_s=0.1)
    store = Store(refused_url, retry=policy)
    start = time.monotonic()
    with pytest.raises(SourceUnreachableError, match=r"after \d+ attempts") as info:
        store.exists("m.json")
    # Unbounded, 1000 attempts would sleep 20 s at least; the margin over total_s is for a
    # loaded machine's first import of the HTTP filesystem.
    assert time.monotonic() - start < 3.0
    assert int(str(info.value).split("after ")[1].split()[0]) < 100


@pytest.mark.integration
def test_http_connection_refused_is_unreachable(refused_url: str) -> None:
    store = Store(refused_url + "/run", retry=FAST)
    for call in (
        lambda: store.read_bytes("m.json", max_bytes=10),
        lambda: store.exists("m.json"),
        lambda: store.open_read("m.json").__enter__(),
    ):
        with pytest.raises(SourceUnreachableError) as info:
            call()
        assert not isinstance(info.value, FileNotFoundError)
        assert "/run/m.json" in str(info.value)
