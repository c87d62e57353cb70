"""Background work that preemption must wait for (private; no dependencies).

Background snapshot saves register their futures here; `PreemptionGuard` (at its safe point
and in its watchdog) waits for them within the grace period, because each holds a consistent
copy of the state that is worth making durable before the process ends.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from typing import Any

logger = logging.getLogger("resumable.preempt")

_LOCK = threading.Lock()
# Any: only completion matters here, whatever the futures' results are
_pending: dict[Future[Any], str] = {}


def track(fut: Future[Any], what: str) -> None:
    """Register `fut` until it is done."""
    with _LOCK:
        _pending[fut] = what
    fut.add_done_callback(_forget)


def _forget(fut: Future[Any]) -> None:
    with _LOCK:
        _pending.pop(fut, None)


def pending() -> list[str]:
    """What is still in flight (descriptions)."""
    with _LOCK:
        return [what for fut, what in _pending.items() if not fut.done()]


def wait_all(deadline: float) -> list[str]:
    """Wait until everything registered is done or `deadline` (time.monotonic()) passes;
    returns what is still in flight then."""
    with _LOCK:
        futs = list(_pending)
    if futs:
        logger.info("waiting for %d background save(s) to finish", len(futs))
        futures_wait(futs, timeout=max(0.0, deadline - time.monotonic()))
    left = pending()
    if left:
        logger.error("background save(s) still running at the deadline: %s", ", ".join(left))
    return left


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # the parent's saves run on threads the child does not have
    _pending.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
