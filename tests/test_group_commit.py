"""Group commit: `sweep.record_many` and `sweep.run` share one fdatasync among many results.

The fdatasyncs are counted by wrapping the checkpoint's real `fsync_file` (every sync still
happens); what is acknowledged must be durable and replay exactly once.
"""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import resumable._checkpoint as checkpoint_mod
from resumable import ResumableSweep
from resumable._checkpoint import progress_dir_for
from resumable.errors import (
    AlreadyRecordedError,
    ConfigurationError,
    UnknownItemError,
    UnsupportedValueError,
)
from resumable.view import open_view


def key(c: int) -> str:
    return str(c)


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = checkpoint_mod.fsync_file

    def counting(fd: int, name: str, **kw: Any) -> None:
        calls.append(name)
        real(fd, name, **kw)

    monkeypatch.setattr(checkpoint_mod, "fsync_file", counting)
    return calls


def _journal_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in (progress_dir_for(path) / "segments").glob("*.jsonl"))


def test_record_many_is_one_fdatasync_and_durable(tmp_path: Path, fsyncs: list[str]) -> None:
    path = tmp_path / "exp.h5"
    items = list(range(500))
    with ResumableSweep(items, key=key, checkpoint_path=path) as sweep:
        fsyncs.clear()
        assert sweep.record_many([(c, {"y": c * 2}) for c in items[:400]]) == 400
        assert len(fsyncs) == 1
        assert sweep.status().done == 400 and sweep.result(399) == {"y": 798}
        assert sorted(sweep.pending) == items[400:]
    state = open_view(str(path)).loaded.state
    assert list(state.results) == [str(c) for c in range(400)]
    seqs = [r.seq for r in state.results.values()]
    assert seqs == list(range(seqs[0], seqs[0] + 400))


def test_record_many_across_segment_boundaries(tmp_path: Path, fsyncs: list[str]) -> None:
    path = tmp_path / "exp.h5"
    items = list(range(3000))
    with ResumableSweep(items, key=key, checkpoint_path=path, segment_bytes=20_000) as sweep:
        fsyncs.clear()
        for start in range(0, 3000, 700):
            sweep.record_many([(c, np.float32(c)) for c in items[start : start + 700]])
        journal_syncs = [n for n in fsyncs if n.endswith(".jsonl")]
        assert len(journal_syncs) < 3000 // 50  # one per group and per filled segment
    view = open_view(str(path))
    assert len(view.loaded.manifest.segments) >= 20
    got = {k: v for k, _, v in view.results()}
    assert len(got) == 3000 and got["2999"] == np.float32(2999)
    with ResumableSweep(items, key=key, checkpoint_path=path) as sweep:
        assert not list(sweep.pending)


@pytest.mark.parametrize(
    ("pairs", "error"),
    [
        ([(1, 1), (2, 2), (1, 3)], AlreadyRecordedError),  # twice in one call
        ([(1, 1), (0, 0)], AlreadyRecordedError),  # recorded before
        ([(1, 1), (99, 0)], UnknownItemError),
        ([(1, 1), (2, {1, 2})], UnsupportedValueError),  # a set cannot be stored
    ],
)
def test_record_many_checks_everything_before_writing(
    tmp_path: Path, pairs: list[tuple[int, Any]], error: type[Exception]
) -> None:
    path = tmp_path / "exp.h5"
    with ResumableSweep(list(range(10)), key=key, checkpoint_path=path) as sweep:
        sweep.record(0, 0)
        size = _journal_bytes(path)
        with pytest.raises(error):
            sweep.record_many(pairs)
        assert _journal_bytes(path) == size and sweep.status().done == 1
        with pytest.raises(ConfigurationError, match="durations"):
            sweep.record_many([(1, 1), (2, 2)], durations=[0.1])
        assert sweep.record_many([]) == 0 and _journal_bytes(path) == size
        assert sweep.record_many([(1, 1)], durations=[0.5]) == 1
    assert open_view(str(path)).loaded.state.results["1"].body()["duration"] == 0.5


def trivial(c: int) -> int:
    return c * c


def test_run_in_process_commits_in_groups(tmp_path: Path, fsyncs: list[str]) -> None:
    path = tmp_path / "exp.h5"
    n = 2000
    with ResumableSweep(list(range(n)), key=key, checkpoint_path=path) as sweep:
        fsyncs.clear()
        summary = sweep.run(trivial, progress=False)
        assert summary.done == n
    journal_syncs = [x for x in fsyncs if x.endswith(".jsonl")]
    assert 1 <= len(journal_syncs) < n // 4  # trivial items: many results per fdatasync
    got = {k: v for k, _, v in open_view(str(path)).results()}
    assert got == {str(c): c * c for c in range(n)}


def test_run_on_a_pool_commits_what_arrived_together(tmp_path: Path, fsyncs: list[str]) -> None:
    path = tmp_path / "exp.h5"
    n = 3000
    with (
        cf.ThreadPoolExecutor(4) as pool,
        ResumableSweep(list(range(n)), key=key, checkpoint_path=path) as sweep,
    ):
        fsyncs.clear()
        summary = sweep.run(trivial, executor=pool, progress=False)
        assert summary.done == n and summary.max_batch > 1
    journal_syncs = [x for x in fsyncs if x.endswith(".jsonl")]
    assert len(journal_syncs) < n // 10
    got = {k: v for k, _, v in open_view(str(path)).results()}
    assert got == {str(c): c * c for c in range(n)}


def half_unstorable(c: int) -> Any:
    return {1, 2} if c % 7 == 3 else c


def test_run_group_with_an_unstorable_result_records_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "exp.h5"
    with ResumableSweep(list(range(100)), key=key, checkpoint_path=path) as sweep:
        summary = sweep.run(half_unstorable, progress=False)
    bad = [c for c in range(100) if c % 7 == 3]
    assert (summary.done, summary.failed) == (100 - len(bad), len(bad))
    state = open_view(str(path)).loaded.state
    assert sorted(state.failures, key=int) == [str(c) for c in bad]
    assert all(state.failures[str(c)]["error_type"] == "UnsupportedValueError" for c in bad)


def test_group_times_are_whole_microseconds_one_per_group_and_increasing(tmp_path: Path) -> None:
    """A group's records share one time, written as whole microseconds (no float repr) that
    parse back to exactly the time kept in memory; each group's time is later than the last."""
    path = tmp_path / "t.h5"
    with ResumableSweep(range(60), key=key, checkpoint_path=path) as sweep:
        for start in range(0, 60, 20):
            sweep.record_many([(c, c) for c in range(start, start + 20)])
        in_memory = {k: rec.t for k, rec in sweep._journal.state.results.items()}
    texts = {}
    for seg in sorted((progress_dir_for(path) / "segments").glob("*.jsonl")):
        for line in seg.read_bytes().splitlines():
            header = line.split(b"\t", 1)[0].split(b" ")
            if header[2] == b"result":
                texts[header[5].decode().strip('"')] = header[3]
    assert len(texts) == 60
    for k, text in texts.items():
        whole, _, frac = text.partition(b".")
        assert whole.isdigit() and len(frac) == 6 and frac.isdigit()
        assert float(text) == in_memory[k]
    groups = [{texts[str(c)] for c in range(s, s + 20)} for s in range(0, 60, 20)]
    assert all(len(g) == 1 for g in groups)
    times = [float(next(iter(g))) for g in groups]
    assert times == sorted(times) and len(set(times)) == 3


def mutating(item: dict[str, Any]) -> float:
    item["x"] = -1.0  # changes the worker's copy of the item: its fingerprint is taken before
    return item["i"] * 0.5


def test_pool_workers_send_encoded_results_with_the_items_fingerprints(tmp_path: Path) -> None:
    """Workers of a process pool return results encoded, with their items' fingerprints taken
    before fn ran; the journal holds what a serial run records: same values, and fingerprints
    that match the items (a reopen that checks them finds no change)."""
    items = [{"i": i, "x": i * 0.25} for i in range(300)]
    by_key = {"key": lambda c: f"k{c['i']}"}
    with ResumableSweep(items, checkpoint_path=tmp_path / "p.h5", **by_key) as sweep:
        summary = sweep.run(mutating, executor=2, progress=False)
        assert summary.done == 300
        pooled = {k: (r.fp, r.body()["value"]) for k, r in sweep._journal.state.results.items()}
    with ResumableSweep(items, checkpoint_path=tmp_path / "s.h5", **by_key) as sweep:
        sweep.run(mutating, progress=False)  # in-process: fn changes the very items, so
        serial = {k: r.body()["value"] for k, r in sweep._journal.state.results.items()}
    items = [{"i": i, "x": i * 0.25} for i in range(300)]  # (... a fresh, unchanged list)
    with ResumableSweep(items, checkpoint_path=tmp_path / "p.h5", **by_key) as again:
        assert again.status().done == 300  # on_change="error": every fingerprint matches
        assert {k: fp for k, (fp, _) in pooled.items()} == {
            k: again._items.fingerprint(k) for k in again._items.keys
        }
    assert {k: v for k, (_, v) in pooled.items()} == serial


def test_a_worker_of_another_version_sends_results_as_they_are() -> None:
    from resumable import __version__
    from resumable.runner import run_batch
    from resumable.sweep import EncodedResult

    batch = [({"i": 1}, None), ({"i": 2}, None)]
    same = run_batch(mutating, batch, (__version__, True))
    assert [type(value) for _, value, _, _ in same] == [EncodedResult, EncodedResult]
    assert same[0][1].json == b"0.5" and same[0][1].has_fp
    other = run_batch(mutating, [({"i": 1}, None)], ("0.0.0-another", True))
    assert other[0][:3] == (True, 0.5, None)


@pytest.mark.parametrize("how", ["record_many", "run"])
def test_a_group_fingerprints_its_items_as_they_are_when_recorded(tmp_path: Path, how: str) -> None:
    """Items changed in memory after the open are fingerprinted again when their group is
    recorded (in bulk): the journal holds the changed items' fingerprints, none of those
    taken at the open."""
    from resumable._listing import item_fingerprint

    items = [{"i": i, "x": i * 0.25} for i in range(40)]
    opened = [item_fingerprint(c) for c in items]
    with ResumableSweep(items, checkpoint_path=tmp_path / "c.h5", key=lambda c: str(c["i"])) as s:
        for c in items:
            c["x"] = -1.0
        if how == "run":
            s.run(lambda c: c["i"], progress=False)
        else:
            s.record_many([(c, c["i"]) for c in items])
        fps = {k: r.fp for k, r in s._journal.state.results.items()}
    assert fps == {str(c["i"]): item_fingerprint(c) for c in items}
    assert not set(fps.values()) & set(opened)
