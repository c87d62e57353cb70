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

Here: the checks of `run`'s arguments, the guard and SIGINT handler of the run, and the choice
of loop. Below it: `_run_record` (recording, the failure policy, the summary), `_run_inline`
(the in-process loop), `_run_pool` (batching, the submission window, the drain), `_executors`
(making, sizing and closing pools; a run's errors told from an item's).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from ._executors import close_pool, dask_client, worker_count
from ._executors import process_pool as process_pool  # re-exported (public)
from ._run_inline import InlineRun
from ._run_pool import PoolRun
from ._run_record import DEFAULT_MIN_FAILURES as DEFAULT_MIN_FAILURES  # re-exported
from ._run_record import RemoteTraceback as RemoteTraceback  # re-exported
from ._run_record import RunSummary as RunSummary  # re-exported (public)
from ._worker import run_batch as run_batch  # re-exported: the task sent to the workers
from ._worker import worker_initializer as worker_initializer  # re-exported (public)
from .errors import ConfigurationError, TooManyFailuresError
from .preempt import Preempted, PreemptionGuard

if TYPE_CHECKING:
    from .sweep import ResumableSweep

log = logging.getLogger(__name__)


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
    client = dask_client(executor)
    if client is not None and client is executor:
        executor = client.get_executor()
    workers = 1 if executor is None else worker_count(executor, client)
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
    run = (InlineRun if executor is None else PoolRun)(sweep, fn, bar, max_failures)
    run.failed_before = failed_before
    graceful = False
    try:
        with _guard_for(sweep) as (run.guard, run.guard_flushes), _sigint_to(run.on_sigint):
            try:
                if isinstance(run, InlineRun):
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
            close_pool(own_pool, graceful=graceful)
        if own_ray is not None:
            own_ray.shutdown(wait=False)
    summary = run.summary(skipped, t0, workers)
    log.info("run of sweep %r: %s", sweep.name, summary)
    return summary
