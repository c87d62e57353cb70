"""Process-wide preemption plumbing behind `preempt.PreemptionGuard` (private).

One signal handler (`on_signal`), the stack of active guards, and one watchdog thread per
process. The handler only assigns attributes: no I/O, no locks. The watchdog owns the signal
wake-up fd (`signal.set_wakeup_fd`): the C-level handler writes the signal number there at once,
so the watchdog starts the grace deadline even while the main thread sits in a long C call
that keeps the Python-level handler from running. `LOCK` orders the phase changes between the
main thread (safe point reached: "shutdown") and the watchdog (deadline reached: "watchdog");
it is never taken inside a signal handler.

The plumbing talks to a guard only through the public names of the `Guard` protocol
(`PreemptionGuard` provides them); it never imports the guard's module at run time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import NoReturn, Protocol

from .. import _inflight

logger = logging.getLogger(__name__)

IDLE_POLL_S = 0.25
LOCK = threading.Lock()


class Guard(Protocol):
    """What the plumbing needs of a guard."""

    phase: str  # new -> active -> (shutdown | watchdog) -> closed; changed under LOCK

    @property
    def signals(self) -> frozenset[int]: ...  # the signal numbers it listens to

    @property
    def preempted(self) -> bool: ...  # requested (a deadline runs)

    @property
    def deadline(self) -> float | None: ...  # monotonic time the process ends by, once requested

    @property
    def flush_reserve_s(self) -> float: ...  # the watchdog flushes this long before `deadline`

    @property
    def exit_code(self) -> int: ...

    def note_request(
        self, reason: str | None, signum: int | None, now: float, *, handler: bool = False
    ) -> None: ...  # inside a signal handler too: attribute assignments only

    def run_flushes(self, hard: float) -> None: ...


def _deadline(guard: Guard) -> float:
    """The deadline of a guard known to be preempted (a request is never withdrawn)."""
    deadline = guard.deadline
    assert deadline is not None
    return deadline


_active: tuple[Guard, ...] = ()  # outermost first; replaced whole, never mutated
_monitor: _Monitor | None = None


def active() -> tuple[Guard, ...]:
    """The active guards, outermost first."""
    return _active


def on_signal(signum: int, frame: object) -> None:
    """The installed handler: raise the flag of each active guard listening to `signum`."""
    now = time.monotonic()
    for guard in _active:
        if signum in guard.signals:
            guard.note_request(None, signum, now, handler=True)


def push(guard: Guard) -> None:
    """Make `guard` the innermost active guard (starting the watchdog if needed)."""
    global _active, _monitor
    with LOCK:
        _active = (*_active, guard)
        guard.phase = "active"
        start = _monitor is None
        if start:
            _monitor = _Monitor()
    if start and _monitor is not None:
        _monitor.start()


def pop(guard: Guard) -> bool:
    """Deactivate `guard`; False (and nothing changed) if the watchdog already fired for it."""
    global _active
    with LOCK:
        if guard.phase == "watchdog":
            return False
        guard.phase = "closed"
        _active = tuple(g for g in _active if g is not guard)
    return True


def stop_if_idle() -> None:
    """Stop the watchdog once no guard is active."""
    global _monitor
    monitor = None
    with LOCK:
        if not _active and _monitor is not None:
            monitor, _monitor = _monitor, None
    if monitor is not None:
        monitor.stop()


def begin_shutdown(guard: Guard) -> bool:
    """The main thread reached a safe point; False if the watchdog already took over."""
    with LOCK:
        if guard.phase == "watchdog":
            return False
        if guard.phase != "closed":
            guard.phase = "shutdown"
    return True


def poke() -> None:
    """Wake the watchdog (after `request()` from a thread)."""
    monitor = _monitor
    if monitor is not None:
        monitor.poke()


class _Monitor:
    """The watchdog thread: learns of signals via the wake-up fd and enforces deadlines."""

    def __init__(self) -> None:
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._owns_wakeup = False
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="resumable-preempt-watchdog", daemon=True
        )

    def start(self) -> None:
        try:
            prev = signal.set_wakeup_fd(self._wsock.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError) as exc:  # pragma: no cover - main thread checked before
            logger.debug("cannot set the signal wake-up fd: %s", exc)
        else:
            if prev != -1:
                # Someone else (an asyncio loop, say) owns the wake-up fd: leave it to them and
                # rely on the flag raised by the Python-level handler.
                signal.set_wakeup_fd(prev)
                logger.debug("signal wake-up fd %d already in use; watchdog polls the flag", prev)
            else:
                self._owns_wakeup = True
        self._thread.start()

    def poke(self) -> None:
        """Wake the thread (a 0 byte is never a signal number)."""
        with contextlib.suppress(OSError):
            self._wsock.send(b"\0")

    def stop(self) -> None:
        if self._owns_wakeup:
            with contextlib.suppress(ValueError, OSError):
                signal.set_wakeup_fd(-1)
        self._stopping = True
        self.poke()
        self._thread.join(timeout=2.0)
        self._rsock.close()
        self._wsock.close()

    def _drain(self, timeout: float) -> None:
        """Wait up to `timeout` for wake-up bytes; note the signals among them."""
        try:
            ready, _, _ = select.select([self._rsock], [], [], max(0.0, timeout))
        except (OSError, ValueError):
            time.sleep(min(timeout, IDLE_POLL_S))
            return
        if not ready:
            return
        try:
            data = self._rsock.recv(4096)
        except OSError:
            return
        now = time.monotonic()
        for signum in set(data) - {0}:
            for guard in _active:
                if signum in guard.signals:
                    guard.note_request(None, signum, now)  # the handler, when it runs, counts it

    def _run(self) -> None:
        while not self._stopping:
            triggered = [g for g in _active if g.preempted]
            if not triggered:
                self._drain(IDLE_POLL_S)
                continue
            first = min(triggered, key=_deadline)
            hard = _deadline(first)
            fire_at = min(_deadline(g) - g.flush_reserve_s for g in triggered)
            now = time.monotonic()
            if now < fire_at:
                self._drain(min(fire_at - now, IDLE_POLL_S))
                continue
            with LOCK:
                if self._stopping:
                    return
                guards = _active
                shutting_down = any(g.phase == "shutdown" for g in guards)
                if not shutting_down:
                    for g in guards:
                        g.phase = "watchdog"
            if not shutting_down:
                _watchdog_exit(guards, hard, first.exit_code)
            # The main thread reached a safe point and runs its hooks: it gets until the hard
            # deadline, then the process ends (a save still in progress is discarded whole).
            if now < hard:
                self._drain(min(hard - now, IDLE_POLL_S))
            elif any(g.phase == "shutdown" for g in _active):
                os._exit(first.exit_code)  # no logging here: a stuck handler could block it


def _watchdog_exit(guards: tuple[Guard, ...], hard: float, code: int) -> NoReturn:
    """Run every active guard's flushes (innermost first) within the deadline, then exit."""

    def run() -> None:
        logger.error(
            "preemption grace deadline nearly over and no safe point was reached; running flush "
            "callables (%.2f s left; no snapshot hooks: the state may be mid-update) and "
            "exiting %d",
            hard - time.monotonic(),
            code,
        )
        if _inflight.pending():  # consistent copies being written: worth finishing
            _inflight.wait_all(time.monotonic() + (hard - time.monotonic()) / 2)
        for guard in reversed(guards):
            guard.run_flushes(hard)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

    helper = threading.Thread(target=run, name="resumable-preempt-flush", daemon=True)
    helper.start()
    helper.join(timeout=max(0.0, hard - time.monotonic()))
    os._exit(code)
