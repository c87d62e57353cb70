"""The crash-state harness (scripts/crash_states.py), a share of it: every state a power cut
could leave opens to a prefix of the history holding every acknowledged record.

The full run (>= 10,000 distinct states) is `python scripts/crash_states.py`; its figures are
in the README. Two mutants prove the harness can fail: without directory fsyncs, or without
the fdatasync of an append, it finds lost records.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from resumable import _checkpoint as checkpoint
from resumable import _durable as durable
from resumable import _journal as journal
from resumable import _segfiles as segfiles

_PATH = Path(__file__).resolve().parent.parent / "scripts" / "crash_states.py"
_spec = importlib.util.spec_from_file_location("crash_states", _PATH)
assert _spec is not None and _spec.loader is not None
crash_states = importlib.util.module_from_spec(_spec)
sys.modules["crash_states"] = crash_states
_spec.loader.exec_module(crash_states)

pytestmark = pytest.mark.slow


def test_a_share_of_the_crash_states_loses_nothing_and_refuses_nothing():
    tallies = crash_states.run(min_states=500, sweep_every=5, seed=11, quiet=True)
    kinds = {t.name.split(" #")[0] for t in tallies}
    assert kinds == {sc.name for sc in crash_states.SCENARIOS}
    assert sum(t.states for t in tallies) >= 500
    assert sum(t.sweep_opens for t in tallies) >= 80
    problems = [p for t in tallies for p in t.losses + t.refusals]
    assert problems == [], problems[:10]


def _basic(tmp_path: Path, seed: int = 3) -> object:
    return crash_states.explore(
        crash_states.SCENARIOS[0], budget=400, sweep_every=0, seed=seed, workdir=tmp_path
    )


def test_the_harness_finds_a_missing_directory_fsync(tmp_path, monkeypatch):
    monkeypatch.setattr(durable, "fsync_dir", lambda path: None)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", _no_dir_sync_write)
    tally = _basic(tmp_path)
    assert tally.losses or tally.refusals


def _no_dir_sync_write(path, data):
    """atomic_write_bytes without its final directory fsync (the rename may be lost)."""
    import os

    tmp = Path(path).with_name(Path(path).name + ".tmp")
    fd = durable.ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    durable.write_all(fd, data, str(tmp))
    durable.ops.fsync(fd)
    durable.ops.close(fd)
    durable.ops.replace(tmp, path)


def test_the_harness_finds_a_missing_fdatasync(tmp_path, monkeypatch):
    real = checkpoint.fsync_file

    def skip_data_syncs(fd, name, *, data_only=True):
        if not data_only:
            real(fd, name, data_only=False)

    monkeypatch.setattr(checkpoint, "fsync_file", skip_data_syncs)
    monkeypatch.setattr(segfiles, "fsync_file", skip_data_syncs)  # (cutting a torn tail)
    # (the states that show it are a few of the 400 drawn, and which ones a seed draws
    # depends on the records' sizes, timestamps included: a few seeds, until one finds it)
    refusals: list[str] = []
    for seed in (5, 1, 3, 7):
        (tmp_path / str(seed)).mkdir()
        tally = _basic(tmp_path / str(seed), seed=seed)
        if any("acknowledged" in loss for loss in tally.losses):
            return
        refusals += tally.refusals[:3]
    pytest.fail(f"no seed found the lost acknowledged record; refusals: {refusals}")


def test_group_commits_torn_into_records_after_zeroed_pages_open(tmp_path, monkeypatch):
    """A group commit's write spans several pages; the harness zeroes some of them (the first
    ones too) and keeps later ones, so whole unacknowledged records follow zeros: every such
    state opens with the acknowledged records. With the old rule (damage followed by a record
    always refused) the same exploration finds refusals, so the harness reaches the state."""
    group = next(sc for sc in crash_states.SCENARIOS if sc.name.startswith("group commit"))
    sc = replace(group, variant=2)  # 30 KB segments: groups of many records over many pages

    def explore(name: str) -> object:
        (tmp_path / name).mkdir()
        return crash_states.explore(sc, budget=300, sweep_every=0, seed=3, workdir=tmp_path / name)

    tally = explore("rule")
    assert tally.states >= 200
    assert (tally.losses, tally.refusals) == ([], [])
    monkeypatch.setattr(journal, "torn_group", lambda data, pos, *, seq: False)
    old = explore("old-rule")
    assert old.refusals and not old.losses
    assert all("IntegrityError" in r for r in old.refusals), old.refusals[:3]


def test_a_launch_cut_short_in_a_parted_item_list_opens_and_writes_it_again(tmp_path, monkeypatch):
    """Cut at every write boundary of an open writing its item list as parts: every state
    opens, nothing acknowledged is lost, and parts no record closed are ignored (and the list
    written again by the next open: `_check` compares the reopened sweep's listing)."""
    scenario = next(sc for sc in crash_states.SCENARIOS if sc.part_bytes)
    unclosed = []
    real_check = crash_states._check

    def check(root, sc, acked, history, sweep_open):
        loaded = checkpoint.load(crash_states.progress_dir_for(root / sc.ckpt))
        if loaded is not None and loaded.state._open_parts:
            unclosed.append(len(loaded.state._open_parts))
        return real_check(root, sc, acked, history, sweep_open)

    monkeypatch.setattr(crash_states, "_check", check)
    for variant in (0, 1):
        (tmp_path / str(variant)).mkdir()
        tally = crash_states.explore(
            replace(scenario, variant=variant),
            budget=10_000,
            sweep_every=2,
            seed=5,
            workdir=tmp_path / str(variant),
        )
        assert tally.losses + tally.refusals == []
        assert tally.states > 20
    assert len(set(unclosed)) > 2  # states cut after several different parts
