"""The local progress directory: layout, sealing, per-record cost, crash leftovers, the lock."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from resumable import IntegrityError, ResumableError, ResumableSweep
from resumable._checkpoint import DirLock, load, progress_dir_for
from resumable._codec import canonical_json, sha256_hex
from resumable.errors import CheckpointLockedError

ITEMS = [{"i": i} for i in range(80)]


def _manifest(pdir: Path) -> dict:
    return json.loads((pdir / "manifest.json").read_bytes())


def _fill(ckpt: Path, n: int, *, segment_bytes: int, items=ITEMS) -> None:
    with ResumableSweep(items, checkpoint_path=ckpt, segment_bytes=segment_bytes) as sweep:
        for item in items[:n]:
            sweep.record(item, {"i": item["i"], "pad": "p" * (item["i"] % 7)})


def _all_results(ckpt: Path, items=ITEMS) -> dict:
    with ResumableSweep(items, checkpoint_path=ckpt) as sweep:
        return {sweep.key(item): sweep.result(item) for item in items if sweep.is_done(item)}


def test_progress_dir_is_beside_the_checkpoint_path(tmp_path):
    assert progress_dir_for(tmp_path / "data" / "exp.h5") == tmp_path / "data" / "exp.h5.resumable"
    assert progress_dir_for("exp") == Path("exp.resumable")


def test_layout_of_a_new_checkpoint(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt):
        pass
    pdir = progress_dir_for(ckpt)
    assert sorted(p.name for p in pdir.iterdir()) == ["manifest.json", "segments"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.h5.resumable"]  # lock removed
    assert sorted(p.name for p in (pdir / "segments").iterdir()) == ["seg-00000001.jsonl"]
    m = _manifest(pdir)
    assert m["sweep"] == "exp"
    assert m["segments"] == []
    assert m["active"] == "seg-00000001.jsonl"
    assert not ckpt.exists()  # the user's own output file is the user's business


def test_load_of_nothing_is_none(tmp_path):
    assert load(tmp_path / "nope.resumable") is None
    empty = tmp_path / "empty.resumable"
    (empty / "segments").mkdir(parents=True)
    (empty / "segments" / "seg-00000001.jsonl").write_bytes(b"")
    assert load(empty) is None


# -- sealing ------------------------------------------------------------------------------------


def test_small_segments_are_sealed_and_listed_with_sizes_and_hashes(tmp_path):
    ckpt = tmp_path / "exp.h5"
    _fill(ckpt, 60, segment_bytes=300)
    pdir = progress_dir_for(ckpt)
    m = _manifest(pdir)
    segs = m["segments"]
    assert len(segs) >= 10
    on_disk = sorted(p.name for p in (pdir / "segments").iterdir() if p.suffix == ".jsonl")
    assert on_disk == sorted([s["name"] for s in segs] + [m["active"]])
    # beside them, at most the row indexes of sealed segments (a cache, built in the background)
    indexes = {p.name for p in (pdir / "segments").iterdir() if p.suffix != ".jsonl"}
    indexes = {n for n in indexes if not n.startswith(".")}  # (temporary files: not yet)
    assert indexes <= {s["name"].replace(".jsonl", ".idx") for s in segs}
    next_seq = 1
    for s in segs:
        data = (pdir / "segments" / s["name"]).read_bytes()
        assert len(data) == s["size"]
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
        lines = data.split(b"\n")
        assert lines[-1] == b""
        lines = lines[:-1]
        assert len(lines) == s["records"]
        assert (s["first_seq"], s["last_seq"]) == (next_seq, next_seq + len(lines) - 1)
        assert lines[-1][:64].decode() == s["last_hash"]
        # Sealed as soon as it reached segment_bytes, not later.
        assert s["size"] >= 300
        assert s["size"] - len(lines[-1]) - 1 < 300
        next_seq += len(lines)
    active = (pdir / "segments" / m["active"]).read_bytes()
    assert len(active) < 300
    results = _all_results(ckpt)
    assert len(results) == 60
    assert all(v["i"] == int(v["i"]) for v in results.values())


def test_reopen_with_other_segment_sizes(tmp_path):
    ckpt = tmp_path / "exp.h5"
    _fill(ckpt, 10, segment_bytes=300)
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=10**6) as sweep:
        for item in ITEMS[10:20]:
            sweep.record(item, item["i"])
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=1) as sweep:
        for item in ITEMS[20:25]:
            sweep.record(item, item["i"])  # every record seals
        assert sweep.status().done == 25
    assert len(_all_results(ckpt)) == 25


class _OpenLog:
    """Records every file or directory opened through os.open or open()."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        real_os_open = os.open
        real_open = builtins.open

        def os_open(path, flags, *args, **kwargs):
            if threading.current_thread().name.startswith("resumable-indexer"):
                return real_os_open(path, flags, *args, **kwargs)  # not record()'s work
            self.events.append((os.fspath(path), "w" if flags & (os.O_WRONLY | os.O_RDWR) else "r"))
            return real_os_open(path, flags, *args, **kwargs)

        def open_(file, mode="r", *args, **kwargs):
            if threading.current_thread().name.startswith("resumable-indexer"):
                return real_open(file, mode, *args, **kwargs)  # not record()'s work
            if not isinstance(file, int):
                writes = any(c in mode for c in "wax+")
                self.events.append((os.fspath(file), "w" if writes else "r"))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", open_)

    def take(self) -> list[tuple[str, str]]:
        out, self.events = self.events, []
        return out


def test_recording_does_no_work_proportional_to_history(tmp_path, monkeypatch):
    """Appending record N opens no older segment and reads nothing; sealing writes only new files.

    Checked by logging every open during each record() once many segments exist (behaviour,
    not timing).
    """
    ckpt = tmp_path / "exp.h5"
    items = [{"i": i} for i in range(200)]
    _fill(ckpt, 120, segment_bytes=300, items=items)
    pdir = progress_dir_for(ckpt)
    assert len(_manifest(pdir)["segments"]) > 30

    sweep = ResumableSweep(items, checkpoint_path=ckpt, segment_bytes=300)
    sealed_before = {s["name"] for s in _manifest(pdir)["segments"]}
    log = _OpenLog(monkeypatch)
    per_record = []
    for item in items[120:180]:
        sweep.record(item, {"i": item["i"]})
        per_record.append(log.take())
    monkeypatch.undo()
    sweep.close()

    seals = 0
    for events in per_record:
        for path, how in events:
            p = Path(path)
            assert p.name not in sealed_before, f"record() opened old segment {path}"
            if p.is_dir():
                continue  # directory fsyncs
            assert how == "w", f"record() opened {path} for reading"
            assert p.name.startswith((".manifest.json.", "seg-")), path
        if events:
            seals += 1
            assert len(events) <= 6, events
    assert seals >= 10  # the records above sealed many segments
    assert sum(1 for e in per_record if not e) >= 20  # plain appends open nothing at all
    assert len(_all_results(ckpt, items)) == 180


# -- crash leftovers ----------------------------------------------------------------------------


def test_reopen_seals_an_active_segment_that_outgrew_its_limit(tmp_path):
    """Killed after a record pushed the active segment past the limit but before sealing."""
    ckpt = tmp_path / "exp.h5"
    _fill(ckpt, 30, segment_bytes=10**6)
    pdir = progress_dir_for(ckpt)
    assert _manifest(pdir)["segments"] == []
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=500) as sweep:
        assert sweep.status().done == 30
        sweep.record(ITEMS[30], 30)
    m = _manifest(pdir)
    assert len(m["segments"]) >= 1
    assert len(_all_results(ckpt)) == 31


def test_empty_next_segment_left_by_a_crash_during_sealing(tmp_path):
    """Killed between creating the next segment file and writing the manifest naming it.

    Sealing creates ``seg-00000002.jsonl`` (empty) first, then replaces the manifest. A crash
    in between leaves the empty file behind while the manifest still names segment 1 as
    active. The next seal must not fail on the existing empty file.
    """
    ckpt = tmp_path / "exp.h5"
    _fill(ckpt, 30, segment_bytes=10**6)
    pdir = progress_dir_for(ckpt)
    (pdir / "segments" / "seg-00000002.jsonl").write_bytes(b"")
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=500) as sweep:
        assert sweep.status().done == 30
        for item in ITEMS[30:40]:
            sweep.record(item, item["i"])
    assert len(_manifest(pdir)["segments"]) >= 2
    assert len(_all_results(ckpt)) == 40


def test_non_empty_unlisted_next_segment_is_not_silently_overwritten(tmp_path):
    """A non-empty segment file that the manifest does not know was never written by sealing.

    Whatever the library does with it, it must not destroy its bytes or pretend it is valid.
    """
    ckpt = tmp_path / "exp.h5"
    _fill(ckpt, 30, segment_bytes=10**6)
    pdir = progress_dir_for(ckpt)
    stray = pdir / "segments" / "seg-00000002.jsonl"
    stray.write_bytes(b"not a record\n")
    try:
        with ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=500) as sweep:
            for item in ITEMS[30:40]:
                sweep.record(item, item["i"])
    except ResumableError:
        pass
    if stray.exists() and stray.name not in {s["name"] for s in _manifest(pdir)["segments"]}:
        assert stray.read_bytes() == b"not a record\n"


def test_leftover_manifest_temp_file_is_harmless(tmp_path):
    ckpt = tmp_path / "exp.h5"
    _fill(ckpt, 5, segment_bytes=300)
    pdir = progress_dir_for(ckpt)
    (pdir / ".manifest.json.0123456789ab.tmp").write_bytes(b'{"half": ')
    assert len(_all_results(ckpt)) == 5


def test_crash_during_creation_before_the_manifest(tmp_path):
    ckpt = tmp_path / "exp.h5"
    pdir = progress_dir_for(ckpt)
    (pdir / "segments").mkdir(parents=True)
    (pdir / "segments" / "seg-00000001.jsonl").write_bytes(b"")
    (pdir / "LOCK").write_bytes(b"")  # an older version's lock, inside
    (tmp_path / "exp.h5.resumable.lock").write_bytes(b'{"pid": 1}')  # a killed holder's
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        sweep.record(ITEMS[0], 0)
        key = sweep.key(ITEMS[0])
    assert _all_results(ckpt) == {key: 0}


def test_torn_tail_is_dropped_and_truncated_on_reopen(tmp_path):
    ckpt = tmp_path / "exp.h5"
    _fill(ckpt, 5, segment_bytes=10**6)
    pdir = progress_dir_for(ckpt)
    active = pdir / "segments" / _manifest(pdir)["active"]
    good = active.read_bytes()
    active.write_bytes(good + b"0123abc partial record without newline")
    assert load(pdir).torn_bytes > 0
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        assert sweep.status().done == 5
        # The tail was cut off before anything was appended after it.
        assert active.read_bytes().startswith(good)
        assert b"partial record" not in active.read_bytes()
        sweep.record(ITEMS[5], 5)
    assert load(pdir).torn_bytes == 0
    assert len(_all_results(ckpt)) == 6


def test_manifest_without_active_segment(tmp_path):
    """A (re-hashed) manifest that names no active segment: open cleanly or refuse clearly."""
    ckpt = tmp_path / "exp.h5"
    _fill(ckpt, 20, segment_bytes=1)  # every record seals: the active segment is empty
    pdir = progress_dir_for(ckpt)
    body = _manifest(pdir)
    active = pdir / "segments" / body["active"]
    assert active.stat().st_size == 0
    active.unlink()
    body["active"] = None
    body.pop("manifest_sha256")
    body["manifest_sha256"] = sha256_hex(canonical_json(body))
    (pdir / "manifest.json").write_text(json.dumps(body))
    try:
        sweep = ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=300)
    except IntegrityError:
        return
    with sweep:
        sweep.record(ITEMS[60], 60)
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as again:
        assert again.result(ITEMS[60]) == 60


# -- the lock -----------------------------------------------------------------------------------


def test_dir_lock_is_exclusive_in_process_and_records_holder(tmp_path):
    pdir = tmp_path / "x.resumable"
    pdir.mkdir()
    lock = DirLock(pdir)
    try:
        info = json.loads((tmp_path / "x.resumable.lock").read_text())  # beside the directory
        assert info["pid"] == os.getpid()
        assert "host" in info
        with pytest.raises(CheckpointLockedError):
            DirLock(pdir)
        # Through another spelling of the same directory as well.
        with pytest.raises(CheckpointLockedError):
            DirLock(tmp_path / "." / "x.resumable")
    finally:
        lock.release()
    lock.release()  # idempotent
    again = DirLock(pdir)
    again.release()


def test_sweep_on_locked_checkpoint_writes_nothing(tmp_path):
    ckpt = tmp_path / "exp.h5"
    _fill(ckpt, 3, segment_bytes=300)
    pdir = progress_dir_for(ckpt)
    lock = DirLock(pdir)
    try:
        before = {p.name: p.read_bytes() for p in (pdir / "segments").glob("*.jsonl")} | {
            "manifest.json": (pdir / "manifest.json").read_bytes()
        }
        with pytest.raises(CheckpointLockedError):
            ResumableSweep(ITEMS, checkpoint_path=ckpt)
        after = {p.name: p.read_bytes() for p in (pdir / "segments").glob("*.jsonl")} | {
            "manifest.json": (pdir / "manifest.json").read_bytes()
        }
        assert after == before
    finally:
        lock.release()


def test_interrupt_between_write_and_bookkeeping_leaves_a_loadable_checkpoint(
    tmp_path, monkeypatch
):
    """Ctrl-C landing inside record() (after the write, before the writer's bookkeeping): the
    sweep refuses further records, and the checkpoint reopens with every acknowledged record."""
    import resumable._checkpoint as ck
    from resumable.errors import CheckpointClosedError

    items = [str(i) for i in range(6)]
    ckpt = tmp_path / "exp.h5"
    sweep = ResumableSweep(items, key=str, checkpoint_path=ckpt)
    sweep.record(items[0], 0)
    real = ck.fsync_file
    calls = []

    def interrupted(fd, name, **kw):
        real(fd, name, **kw)
        calls.append(name)
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "fsync_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.record(items[1], 1)
    monkeypatch.setattr(ck, "fsync_file", real)
    assert calls
    with pytest.raises(CheckpointClosedError, match="interrupted while recording"):
        sweep.record(items[2], 2)
    sweep.close()
    with ResumableSweep(items, key=str, checkpoint_path=ckpt) as again:
        assert again.result(items[0]) == 0
        assert not again.is_done(items[1])  # never acknowledged: still pending
        for item in again.pending:
            again.record(item, int(item))
    loaded = load(progress_dir_for(ckpt))
    assert sorted(loaded.state.results) == items


# -- torn tails (issue 10, defect 6) ------------------------------------------------------------


def _power_cut_tail(ckpt, big_result) -> tuple[Path, int, bytes]:
    """Record `big_result`, then make its append look like a power cut on ext4 data=ordered:
    the new size and the last page on disk, the earlier pages of the append zeroed."""
    pdir = progress_dir_for(ckpt)
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=10**7) as sweep:
        for item in ITEMS[:3]:
            sweep.record(item, item["i"])
        active = pdir / "segments" / _manifest(pdir)["active"]
        before = active.stat().st_size
        sweep.record(ITEMS[3], big_result)
    data = bytearray(active.read_bytes())
    first_page = (before // 4096 + 1) * 4096
    last_page = (len(data) - 1) // 4096 * 4096
    data[before:last_page] = bytes(last_page - before)  # zeroed pages, the last one kept
    assert first_page <= last_page
    active.write_bytes(bytes(data))
    return active, before, bytes(data[before:])


def test_a_power_cut_during_a_large_append_is_a_torn_tail(tmp_path, caplog):
    ckpt = tmp_path / "exp.h5"
    pdir = progress_dir_for(ckpt)
    _, good, tail = _power_cut_tail(ckpt, {"blob": "b" * 20_000})
    loaded = load(pdir)  # used to refuse: found b'\x00\x00...'
    assert loaded is not None and len(loaded.state.results) == 3
    assert (loaded.active_size, loaded.torn_bytes) == (good, len(tail))
    logged = caplog.at_level("WARNING", logger="resumable._segfiles")
    with logged, ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        assert not sweep.is_done(ITEMS[3])
        sweep.record(ITEMS[3], "again")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("torn tail" in m and str(len(tail)) in m for m in warned)
    (kept,) = (pdir / "torn").iterdir()
    assert kept.read_bytes() == tail  # never silently deleted
    assert (
        _all_results(ckpt)[ResumableSweep(ITEMS, checkpoint_path=tmp_path / "k").key(ITEMS[3])]
        == "again"
    )


PAGE = 4096


def _torn_group(ckpt: Path, zero_pages: list[int], cut: int = 0) -> tuple[Path, int, bytes, int]:
    """Record 3 items, then one group (record_many: one write, one fdatasync) of several pages,
    and make that write look like a power cut on ext4 data=ordered / XFS: the new size and some
    pages on disk, the whole file pages `zero_pages` (numbered from the group's first page) and
    the rest of the group's first page zeroed; the last `cut` bytes never written.
    Returns (active segment, acknowledged size, its torn tail, records kept before the zeros)."""
    pdir = progress_dir_for(ckpt)
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=10**7) as sweep:
        for item in ITEMS[:3]:
            sweep.record(item, item["i"])
        active = pdir / "segments" / _manifest(pdir)["active"]
        before = active.stat().st_size
        sweep.record_many([(item, {"pad": "g" * 1500}) for item in ITEMS[3:15]])
    data = bytearray(active.read_bytes())
    assert len(data) - before >= 3 * PAGE  # the group spans at least 3 pages
    first = before // PAGE
    zeroed = []
    for n in zero_pages:
        a = max(before, (first + n) * PAGE)
        b = min(len(data), (first + n + 1) * PAGE)
        data[a:b] = bytes(b - a)
        zeroed.append(a)
    assert any(data[(first + len(zero_pages) + 1) * PAGE :])  # later pages survive
    if cut:
        del data[-cut:]
    active.write_bytes(bytes(data))
    lines = bytes(data[before:]).split(b"\n")
    kept, end = 0, before
    for line in lines[:-1]:  # whole group records lying before the first zeroed byte survive
        if end + len(line) + 1 > min(zeroed, default=len(data)):
            break
        kept, end = kept + 1, end + len(line) + 1
    return active, end, bytes(data[end:]), kept


@pytest.mark.parametrize(
    ("zero_pages", "cut"),
    [([0], 0), ([0, 1], 0), ([0, 1], 700), ([1], 0), ([1, 2], 0), ([0, 2], 300)],
)
def test_a_power_cut_during_a_group_commit_is_a_torn_tail(tmp_path, caplog, zero_pages, cut):
    """One unacknowledged group write spans many records and pages: a power cut may keep the
    file's new size and later pages while earlier ones (the group's first record too) are
    zeroed, leaving whole, well-formed, never acknowledged records after the zeros. Opening
    must keep the acknowledged records, drop the rest as torn, warn and keep the bytes."""
    ckpt = tmp_path / "exp.h5"
    pdir = progress_dir_for(ckpt)
    active, good, tail, kept = _torn_group(ckpt, zero_pages, cut)
    loaded = load(pdir)  # used to refuse: damage followed by a record
    assert loaded is not None and len(loaded.state.results) == 3 + kept
    assert (loaded.active_size, loaded.torn_bytes) == (good, len(tail))
    logged = caplog.at_level("WARNING", logger="resumable._segfiles")
    with logged, ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        assert all(sweep.is_done(item) for item in ITEMS[:3])
        assert not sweep.is_done(ITEMS[3 + kept])
        sweep.record(ITEMS[3 + kept], "again")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("torn tail" in m and str(len(tail)) in m for m in warned)
    (kept_file,) = (pdir / "torn").iterdir()
    assert kept_file.read_bytes() == tail  # never silently deleted
    assert active.stat().st_size > good
    results = _all_results(ckpt)
    assert len(results) == 3 + kept + 1


@pytest.mark.parametrize("how", ["flip", "garbage", "unaligned", "separate"])
def test_damage_before_records_that_no_power_cut_leaves_is_refused(tmp_path, how):
    """Damage a power cut cannot make stays an IntegrityError, even inside a group: a changed
    byte, non-zero garbage over a whole page, zeros not covering whole sectors, or zeros
    followed by records acknowledged by separate commits."""
    ckpt = tmp_path / "exp.h5"
    pdir = progress_dir_for(ckpt)
    if how == "separate":
        _fill(ckpt, 12, segment_bytes=10**6)
        active = pdir / "segments" / _manifest(pdir)["active"]
        data = bytearray(active.read_bytes())
        data[PAGE // 2 : PAGE] = bytes(PAGE // 2)  # zeros up to a page boundary, records after
        assert len(data) > PAGE + 200
    else:
        active, _, _, _ = _torn_group(ckpt, [])
        data = bytearray(active.read_bytes())
        start = (len(data) // PAGE - 2) * PAGE
        if how == "flip":
            data[start + 10] ^= 0x01
        elif how == "garbage":
            data[start : start + PAGE] = b"\xa5" * PAGE
        else:
            data[start + 100 : start + PAGE] = bytes(PAGE - 100)
    active.write_bytes(bytes(data))
    before = active.read_bytes()
    with pytest.raises(IntegrityError):
        load(pdir)
    with pytest.raises(IntegrityError):
        ResumableSweep(ITEMS, checkpoint_path=ckpt)
    assert active.read_bytes() == before and not (pdir / "torn").exists()


@pytest.mark.parametrize("junk", [b"\x00" * 9000, b"\xff" * 5000 + b"\n", b"partial line"])
def test_damage_followed_by_a_valid_record_is_still_refused(tmp_path, junk):
    ckpt = tmp_path / "exp.h5"
    pdir = progress_dir_for(ckpt)
    _fill(ckpt, 5, segment_bytes=10**6)
    active = pdir / "segments" / _manifest(pdir)["active"]
    lines = active.read_bytes().splitlines(keepends=True)
    # damage in the middle of acknowledged records: junk in place of record 3, 4 and 5 after it
    active.write_bytes(b"".join(lines[:2]) + junk + b"\n" + b"".join(lines[3:]))
    before = active.read_bytes()
    with pytest.raises(IntegrityError):
        load(pdir)
    with pytest.raises(IntegrityError):
        ResumableSweep(ITEMS, checkpoint_path=ckpt)
    assert active.read_bytes() == before and not (pdir / "torn").exists()


def test_an_install_cut_short_between_its_renames_is_put_back_at_the_next_open(tmp_path, caplog):
    """A crash after the local checkpoint was set aside and before the download was renamed
    into place leaves no progress directory: the next open puts the set-aside one back, so a
    relaunch without the source still has every record. (Leftover downloads are removed by
    age, see test_mirror_gc.)"""
    ckpt = tmp_path / "exp.h5"
    _fill(ckpt, 5, segment_bytes=300)
    pdir = progress_dir_for(ckpt)
    pdir.rename(tmp_path / ".exp.h5.resumable.replaced-0a1b2c3d")
    incoming = tmp_path / ".exp.h5.resumable.incoming-99aa88bb"
    (incoming / "segments").mkdir(parents=True)
    (incoming / "segments" / "seg-00000001.jsonl").write_bytes(b"half a download")
    with caplog.at_level("WARNING", logger="resumable._install_recovery"):
        assert len(_all_results(ckpt)) == 5
    assert any("put back" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in tmp_path.iterdir()) == [incoming.name, "exp.h5.resumable"]
