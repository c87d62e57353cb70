"""The mirror (resumable.mirror): a verifiable copy of the checkpoint, kept up to date in the
background, in a local dir, file://, memory://, S3 (s3fs against a real moto server, also
behind a fault-injecting proxy), GCS (gcsfs against gcp-storage-emulator) and Azure Blob
(adlfs against Azurite). Every check reads the mirror back the way a relaunch does
(read_manifest + download, which verifies every byte) and compares it with the local copy."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import struct
import threading
import time
import traceback
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import fsspec
import pytest

from resumable import MirrorOptions, ResumableSweep
from resumable._checkpoint import Loaded, load
from resumable._manifest import MANIFEST_NAME
from resumable._remote import download, read_manifest, source_store
from resumable._storage import Store
from resumable.errors import (
    HistoryConflictError,
    IntegrityError,
    ResumableError,
    SourceUnreachableError,
    StorageError,
)

ITEMS = list(range(4000))
FAST = MirrorOptions(interval_s=0.0, gc_delay_s=60.0, max_backoff_s=0.2, flush_timeout_s=30.0)
MANUAL = MirrorOptions(interval_s=3600.0, gc_delay_s=60.0, max_backoff_s=0.1)  # flush() only


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESUMABLE_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("RESUMABLE_RETRY_TOTAL_S", "2")
    monkeypatch.delenv("SWEEP_RESUME_FROM", raising=False)
    monkeypatch.delenv("SWEEP_SNAPSHOT_DIR", raising=False)


def _value(i: int) -> dict:
    return {"i": i, "sq": i * i / 3, "pad": "r" * 120}


def _open(ckpt: Path, url: str, n: int = 60, **kw) -> ResumableSweep:
    kw.setdefault("mirror_options", FAST)
    return ResumableSweep(ITEMS[:n], key=str, checkpoint_path=ckpt, snapshot_dir=url, **kw)


def _record(sweep: ResumableSweep, count: int | None = None) -> list[float]:
    """Record `count` pending items; the time each record() took."""
    took = []
    for item in list(sweep.pending)[:count]:
        t = time.monotonic()
        sweep.record(item, _value(item))
        took.append(time.monotonic() - t)
    return took


def _fetch(url: str, tmp: Path, **storage_options) -> Loaded:
    """Read the mirror the way a relaunch does; verified in full, or this raises."""
    store = source_store(url, storage_options or None)
    found = read_manifest(store)
    assert found is not None, f"no manifest at {url}"
    fetched, loaded = download(store, found[0], tmp / f"fetch-{uuid.uuid4().hex[:6]}" / "x")
    shutil.rmtree(fetched)
    return loaded


def _assert_same(remote: Loaded, local: Loaded) -> None:
    assert remote.state.last_seq == local.state.last_seq
    assert remote.state.last_hash == local.state.last_hash
    assert list(remote.state.results) == list(local.state.results)
    for key, rec in local.state.results.items():
        assert remote.state.results[key].payload == rec.payload


def _assert_mirror_is(url: str, sweep: ResumableSweep, tmp: Path, **so) -> Loaded:
    local = load(sweep.progress_dir)
    assert local is not None
    remote = _fetch(url, tmp, **so)
    _assert_same(remote, local)
    return remote


def _objects(url: str) -> set[str]:
    """Object names under `url`/segments (relative), via fsspec, whatever the back end."""
    if url.startswith("file://"):  # Store percent-decodes file URLs, fsspec does not
        url = unquote(urlsplit(url).path)
    fs, path = fsspec.core.url_to_fs(url)
    try:
        found = fs.find(f"{path.rstrip('/')}/segments")
    except FileNotFoundError:
        return set()
    return {p.rsplit("/", 1)[-1] for p in found}


def _named(url: str) -> set[str]:
    found = read_manifest(source_store(url))
    assert found is not None
    return {s.name for s in found[1].segments}


# -- where the mirror can be -----------------------------------------------------------------


CLOUDS = {"s3": "s3_bucket", "gcs": "gcs_bucket", "azure": "az_container"}


@pytest.fixture(
    params=[
        "path",
        "file-url",
        "memory",
        *(pytest.param(cloud, marks=pytest.mark.integration) for cloud in CLOUDS),
    ]
)
def mirror_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "path":
        return str(tmp_path / "mirror" / "exp")
    if request.param == "file-url":
        return (tmp_path / "mirror dir" / "exp").as_uri()  # percent-encoded space
    if request.param == "memory":
        return f"memory://resumable-tests/{uuid.uuid4().hex}/exp"
    return f"{request.getfixturevalue(CLOUDS[request.param])}/sweeps/exp"


def test_mirror_holds_a_verifying_copy(mirror_url: str, tmp_path: Path) -> None:
    sweep = _open(tmp_path / "a" / "exp.h5", mirror_url, segment_bytes=1200)
    _record(sweep, 20)
    sweep.flush(timeout=30)
    remote = _assert_mirror_is(mirror_url, sweep, tmp_path)
    assert remote.manifest.active is None
    assert len(remote.state.results) == 20
    names = [s.name for s in remote.manifest.segments]
    assert any(n.count(".") == 2 for n in names)  # a sealed segment (content-addressed)
    status = sweep.status().mirror
    assert status is not None
    assert status["lag_records"] == 0 and status["state"] == "ok"
    assert status["remote_records"] == remote.state.last_seq
    _record(sweep, 7)
    named_before = _named(mirror_url)
    sweep.close()
    _assert_mirror_is(mirror_url, sweep, tmp_path)
    # close() honours gc_delay_s (60 s): a replacement reading the previous manifest during
    # this shutdown still finds every part it names
    assert named_before <= _objects(mirror_url)


def test_flush_is_not_held_back_by_the_coalescing_interval(tmp_path: Path) -> None:
    """interval_s spaces the background uploads; flush() and close() do not wait for it."""
    mirror = str(tmp_path / "mirror")
    sweep = _open(tmp_path / "a" / "exp.h5", mirror, mirror_options=MANUAL)
    for _ in range(3):
        _record(sweep, 2)
        t = time.monotonic()
        sweep.flush(timeout=10)
        assert time.monotonic() - t < 2.0
    _record(sweep, 2)
    t = time.monotonic()
    sweep.close(timeout=10)
    assert time.monotonic() - t < 2.0
    _assert_mirror_is(mirror, sweep, tmp_path)


def test_background_uploads_without_flush(tmp_path: Path) -> None:
    mirror = str(tmp_path / "mirror")
    opts = MirrorOptions(interval_s=0.05, gc_delay_s=60.0)
    sweep = _open(tmp_path / "a" / "exp.h5", mirror, mirror_options=opts)
    _record(sweep, 5)
    deadline = time.monotonic() + 10
    while sweep.status().mirror["lag_records"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sweep.status().mirror["lag_records"] == 0
    _assert_mirror_is(mirror, sweep, tmp_path)
    sweep.close()


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_flaky_s3_loses_nothing(
    s3_bucket: str, fault_proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESUMABLE_RETRY_ATTEMPTS", "6")
    monkeypatch.setenv("RESUMABLE_RETRY_TOTAL_S", "10")
    url = f"{s3_bucket}/sweeps/exp"
    fault_proxy.set_rates(error_rate=0.2, drop_rate=0.1)
    sweep = _open(tmp_path / "a" / "exp.h5", url, segment_bytes=1500)
    for _ in range(6):
        _record(sweep, 10)
        sweep.flush(timeout=30)
    sweep.close(timeout=30)
    assert fault_proxy.stats["error"] >= 5 and fault_proxy.stats["drop"] >= 3
    fault_proxy.set_rates(0.0, 0.0)
    remote = _assert_mirror_is(url, sweep, tmp_path)
    assert len(remote.state.results) == 60


@pytest.mark.integration
def test_lost_response_to_our_own_manifest_write_is_not_another_writer(
    s3_bucket: str, fault_proxy, tmp_path: Path
) -> None:
    """The manifest PUT lands but its response is lost and the retries fail: the next check
    finds our own bytes there, which must not look like a second writer."""
    url = f"{s3_bucket}/sweeps/exp"
    sweep = _open(tmp_path / "a" / "exp.h5", url, mirror_options=MANUAL)
    _record(sweep, 3)
    sweep.flush(timeout=10)
    _record(sweep, 1)
    # this flush: chunk PUT, conditional manifest PUT (+ its retries, failing), then the
    # next attempts must recognise the landed manifest as ours
    fault_proxy.inject("forward", "lose", *["drop"] * 6)
    sweep.flush(timeout=20)
    assert fault_proxy.stats["lose"] == 1
    assert sweep.status().mirror["last_error"] is not None  # the PUT did fail for the client
    _record(sweep, 2)
    sweep.close(timeout=20)
    _assert_mirror_is(url, sweep, tmp_path)


@pytest.mark.integration
def test_remote_down_recording_goes_on_then_catches_up(
    s3_bucket: str, fault_proxy, tmp_path: Path
) -> None:
    url = f"{s3_bucket}/sweeps/exp"
    sweep = _open(tmp_path / "a" / "exp.h5", url, mirror_options=FAST)
    _record(sweep, 5)
    sweep.flush(timeout=10)
    fault_proxy.down("drop")
    _record(sweep, 20)  # (that it never waits on the network: see the blackhole test)
    assert sweep.status().done == 25
    deadline = time.monotonic() + 10
    while sweep.status().mirror["state"] != "retrying" and time.monotonic() < deadline:
        time.sleep(0.02)
    mirror = sweep.status().mirror
    assert mirror["state"] == "retrying"
    assert mirror["lag_records"] >= 20
    assert "unreachable" in mirror["last_error"]
    t = time.monotonic()
    with pytest.raises(SourceUnreachableError, match="behind"):
        sweep.flush(timeout=0.5)
    assert time.monotonic() - t < 5.0
    _record(sweep, 5)
    fault_proxy.up()
    sweep.flush(timeout=20)
    assert sweep.status().mirror["lag_records"] == 0
    assert sweep.status().mirror["state"] == "ok"
    remote = _assert_mirror_is(url, sweep, tmp_path)
    assert len(remote.state.results) == 30
    sweep.close()


class Blackhole:
    """A TCP server on loopback that accepts connections and never answers (a hung remote)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self.resetting = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.resetting:
                self._reset()

    def _reset(self) -> None:
        while self.conns:
            conn = self.conns.pop()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def release(self) -> None:
        """Reset held and new connections: hung requests fail at once (aiohttp resends an
        idempotent request once on a reset connection: that one is reset too)."""
        self.resetting = True
        self._reset()

    def stop(self) -> None:
        self.sock.close()
        self.release()


@pytest.mark.integration
def test_record_never_waits_for_a_hung_remote(
    s3_server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mirror thread is stuck in a request that would hang for the whole read timeout
    (30 s): records, status() and a short flush() all return promptly."""
    url = f"{s3_bucket}/sweeps/exp"
    sweep = _open(tmp_path / "a" / "exp.h5", url)
    _record(sweep, 3)
    sweep.flush(timeout=10)
    hole = Blackhole()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", hole.endpoint)  # (Stores follow AWS_* at once)
        _record(sweep, 1)
        deadline = time.monotonic() + 10
        while not hole.conns and time.monotonic() < deadline:
            time.sleep(0.01)
        assert hole.conns, "the mirror did not try to upload"
        t = time.monotonic()
        took = _record(sweep, 20)
        status = sweep.status()
        with pytest.raises(SourceUnreachableError):
            sweep.flush(timeout=0.5)
        elapsed = time.monotonic() - t
        assert elapsed < 5.0, (elapsed, took)  # the request itself hangs for 30 s
        assert hole.conns  # ... and it still does
        assert status.done == 24 and status.mirror["lag_records"] >= 21
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
        hole.release()  # the hung request fails; the retry goes to the real server
        sweep.flush(timeout=20)
    finally:
        hole.stop()
    _assert_mirror_is(url, sweep, tmp_path)
    sweep.close()


@pytest.mark.integration
def test_close_while_down_raises_and_the_next_launch_catches_up(
    s3_bucket: str, fault_proxy, tmp_path: Path
) -> None:
    url, ckpt = f"{s3_bucket}/sweeps/exp", tmp_path / "a" / "exp.h5"
    sweep = _open(ckpt, url, resume_from=url)
    _record(sweep, 4)
    sweep.flush(timeout=10)
    fault_proxy.down("refuse")
    _record(sweep, 6)
    with pytest.raises(SourceUnreachableError):
        sweep.close(timeout=0.5)
    assert sweep.closed
    fault_proxy.up()
    again = _open(ckpt, url, resume_from=url)
    assert again.resumed_from == "local" and again.status().done == 10
    again.flush(timeout=20)
    assert len(_assert_mirror_is(url, again, tmp_path).state.results) == 10
    again.close()


@pytest.mark.integration
def test_mirror_unreachable_at_start_warns_then_catches_up(
    s3_bucket: str, fault_proxy, tmp_path: Path, caplog
) -> None:
    url = f"{s3_bucket}/sweeps/exp"
    fault_proxy.down("drop")
    with caplog.at_level(logging.WARNING, logger="resumable"):
        sweep = _open(tmp_path / "a" / "exp.h5", url)
        _record(sweep, 8)
    assert any("unreachable at start" in r.getMessage() for r in caplog.records)
    fault_proxy.up()
    sweep.flush(timeout=20)
    _assert_mirror_is(url, sweep, tmp_path)
    sweep.close()


@pytest.mark.integration
def test_mirror_unreachable_at_start_holding_history_is_never_overwritten(
    s3_bucket: str, fault_proxy, tmp_path: Path
) -> None:
    url = f"{s3_bucket}/sweeps/exp"
    first = _open(tmp_path / "a" / "exp.h5", url)
    _record(first, 12)
    first.close()
    manifest = Store(url).read_bytes(MANIFEST_NAME, max_bytes=1 << 20)
    fault_proxy.down("drop")
    fresh = _open(tmp_path / "b" / "exp.h5", url)  # could not look: starts fresh, locally
    _record(fresh, 3)
    fault_proxy.up()
    with pytest.raises(HistoryConflictError):
        fresh.flush(timeout=20)
    assert fresh.status().mirror["state"] == "failed"
    with pytest.raises(HistoryConflictError):
        fresh.close()
    assert Store(url).read_bytes(MANIFEST_NAME, max_bytes=1 << 20) == manifest
    assert len(_fetch(url, tmp_path).state.results) == 12


@pytest.mark.integration
def test_a_long_outage_does_not_kill_the_mirror_thread(
    s3_bucket: str, fault_proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a thousand failed uploads in a row (hours, at the default backoff): still retrying."""
    monkeypatch.setenv("RESUMABLE_RETRY_ATTEMPTS", "1")
    url = f"{s3_bucket}/sweeps/exp"
    opts = MirrorOptions(interval_s=0.0, max_backoff_s=0.0, gc_delay_s=60.0)
    sweep = _open(tmp_path / "a" / "exp.h5", url, mirror_options=opts)
    _record(sweep, 2)
    sweep.flush(timeout=10)
    fault_proxy.down("refuse")
    _record(sweep, 2)
    deadline = time.monotonic() + 60  # ~12 s on a quiet machine; 20 s was short at load 12
    while sweep.status().mirror["requests"] < 1100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sweep.status().mirror["requests"] >= 1100  # each a failed attempt, in a row
    assert sweep.status().mirror["state"] == "retrying"
    fault_proxy.up()
    sweep.flush(timeout=10)
    assert sweep.status().mirror["state"] == "ok"
    _assert_mirror_is(url, sweep, tmp_path)
    sweep.close()


def _sealed_count(sweep: ResumableSweep) -> int:
    return len(json.loads((sweep.progress_dir / MANIFEST_NAME).read_bytes())["segments"])


def _record_until_sealed(sweep: ResumableSweep) -> None:
    """Record until the last record sealed a segment (the active one is empty again)."""
    before = _sealed_count(sweep)
    for item in sweep.pending:
        sweep.record(item, _value(item))
        if _sealed_count(sweep) > before and sweep.status().mirror is not None:
            local = load(sweep.progress_dir)
            if local is not None and local.active_records == 0:
                return
    raise AssertionError("no seal")


def test_relaunch_after_a_kill_between_parts_and_manifest(tmp_path: Path) -> None:
    """A launch killed after uploading a sealed segment, before the manifest naming it: the
    relaunch writes a different segment of the same local name, and must mirror it anyway."""
    url = str(tmp_path / "mirror")
    kw = {"resume_from": url, "segment_bytes": 1500, "mirror_options": MANUAL}
    first = _open(tmp_path / "m1" / "exp.h5", url, **kw)
    _record_until_sealed(first)
    first.flush(timeout=10)
    older = (tmp_path / "mirror" / MANIFEST_NAME).read_bytes()
    _record_until_sealed(first)
    _record_until_sealed(first)
    first.close()
    (tmp_path / "mirror" / MANIFEST_NAME).write_bytes(older)  # as if killed before it
    orphans = _objects(url) - _named(url)

    second = _open(tmp_path / "m2" / "exp.h5", url, **kw)
    assert second.resumed_from == "remote"
    active = json.loads((second.progress_dir / MANIFEST_NAME).read_bytes())["active"]
    assert any(o.startswith(active + ".") for o in orphans), (active, orphans)  # the clash
    _record_until_sealed(second)
    _record_until_sealed(second)
    second.flush(timeout=10)
    _assert_mirror_is(url, second, tmp_path)
    second.close()
    _assert_mirror_is(url, second, tmp_path)


@pytest.mark.integration
def test_superseded_objects_get_gc_delay_after_an_outage(
    s3_bucket: str, fault_proxy, tmp_path: Path
) -> None:
    """Readers of the manifest written before an outage keep gc_delay_s after the catch-up."""
    url = f"{s3_bucket}/sweeps/exp"
    opts = MirrorOptions(interval_s=3600.0, max_chunks=2, gc_delay_s=4.0, max_backoff_s=0.1)
    sweep = _open(tmp_path / "a" / "exp.h5", url, mirror_options=opts)
    for _ in range(2):
        _record(sweep, 2)
        sweep.flush(timeout=10)
    before = _named(url)
    fault_proxy.down("drop")
    _record(sweep, 2)
    with pytest.raises(SourceUnreachableError):
        sweep.flush(timeout=1.2)  # compaction retired chunks; the uploads failed
    time.sleep(3.0)  # the outage outlasts gc_delay_s
    up = time.monotonic()  # the catch-up manifest goes up after this: nothing it supersedes
    fault_proxy.up()  # may be deleted before up + gc_delay_s
    sweep.flush(timeout=10)
    superseded = before - _named(url)
    assert superseded
    time.sleep(0.3)  # time for a deletion that (wrongly) counted from the outage's start
    present = _objects(url)
    listed = time.monotonic()
    assert listed < up + opts.gc_delay_s, f"the machine took {listed - up:.1f} s to look"
    assert superseded <= present  # still there for a reader of `before`
    deadline = time.monotonic() + 10
    while superseded & _objects(url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not superseded & _objects(url)
    sweep.close()


# -- two writers -----------------------------------------------------------------------------


def _zombie_scenario(url: str, tmp_path: Path) -> None:
    """A launch that is still running (a zombie: its VM was thought gone) and the new launch
    that resumed from the mirror, both recording: the new launch takes the mirror over with
    its first upload; the zombie's next upload finds a manifest it did not write and stops."""
    kw = {"resume_from": url, "segment_bytes": 1500, "mirror_options": MANUAL}
    zombie = _open(tmp_path / "zombie" / "exp.h5", url, **kw)
    _record(zombie, 6)
    zombie.flush(timeout=20)
    new = _open(tmp_path / "new" / "exp.h5", url, **kw)
    assert new.resumed_from == "remote" and new.status().done == 6
    new.flush(timeout=20)  # (its launch record, uploaded at once anyway)
    _record(zombie, 10)  # enough to seal segments: same local names as new's, other bytes
    _record(new, 10)
    new.flush(timeout=20)
    seen = _assert_mirror_is(url, new, tmp_path)
    manifest = Store(url).read_bytes(MANIFEST_NAME, max_bytes=1 << 20)
    with pytest.raises(HistoryConflictError, match="another writer"):
        zombie.flush(timeout=20)
    assert zombie.status().mirror["state"] == "failed"
    _record(zombie, 3)  # recording locally still works; the mirror stays out of it
    with pytest.raises(HistoryConflictError):
        zombie.flush(timeout=5)
    assert Store(url).read_bytes(MANIFEST_NAME, max_bytes=1 << 20) == manifest
    # the new launch goes on: no flip-flop, nothing lost
    _record(new, 5)
    new.flush(timeout=20)
    with pytest.raises(HistoryConflictError):
        zombie.close()
    _record(new, 5)
    new.close()
    final = _assert_mirror_is(url, new, tmp_path)
    assert set(seen.state.results) <= set(final.state.results)
    assert len(final.state.results) == 26


def test_zombie_writer_is_detected_local(tmp_path: Path) -> None:
    _zombie_scenario(str(tmp_path / "mirror"), tmp_path)


@pytest.mark.integration
def test_zombie_writer_is_detected_s3(s3_bucket: str, tmp_path: Path) -> None:
    _zombie_scenario(f"{s3_bucket}/sweeps/exp", tmp_path)


def test_an_overtaken_writer_with_nothing_new_learns_it_at_close(tmp_path: Path) -> None:
    url = str(tmp_path / "mirror")
    kw = {"resume_from": url, "mirror_options": MANUAL}
    old = _open(tmp_path / "old" / "exp.h5", url, **kw)
    _record(old, 4)
    old.flush(timeout=10)
    new = _open(tmp_path / "new" / "exp.h5", url, **kw)
    _record(new, 2)
    new.flush(timeout=10)
    with pytest.raises(HistoryConflictError):  # its records are not what the mirror holds
        old.close(timeout=10)
    new.close()
    _assert_mirror_is(url, new, tmp_path)


def test_two_writers_racing_exactly_one_survives(tmp_path: Path) -> None:
    url = str(tmp_path / "mirror")
    first = _open(tmp_path / "m1" / "exp.h5", url, resume_from=url)
    _record(first, 5)
    first.close()
    opts = MirrorOptions(interval_s=0.002, gc_delay_s=60.0)
    sweeps = [
        _open(tmp_path / f"w{n}" / "exp.h5", url, n=300, resume_from=url, mirror_options=opts)
        for n in range(2)
    ]

    def work(sweep: ResumableSweep) -> None:
        for item in list(sweep.pending)[:120]:
            sweep.record(item, _value(item))
            time.sleep(0.0005)

    threads = [threading.Thread(target=work, args=(s,)) for s in sweeps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = []
    for sweep in sweeps:
        try:
            sweep.close(timeout=20)
            outcomes.append("ok")
        except HistoryConflictError:
            outcomes.append("conflict")
    assert sorted(outcomes) == ["conflict", "ok"]
    survivor = sweeps[outcomes.index("ok")]
    _assert_mirror_is(url, survivor, tmp_path)


# -- readers during updates, bounded cost ------------------------------------------------------


def _reader(url: str, tmp: Path, stop: threading.Event, log: dict) -> None:
    store = source_store(url)
    last = 0
    while not stop.is_set():
        try:
            found = read_manifest(store)
            if found is None:
                continue
            fetched, loaded = download(store, found[0], tmp / "r" / "x.resumable")
            shutil.rmtree(fetched)
            if loaded.state.last_seq < last:
                log["errors"].append(f"went back from {last} to {loaded.state.last_seq}")
            last = loaded.state.last_seq
            log["reads"] += 1
            log["states"].add(last)
        except ResumableError as exc:  # IntegrityError above all: a torn view
            log["errors"].append(repr(exc))


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.integration)])
def test_readers_always_see_a_verifying_checkpoint(where: str, tmp_path: Path, request) -> None:
    url = (
        str(tmp_path / "mirror")
        if where == "local"
        else f"{request.getfixturevalue('s3_bucket')}/sweeps/exp"
    )
    # compaction every few uploads and sealing every few records: objects come and go
    opts = MirrorOptions(interval_s=0.003, max_chunks=3, gc_delay_s=3.0)
    seg = 2500 if where == "local" else 12000  # fewer, larger objects per read over HTTP
    sweep = _open(tmp_path / "a" / "exp.h5", url, n=1500, segment_bytes=seg, mirror_options=opts)
    _record(sweep, 5)
    sweep.flush(timeout=20)
    stop, log = threading.Event(), {"reads": 0, "errors": [], "states": set()}
    reader = threading.Thread(target=_reader, args=(url, tmp_path, stop, log))
    reader.start()
    try:
        seen = 0
        for k, item in enumerate(list(sweep.pending)):  # until the reader has read enough
            if k >= 150 and log["reads"] >= 12:
                break
            if k % 100 == 99:  # a loaded machine slows the reader: let it read between batches
                deadline = time.monotonic() + 30
                while log["reads"] <= seen and time.monotonic() < deadline:
                    time.sleep(0.01)
                seen = log["reads"]
            sweep.record(item, _value(item))
            time.sleep(0.002)
        sweep.flush(timeout=20)
        time.sleep(0.1)
    finally:
        stop.set()
        reader.join()
    assert log["errors"] == []
    assert log["reads"] >= 12 and len(log["states"]) >= 5, log
    assert sweep.status().mirror["uploads"] >= 10
    _assert_mirror_is(url, sweep, tmp_path)
    sweep.close()


def _cost(tmp: Path, n: int) -> tuple[float, float, dict]:
    """requests and bytes per record of a sweep of `n` records, flushed every 20 records."""
    url = str(tmp / f"mirror-{n}")
    opts = MirrorOptions(interval_s=3600.0, gc_delay_s=0.0)
    sweep = _open(tmp / f"run-{n}" / "exp.h5", url, n=n, mirror_options=opts)
    peak = 0
    for k, item in enumerate(list(sweep.pending)):
        sweep.record(item, _value(item))
        if k % 20 == 19:
            sweep.flush(timeout=20)
            if k % 1000 == 999:  # gc keeps up during the run, not only at close
                deadline = time.monotonic() + 5
                while _objects(url) - _named(url) and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert _objects(url) <= _named(url)
                peak = max(peak, len(_objects(url)))
    sweep.close()
    m = sweep.status().mirror
    assert _objects(url) == _named(url)
    found = read_manifest(source_store(url))
    assert found is not None
    sealed = sum(1 for s in found[1].segments if s.name.count(".") == 2)
    assert len(found[1].segments) <= sealed + opts.max_chunks
    assert peak <= sealed + opts.max_chunks
    return m["requests"] / n, m["bytes_sent"] / n, m


def test_cost_per_record_does_not_grow_with_the_sweep(tmp_path: Path) -> None:
    req_small, bytes_small, _ = _cost(tmp_path, 300)
    req_large, bytes_large, m = _cost(tmp_path, 3000)
    assert req_large / req_small < 1.5, (req_small, req_large)
    assert bytes_large / bytes_small < 2.0, (bytes_small, bytes_large)
    record_size = 250  # about: header, hash, key and _value() as JSON
    assert bytes_large < 20 * record_size, m


def test_superseded_objects_outlive_their_manifest_by_gc_delay(tmp_path: Path) -> None:
    url = str(tmp_path / "mirror")
    opts = MirrorOptions(interval_s=3600.0, max_chunks=2, gc_delay_s=0.6)
    sweep = _open(tmp_path / "a" / "exp.h5", url, mirror_options=opts)
    for _ in range(4):  # the third chunk compacts the first two
        _record(sweep, 2)
        sweep.flush(timeout=10)
    superseded = _objects(url) - _named(url)
    assert superseded, "expected compacted chunks"
    time.sleep(0.3)
    assert superseded <= _objects(url)  # still there for readers of the previous manifest
    deadline = time.monotonic() + 5
    while superseded & _objects(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not superseded & _objects(url)
    _assert_mirror_is(url, sweep, tmp_path)
    sweep.close()


def test_objects_without_a_manifest_are_damage_not_a_fresh_start(tmp_path: Path) -> None:
    url = str(tmp_path / "mirror")
    sweep = _open(tmp_path / "a" / "exp.h5", url)
    _record(sweep, 3)
    sweep.close()
    (tmp_path / "mirror" / MANIFEST_NAME).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        _open(tmp_path / "b" / "exp.h5", url, resume_from=url)
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


@pytest.mark.integration
def test_the_first_manifest_goes_up_before_any_part(
    s3_bucket: str, fault_proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that parts without a manifest never come from a launch killed at its first upload.
    (The proxy's request log shows the order of the PUTs that reached S3.)"""
    puts: list[str] = []
    decide = fault_proxy._decide

    def logged(method: str, path: str):
        if method == "PUT":
            puts.append("part" if "/segments/" in path else path.rsplit("/", 1)[-1])
        return decide(method, path)

    monkeypatch.setattr(fault_proxy, "_decide", logged)
    url = f"{s3_bucket}/sweeps/exp"
    sweep = _open(tmp_path / "a" / "exp.h5", url)
    _record(sweep, 3)
    sweep.close()
    assert "part" in puts and puts[0] == MANIFEST_NAME, puts
    _assert_mirror_is(url, sweep, tmp_path)


# -- credentials -----------------------------------------------------------------------------

SECRETS = ("SECRETSIG0123456789", "AKIASECRETCRED777", "wJalrSECRETKEYxyz")


def _assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, text


def _everything_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, url: str, bad_url: str, so: dict | None
) -> list[str]:
    """Status, repr, errors with tracebacks, and log records of a sweep mirroring to `url`
    while it is unreachable, and of a resume from `bad_url`."""
    shown: list[str] = []
    with caplog.at_level(logging.DEBUG, logger="resumable"):
        sweep = _open(tmp_path / uuid.uuid4().hex / "exp.h5", url, storage_options=so)
        _record(sweep, 3)
        time.sleep(0.3)
        status = sweep.status()
        shown += [str(status.as_dict()), repr(sweep), str(status.mirror)]
        with pytest.raises(StorageError) as info:
            sweep.close(timeout=0.3)
        shown += [str(info.value), "".join(traceback.format_exception(info.value))]
        for resume_url in (url, bad_url):
            with pytest.raises(StorageError) as info:
                _open(
                    tmp_path / uuid.uuid4().hex / "x.h5",
                    resume_url,
                    resume_from=resume_url,
                    storage_options=so,
                )
            shown += [str(info.value), "".join(traceback.format_exception(info.value))]
    shown += [r.getMessage() for r in caplog.records]
    shown += [
        "".join(traceback.format_exception(*r.exc_info)) for r in caplog.records if r.exc_info
    ]
    assert any("unreachable" in s for s in shown)
    return shown


@pytest.mark.integration
def test_storage_option_keys_never_shown(
    s3_bucket: str, fault_proxy, tmp_path: Path, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESUMABLE_RETRY_ATTEMPTS", "1")
    fault_proxy.down("drop")
    options = {"key": SECRETS[1], "secret": SECRETS[2]}
    url = f"{s3_bucket}/sweeps/exp"
    _assert_no_secrets(*_everything_shown(tmp_path, caplog, url, "s3://no-such-zz/x", options))


@pytest.mark.integration
def test_signed_url_query_never_shown(
    s3_bucket: str, fault_proxy, tmp_path: Path, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fails while `redact` misses percent-encoded queries: botocore's "endpoint URL" in
    ConnectionClosedError/EndpointConnectionError messages carries the key with ?, = and &
    encoded (…/manifest.json%3FX-Amz-Signature%3D…). See the report; storage is not ours."""
    monkeypatch.setenv("RESUMABLE_RETRY_ATTEMPTS", "1")
    fault_proxy.down("drop")
    query = f"X-Amz-Credential={SECRETS[1]}&X-Amz-Signature={SECRETS[0]}"
    url = f"{s3_bucket}/sweeps/exp?{query}"
    bad = f"s3://no-such-zz/x?sig={SECRETS[0]}"
    _assert_no_secrets(*_everything_shown(tmp_path, caplog, url, bad, None))


def test_mirror_manifest_records_the_writer(tmp_path: Path) -> None:
    url = str(tmp_path / "mirror")
    sweep = _open(tmp_path / "a" / "exp.h5", url)
    _record(sweep, 1)
    sweep.close()
    found = read_manifest(source_store(url))
    assert found is not None
    assert found[1].extra["writer"] == f"{sweep.launch_id}@{sweep.host}"
