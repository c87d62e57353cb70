"""`sweep.run` on a pool: interleavings of a preemption signal with the run loop, made exact.

A signal can land just after the runner looked at the preemption flag. When the pending
iterator still had its own safe point per item (`sweep.pending_with_keys`, which then raised
`Preempted`) and that happened while refilling the window, with results already taken off
their futures but not yet recorded, those results were dropped: items that had run stayed
pending (the flaky test_runner_preempt.py::test_sigint_to_process_group_does_not_kill_workers_
mid_item). Here `LateGuard` makes the signal land exactly there at each of the first refills,
and `SyncExecutor` runs each task as it is submitted, so the order of events is fixed: every
item that ran must be recorded.
"""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path
from typing import Any

import pytest

from resumable import ResumableSweep
from resumable.preempt import Preempted, PreemptionGuard
from resumable.view import open_view

N = 40


def ident(item: dict) -> int:
    return item["i"]


class LateGuard(PreemptionGuard):
    """Once armed, its signal arrives just after the next look at the flag: that look still
    sees no preemption, every later one does."""

    armed = False
    fired = False

    @property
    def preempted(self) -> bool:
        seen = super().preempted
        if self.armed and not seen:
            self.armed, self.fired = False, True
            self.request("a signal just after the runner looked")
        return seen


class SyncExecutor(cf.Executor):
    """Runs each task when it is submitted (one worker); arms `guard` at submit `arm_at`."""

    def __init__(self, guard: LateGuard, arm_at: int) -> None:
        self._max_workers = 1  # read by the runner to size its window
        self.guard, self.arm_at = guard, arm_at
        self.submits = 0
        self.ran: list[int] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        fut: cf.Future[Any] = cf.Future()
        fut.set_running_or_notify_cancel()
        fut.set_result(fn(*args, **kwargs))
        self.ran += [item["i"] for item, _seed in args[1]]  # run_batch(fn, [(item, seed)...])
        self.submits += 1
        if self.submits == self.arm_at:
            self.guard.armed = True
        return fut


def _recorded(ckpt: Path) -> set[int]:
    view = open_view(str(ckpt))
    assert not view.loaded.state.failures
    return {res for _, _, res in view.results()}


@pytest.mark.parametrize("arm_at", [1, 2, 3, 4, 5, 6])
def test_signal_between_runner_check_and_pending_safe_point_loses_no_result(tmp_path, arm_at):
    ckpt = tmp_path / "exp.h5"
    items = [{"i": i} for i in range(N)]
    with LateGuard(grace_s=30) as guard:
        executor = SyncExecutor(guard, arm_at)
        sweep = ResumableSweep(items, checkpoint_path=ckpt)
        try:
            # a window of 4 items in batches of at most 2: arming at each of the first submits
            # puts the signal at each refill of the first rounds (before the fix, arm_at 5 and
            # 6, refills made with the first round's results in hand, lost items 0-3)
            with pytest.raises(Preempted) as info:
                sweep.run(ident, executor=executor, max_in_flight=4, progress=False)
        finally:
            sweep.close()
    assert guard.fired
    ran = set(executor.ran)
    assert len(ran) < N
    assert _recorded(ckpt) == ran, "an item that ran was not recorded"
    summary = info.value.summary
    assert summary.preempted and summary.done == len(ran) and summary.remaining == N - len(ran)

    with ResumableSweep(items, checkpoint_path=ckpt) as sweep:  # the rest, exactly once
        assert sweep.run(ident, progress=False).done == N - len(ran)
    assert _recorded(ckpt) == set(range(N))
