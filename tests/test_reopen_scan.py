"""Reopening from sealed segments without a Record per line: the vectorised scan must agree
with the record-by-record parser, fall back to it on anything unusual, and results read back
lazily must be verified again (a segment changed after the open is damage, never trusted)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from resumable import ResumableSweep
from resumable._checkpoint import SEGMENTS_DIR, load, progress_dir_for
from resumable._journal import encode_record, parse_segment, scan_sealed
from resumable._manifest import MANIFEST_NAME, parse_manifest
from resumable._state import State
from resumable.errors import IntegrityError
from resumable.view import open_view

FP = "0123456789abcdef" * 2


@pytest.fixture(autouse=True)
def _scan_small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """The histories here have small segments (many of them): scan those too."""
    import resumable._loading as checkpoint

    monkeypatch.setattr(checkpoint, "_SCAN_MIN_RECORDS", 1)


def _segment(specs: list[tuple[str, str | None, dict]], first_seq: int = 1) -> bytes:
    out, prev = [], ""
    for i, (kind, key, payload) in enumerate(specs):
        fp = FP if kind in ("result", "failure", "items") else None
        line, prev, _ = encode_record(prev, first_seq + i, kind, key, 1.7e9 + i / 8, fp, payload)
        out.append(line)
    return b"".join(out)


def test_scan_agrees_with_the_full_parser() -> None:
    specs: list[tuple[str, str | None, dict]] = [
        ("launch", None, {"launch": "L", "n_items": 3}),
        ("items", None, {"items": [["a b", FP, {}]]}),
    ]
    specs += [
        ("result", f"k {i} é", {"value": i, "duration": None, "launch": "L"}) for i in range(300)
    ]
    specs.insert(100, ("failure", "x", {"attempt": 1, "error_type": "E", "message": "m n"}))
    data = _segment(specs, first_seq=998)
    scan = scan_sealed(data, first_seq=998, records=len(specs))
    full = parse_segment(data, source="s", first_seq=998, prev_hash="", allow_torn_tail=False)
    assert scan is not None
    results = [r for r in full.records if r.type == "result"]
    assert scan.keys == [r.key for r in results]
    assert scan.times.tolist() == [r.t for r in results]
    lines = data.split(b"\n")[:-1]
    offsets = [sum(len(x) + 1 for x in lines[:i]) for i in range(len(lines))]
    assert scan.starts.tolist() == offsets
    assert [lines[i] for i in scan.result_lines] == [x for x in lines if b" result " in x[:90]]
    # wrong numbering, a missing line, an escaped key: no scan (the full parser decides)
    assert scan_sealed(data, first_seq=999, records=len(specs)) is None
    assert scan_sealed(data, first_seq=998, records=len(specs) + 1) is None
    escaped = _segment([("result", 'q"uote', {"value": 1})])
    assert scan_sealed(escaped, first_seq=1, records=1) is None
    bad_time = data.replace(b" result 1700000000.", b" result 17000000000.", 1)  # > MAX_TIME
    assert scan_sealed(bad_time, first_seq=998, records=len(specs)) is None


def _history(path: Path) -> None:
    items = list(range(400))
    kw = {"key": lambda i: f"item {i}", "checkpoint_path": path, "segment_bytes": 4096}
    with ResumableSweep(items, **kw) as sweep:
        for i in items[:150]:
            sweep.record(i, {"v": i})
        sweep.record_failure(150, RuntimeError("boom"))
    with ResumableSweep(items, retry_failed=True, **kw) as sweep:
        sweep.record(150, "late")
        for i in items[151:300]:
            if i % 7:
                sweep.record(i, [i, str(i)])
            else:
                sweep.record_failure(i, ValueError(str(i)))
    grown = [*items, *range(1000, 1010)]
    with ResumableSweep(grown, **kw) as sweep:
        for i in grown[300:]:
            sweep.record(i, i)


def _reference(progress_dir: Path) -> State:
    """The state a record-by-record replay of every segment gives."""
    manifest = parse_manifest((progress_dir / MANIFEST_NAME).read_bytes(), source="m")
    state, prev, seq = State(), "", 1
    names = [s.name for s in manifest.segments] + [manifest.active]
    for name in names:
        data = (progress_dir / SEGMENTS_DIR / name).read_bytes()
        parsed = parse_segment(
            data, source=name, first_seq=seq, prev_hash=prev, allow_torn_tail=False
        )
        for rec in parsed.records:
            state.apply(rec)
        prev, seq = parsed.last_hash, seq + len(parsed.records)
    state.last_hash = prev
    return state


def _summary(state: State) -> tuple:
    return (
        [(k, r.seq, r.t, r.fp, r.payload) for k, r in state.results.items()],
        {k: (r.seq, r.payload) for k, r in state.failure_records.items()},
        state.failures,
        state.attempts,
        [r.seq for r in state.superseded],
        [r.seq for r in state.events],
        state.launches,
        (state.items_sha256, state.items_count, state.last_seq, state.last_hash),
        state.last_finished,
        state.items_listing(),
    )


def test_bulk_replay_equals_record_by_record_replay(tmp_path: Path) -> None:
    path = tmp_path / "exp.h5"
    _history(path)
    progress = progress_dir_for(path)
    assert len(list((progress / SEGMENTS_DIR).iterdir())) > 20  # many sealed segments
    loaded = load(progress)
    assert loaded is not None
    assert _summary(loaded.state) == _summary(_reference(progress))
    seqs, times = loaded.state.results.seqs_and_times()
    assert seqs.tolist() == [r.seq for r in loaded.state.results.values()]
    assert times.tolist() == [r.t for r in loaded.state.results.values()]


def test_status_counts_equal_the_listing_path(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "exp.h5"
    _history(path)
    view = open_view(str(path))
    assert view.loaded.state.keys_all_current()  # appends only: counts suffice
    fast = view.status()
    monkeypatch.setattr(State, "keys_all_current", lambda self: False)
    slow = open_view(str(path)).status()
    assert fast == slow and fast.total == 410 and fast.done > 0 and fast.failed > 0
    from resumable._history import timeline

    monkeypatch.undo()
    a = timeline(open_view(str(path)), detail=False)
    monkeypatch.setattr(State, "keys_all_current", lambda self: False)
    b = timeline(open_view(str(path)), detail=False)
    assert [x.as_dict() for x in a.launches] == [x.as_dict() for x in b.launches]


def test_a_sealed_segment_changed_after_the_open_is_never_trusted(tmp_path: Path) -> None:
    """Results are read back from their segment when looked at: it is checked against the
    manifest's SHA-256 again, so bytes changed since the open (even of the same size, and
    still well formed) raise instead of being used."""
    path = tmp_path / "exp.h5"
    _history(path)
    view = open_view(str(path))
    progress = progress_dir_for(path)
    manifest = parse_manifest((progress / MANIFEST_NAME).read_bytes(), source="m")
    seg = progress / SEGMENTS_DIR / manifest.segments[2].name
    data = seg.read_bytes()
    seg.write_bytes(data.replace(b'{"v":', b'{"w":', 1))  # same size, valid JSON
    with pytest.raises(IntegrityError, match="SHA-256 mismatch since the checkpoint was opened"):
        list(view.results())
    shutil.rmtree(progress)
    with pytest.raises(IntegrityError, match="missing since the checkpoint was opened"):
        list(view.results())


def test_a_damaged_sealed_segment_is_refused_at_the_open(tmp_path: Path) -> None:
    path = tmp_path / "exp.h5"
    _history(path)
    progress = progress_dir_for(path)
    manifest = parse_manifest((progress / MANIFEST_NAME).read_bytes(), source="m")
    seg = progress / SEGMENTS_DIR / manifest.segments[5].name
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 1
    seg.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
        load(progress)


def test_resume_from_a_mirror_replays_the_checkpoint_once(tmp_path: Path, monkeypatch) -> None:
    import resumable._loading as checkpoint

    items = list(range(300))
    mirror = tmp_path / "mirror"
    kw = {"key": str, "segment_bytes": 2048}
    with ResumableSweep(
        items, checkpoint_path=tmp_path / "a" / "x.h5", snapshot_dir=str(mirror), **kw
    ) as s:
        for i in items[:200]:
            s.record(i, i * 2)
    calls = []
    real = checkpoint._replay

    def counting(*args, **kwargs):
        calls.append(kwargs.get("location"))
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "_replay", counting)
    target = tmp_path / "b" / "x.h5"
    with ResumableSweep(items, checkpoint_path=target, resume_from=str(mirror), **kw) as s:
        assert s.resumed_from == "remote"
        assert len(calls) == 1
        assert s.status().done == 200
        assert s.result(items[5]) == 10  # read back from the installed copy
        for i in items[200:]:
            s.record(i, i * 2)
    assert len(calls) == 1
    with ResumableSweep(items, checkpoint_path=target, **kw) as s:
        assert [s.result(i) for i in items] == [i * 2 for i in items]


def _sealed_names(progress: Path) -> list[str]:
    manifest = parse_manifest((progress / MANIFEST_NAME).read_bytes(), source="m")
    return [s.name for s in manifest.segments]


@pytest.mark.parametrize("where", [0, 1, 2, "middle", "last"])
def test_damage_in_any_sealed_segment_fails_the_open_and_status(
    tmp_path: Path, where: int | str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sealed segments are read and checked one ahead of the replay (in a thread): damage in
    any of them, the first, the one read ahead while the first replays, or the last, still
    fails the open naming that segment, the status says so (exit 1), and no reading thread
    is left behind."""
    import threading

    from resumable.cli import main as cli_main

    path = tmp_path / "exp.h5"
    _history(path)
    progress = progress_dir_for(path)
    names = _sealed_names(progress)
    assert len(names) > 10
    name = names[{"middle": len(names) // 2, "last": -1}.get(where, where)]  # type: ignore[call-overload]
    seg = progress / SEGMENTS_DIR / name
    data = bytearray(seg.read_bytes())
    data[len(data) // 3] ^= 1
    seg.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"{name}: SHA-256 mismatch"):
        load(progress)
    assert cli_main(["status", "--json", str(path)]) == 1
    err = capsys.readouterr().err
    assert "IntegrityError" in err and name in err and "SHA-256 mismatch" in err
    seg.unlink()
    with pytest.raises(IntegrityError, match=f"{name}: sealed segment named by the manifest is"):
        load(progress)
    assert not [t for t in threading.enumerate() if t.name.startswith("resumable-load")]


def test_segments_read_ahead_are_the_segments_checked(tmp_path: Path) -> None:
    from resumable._parts import SealedParts, dir_reader, verified_ahead

    path = tmp_path / "exp.h5"
    _history(path)
    progress = progress_dir_for(path)
    manifest = parse_manifest((progress / MANIFEST_NAME).read_bytes(), source="m")
    parts = SealedParts(dir_reader(progress), manifest, str(progress))
    assert list(verified_ahead(parts)) == [
        (progress / SEGMENTS_DIR / s.name).read_bytes() for s in manifest.segments
    ]
    # a consumer that stops early: the segment read ahead is waited for and dropped
    ahead = verified_ahead(parts)
    next(ahead)
    ahead.close()


def test_a_result_recorded_twice_in_sealed_segments_is_damage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key done twice (no invalidation between) is damage wherever the second result lies
    in the bulk-replayed sealed segments: the same segment or a later one, replayed from a
    row index or scanned; `status` reports it (exit 1)."""
    import threading

    from resumable._checkpoint import CheckpointWriter, DirLock
    from resumable.cli import main as cli_main

    path = tmp_path / "exp.h5"
    _history(path)
    progress = progress_dir_for(path)
    loaded = load(progress)
    assert loaded is not None and "item 3" in loaded.state.results
    writer = CheckpointWriter(progress, loaded, DirLock(progress), segment_bytes=4096)
    try:
        for i in range(40):
            writer.append("result", {"value": i, "duration": None}, key=f"new {i}", fp=FP)
        writer.append("result", {"value": 0, "duration": None}, key="item 3", fp=FP)
        for i in range(40, 120):
            writer.append("result", {"value": i, "duration": None}, key=f"new {i}", fp=FP)
        writer.indexer.wait(60)
    finally:
        writer.close()
    sealed = _sealed_names(progress)
    holders = [n for n in sealed if b' "item 3"\t' in (progress / SEGMENTS_DIR / n).read_bytes()]
    assert len(holders) == 2  # the result and its copy, both in sealed segments
    for indexes in (True, False):
        with pytest.raises(IntegrityError, match="'item 3' is recorded as done twice") as info:
            load(progress, use_indexes=indexes)
        # found while the next segment was read ahead: that reading thread is gone, even
        # while the error (its traceback, the load's frames) is still held
        assert not [t for t in threading.enumerate() if t.name.startswith("resumable-load")]
        del info
    assert cli_main(["status", str(path)]) == 1
    assert "recorded as done twice" in capsys.readouterr().err


def test_first_seq_of_the_result_map(tmp_path: Path) -> None:
    """`ResultMap.first_seq` (what `keys_all_current` asks, without a key -> row index): the
    sequence number of the first result in the map's order, whether that entry is a lazy
    row, a pinned row or a Record."""
    path = tmp_path / "exp.h5"
    _history(path)
    loaded = load(progress_dir_for(path))
    assert loaded is not None
    results = loaded.state.results
    in_order = [r.seq for r in results.values()]
    assert results.first_seq() == in_order[0] == min(in_order)
    assert results.seqs_and_times()[0].tolist() == in_order
    first = next(iter(results))
    results.pop(first)  # pins every lazy row
    assert results.first_seq() == in_order[1]
    assert results.seqs_and_times()[0].tolist() == in_order[1:]
    for key in list(results)[:-1]:
        results.pop(key)
    assert results.first_seq() == in_order[-1]
    results.clear()
    assert results.first_seq() is None
    from resumable._journal import Record

    results["x"] = Record(77, "result", "x", 1.0, None, b"{}", "s")
    assert results.first_seq() == 77


class _NoLines:
    def line(self, segment: int, offset: int) -> bytes:
        raise AssertionError("not read here")


def test_lazy_results_looked_up_one_by_one_or_by_index_alike() -> None:
    """A lazy result looked up gives its own row, whether found by a scan of the keys (the
    first few lookups) or by the key -> row index: counted among lazy rows only, with a
    Record in between, and after rows were pinned (a pop) and new lazy rows added."""
    import numpy as np

    from resumable._journal import Record
    from resumable._resultmap import SCAN_LOOKUPS, ResultMap

    def add(m: ResultMap, expected: dict[str, int], prefix: str, n: int, seq0: int) -> None:
        keys = [f"{prefix}{i}" for i in range(n)]
        seqs = np.arange(seq0, seq0 + n, dtype=np.int64)
        assert m.add_rows(
            keys, seqs, seqs * 0.5, seqs * 10, segment=0, source="s", lines=_NoLines()
        )
        expected.update(zip(keys, seqs.tolist(), strict=True))

    def make(*, pinned: bool) -> tuple[ResultMap, dict[str, int]]:
        m, expected = ResultMap(), {}
        add(m, expected, "a", 50, 10)
        m["r"] = Record(70, "result", "r", 35.0, None, b"{}", "s")
        expected["r"] = 70
        add(m, expected, "b", 30, 100)
        if pinned:
            assert m.pop("a3").seq == 13  # pins every lazy row
            del expected["a3"]
            add(m, expected, "c", 20, 200)
        return m, expected

    for pinned in (False, True):
        for first in (["b29", "a0", "a49", "r", "b0"], ["c19", "c0", "a0", "b5", "r", "c7"]):
            m, expected = make(pinned=pinned)
            lookups = [k for k in first if k in expected] + list(expected)
            assert len(lookups) > 2 * SCAN_LOOKUPS
            for key in lookups:
                rec = m[key]
                assert (rec.key, rec.seq, rec.t) == (key, expected[key], expected[key] * 0.5)
                assert m.get(key).seq == expected[key]
            assert m.get("nope") is None
            assert m.seqs_and_times()[0].tolist() == list(expected.values())
