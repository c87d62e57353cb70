"""How a sweep's launch ends without its own close: flushed at preemption, closed at
interpreter exit when left open.

At preemption the guard (preempt.py) runs `ResumableSweep.flush_on_preemption`, which hands
the sweep's items in flight and mirror to `flush_at_preemption` here; a sweep never closed is
closed by `left_open.close_all` at interpreter exit (atexit). Neither raises: the local
checkpoint already has every acknowledged record, so what cannot be done is a log line.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ._mirror import Mirror, MirrorOptions
from .errors import ResumableError
from .preempt import Preempted, PreemptionGuard

log = logging.getLogger("resumable.sweep")  # (these lines were sweep.py's: same logger)


class Closable(Protocol):
    """What `OpenSweeps` asks of a sweep (public names)."""

    name: str
    progress_dir: Path
    mirror_options: MirrorOptions

    def close(self, timeout: float | None = None) -> None: ...


def exit_guarded(
    close: Callable[..., None],
    name: str,
    guard: PreemptionGuard | None,
    exc_type: Any,
    exc: BaseException | None,
    tb: Any,
) -> None:
    """Leave a sweep's with-block: `close` it, then exit its own `guard` (None: it installed
    none). Preempted, the close has what time the guard has left, and failing is a log line:
    the local checkpoint has everything; the mirror gets what time allows."""
    try:
        if isinstance(exc, Preempted) and guard is not None:
            try:  # the local checkpoint has everything; the mirror gets what time allows
                close(timeout=max(0.1, guard.remaining_s() - 0.5))
            except ResumableError as err:
                log.error("closing the preempted sweep %r: %s", name, err)
        else:
            close()
    finally:
        if guard is not None:
            guard.__exit__(exc_type, exc, tb)


def flush_at_preemption(
    in_flight: list[str],
    snapshots: Callable[[], Any],
    mirror: Mirror | None,
    name: str,
    progress_dir: Path,
    remaining_s: float,
) -> None:
    """Note the items in flight (their keys) as interrupted in the item snapshots (made by
    `snapshots` if need be) and bring the `mirror` up to date within `remaining_s` seconds;
    what fails is logged."""
    if in_flight:
        try:
            snapshots().note_preempted(in_flight)
        except ResumableError as exc:
            log.warning("could not note the items in flight at preemption: %s", exc)
    if mirror is None:
        return
    try:
        mirror.flush(timeout=max(0.1, remaining_s - 0.5))
    except ResumableError as exc:
        log.warning(
            "preemption: the mirror of sweep %r is not up to date (%s: %s); every record "
            "is in the local checkpoint %s",
            name,
            type(exc).__name__,
            exc,
            progress_dir,
        )


class OpenSweeps:
    """Sweeps opened by this process and not closed yet, closed at interpreter exit.

    A finished sweep left without `with` or close() would otherwise exit with its mirror
    behind (the mirror thread is a daemon), and a new machine would redo what it lacks.
    Strong references: a sweep dropped unclosed is still closed at exit. A forked child
    inherits the parent's set and leaves it alone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sweeps: dict[int, tuple[int, Closable]] = {}

    def add(self, sweep: Closable) -> None:
        with self._lock:
            self._sweeps[id(sweep)] = (os.getpid(), sweep)

    def discard(self, sweep: Closable) -> None:
        with self._lock:
            self._sweeps.pop(id(sweep), None)

    def close_all(self) -> None:
        with self._lock:
            mine = [s for pid, s in self._sweeps.values() if pid == os.getpid()]
        # one budget for all: the longest flush timeout among them (not one each, in turn)
        budget = max((s.mirror_options.flush_timeout_s for s in mine), default=0.0)
        deadline = time.monotonic() + budget
        for sweep in mine:
            try:
                sweep.close(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                log.warning(
                    "sweep %r was left open and could not be closed at exit (%s: %s); every "
                    "record is in its local checkpoint %s",
                    sweep.name,
                    type(exc).__name__,
                    exc,
                    sweep.progress_dir,
                )


left_open = OpenSweeps()
atexit.register(left_open.close_all)
