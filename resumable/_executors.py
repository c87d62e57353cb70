"""What `sweep.run` needs to know of an executor, kept apart from the loops that drive one.

A pool made here (`process_pool`: workers that ignore SIGINT, forkserver-started) and shut
down here (`close_pool`, killing the workers after an abnormal end); whether an executor is
Dask's and how many workers it has (`dask_client`, `worker_count`); which Dask tasks are
running rather than queued (`dask_running_keys`); and whether a task's exception is the run's
fault rather than its items' (`check_sendable` before anything is submitted, `is_run_error`
and `INFRA_ERRORS` after): a run's error raises and records nothing, an item's is its failure.
Several of these read an executor's private attributes, for want of a public way; each says so.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import pickle
import sys
import threading
from collections.abc import Callable
from typing import Any

from . import _worker
from ._worker import worker_initializer
from .errors import RunError

INFRA_ERRORS = (cf.BrokenExecutor, cf.CancelledError)  # the executor's fault, not the item's
RUN_ERROR_HINT = (
    "process pools need fn defined at module level of an importable module, and picklable "
    "items; Dask serialises with cloudpickle but its workers must import what fn uses"
)


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


def dask_client(executor: Any) -> Any:
    """The Dask client behind `executor` (a Client or its executor), else None."""
    if type(executor).__module__.split(".")[0] != "distributed":
        return None
    # A ClientExecutor offers no public way to its Client: read the private `_client` (the
    # library's own attribute since Dask 2.x); a Client itself is returned as is.
    return getattr(executor, "_client", executor)


def worker_count(executor: Any, client: Any) -> int:
    if client is not None:
        with contextlib.suppress(Exception):
            return max(1, int(sum(client.nthreads().values())))
    # concurrent.futures executors keep their size private (no public accessor): read
    # `_max_workers` if present, else assume two per CPU
    n = getattr(executor, "_max_workers", None)
    return n if isinstance(n, int) and n > 0 else 2 * (os.cpu_count() or 1)


def dask_executing(dask_worker: Any) -> list[str]:
    """Runs on each Dask worker: keys of the tasks it is executing right now."""
    state = dask_worker.state
    return [str(ts.key) for ts in (*state.executing, *state.long_running)]


def dask_running_keys(client: Any, timeout: float) -> set[str] | None:
    """Keys executing on the workers, or None if unknown. (A Dask future's cancel() succeeds
    even while it runs, so this is how queued tasks are told from running ones.)"""
    out: dict[str, set[str]] = {}

    def query() -> None:
        with contextlib.suppress(Exception):
            per = client.run(dask_executing, on_error="ignore")
            out["keys"] = {k for keys in per.values() if isinstance(keys, list) for k in keys}

    thread = threading.Thread(target=query, daemon=True, name="resumable-dask-query")
    thread.start()
    thread.join(timeout)
    return out.get("keys")


def name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def check_sendable(fn: Callable[..., Any], executor: Any, client: Any) -> None:
    """Refuse, before anything is submitted, a `fn` that a process pool cannot pickle."""
    if client is not None or isinstance(executor, cf.ThreadPoolExecutor):
        return  # Dask pickles with cloudpickle (lambdas travel); threads share memory
    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise RunError(
            f"sweep.run cannot send {name_of(fn)} to the workers of "
            f"{type(executor).__name__}: {type(exc).__name__}: {exc}. Nothing was run or "
            f"recorded ({RUN_ERROR_HINT})"
        ) from None


def is_run_error(exc: BaseException) -> bool:
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


def close_pool(pool: cf.ProcessPoolExecutor, *, graceful: bool) -> None:
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
