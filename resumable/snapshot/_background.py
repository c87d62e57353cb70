"""Background snapshot saves: one save per target at a time, tracked for preemption.

A background save runs in two parts: `prepare` (the consistent in-memory copy) on the calling
thread, then `work` (write, hash, durability) on a helper thread, returning a
`concurrent.futures.Future`. Each target (a resolved local path or object URL) has one lock: a
save, foreground or background, first waits for the previous save to the same target, so at
most one is in flight per target and history rotation never races itself. The helper threads
are not daemons: a normal interpreter exit waits for a save in flight; a preempted process
waits for it within the grace period (`resumable._inflight`); an ``os._exit`` or SIGKILL
discards it atomically (the previous snapshot stays the latest).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from .. import _inflight

T = TypeVar("T")

_LOCK = threading.Lock()
_targets: dict[str, threading.Lock] = {}
_pool: ThreadPoolExecutor | None = None


def _lock_of(key: str) -> threading.Lock:
    with _LOCK:
        lock = _targets.get(key)
        if lock is None:
            lock = _targets[key] = threading.Lock()
        return lock


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _LOCK:
        if _pool is None:
            _pool = ThreadPoolExecutor(4, thread_name_prefix="resumable-snapshot-save")
        return _pool


@contextlib.contextmanager
def target_lock(key: str) -> Iterator[None]:
    """Hold the target's lock for a foreground save (waiting for one in flight)."""
    lock = _lock_of(key)
    with lock:
        yield


def submit(key: str, prepare: Callable[[], None], work: Callable[[], T], what: str) -> Future[T]:
    """Wait for the target's previous save, run `prepare` here, then `work` in the background."""
    lock = _lock_of(key)
    lock.acquire()
    try:
        prepare()
        outer: Future[T] = Future()
        outer.set_running_or_notify_cancel()
        _inflight.track(outer, what)

        def run() -> None:
            try:
                result = work()
            except BaseException as exc:
                lock.release()
                outer.set_exception(exc)
            else:
                lock.release()
                outer.set_result(result)

        _executor().submit(run)
    except BaseException:
        lock.release()
        raise
    return outer


def _after_fork_in_child() -> None:
    global _pool
    _pool = None  # the parent's threads do not exist in the child
    _targets.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
