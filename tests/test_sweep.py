"""ResumableSweep semantics: pending/completed, failures, changed items, modes, keys, locking.

Every test drives the public API against a real checkpoint directory under tmp_path and, where
the promise is about what is on disk, reads the journal files back independently of the library.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import resumable._record_payload as record_payload_mod
import resumable._sweep_items as sweep_items_mod
from resumable import ResumableError, ResumableSweep
from resumable._checkpoint import progress_dir_for
from resumable._journal import parse_segment
from resumable.errors import (
    AlreadyRecordedError,
    CheckpointClosedError,
    CheckpointExistsError,
    CheckpointLockedError,
    CheckpointNotFoundError,
    ConfigurationError,
    DuplicateKeyError,
    InvalidKeyError,
    ItemsChangedError,
    SweepMismatchError,
    UnknownItemError,
)

PROGS = Path(__file__).parent / "integration" / "progs"
ITEMS = [{"i": i} for i in range(6)]


# -- reading the journal back, independently of the library ---------------------------------------


def read_records(progress_dir: Path) -> list[dict]:
    """Every complete record of a checkpoint, in order, as flat dicts (header and payload).

    Parsed segment by segment with the journal's line parser (the hash chain is checked across
    segments), but without replaying them into a state, so doubles would show.
    """
    manifest = json.loads((progress_dir / "manifest.json").read_bytes())
    names = [s["name"] for s in manifest["segments"]]
    if manifest.get("active"):
        names.append(manifest["active"])
    out: list[dict] = []
    prev = ""
    for name in names:
        path = progress_dir / "segments" / name
        parsed = parse_segment(
            path.read_bytes(),
            source=str(path),
            first_seq=len(out) + 1,
            prev_hash=prev,
            allow_torn_tail=True,
        )
        for rec in parsed.records:
            flat = {"seq": rec.seq, "type": rec.type, "key": rec.key, "t": rec.t, "fp": rec.fp}
            flat.update(rec.body())
            out.append(flat)
        prev = parsed.last_hash
    return out


def checkpoint_files(ckpt) -> dict[str, bytes]:
    pdir = progress_dir_for(ckpt)
    return {
        os.path.relpath(p, pdir): p.read_bytes()
        for p in sorted(pdir.rglob("*"))
        if p.is_file() and p.name != "LOCK"
    }


def tree(root: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


class FakeClock:
    """Stands in for the `time` module inside the modules of resumable.sweep's record path
    (_sweep_items, _record_payload), with a settable monotonic()."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


# -- pending ----------------------------------------------------------------------------------


def test_pending_yields_unfinished_items_in_order_each_once(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        assert list(sweep.pending) == ITEMS
        sweep.record(ITEMS[1], 1)
        sweep.record(ITEMS[4], 4)
        assert list(sweep.pending) == [ITEMS[0], ITEMS[2], ITEMS[3], ITEMS[5]]
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        seen = []
        for item in sweep.pending:
            seen.append(item)
            sweep.record(item, item["i"])
        assert seen == [ITEMS[0], ITEMS[2], ITEMS[3], ITEMS[5]]
        assert list(sweep.pending) == []
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        assert list(sweep.pending) == []
        assert [sweep.result(i) for i in ITEMS] == list(range(6))


def test_each_access_to_pending_is_a_fresh_iteration(tmp_path):
    with ResumableSweep(ITEMS, checkpoint_path=tmp_path / "e.h5") as sweep:
        a = sweep.pending
        b = sweep.pending
        assert a is not b
        assert next(a) == ITEMS[0]
        assert next(a) == ITEMS[1]
        assert next(b) == ITEMS[0]  # b starts from the beginning
        assert list(sweep.pending) == ITEMS
        assert list(sweep.pending) == ITEMS  # not exhausted by the previous access


def test_pending_is_live(tmp_path):
    with ResumableSweep(ITEMS, checkpoint_path=tmp_path / "e.h5") as sweep:
        seen = []
        for item in sweep.pending:
            seen.append(item)
            if item == ITEMS[0]:
                sweep.record(ITEMS[3], "done early")  # recorded after iteration started
            else:
                sweep.record(item, "done")
        assert seen == [ITEMS[0], ITEMS[1], ITEMS[2], ITEMS[4], ITEMS[5]]
        assert sweep.status().pending == 1  # ITEMS[0] itself was never recorded
        assert list(sweep.pending) == [ITEMS[0]]


def test_items_can_be_a_generator_consumed_once(tmp_path):
    with ResumableSweep((dict(x) for x in ITEMS), checkpoint_path=tmp_path / "g.h5") as sweep:
        assert list(sweep.pending) == ITEMS
        assert list(sweep.pending) == ITEMS


def test_items_appended_between_runs_become_pending(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS[:3], checkpoint_path=ckpt) as sweep:
        for item in sweep.pending:
            sweep.record(item, item["i"])
    more = [*ITEMS[:3], {"i": 100}, {"i": 101}]
    with ResumableSweep(more, checkpoint_path=ckpt) as sweep:
        assert list(sweep.pending) == [{"i": 100}, {"i": 101}]
        s = sweep.status()
        assert (s.total, s.done, s.pending, s.stale) == (5, 3, 2, 0)


def test_removed_items_are_stale_not_completed(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        for item in ITEMS[:5]:
            sweep.record(item, item["i"])
        sweep.record_failure(ITEMS[5], "boom")
    fewer = [ITEMS[0], ITEMS[2], {"i": 50}]
    with ResumableSweep(fewer, checkpoint_path=ckpt) as sweep:
        assert list(sweep.completed) == [0, 2]
        assert [item for item, _ in sweep.completed_items()] == [ITEMS[0], ITEMS[2]]
        s = sweep.status()
        # results of items 1, 3, 4 and the failure of item 5 are no longer among the items
        assert (s.total, s.done, s.failed, s.pending, s.stale) == (3, 2, 0, 1, 4)
        assert list(sweep.pending) == [{"i": 50}]
    # The stale results are not forgotten: bring the items back and they are done again.
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        assert sweep.status().done == 5
        assert sweep.status().stale == 0


def test_completed_is_in_record_order(tmp_path):
    ckpt = tmp_path / "exp.h5"
    order = [3, 0, 5, 1]
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        for i in order:
            sweep.record(ITEMS[i], f"r{i}")
        assert list(sweep.completed) == [f"r{i}" for i in order]
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        assert list(sweep.completed) == [f"r{i}" for i in order]
        assert [it for it, _ in sweep.completed_items()] == [ITEMS[i] for i in order]


def test_result_and_is_done(tmp_path):
    with ResumableSweep(ITEMS, checkpoint_path=tmp_path / "e.h5") as sweep:
        sweep.record(ITEMS[0], {"a": 1})
        assert sweep.is_done(ITEMS[0])
        assert not sweep.is_done(ITEMS[1])
        assert sweep.result({"i": 0}) == {"a": 1}  # an equal item, not the same object
        with pytest.raises(KeyError):
            sweep.result(ITEMS[1])


# -- failures ---------------------------------------------------------------------------------


def _failing_computation(item):
    raise ValueError(f"bad input {item['i']}")


def test_failures_are_recorded_skipped_retried_and_replaced(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        for item in sweep.pending:
            if item["i"] == 2:
                try:
                    _failing_computation(item)
                except ValueError as exc:
                    sweep.record_failure(item, exc)
            else:
                sweep.record(item, item["i"])
        s = sweep.status()
        assert (s.done, s.failed, s.pending) == (5, 1, 0)
        assert s.failures[0].error_type == "ValueError"
        assert s.failures[0].example_message == "bad input 2"
        assert s.failures[0].example_key == sweep.key(ITEMS[2])

    failures = [r for r in read_records(progress_dir_for(ckpt)) if r["type"] == "failure"]
    assert len(failures) == 1
    rec = failures[0]
    assert rec["error_type"] == "ValueError"
    assert rec["message"] == "bad input 2"
    assert "_failing_computation" in rec["traceback"]
    assert "ValueError: bad input 2" in rec["traceback"]
    assert rec["attempt"] == 1

    # A plain re-run skips the failed item.
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        assert list(sweep.pending) == []
        assert sweep.status().failed == 1

    # retry_failed=True yields it again; another failure increments the attempt.
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, retry_failed=True) as sweep:
        assert list(sweep.pending) == [ITEMS[2]]
        sweep.record_failure(ITEMS[2], "still bad")
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, retry_failed=True) as sweep:
        (item,) = list(sweep.pending)
        sweep.record(item, "finally")
        s = sweep.status()
        assert (s.done, s.failed, s.pending) == (6, 0, 0)
        assert s.failures == ()

    attempts = [
        r["attempt"] for r in read_records(progress_dir_for(ckpt)) if r["type"] == "failure"
    ]
    assert attempts == [1, 2]
    last_failure = [r for r in read_records(progress_dir_for(ckpt)) if r["type"] == "failure"][-1]
    assert last_failure["error_type"] == "Error"
    assert last_failure["message"] == "still bad"

    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        assert sweep.result(ITEMS[2]) == "finally"
        assert list(sweep.completed)[-1] == "finally"
        assert sweep.status().failed == 0


def test_retry_failures_makes_failed_items_pending_durably(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        sweep.record_failure(ITEMS[1], RuntimeError("x"))
        sweep.record_failure(ITEMS[3], RuntimeError("y"))
        sweep.record(ITEMS[0], 0)
        assert sweep.retry_failures([sweep.key(ITEMS[3]), "no-such-key"]) == [sweep.key(ITEMS[3])]
        assert ITEMS[3] in list(sweep.pending)
        assert ITEMS[1] not in list(sweep.pending)
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        assert ITEMS[3] in list(sweep.pending)
        assert sweep.status().failed == 1
        assert sweep.retry_failures() == [sweep.key(ITEMS[1])]
        assert sweep.retry_failures() == []  # nothing left to retry
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        assert list(sweep.pending) == ITEMS[1:]
        assert sweep.status().failed == 0
        sweep.record_failure(ITEMS[1], "again")
        key1 = sweep.key(ITEMS[1])
    attempts = [
        r["attempt"]
        for r in read_records(progress_dir_for(ckpt))
        if r["type"] == "failure" and r["key"] == key1
    ]
    assert attempts == [1, 2]  # the attempt count survives a retry


def test_failure_with_undecodable_message_is_recorded(tmp_path):
    """Exceptions about non-UTF-8 file names carry lone surrogates (os.fsdecode).

    record_failure() is called from an except block with whatever was raised; it must record
    it (losslessly where possible, replaced where not), not crash with UnicodeEncodeError.
    """
    ckpt = tmp_path / "e.h5"
    bad_name = os.fsdecode(b"data-\xff.bin")
    assert "\udcff" in bad_name
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        try:
            open(tmp_path / bad_name)  # noqa: SIM115 - it fails
        except FileNotFoundError as exc:
            sweep.record_failure(ITEMS[0], exc)
        sweep.record_failure(ITEMS[1], f"plain string {bad_name}")
        sweep.record(ITEMS[2], "still recording")
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        s = sweep.status()
        assert (s.failed, s.done) == (2, 1)
        assert s.failures[0].error_type == "FileNotFoundError"
        assert "data-" in s.failures[0].example_message


def test_record_failure_after_success_is_refused(tmp_path):
    ckpt = tmp_path / "e.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        sweep.record(ITEMS[0], 0)
        before = checkpoint_files(ckpt)
        with pytest.raises(AlreadyRecordedError):
            sweep.record_failure(ITEMS[0], "late failure")
        assert checkpoint_files(ckpt) == before


# -- changed items ------------------------------------------------------------------------------


def _configs(**overrides):
    out = [{"id": i, "lr": 0.1 * i} for i in range(5)]
    for key, lr in overrides.items():
        out[int(key[1:])]["lr"] = lr
    return out


def _by_id(c):
    return str(c["id"])


def test_changed_items_raise_listing_the_keys_and_write_nothing(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(_configs(), checkpoint_path=ckpt, key=_by_id) as sweep:
        for item in sweep.pending:
            sweep.record(item, item["lr"])
    before = checkpoint_files(ckpt)
    changed = _configs(c1=9.0, c3=7.0)
    with pytest.raises(ItemsChangedError) as info:
        ResumableSweep(changed, checkpoint_path=ckpt, key=_by_id)
    assert isinstance(info.value, ResumableError)
    msg = str(info.value)
    assert "'1'" in msg and "'3'" in msg, msg
    assert "'0'" not in msg and "'2'" not in msg, msg
    assert checkpoint_files(ckpt) == before
    # The failed open released the lock.
    with ResumableSweep(_configs(), checkpoint_path=ckpt, key=_by_id) as sweep:
        assert sweep.status().done == 5


def test_changed_items_rerun(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(_configs(), checkpoint_path=ckpt, key=_by_id) as sweep:
        for item in sweep.pending:
            if item["id"] == 4:
                sweep.record_failure(item, "boom")
            else:
                sweep.record(item, item["lr"])
    changed = _configs(c1=9.0, c4=8.0)
    with ResumableSweep(changed, checkpoint_path=ckpt, key=_by_id, on_change="rerun") as sweep:
        assert list(sweep.pending) == [changed[1], changed[4]]
        assert 0.1 not in list(sweep.completed)  # the old result of item 1 is gone
        assert sorted(list(sweep.completed)) == sorted([0.0, 0.2, 0.1 * 3])
        with pytest.raises(KeyError):
            sweep.result(changed[1])
        s = sweep.status()
        assert (s.done, s.failed, s.pending) == (3, 0, 2)
        for item in sweep.pending:
            sweep.record(item, item["lr"])
    # The new results stick, and the default on_change no longer complains.
    with ResumableSweep(changed, checkpoint_path=ckpt, key=_by_id) as sweep:
        assert sweep.result(changed[1]) == 9.0
        assert sweep.result(changed[4]) == 8.0
        assert sweep.status().done == 5


def test_changed_items_keep(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(_configs(), checkpoint_path=ckpt, key=_by_id) as sweep:
        for item in sweep.pending:
            sweep.record(item, item["lr"])
    changed = _configs(c2=5.0)
    with ResumableSweep(changed, checkpoint_path=ckpt, key=_by_id, on_change="keep") as sweep:
        assert list(sweep.pending) == []
        assert sweep.result(changed[2]) == pytest.approx(0.2)
    with ResumableSweep(changed, checkpoint_path=ckpt, key=_by_id, on_change="keep") as sweep:
        assert sweep.result(changed[2]) == pytest.approx(0.2)


# -- names and resume modes ------------------------------------------------------------------


def test_name_defaults_to_checkpoint_stem(tmp_path):
    with ResumableSweep(ITEMS, checkpoint_path=tmp_path / "my_run.h5") as sweep:
        assert sweep.name == "my_run"
    manifest = json.loads((tmp_path / "my_run.h5.resumable" / "manifest.json").read_bytes())
    assert manifest["sweep"] == "my_run"
    with ResumableSweep(ITEMS, checkpoint_path=tmp_path / "x.h5", name="custom") as sweep:
        assert sweep.name == "custom"


def test_checkpoint_of_another_sweep_is_refused_naming_both(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, name="alpha") as sweep:
        sweep.record(ITEMS[0], 0)
    before = checkpoint_files(ckpt)
    with pytest.raises(SweepMismatchError) as info:
        ResumableSweep(ITEMS, checkpoint_path=ckpt, name="beta")
    assert "'alpha'" in str(info.value) and "'beta'" in str(info.value)
    with pytest.raises(SweepMismatchError):
        ResumableSweep(ITEMS, checkpoint_path=ckpt)  # default name "exp"
    assert checkpoint_files(ckpt) == before
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, name="alpha") as sweep:
        assert sweep.result(ITEMS[0]) == 0


def test_resume_never_with_existing_checkpoint(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, resume="never") as sweep:
        sweep.record(ITEMS[0], 0)
    before = checkpoint_files(ckpt)
    with pytest.raises(CheckpointExistsError) as info:
        ResumableSweep(ITEMS, checkpoint_path=ckpt, resume="never")
    assert isinstance(info.value, FileExistsError)
    assert checkpoint_files(ckpt) == before
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, resume="must") as sweep:
        assert sweep.result(ITEMS[0]) == 0


def test_resume_must_without_checkpoint(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with pytest.raises(CheckpointNotFoundError) as info:
        ResumableSweep(ITEMS, checkpoint_path=ckpt, resume="must")
    assert isinstance(info.value, FileNotFoundError)
    assert not progress_dir_for(ckpt).exists()
    assert tree(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resume": "sometimes"},
        {"resume": True},
        {"on_change": "ignore"},
        {"on_change": None},
        {"segment_bytes": 0},
        {"segment_bytes": -5},
        {"segment_bytes": 1.5},
    ],
)
def test_bad_options_are_configuration_errors_before_writing(tmp_path, kwargs):
    ckpt = tmp_path / "sub" / "exp.h5"
    with pytest.raises(ConfigurationError):
        ResumableSweep(ITEMS, checkpoint_path=ckpt, **kwargs)
    assert tree(tmp_path) == []


# -- seeds, meta, records ---------------------------------------------------------------------


def test_seed_is_stable_distinct_and_63_bit(tmp_path):
    keys = [str(i) for i in range(2000)]
    with ResumableSweep(keys, checkpoint_path=tmp_path / "a.h5", key=str) as sweep:
        seeds = [sweep.seed(k) for k in keys]
        assert seeds == [sweep.seed(k) for k in keys]
    assert len(set(seeds)) == len(seeds)
    assert all(type(s) is int and 0 <= s < 2**63 for s in seeds)
    # Same key, another sweep, another directory: same seed.
    with ResumableSweep(keys[:10], checkpoint_path=tmp_path / "b.h5", key=str) as other:
        assert [other.seed(k) for k in keys[:10]] == seeds[:10]
    # Seeds must never change between versions: a resumed sweep mixes old and new results.
    assert seeds[7] == 9070771339233370315


@pytest.mark.integration
def test_seed_is_stable_across_processes(tmp_path):
    code = (
        "import sys; from resumable import ResumableSweep\n"
        "s = ResumableSweep([{'i': 1}, {'i': 2}], checkpoint_path=sys.argv[1])\n"
        "print(s.seed({'i': 1}), s.seed({'i': 2})); s.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "p.h5")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout.split()
    with ResumableSweep([{"i": 1}, {"i": 2}], checkpoint_path=tmp_path / "q.h5") as sweep:
        assert [int(x) for x in out] == [sweep.seed({"i": 1}), sweep.seed({"i": 2})]
        assert sweep.seed({"i": 1}) != sweep.seed({"i": 2})


def test_meta_is_persisted_and_restored(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, meta={"lr": 0.5, "tags": ("a", "b")}) as s:
        assert s.meta == {"lr": 0.5, "tags": ("a", "b")}
        s.record(ITEMS[0], 0)
        s.meta["progress"] = 1  # changed during the run: saved at the next record / close
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as s:
        assert s.meta == {"lr": 0.5, "tags": ("a", "b"), "progress": 1}
        s.meta["progress"] = 2
        s.record(ITEMS[1], 1)  # saved before the record
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as s:
        assert s.meta["progress"] == 2
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, meta={"new": True}) as s:
        assert s.meta == {"new": True}
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as s:
        assert s.meta == {"new": True}
    metas = [r for r in read_records(progress_dir_for(ckpt)) if r["type"] == "meta"]
    assert len(metas) == 4  # only when it changed: initial, progress=1, progress=2, new


def test_records_carry_time_duration_and_launch(tmp_path, monkeypatch):
    clock = FakeClock()
    for module in (sweep_items_mod, record_payload_mod):  # where time.monotonic is read
        monkeypatch.setattr(module, "time", clock)
    ckpt = tmp_path / "exp.h5"
    t0 = time.time()
    sweep = ResumableSweep(ITEMS, checkpoint_path=ckpt)
    it = iter(sweep.pending)
    first = next(it)
    clock.now += 2.5
    sweep.record(first, "a")  # duration measured from pending's yield
    second = next(it)
    clock.now += 100.0
    sweep.record(second, "b", duration=7.25)  # given duration wins
    sweep.record(ITEMS[5], "c")  # never yielded: no duration
    sweep.record_failure(next(it), "boom")
    sweep.close()
    t1 = time.time()

    recs = read_records(progress_dir_for(ckpt))
    results = [r for r in recs if r["type"] in ("result", "failure")]
    assert [r["duration"] for r in results] == [2.5, 7.25, None, 0.0]
    assert all(r["launch"] == sweep.launch_id for r in results)
    assert all(t0 <= r["t"] <= t1 for r in recs)
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))


def test_one_launch_record_per_open_and_items_record_only_on_change(tmp_path):
    ckpt = tmp_path / "exp.h5"
    launch_ids = []
    for _ in range(3):
        with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
            launch_ids.append(sweep.launch_id)
    with ResumableSweep([*ITEMS, {"i": 9}], checkpoint_path=ckpt) as sweep:
        launch_ids.append(sweep.launch_id)
        assert sweep.status().launches == 4
    recs = read_records(progress_dir_for(ckpt))
    launches = [r for r in recs if r["type"] == "launch"]
    assert [r["launch"] for r in launches] == launch_ids
    assert len(set(launch_ids)) == 4
    assert all(r["pid"] == os.getpid() for r in launches)
    assert [r["type"] for r in recs] == ["launch", "items", "launch", "launch", "launch", "items"]


def test_missing_parent_directories_are_created(tmp_path):
    ckpt = tmp_path / "a" / "b" / "c" / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        sweep.record(ITEMS[0], 0)
    assert progress_dir_for(ckpt).is_dir()
    assert (tmp_path / "a" / "b" / "c" / "exp.h5.resumable" / "manifest.json").is_file()
    with ResumableSweep(ITEMS, checkpoint_path=str(ckpt)) as sweep:
        assert sweep.result(ITEMS[0]) == 0


def test_relative_checkpoint_path_survives_chdir(tmp_path, monkeypatch):
    """Simulation codes often chdir into a work directory per item.

    A relative checkpoint_path must keep meaning the directory it meant when the sweep was
    opened: later segments and manifests must not go (or fail to go) relative to the new cwd.
    """
    (tmp_path / "run").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    items = [str(i) for i in range(30)]
    sweep = ResumableSweep(items, checkpoint_path="out/exp.h5", key=str, segment_bytes=300)
    try:
        sweep.record("0", 0)
        monkeypatch.chdir(tmp_path / "work")
        for key in items[1:]:
            sweep.record(key, int(key))  # every few records seal a segment
    finally:
        sweep.close()
    assert tree(tmp_path / "work") == []
    with ResumableSweep(items, checkpoint_path=tmp_path / "run" / "out" / "exp.h5", key=str) as s:
        assert s.status().done == 30
        assert [s.result(k) for k in items] == list(range(30))


def test_context_manager_closes_and_closed_sweep_refuses(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        assert not sweep.closed
        sweep.record(ITEMS[0], 0)
    assert sweep.closed
    with pytest.raises(CheckpointClosedError):
        sweep.record(ITEMS[1], 1)
    with pytest.raises(CheckpointClosedError):
        sweep.record_failure(ITEMS[1], "x")
    sweep.close()  # idempotent
    # Closed on an exception too, and the lock is free afterwards.
    with pytest.raises(RuntimeError), ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep2:
        raise RuntimeError("user code failed")
    assert sweep2.closed
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep3:
        assert sweep3.result(ITEMS[0]) == 0


def test_empty_resume_from_ignores_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_RESUME_FROM", str(tmp_path / "elsewhere"))
    with ResumableSweep(ITEMS, checkpoint_path=tmp_path / "e.h5", resume_from="") as sweep:
        assert sweep.resume_from is None


# -- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_key", [lambda c: c["i"], lambda c: (c["i"],), lambda c: None])
def test_key_function_must_return_str(tmp_path, bad_key):
    ckpt = tmp_path / "exp.h5"
    with pytest.raises(InvalidKeyError) as info:
        ResumableSweep(ITEMS, checkpoint_path=ckpt, key=bad_key)
    assert isinstance(info.value, TypeError)
    assert "str" in str(info.value)
    assert tree(tmp_path) == []


def test_lone_surrogate_key_is_refused(tmp_path):
    with pytest.raises(InvalidKeyError):
        ResumableSweep(["a\udc00"], checkpoint_path=tmp_path / "e.h5", key=str)
    assert tree(tmp_path) == []


def test_duplicate_keys_are_refused_before_anything_is_created(tmp_path):
    ckpt = tmp_path / "deep" / "exp.h5"
    items = [{"id": 1, "x": 1}, {"id": 2}, {"id": 1, "x": 2}]
    with pytest.raises(DuplicateKeyError) as info:
        ResumableSweep(items, checkpoint_path=ckpt, key=_by_id)
    assert "'1'" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not progress_dir_for(ckpt).exists()
    assert tree(tmp_path) == []
    # Equal items under the default key are duplicates as well.
    with pytest.raises(DuplicateKeyError):
        ResumableSweep([{"a": 1}, {"a": 1}], checkpoint_path=ckpt)
    assert tree(tmp_path) == []


def test_duplicate_keys_on_reopen_leave_checkpoint_untouched(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        sweep.record(ITEMS[0], 0)
    before = checkpoint_files(ckpt)
    with pytest.raises(DuplicateKeyError):
        ResumableSweep([*ITEMS, ITEMS[0]], checkpoint_path=ckpt)
    assert checkpoint_files(ckpt) == before


def test_non_json_items_need_a_key_function(tmp_path):
    class Config:
        def __init__(self, i):
            self.i = i

    items = [Config(1), Config(2)]
    with pytest.raises(InvalidKeyError) as info:
        ResumableSweep(items, checkpoint_path=tmp_path / "e.h5")
    assert "key=" in str(info.value)
    assert tree(tmp_path) == []
    with ResumableSweep(items, checkpoint_path=tmp_path / "e.h5", key=lambda c: f"c{c.i}") as s:
        s.record(items[1], "ok")
        assert list(s.pending) == [items[0]]


def test_record_of_unknown_item(tmp_path):
    ckpt = tmp_path / "e.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        before = checkpoint_files(ckpt)
        with pytest.raises(UnknownItemError):
            sweep.record({"i": 999}, 1)
        with pytest.raises(UnknownItemError):
            sweep.record_failure({"i": 999}, "x")
        assert checkpoint_files(ckpt) == before
    with (
        ResumableSweep(["a", "b"], checkpoint_path=tmp_path / "k.h5", key=str) as sweep,
        pytest.raises(UnknownItemError),
    ):
        sweep.record("c", 1)


def test_key_function_called_once_for_an_item_it_rejects(tmp_path):
    """Recording an unknown item, or one whose key is not a str, calls the user's key
    function once (it may be costly, or not repeatable) and says what is wrong."""
    calls: list[object] = []

    def key(c):
        calls.append(c)
        return c if c != "bad" else 3

    ckpt = tmp_path / "k.h5"
    with ResumableSweep(["a", "b"], checkpoint_path=ckpt, key=key) as sweep:
        before = checkpoint_files(ckpt)
        calls.clear()
        with pytest.raises(UnknownItemError, match="'c'"):
            sweep.record("c", 1)
        assert calls == ["c"]
        calls.clear()
        with pytest.raises(InvalidKeyError):
            sweep.record("bad", 1)
        assert calls == ["bad"]
        assert checkpoint_files(ckpt) == before


def test_recording_twice_is_refused(tmp_path):
    ckpt = tmp_path / "e.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        sweep.record(ITEMS[0], "first")
        before = checkpoint_files(ckpt)
        with pytest.raises(AlreadyRecordedError):
            sweep.record(ITEMS[0], "second")
        assert checkpoint_files(ckpt) == before
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
        with pytest.raises(AlreadyRecordedError):
            sweep.record(ITEMS[0], "third")
        assert sweep.result(ITEMS[0]) == "first"
    results = [r for r in read_records(progress_dir_for(ckpt)) if r["type"] == "result"]
    assert len(results) == 1


HOSTILE_KEYS = [
    "../../etc/x",
    "../../../../../../../../tmp/resumable-hostile-key",
    "/etc/passwd",
    "/tmp/resumable-hostile-abs",
    "a\x00b",
    "\x00",
    "k" * 10240,
    "",
    " ",
    ".",
    "..",
    "A",
    "\u0410",  # Cyrillic A
    "\uff21",  # fullwidth A
    "e\u0301",  # e + combining acute
    "\u00e9",  # precomposed é
    "key\u200b",  # zero-width space
    "seg-00000001.jsonl",
    "segments/seg-00000001.jsonl",
    "manifest.json",
    "LOCK",
    "CON",
    "a/b\\c",
    "\n",
    "\r\n",
    "\t",
    "\u2028",
    "🎉",
    "$(touch pwned)",
    "%2e%2e%2f",
    '{"__t": "nd"}',
]


def test_hostile_keys_work_and_create_no_files_outside(tmp_path, monkeypatch):
    work = tmp_path / "work"
    deep = work / "one" / "two"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)  # relative paths like ../../etc/x would land inside tmp_path
    outside = [
        Path("/etc/x"),
        Path("/tmp/resumable-hostile-key"),
        Path("/tmp/resumable-hostile-abs"),
    ]
    existed = [p.exists() for p in outside]
    before = tree(tmp_path)
    ckpt = work / "exp.h5"

    assert len(set(HOSTILE_KEYS)) == len(HOSTILE_KEYS)
    with ResumableSweep(
        HOSTILE_KEYS, checkpoint_path=ckpt, key=lambda k: k, segment_bytes=300
    ) as sweep:
        for k in sweep.pending:
            sweep.record(k, {"key": k})
    with ResumableSweep(
        HOSTILE_KEYS, checkpoint_path=ckpt, key=lambda k: k, segment_bytes=300
    ) as sweep:
        assert sweep.status().done == len(HOSTILE_KEYS)
        manifest = json.loads((progress_dir_for(ckpt) / "manifest.json").read_bytes())
        assert len(manifest["segments"]) >= 10  # the keys went through sealed segments too
        for k in HOSTILE_KEYS:
            assert sweep.result(k) == {"key": k}
        assert list(sweep.pending) == []

    after = tree(tmp_path)
    new = sorted(set(after) - set(before))
    prefix = os.path.join("work", "exp.h5.resumable") + os.sep
    assert all(p.startswith(prefix) for p in new), new
    inside = {p[len(prefix) :] for p in new}
    assert all(
        p in ("manifest.json", "LOCK") or (p.startswith("segments" + os.sep + "seg-"))
        for p in inside
    ), inside
    assert [p.exists() for p in outside] == existed


# -- one writer ---------------------------------------------------------------------------------


def test_second_sweep_in_same_process_is_locked_out(tmp_path):
    ckpt = tmp_path / "exp.h5"
    first = ResumableSweep(ITEMS, checkpoint_path=ckpt)
    first.record(ITEMS[0], 0)
    before = checkpoint_files(ckpt)
    with pytest.raises(CheckpointLockedError):
        ResumableSweep(ITEMS, checkpoint_path=ckpt)
    with pytest.raises(CheckpointLockedError):
        ResumableSweep(ITEMS, checkpoint_path=str(ckpt))
    assert checkpoint_files(ckpt) == before
    first.record(ITEMS[1], 1)  # the first one is unaffected
    first.close()
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as again:
        assert [again.result(i) for i in ITEMS[:2]] == [0, 1]


def _start_holder(ckpt: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, str(PROGS / "sweep_lock_holder.py"), str(ckpt)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise AssertionError(f"holder did not start: {line!r} {proc.stderr.read()}")
    return proc, int(line.split()[1])


def _open_in_thread(ckpt: Path, timeout: float = 20.0):
    """Open the sweep in a thread; fail if it blocks instead of answering."""
    outcome: dict = {}

    def run():
        try:
            outcome["sweep"] = ResumableSweep(list("abcde"), checkpoint_path=ckpt, key=str)
        except BaseException as exc:
            outcome["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "opening a locked checkpoint blocked instead of failing"
    return outcome


@pytest.mark.integration
def test_second_process_is_locked_out_and_lock_recovers_after_sigkill(tmp_path):
    ckpt = tmp_path / "exp.h5"
    proc, pid = _start_holder(ckpt)
    try:
        outcome = _open_in_thread(ckpt)
        err = outcome.get("error")
        assert isinstance(err, CheckpointLockedError), outcome
        assert str(pid) in str(err)  # names the holder
        # A failed attempt in this process must not have disturbed the holder's lock.
        outcome = _open_in_thread(ckpt)
        assert isinstance(outcome.get("error"), CheckpointLockedError), outcome
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
        proc.stdin.close()
    outcome = _open_in_thread(ckpt)
    assert "error" not in outcome, outcome
    sweep = outcome["sweep"]
    try:
        assert sweep.result("a") == {"by": pid}
        sweep.record("b", "after the holder died")
    finally:
        sweep.close()


@pytest.mark.integration
def test_process_holding_the_lock_in_this_process_blocks_other_processes(tmp_path):
    ckpt = tmp_path / "exp.h5"
    mine = ResumableSweep(list("abcde"), checkpoint_path=ckpt, key=str)
    try:
        with pytest.raises(CheckpointLockedError):
            ResumableSweep(list("abcde"), checkpoint_path=ckpt, key=str)  # same process
        proc = subprocess.run(
            [sys.executable, str(PROGS / "sweep_lock_holder.py"), str(ckpt)],
            input="",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0
        assert "CheckpointLockedError" in proc.stderr
        assert str(os.getpid()) in proc.stderr
    finally:
        mine.close()
    proc = subprocess.run(
        [sys.executable, str(PROGS / "sweep_lock_holder.py"), str(ckpt)],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "closed" in proc.stdout
