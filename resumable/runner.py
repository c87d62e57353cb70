"""`sweep.run(fn, executor=...)`: run every pending item through `fn`, here or on a pool.

Only the owning process writes the checkpoint: workers return results, and they are recorded
here in groups (group commit, `record_many`): one fdatasync covers every result that arrived
while the previous one ran, and a result counts as done only once its group is durable (on a
crash before that, the item simply runs again). In-process, a group is committed once it has
computed about as long as a commit takes. Failures are recorded one by one (`record_failure`,
when `fn` raised or its result cannot be stored). `sweep.pending` is read lazily and at most
`max_in_flight` items are outstanding, so a million-item sweep floods neither the scheduler nor
memory.

Executors: None (in-process); an int N or ``"processes"`` (a pool made here, `process_pool`);
any `concurrent.futures.Executor`; a Dask `distributed.Client` or its ``get_executor()``; a
`RayExecutor` (ray_executor.py), or ``"ray"`` for one on the cluster `ray.init` connects to.
Process pools need a picklable `fn` (module level) and items; Dask uses cloudpickle.

Batching: items are sent in batches sized from their measured durations, so that a task takes
about 250 ms on Dask and Ray (whose per-task cost is milliseconds of scheduler time) and 20 ms
elsewhere; longer items go one per task. The default window is two tasks per worker (workers:
a pool's `_max_workers`, the Dask cluster's threads); `max_in_flight` caps items, batches too.

Errors of the run, not of an item (`fn` or an item that cannot be pickled for the workers, a
worker that cannot import `fn`, a broken pool) raise at once (`RunError`, or the executor's
`BrokenExecutor`) and record nothing for the items concerned: they stay pending. Exceptions
raised by `fn` itself, and results that cannot be stored or sent back, are failures of their
item. `max_failures`: once more items than that failed in one run, nothing new is submitted,
what is in flight is recorded, and `TooManyFailuresError` is raised. The default (None) stops a
run once more than `DEFAULT_MIN_FAILURES` (10) items failed and failures outnumber successes in
this run: a run whose every item fails stops after 11, a run with occasional failures goes on.

Seeds: a `fn` with a parameter named ``seed`` is called as ``fn(item, seed=sweep.seed(item))``
(computed here and sent along: the sweep cannot travel to workers), else as ``fn(item)``.

Preemption: the sweep's guard (its own under ``with sweep:``, an enclosing `current_guard()`,
or one installed for the run in the main thread) raises a flag. Then nothing new is submitted,
queued tasks are cancelled, running ones are awaited until shortly before the grace deadline
and recorded if they finish, and `guard.exit()` flushes the mirror and raises `Preempted` (exit
75). Unrecorded items stay pending, never failed. Ctrl-C (SIGINT not among the sweep's
`signals`) does the same within the grace period, a second Ctrl-C abandons the running items,
and KeyboardInterrupt propagates; it never lands inside a record(). Both carry ``.summary``.
Pool workers must not die of the terminal's SIGINT mid-item: pools made here ignore it; give
your own pools ``initializer=worker_initializer``.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import inspect
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from tqdm import tqdm

from . import _worker
from ._worker import Outcome, run_one
from ._worker import run_batch as run_batch  # re-exported: the task sent to the workers
from ._worker import worker_initializer as worker_initializer  # re-exported (public)
from .errors import ConfigurationError, RunError, TooManyFailuresError, UnsupportedValueError
from .preempt import Preempted, PreemptionGuard

if TYPE_CHECKING:
    from .sweep import ResumableSweep

log = logging.getLogger(__name__)
_POLL_S = 0.1  # how often a waiting parent looks at the preemption flag
_EXIT_MARGIN_S = 0.5  # reach guard.exit() this long before the watchdog would take over
_TASK_S = {"dask": 0.25, "other": 0.02}  # batch short items into tasks of about this length
_MAX_BATCH = 1000
_MAX_GROUP = 4096  # results per group commit, at most
_INFRA_ERRORS = (cf.BrokenExecutor, cf.CancelledError)  # the executor's fault, not the item's
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

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


def process_pool(max_workers: int | None = None) -> cf.ProcessPoolExecutor:
    """A process pool whose workers ignore SIGINT. Started by forkserver (forking a parent that
    runs threads, like the mirror's, can deadlock the child), or by fork from an interactive
    ``__main__`` (no file to re-import, so functions defined there resolve in workers)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file and "forkserver" in multiprocessing.get_all_start_methods():
        ctx: multiprocessing.context.BaseContext = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", _worker.__name__])  # workers fork with it
    else:
        ctx = multiprocessing.get_context()
    return cf.ProcessPoolExecutor(max_workers, mp_context=ctx, initializer=worker_initializer)


def _accepts_seed(fn: Callable[..., Any]) -> bool:
    try:
        param = inspect.signature(fn).parameters.get("seed")
    except (TypeError, ValueError):
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def _dask_client(executor: Any) -> Any:
    """The Dask client behind `executor` (a Client or its executor), else None."""
    if type(executor).__module__.split(".")[0] != "distributed":
        return None
    # A ClientExecutor offers no public way to its Client: read the private `_client` (the
    # library's own attribute since Dask 2.x); a Client itself is returned as is.
    return getattr(executor, "_client", executor)


def _worker_count(executor: Any, client: Any) -> int:
    if client is not None:
        with contextlib.suppress(Exception):
            return max(1, int(sum(client.nthreads().values())))
    # concurrent.futures executors keep their size private (no public accessor): read
    # `_max_workers` if present, else assume two per CPU
    n = getattr(executor, "_max_workers", None)
    return n if isinstance(n, int) and n > 0 else 2 * (os.cpu_count() or 1)


def _dask_executing(dask_worker: Any) -> list[str]:
    """Runs on each Dask worker: keys of the tasks it is executing right now."""
    state = dask_worker.state
    return [str(ts.key) for ts in (*state.executing, *state.long_running)]


def _dask_running_keys(client: Any, timeout: float) -> set[str] | None:
    """Keys executing on the workers, or None if unknown. (A Dask future's cancel() succeeds
    even while it runs, so this is how queued tasks are told from running ones.)"""
    out: dict[str, set[str]] = {}

    def query() -> None:
        with contextlib.suppress(Exception):
            per = client.run(_dask_executing, on_error="ignore")
            out["keys"] = {k for keys in per.values() if isinstance(keys, list) for k in keys}

    thread = threading.Thread(target=query, daemon=True, name="resumable-dask-query")
    thread.start()
    thread.join(timeout)
    return out.get("keys")


@contextlib.contextmanager
def _guard_for(sweep: ResumableSweep) -> Iterator[tuple[PreemptionGuard | None, bool]]:
    """(guard, whether its exit flushes this sweep's mirror): the sweep's own guard, an
    enclosing one, or one installed here for the run (main thread, signals handled)."""
    guard = sweep.guard
    if (
        guard is not None
        or not sweep.handle_signals
        or threading.current_thread() is not threading.main_thread()
    ):
        yield guard, guard is not None and guard is sweep.own_guard
        return
    with sweep.new_guard() as made:
        yield made, True


@contextlib.contextmanager
def _sigint_to(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Route SIGINT to `handler` for the block, if Python's default handler has it now (not
    when it is among the guard's signals or the user's own), in the main thread only."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass
class _Task:
    items: list[tuple[str, Any]]  # (key, item)
    t0: float
    key: str


class _Run:
    """One `run`: the submission window, recording, and the preemption/Ctrl-C drain."""

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
        self.wants_seed = _accepts_seed(fn)
        self.done = self.failed = self.lost = self.failed_before = 0
        self.preempted = self.interrupted = False
        self.recording = False  # in record(): a Ctrl-C now waits until it returns
        self.deferring = False  # pool runs take Ctrl-C at their safe points only
        self.sigint = False
        # Preempted from the pending iterator's own safe point (the flag rose after our look):
        # kept until the results in hand are recorded, then raised by the drain
        self.raised: Preempted | None = None
        self.inflight: dict[cf.Future[Any], _Task] = {}
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
    def _outcome(self, key: str, item: Any, outcome: Outcome) -> None:
        """A result joins the group that the next `_commit` makes durable; a failure is
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

    def _outcomes(self, items: list[tuple[str, Any]], outcomes: list[Outcome]) -> None:
        """A task's outcomes, as `_outcome` takes them one by one (its items' mean duration
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
                self._outcome(key, item, outcome)
        if outcomes:
            mean = total / len(outcomes)
            self.item_s = mean if self.item_s is None else 0.8 * self.item_s + 0.2 * mean

    def _commit(self) -> None:
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

    def _commit_due(self) -> bool:
        """In-process: commit once the group has computed for as long as a commit takes (the
        fdatasync then costs at most about half the time), or when it is large."""
        return len(self.group) >= _MAX_GROUP or (time.monotonic() - self.group_t0 >= self.commit_s)

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

    def _pop(self, fut: cf.Future[Any]) -> _Task:
        task = self.inflight.pop(fut)
        self.outstanding -= len(task.items)
        return task

    def _settle(self, fut: cf.Future[Any], task: _Task | None = None) -> None:
        task = task or self._pop(fut)
        n = len(task.items)
        exc = None if fut.cancelled() else fut.exception(timeout=0)
        if exc is not None and _is_run_error(exc):
            self.lost += n  # the run's fault: the items stay pending, nothing is recorded
            raise RunError(
                f"sweep.run cannot run {_name_of(self.fn)} on {type(self.executor).__name__}: "
                f"{type(exc).__name__}: {exc}. A problem of the run, not of an item: nothing "
                f"was recorded for it ({_RUN_ERROR_HINT})"
            ) from exc
        if fut.cancelled() or isinstance(exc, (*_INFRA_ERRORS, KeyboardInterrupt)):
            self.lost += n  # not the items' fault (a dead worker, Ctrl-C): they stay pending
            log.warning("%d item(s) stay pending: %r", n, exc or "cancelled")
            if isinstance(exc, _INFRA_ERRORS):
                raise exc
        elif exc is None:
            self._outcomes(task.items, fut.result())
        elif n > 1:  # e.g. one result did not pickle: find it, one by one
            self.singly.extend(task.items)
        else:
            key, item = task.items[0]
            self._outcome(key, item, (False, exc, None, time.monotonic() - task.t0))

    def _preempting(self) -> bool:
        return self.guard is not None and self.guard.preempted

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT while we own it: KeyboardInterrupt at the next safe point, or now inside the
        user's in-process `fn`. Never inside record(): a record cut short would leave the
        checkpoint writer in an unknown state. A second Ctrl-C before then raises at once."""
        if (self.recording or self.deferring) and not self.sigint:
            self.sigint = True
        else:
            raise KeyboardInterrupt

    def _safe_point(self) -> None:
        if self.sigint:
            self.sigint = False
            raise KeyboardInterrupt

    # -- in-process ---------------------------------------------------------------------
    def run_inline(self) -> None:
        # (key, item); its own safe point raises Preempted between items
        pending = self.sweep.pending_with_keys()
        fn, seed_of = self.fn, self.sweep.seed_of_key
        try:
            while True:
                if self.group and (self._preempting() or self.sigint or self._commit_due()):
                    self._commit()
                try:
                    key, item = next(pending)
                except StopIteration:
                    break
                except Preempted as exc:
                    self.preempted = True
                    self._commit()
                    self._exit(exc)
                seed = seed_of(key) if self.wants_seed else None
                self._outcome(key, item, run_one(fn, item, seed))
                if self.sigint:
                    self._commit()
                    self._safe_point()
                if self.stopping:
                    raise self.too_many_failures()  # the handler below commits what is done
            self._commit()
            if self.stopping:  # the last group held the failure too many (an unstorable result)
                raise self.too_many_failures()
        except BaseException:  # Ctrl-C, or Preempted raised inside fn: the results so far are
            self._commit()  # good, keep them (a failing commit has emptied the group first)
            raise
        self.preempted = self._preempting()  # a late signal: the work is complete anyway

    # -- executors ----------------------------------------------------------------------
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
        _check_sendable(self.fn, executor, client)
        try:
            while True:
                self._fill()
                if self._preempting() or self.raised is not None:
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
                    except (*_INFRA_ERRORS, RunError) as exc:  # record the others first
                        errors.append(exc)
                self._commit()  # one fdatasync for everything that arrived meanwhile
                if errors:
                    raise errors[0]
                self._safe_point()
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
            not self._preempting()
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
        self.inflight[fut] = _Task(batch, time.monotonic(), task_key)
        self.outstanding += len(batch)
        self.peak = max(self.peak, self.outstanding)
        self.max_batch = max(self.max_batch, len(batch))

    def _cancel_queued(self) -> None:
        """Cancel tasks that have not started; those left in `inflight` are running."""
        try:
            for fut in [f for f in self.inflight if f.done()]:
                self._settle(fut)
        finally:
            self._commit()
        running = None
        if self.client is not None and self.inflight:
            running = _dask_running_keys(self.client, timeout=2.0)
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
                self._commit()
            self._safe_point()  # a second Ctrl-C abandons the rest

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
        self._exit(raised)

    def _exit(self, raised: Preempted | None) -> NoReturn:
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


def run_sweep(
    sweep: ResumableSweep,
    fn: Callable[..., Any],
    *,
    executor: Any = None,
    max_in_flight: int | None = None,
    progress: bool | None = None,
    max_failures: int | None = None,
) -> RunSummary:
    """Run every pending item of `sweep` through `fn`; see the module docstring."""
    if not callable(fn):
        raise ConfigurationError(f"fn must be callable, found {fn!r}")
    if max_failures is not None and (type(max_failures) is not int or max_failures < 0):
        raise ConfigurationError(
            f"max_failures must be an int >= 0 or None (the default rule), found {max_failures!r}"
        )
    if max_in_flight is not None and (type(max_in_flight) is not int or max_in_flight < 1):
        raise ConfigurationError(f"max_in_flight must be an int >= 1, found {max_in_flight!r}")
    make_pool = (isinstance(executor, str) and executor == "processes") or (
        type(executor) is int and executor > 0
    )
    own_ray = None
    if isinstance(executor, str) and executor == "ray":
        from .ray_executor import RayExecutor

        executor = own_ray = RayExecutor()
    if not (make_pool or executor is None or callable(getattr(executor, "submit", None))):
        raise ConfigurationError(
            "executor must be a concurrent.futures.Executor, a Dask Client, a RayExecutor, "
            f"an int, 'processes', 'ray' or None; found {executor!r}"
        )
    before = sweep.status()
    failed_before = 0 if sweep.retry_failed else before.failed
    skipped = before.done + failed_before
    own_pool = None
    if make_pool:
        executor = own_pool = process_pool(executor if type(executor) is int else None)
    client = _dask_client(executor)
    if client is not None and client is executor:
        executor = client.get_executor()
    workers = 1 if executor is None else _worker_count(executor, client)
    bar = tqdm(
        total=before.total,
        initial=skipped,
        desc=sweep.name,
        unit="item",
        disable=not (sys.stderr.isatty() if progress is None else progress),
        dynamic_ncols=True,
        smoothing=0.05,
        postfix={"failed": failed_before} if failed_before else None,
    )
    t0 = time.monotonic()
    run = _Run(sweep, fn, bar, max_failures)
    run.failed_before = failed_before
    graceful = False
    try:
        with _guard_for(sweep) as (run.guard, run.guard_flushes), _sigint_to(run._on_sigint):
            try:
                if executor is None:
                    run.run_inline()
                else:
                    run.run_pool(executor, client, workers, max_in_flight)
                graceful = True
            except (Preempted, KeyboardInterrupt, TooManyFailuresError) as exc:
                # the summary rides to the caller on the exception (none of the three declares it)
                exc.summary = run.summary(skipped, t0, workers)  # type: ignore[union-attr]
                raise
    finally:
        bar.close()
        for fut in run.inflight:
            fut.cancel()  # our own work only: an executor passed in stays the caller's
        if own_pool is not None:
            _close_pool(own_pool, graceful=graceful)
        if own_ray is not None:
            own_ray.shutdown(wait=False)
    summary = run.summary(skipped, t0, workers)
    log.info("run of sweep %r: %s", sweep.name, summary)
    return summary


_RUN_ERROR_HINT = (
    "process pools need fn defined at module level of an importable module, and picklable "
    "items; Dask serialises with cloudpickle but its workers must import what fn uses"
)


def _name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _check_sendable(fn: Callable[..., Any], executor: Any, client: Any) -> None:
    """Refuse, before anything is submitted, a `fn` that a process pool cannot pickle."""
    if client is not None or isinstance(executor, cf.ThreadPoolExecutor):
        return  # Dask pickles with cloudpickle (lambdas travel); threads share memory
    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise RunError(
            f"sweep.run cannot send {_name_of(fn)} to the workers of "
            f"{type(executor).__name__}: {type(exc).__name__}: {exc}. Nothing was run or "
            f"recorded ({_RUN_ERROR_HINT})"
        ) from None


def _is_run_error(exc: BaseException) -> bool:
    """Whether a task failed outside `fn` for a reason of the run: its payload (fn or an item)
    could not be pickled on the way out (the traceback passes through multiprocessing's queue
    feeder), or a worker could not import what it needs (run_batch catches everything `fn`
    raises itself, so an ImportError here is the worker's unpickling). A result that cannot be
    pickled on the way back stays a failure of its item."""
    if isinstance(exc, ImportError):
        return True
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "_feed" and "multiprocessing" in code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _close_pool(pool: cf.ProcessPoolExecutor, *, graceful: bool) -> None:
    """Shut down a pool made here. After an abnormal end the items still running are
    abandoned (their results would be discarded): kill the workers rather than await them."""
    if graceful:
        pool.shutdown(wait=True)
        return
    kill_workers = getattr(pool, "kill_workers", None)  # Python 3.14: shuts down, then kills
    if kill_workers is not None:
        kill_workers()
        return
    # Before 3.14 the library offers no public way to the worker processes: read the pool's
    # private `_processes` (a dict of pid -> Process) to kill them.
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.kill()
