"""The bookkeeping of one `sweep.run`, shared by its in-process and pool loops: recording, the
failure policy, Ctrl-C deferral, the preemption exit and the `RunSummary`.

Only the owning process writes the checkpoint: results are recorded here in groups (group
commit, `record_many`): one fdatasync covers every result that arrived while the previous one
ran, and a result counts as done only once its group is durable (on a crash before that, the
item simply runs again). Failures are recorded one by one (`record_failure`, when `fn` raised
or its result cannot be stored), and past `max_failures` (or the default rule,
`DEFAULT_MIN_FAILURES`) the run submits nothing more and raises `TooManyFailuresError`. A
Ctrl-C never lands inside a record(): it waits for the next safe point. `RunRecorder.exit`
flushes the mirror and leaves through the guard (`Preempted`). The loops themselves are
`_run_inline.InlineRun` and `_run_pool.PoolRun`; runner.py picks one and describes the whole.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from ._worker import Outcome
from .errors import TooManyFailuresError, UnsupportedValueError
from .preempt import Preempted, PreemptionGuard

if TYPE_CHECKING:
    from .sweep import ResumableSweep

log = logging.getLogger("resumable.runner")  # sweep.run's log keeps its name
MAX_GROUP = 4096  # results per group commit, at most
DEFAULT_MIN_FAILURES = 10  # max_failures=None: stop past this many when failures outnumber results


@dataclass(frozen=True)
class RunSummary:
    """What one `run` did. `skipped`: finished or failed before it; `remaining`: pending after
    it (e.g. preempted); `max_in_flight`: most items outstanding; `max_batch`: largest task."""

    done: int
    failed: int
    skipped: int
    elapsed_s: float
    preempted: bool
    interrupted: bool = False
    remaining: int = 0
    workers: int = 1
    max_in_flight: int = 1
    max_batch: int = 1


class RemoteTraceback(Exception):
    """A worker's traceback text, attached as the cause of the exception it sent back."""

    # named as before the split in tracebacks, so in the failures recorded (resumable.runner
    # re-exports it): "resumable.runner.RemoteTraceback: ..."
    __module__ = "resumable.runner"

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


def accepts_seed(fn: Callable[..., Any]) -> bool:
    try:
        param = inspect.signature(fn).parameters.get("seed")
    except (TypeError, ValueError):
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


@dataclass
class Task:
    """A batch submitted to the executor: its items, when it went, its key (for Dask)."""

    items: list[tuple[str, Any]]  # (key, item)
    t0: float
    key: str


class RunRecorder:
    """One `run`'s state and recording; `InlineRun` and `PoolRun` add the loops (the pool's
    submission window is kept here, as the summary and `run_sweep` read it)."""

    def __init__(
        self,
        sweep: ResumableSweep,
        fn: Callable[..., Any],
        bar: Any,
        max_failures: int | None = None,
    ) -> None:
        self.sweep, self.fn, self.bar = sweep, fn, bar
        self.max_failures = max_failures
        self.stopping = False  # too many failures: submit nothing more
        self.last_failure = ""
        self.guard: PreemptionGuard | None = None
        self.guard_flushes = False
        self.wants_seed = accepts_seed(fn)
        self.done = self.failed = self.lost = self.failed_before = 0
        self.preempted = self.interrupted = False
        self.recording = False  # in record(): a Ctrl-C now waits until it returns
        self.deferring = False  # pool runs take Ctrl-C at their safe points only
        self.sigint = False
        # Preempted from the pending iterator's own safe point (the flag rose after our look):
        # kept until the results in hand are recorded, then raised by the drain
        self.raised: Preempted | None = None
        self.inflight: dict[cf.Future[Any], Task] = {}
        self.outstanding = self.peak = self.max_batch = 0
        self.item_s: float | None = None  # moving average of the items' compute time
        # (key, item) of batches that broke, to be sent one by one
        self.singly: collections.deque[tuple[str, Any]] = collections.deque()
        self.client: Any = None
        # (key, item, result, seconds) awaiting their group commit
        self.group: list[tuple[str, Any, Any, float]] = []
        self.group_t0 = 0.0
        self.commit_s = 0.0  # how long the last group commit took

    # -- recording (parent only) ----------------------------------------------------------
    def outcome(self, key: str, item: Any, outcome: Outcome) -> None:
        """A result joins the group that the next `commit` makes durable; a failure is
        recorded at once (failures are rare, and say why an item will not be retried)."""
        ok, value, tb, seconds = outcome
        self.item_s = seconds if self.item_s is None else 0.8 * self.item_s + 0.2 * seconds
        if ok:
            if not self.group:
                self.group_t0 = time.monotonic()
            self.group.append((key, item, value, seconds))
            return
        if tb and value.__traceback__ is None:  # it came from another process
            value.__cause__ = RemoteTraceback(tb)
        self.recording = True
        self._failure(key, item, value, seconds)
        self.recording = False
        self.bar.update(1)

    def outcomes(self, items: list[tuple[str, Any]], outcomes: list[Outcome]) -> None:
        """A task's outcomes, as `outcome` takes them one by one (its items' mean duration
        moves the average once: a task of a thousand items is one observation, not a
        thousand)."""
        group = self.group
        if not group:
            self.group_t0 = time.monotonic()
        total = 0.0
        for (key, item), outcome in zip(items, outcomes, strict=True):
            ok, value, _tb, seconds = outcome
            total += seconds
            if ok:
                group.append((key, item, value, seconds))
            else:
                self.outcome(key, item, outcome)
        if outcomes:
            mean = total / len(outcomes)
            self.item_s = mean if self.item_s is None else 0.8 * self.item_s + 0.2 * mean

    def commit(self) -> None:
        """Group commit: record every result gathered since the last commit with one
        fdatasync (`record_many`). A result counts as done only once this returns."""
        group, self.group = self.group, []
        if not group:
            return
        t0 = time.monotonic()
        self.recording = True
        try:
            try:
                # keys from sweep.pending_with_keys: the sweep's own, each once
                self.sweep.record_by_key([(k, value, sec) for k, _, value, sec in group])
                self.done += len(group)
            except UnsupportedValueError:  # nothing was written: find the culprit(s) one by one
                for key, item, value, seconds in group:
                    try:
                        self.sweep.record(item, value, duration=seconds)
                        self.done += 1
                    except UnsupportedValueError as exc:  # record why instead
                        self._failure(key, item, exc, seconds)
        finally:
            self.recording = False
        self.commit_s = time.monotonic() - t0
        self.bar.update(len(group))

    def commit_due(self) -> bool:
        """In-process: commit once the group has computed for as long as a commit takes (the
        fdatasync then costs at most about half the time), or when it is large."""
        return len(self.group) >= MAX_GROUP or (time.monotonic() - self.group_t0 >= self.commit_s)

    def _failure(self, key: str, item: Any, exc: BaseException, seconds: float) -> None:
        self.sweep.record_failure(item, exc, duration=seconds)
        self.failed += 1
        self.last_failure = f"item {key!r:.200}: {type(exc).__name__}: {exc}"
        self.bar.set_postfix(failed=self.failed_before + self.failed, refresh=False)
        if not self.stopping and self._too_many_failures():
            self.stopping = True
            log.error(
                "%d item(s) failed in this run (%s): submitting nothing more, recording the "
                "items in flight",
                self.failed,
                self._failure_rule(),
            )

    def _too_many_failures(self) -> bool:
        if self.max_failures is not None:
            return self.failed > self.max_failures
        # results waiting for their group commit are successes too
        return self.failed > DEFAULT_MIN_FAILURES and self.failed > self.done + len(self.group)

    def _failure_rule(self) -> str:
        if self.max_failures is not None:
            return f"max_failures={self.max_failures}"
        return (
            f"the default max_failures=None: more than {DEFAULT_MIN_FAILURES} failures and "
            f"more failures than results ({self.done})"
        )

    def too_many_failures(self) -> TooManyFailuresError:
        return TooManyFailuresError(
            f"sweep {self.sweep.name!r}: {self.failed} item(s) failed in this run, "
            f"{self.done} succeeded ({self._failure_rule()}); stopped submitting. Every failure "
            f"is recorded (rerun them with retry_failed=True once fn is fixed). Last: "
            f"{self.last_failure}"
        )

    def preempting(self) -> bool:
        return self.guard is not None and self.guard.preempted

    def on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT while we own it: KeyboardInterrupt at the next safe point, or now inside the
        user's in-process `fn`. Never inside record(): a record cut short would leave the
        checkpoint writer in an unknown state. A second Ctrl-C before then raises at once."""
        if (self.recording or self.deferring) and not self.sigint:
            self.sigint = True
        else:
            raise KeyboardInterrupt

    def safe_point(self) -> None:
        if self.sigint:
            self.sigint = False
            raise KeyboardInterrupt

    def exit(self, raised: Preempted | None) -> NoReturn:
        """Flush the mirror (unless the guard's exit does) and leave with `Preempted`."""
        guard = self.guard
        assert guard is not None
        if raised is not None or not self.guard_flushes:
            reserve = guard.flush_reserve_s
            try:
                self.sweep.flush_on_preemption(max(0.1, guard.remaining_s() - reserve))
            except Exception as exc:  # the local checkpoint has everything
                log.error("flushing the mirror on preemption: %s", exc)
        if raised is not None:
            raise raised
        guard.exit()

    def summary(self, skipped: int, t0: float, workers: int) -> RunSummary:
        return RunSummary(
            done=self.done,
            failed=self.failed,
            skipped=skipped,
            elapsed_s=time.monotonic() - t0,
            preempted=self.preempted,
            interrupted=self.interrupted,
            remaining=self.sweep.status().pending,
            workers=workers,
            max_in_flight=max(1, self.peak),
            max_batch=max(1, self.max_batch),
        )
