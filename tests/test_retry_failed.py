"""`resumable.sweep.retry_failed`: marking a closed checkpoint's failures for another attempt.

The library function behind ``resumable retry-failed``, called directly on real checkpoints
(plain and sharded): selection by keys and error types, dry runs, the lock, the errors, and a
real relaunch that runs exactly the marked items.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import resumable
from resumable import ResumableSweep
from resumable._checkpoint import progress_dir_for
from resumable.errors import (
    CheckpointLockedError,
    CheckpointNotFoundError,
    ConfigurationError,
)
from resumable.sweep import RetryOutcome, retry_failed

ITEMS = list(range(10))
FAILS = {2: ValueError, 5: RuntimeError, 7: ValueError}


def make(ckpt: Path, **kw: object) -> None:
    with ResumableSweep(ITEMS, key=str, checkpoint_path=ckpt, **kw) as sweep:  # type: ignore[arg-type]
        for item in sweep.pending:
            if item in FAILS:
                sweep.record_failure(item, FAILS[item](f"item {item}"), duration=0.01)
            else:
                sweep.record(item, item * 10)


def pending(ckpt: Path) -> list[str]:
    with ResumableSweep(ITEMS, key=str, checkpoint_path=ckpt) as sweep:
        return [str(i) for i in sweep.pending]


def test_selection_dry_run_and_a_real_relaunch(tmp_path: Path) -> None:
    ckpt = tmp_path / "exp.h5"
    make(ckpt)
    dry = retry_failed(ckpt, dry_run=True)
    assert dry == RetryOutcome(
        sweep="exp",
        keys=["2", "5", "7"],
        by_type={"ValueError": 2, "RuntimeError": 1},
        dry_run=True,
    )
    assert pending(ckpt) == []  # a dry run changes nothing

    by_type = retry_failed(ckpt, error_types=["RuntimeError"])
    assert (by_type.keys, by_type.by_type, by_type.not_failed) == (["5"], {"RuntimeError": 1}, [])
    assert pending(ckpt) == ["5"]

    by_key = retry_failed(progress_dir_for(ckpt), keys=["7", "3", "nope"])
    assert by_key.keys == ["7"] and by_key.not_failed == ["3", "nope"]
    assert pending(ckpt) == ["5", "7"]

    with ResumableSweep(ITEMS, key=str, checkpoint_path=ckpt) as sweep:
        ran = list(sweep.pending)
        for item in ran:
            sweep.record(item, "second try")
        assert ran == [5, 7] and sweep.status().failed == 1 and sweep.status().done == 9
    assert retry_failed(ckpt).keys == ["2"]
    assert retry_failed(ckpt).keys == []  # nothing left to mark
    assert resumable.verify(str(ckpt)) == []


def test_sharded_checkpoints_are_marked_whole(tmp_path: Path) -> None:
    ckpt = tmp_path / "exp.h5"
    for index in (0, 1):
        make(ckpt, shard=(index, 2))
    outcome = retry_failed(ckpt)
    assert sorted(outcome.keys) == ["2", "5", "7"] and outcome.sweep == "exp"
    with ResumableSweep(ITEMS, key=str, checkpoint_path=ckpt, shard=(0, 2)) as s0:
        with_0 = [str(i) for i in s0.pending]
    with ResumableSweep(ITEMS, key=str, checkpoint_path=ckpt, shard=(1, 2)) as s1:
        with_1 = [str(i) for i in s1.pending]
    assert sorted(with_0 + with_1) == ["2", "5", "7"]


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"is a URL.*on the machine that runs the sweep"):
        retry_failed("s3://bucket/sweeps/exp")
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint at"):
        retry_failed(tmp_path / "none.h5")
    ckpt = tmp_path / "exp.h5"
    make(ckpt)
    with ResumableSweep(ITEMS, key=str, checkpoint_path=ckpt) as sweep:
        with pytest.raises(CheckpointLockedError, match="stop it first"):
            retry_failed(ckpt)
        assert sweep.status().failed == 3  # nothing changed under the open sweep
    assert retry_failed(ckpt).keys == ["2", "5", "7"]  # every lock was released
