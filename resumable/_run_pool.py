"""`sweep.run` on an executor: items sent in batches through a bounded window, each task's
outcome settled, and the drain on preemption or Ctrl-C.

Batching: items are sent in batches sized from their measured durations, so that a task takes
about 250 ms on Dask and Ray (whose per-task cost is milliseconds of scheduler time) and 20 ms
elsewhere; longer items go one per task. The default window is two tasks per worker (workers:
a pool's `_max_workers`, the Dask cluster's threads); `max_in_flight` caps items, batches too.
`sweep.pending` is read lazily, so a million-item sweep floods neither the scheduler nor
memory. The results of every task that finished are group-committed at once (`RunRecorder`),
while the next batches are already submitted.

On preemption nothing new is submitted, queued tasks are cancelled, running ones are awaited
until shortly before the grace deadline and recorded if they finish; a Ctrl-C does the same
within the grace period. Unrecorded items stay pending, never failed.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import time
import uuid
from typing import Any

from . import _worker
from ._executors import (
    INFRA_ERRORS,
    RUN_ERROR_HINT,
    check_sendable,
    dask_running_keys,
    is_run_error,
    name_of,
)
from ._run_record import RunRecorder, Task
from ._worker import run_batch
from .errors import RunError
from .preempt import Preempted

log = logging.getLogger("resumable.runner")  # sweep.run's log keeps its name
_POLL_S = 0.1  # how often a waiting parent looks at the preemption flag
_EXIT_MARGIN_S = 0.5  # reach guard.exit() this long before the watchdog would take over
_TASK_S = {"dask": 0.25, "other": 0.02}  # batch short items into tasks of about this length
_MAX_BATCH = 1000


class PoolRun(RunRecorder):
    """One `run` on an executor: the submission window, settling tasks, the drain."""

    def run_pool(self, executor: Any, client: Any, workers: int, limit: int | None) -> None:
        self.executor, self.client, self.workers, self.limit = executor, client, workers, limit
        # (key, item); no safe point per item: the flag is looked at here, between batches
        self.pending = self.sweep.pending_with_keys(safe_points=False)
        self.exhausted = False
        self.token, self.counter = uuid.uuid4().hex[:12], itertools.count()
        target = getattr(executor, "task_target_s", None)  # e.g. RayExecutor's
        self.target_s = (
            float(target)
            if isinstance(target, (int, float))
            else _TASK_S["dask" if client is not None else "other"]
        )
        self.cap = max(1, limit // (2 * workers)) if limit else _MAX_BATCH
        # workers of a process pool (this machine's install) send results back encoded
        self.encode = (
            (_worker.SAME_CODE, self.sweep.fingerprints_in_workers())
            if isinstance(executor, cf.ProcessPoolExecutor)
            else None
        )
        self.deferring = True
        check_sendable(self.fn, executor, client)
        try:
            while True:
                self._fill()
                if self.preempting() or self.raised is not None:
                    self._drain(self.raised, complete=self.exhausted and not self.singly)
                    return  # everything finished during the drain: the work is complete
                if not self.inflight:
                    if self.stopping:
                        raise self.too_many_failures()
                    return
                done, _ = cf.wait(self.inflight, timeout=_POLL_S, return_when=cf.FIRST_COMPLETED)
                ready = [(fut, self._pop(fut)) for fut in done]
                self._fill()  # keep the workers busy while the results are fsync'd here
                errors = []
                for fut, task in ready:
                    try:
                        self._settle(fut, task)
                    except (*INFRA_ERRORS, RunError) as exc:  # record the others first
                        errors.append(exc)
                self.commit()  # one fdatasync for everything that arrived meanwhile
                if errors:
                    raise errors[0]
                self.safe_point()
        except KeyboardInterrupt:
            self.interrupted = True
            if self.recording or not self.inflight:
                raise
            grace = self.guard.grace_s if self.guard is not None else 25.0
            log.warning(
                "interrupted: cancelling queued items, waiting up to %.0f s for the running "
                "ones to finish and be recorded (Ctrl-C again to abandon them)",
                grace,
            )
            self._cancel_queued()
            self._await(time.monotonic() + grace)
            raise

    def _fill(self) -> None:
        """Submit batches while the window has room (items of a broken batch go one by one).
        Never raises Preempted: results popped from `inflight` may be waiting to be recorded."""
        while (
            not self.preempting()
            and self.raised is None
            and not self.stopping
            and not (self.exhausted and not self.singly)
        ):
            size = 1
            if self.item_s is not None:
                size = max(
                    1, min(self.cap, _MAX_BATCH, int(self.target_s / max(self.item_s, 1e-6)))
                )
            if self.limit is None:  # the default window: two tasks per worker
                if len(self.inflight) >= 2 * self.workers:
                    return
            else:  # an explicit max_in_flight bounds items
                size = min(size, self.limit - self.outstanding)
            if size < 1:
                return
            alone = bool(self.singly)
            batch = [self.singly.popleft()] if alone else []
            while not alone and len(batch) < size:
                try:
                    batch.append(next(self.pending))
                except StopIteration:
                    self.exhausted = True
                    break
                except Preempted as exc:  # the flag rose between our check and its own: the
                    self.raised = exc  # run loop drains once what arrived is recorded; this
                    return  # batch was never submitted, its items stay pending
            if batch:
                self._submit(batch)

    def _submit(self, batch: list[tuple[str, Any]]) -> None:
        seed_of = self.sweep.seed_of_key if self.wants_seed else None
        task_key = f"resumable-{self.token}-{next(self.counter)}"
        extra = {"key": task_key} if self.client is not None else {}  # to find it on the workers
        pairs = [(item, None if seed_of is None else seed_of(k)) for k, item in batch]
        args = (self.fn, pairs) if self.encode is None else (self.fn, pairs, self.encode)
        fut = self.executor.submit(run_batch, *args, **extra)
        self.inflight[fut] = Task(batch, time.monotonic(), task_key)
        self.outstanding += len(batch)
        self.peak = max(self.peak, self.outstanding)
        self.max_batch = max(self.max_batch, len(batch))

    def _pop(self, fut: cf.Future[Any]) -> Task:
        task = self.inflight.pop(fut)
        self.outstanding -= len(task.items)
        return task

    def _settle(self, fut: cf.Future[Any], task: Task | None = None) -> None:
        task = task or self._pop(fut)
        n = len(task.items)
        exc = None if fut.cancelled() else fut.exception(timeout=0)
        if exc is not None and is_run_error(exc):
            self.lost += n  # the run's fault: the items stay pending, nothing is recorded
            raise RunError(
                f"sweep.run cannot run {name_of(self.fn)} on {type(self.executor).__name__}: "
                f"{type(exc).__name__}: {exc}. A problem of the run, not of an item: nothing "
                f"was recorded for it ({RUN_ERROR_HINT})"
            ) from exc
        if fut.cancelled() or isinstance(exc, (*INFRA_ERRORS, KeyboardInterrupt)):
            self.lost += n  # not the items' fault (a dead worker, Ctrl-C): they stay pending
            log.warning("%d item(s) stay pending: %r", n, exc or "cancelled")
            if isinstance(exc, INFRA_ERRORS):
                raise exc
        elif exc is None:
            self.outcomes(task.items, fut.result())
        elif n > 1:  # e.g. one result did not pickle: find it, one by one
            self.singly.extend(task.items)
        else:
            key, item = task.items[0]
            self.outcome(key, item, (False, exc, None, time.monotonic() - task.t0))

    def _cancel_queued(self) -> None:
        """Cancel tasks that have not started; those left in `inflight` are running."""
        try:
            for fut in [f for f in self.inflight if f.done()]:
                self._settle(fut)
        finally:
            self.commit()
        running = None
        if self.client is not None and self.inflight:
            running = dask_running_keys(self.client, timeout=2.0)
            if running is None:
                return  # unknown: await them all rather than lose work that is running
        for fut, task in list(self.inflight.items()):
            if (running is None or task.key not in running) and fut.cancel():
                self.lost += len(self._pop(fut).items)

    def _await(self, until: float) -> None:
        """Record what completes before `until` (monotonic)."""
        while self.inflight and (left := until - time.monotonic()) > 0:
            wait = min(_POLL_S, left)
            done, _ = cf.wait(self.inflight, timeout=wait, return_when=cf.FIRST_COMPLETED)
            try:
                for fut in done:
                    self._settle(fut)
            finally:
                self.commit()
            self.safe_point()  # a second Ctrl-C abandons the rest

    def _drain(self, raised: Preempted | None = None, complete: bool = False) -> None:
        """Preemption: cancel queued tasks, record the running ones that finish in time, then
        exit through the guard (returns only when nothing at all was left undone)."""
        guard = self.guard
        assert guard is not None
        self.preempted = True
        self._cancel_queued()
        reserve = guard.flush_reserve_s + _EXIT_MARGIN_S
        if running := len(self.inflight):
            log.warning("preempted: awaiting %d running task(s)", running)
        self._await(time.monotonic() + guard.remaining_s() - reserve)
        for fut, task in self.inflight.items():
            fut.cancel()  # best effort; their results would come too late
            self.lost += len(task.items)
        if self.inflight:
            log.warning("preempted: %d task(s) did not finish in time", len(self.inflight))
        if raised is None and complete and not self.lost and not self.singly:
            return
        self.exit(raised)
