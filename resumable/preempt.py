"""Preemption: turn SIGTERM (or a spot-interruption notice) into a clean, resumable exit.

A preempted job gets a signal and a short grace period before it is killed (Kubernetes: 30 s by
default; GKE spot pods about 15 s; SLURM `--signal` / GraceTime). `PreemptionGuard` installs
signal handlers that only *raise a flag* (and note the signal and the monotonic time): no I/O
and no locks run inside a handler. The program polls the flag at its own *safe points* (between
steps, where its state is consistent); there the guard runs its hooks (typically: save a
snapshot), runs its flush callables, and raises `Preempted`, a `SystemExit` with code 75
(EX_TEMPFAIL), so that the job spec can tell "preempted, requeue me" (75, or 143/137 from a
signal) from a failure.

Grace deadline and watchdog
    The first preemption request starts a deadline `grace_s` seconds away (default 25 s, below
    Kubernetes' 30 s; parameter, else env `RESUMABLE_GRACE_S`). A watchdog thread watches it.
    The guard also registers a wake-up fd (`signal.set_wakeup_fd`), so the watchdog learns of
    the signal at once even while the main thread is stuck inside a long C call that delays
    Python-level handlers. If no safe point is reached by ``deadline - flush_reserve_s``, the
    watchdog runs the *flush* callables (given the seconds left) in a helper thread and ends the
    process with ``os._exit(exit_code)`` no later than the deadline. It never runs the snapshot
    hooks: the main thread may be half-way through mutating the arrays, so a snapshot then could
    be inconsistent; the last good snapshot stays intact because saves are atomic. If the main
    thread did reach a safe point but its hooks are still running at the deadline, the watchdog
    ends the process at the deadline too, without running the flushes (the main thread owns
    them then, and may be inside one); the save in progress is discarded atomically, leaving at
    most a stray temp file beside the snapshot. ``os._exit`` skips ``finally`` blocks and
    atexit handlers. A C extension that holds the
    GIL for the whole grace period blocks the watchdog as well; then only the platform's SIGKILL
    ends the process (exit 137), still with the last good snapshot intact.

Background saves
    Background snapshot saves (`save_state_with_manifest(..., background=True)`) hold a
    consistent copy of the state; at the safe point the guard waits for those in flight after
    its hooks and before its flushes (until ``deadline - flush_reserve_s``), and the watchdog
    waits for them too (for half the time it has left) before its flushes. A save still
    running when the process ends is discarded atomically.

Hook errors
    Each hook runs once, in order. An exception in a hook is logged with its traceback and the
    remaining hooks and all flushes still run; the exit code stays 75 and the errors ride on
    `Preempted.hook_errors`. Rationale: a failed save is atomic, so durable storage still holds
    the previous consistent snapshot; "requeue and resume from the last good state" is exactly
    what 75 asks for, whereas a failure code would count a preemption against the job's retry
    budget. Hooks whose turn comes after the deadline has passed are skipped (logged).

Signals after the work is done
    If the guarded block finishes normally while a request is pending (the signal came after
    the last safe point), the work is complete: the guard logs it, restores the handlers and
    lets the program finish with its normal exit status. `guard.preempted` stays True for
    callers who want to know. A second signal during shutdown only bumps a counter. Once the
    guard has exited, signals get their previous disposition again (by default SIGTERM ends the
    process with 143, which job specs also read as "preempted"): guard the whole of the work,
    final output included.

Nesting
    Guards nest (with-blocks, LIFO). A signal raises the flag of every active guard that listens
    to it; the watchdog runs the flush callables of all active guards, innermost first.

Spot notices
    `AwsSpotWatcher`, `GcpPreemptionWatcher` and `AzureScheduledEventsWatcher` (in `_spot`,
    re-exported here) poll the cloud's metadata endpoint while the guard is active and call
    `guard.request(reason)` when an interruption notice appears, usually well before SIGTERM.

For engines: `current_guard()` returns the innermost active guard; poll `guard.preempted` at
your own safe points and call `guard.exit()` there (it runs the hooks and flushes and raises
`Preempted`, also from inside a generator). `add_hook` / `add_flush` register more work.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

from . import _inflight, _signals
from ._spot import AwsSpotWatcher, AzureScheduledEventsWatcher, GcpPreemptionWatcher, SpotWatcher
from .errors import ConfigurationError

__all__ = [
    "DEFAULT_GRACE_S",
    "GRACE_ENV",
    "PREEMPTED_EXIT_CODE",
    "PREEMPTION_EXIT_CODES",
    "AwsSpotWatcher",
    "AzureScheduledEventsWatcher",
    "GcpPreemptionWatcher",
    "Preempted",
    "PreemptionGuard",
    "SpotWatcher",
    "current_guard",
    "make_preempt_snapshot_hook",
    "resolve_grace_s",
    "resume_from_url",
]

logger = logging.getLogger("resumable.preempt")

PREEMPTED_EXIT_CODE = 75
"""EX_TEMPFAIL: "preempted, please requeue"."""
PREEMPTION_EXIT_CODES = frozenset({PREEMPTED_EXIT_CODE, 128 + 15, 128 + 9})
"""Exit codes a job spec should treat as preemption: 75, 143 (SIGTERM), 137 (SIGKILL)."""
DEFAULT_GRACE_S = 25.0
GRACE_ENV = "RESUMABLE_GRACE_S"
_MAX_FLUSH_RESERVE_S = 5.0
_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


class Preempted(SystemExit):
    """Raised at a safe point once preemption was requested; exits with `code` (75 by default)."""

    def __init__(
        self,
        reason: str,
        *,
        signum: int | None = None,
        code: int = PREEMPTED_EXIT_CODE,
        hook_errors: Iterable[BaseException] = (),
    ) -> None:
        super().__init__(code)
        self.reason = reason
        self.signum = signum
        self.hook_errors = tuple(hook_errors)

    def __str__(self) -> str:
        return f"preempted ({self.reason}); exit code {self.code}"


def resolve_grace_s(
    grace_s: float | None = None, environ: Mapping[str, str] | None = None
) -> float:
    """The grace period: `grace_s` if given, else env `RESUMABLE_GRACE_S`, else 25 s."""
    if grace_s is not None:
        value, source = grace_s, "grace_s"
    else:
        raw = (os.environ if environ is None else environ).get(GRACE_ENV, "").strip()
        if not raw:
            return DEFAULT_GRACE_S
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(
                f"{GRACE_ENV}={raw!r} is not a number of seconds (e.g. {GRACE_ENV}=25)"
            ) from None
        source = f"{GRACE_ENV}={raw!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{source}: grace period must be a number, found {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{source}: grace period must be a positive finite number")
    return float(value)


@dataclass(frozen=True)
class _Trigger:
    """The first preemption request of a guard (assigned in one step, so handler-safe)."""

    reason: str | None  # None for signals: the name is computed outside the handler
    signum: int | None
    t: float  # time.monotonic() when it arrived


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _takes_remaining(fn: Callable[..., object]) -> bool:
    """Whether a flush callable takes the remaining seconds (one positional arg) or nothing."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL):
            return True
    return False


def current_guard() -> PreemptionGuard | None:
    """The innermost active guard of this process, or None."""
    guards = _signals.active()
    return guards[-1] if guards else None


class PreemptionGuard:
    """Catch preemption signals, and exit cleanly (hooks, flushes, code 75) at a safe point.

    ``PreemptionGuard(*hooks, flush=[...], signals=(SIGTERM,), grace_s=None, watchers=[...],
    exit_code=75, flush_reserve_s=None)``

    - `hooks`: zero-argument callables run once, in order, at the safe point after a request
      (e.g. `make_preempt_snapshot_hook(...)`).
    - `flush`: callables run after the hooks, and by the watchdog when no safe point comes in
      time; each gets the seconds left before the deadline, or no argument if it takes none.
    - `grace_s`: seconds from the first request to the end of the process (see module doc).
    - `flush_reserve_s`: how long before the deadline the watchdog starts the flushes
      (default ``min(5, grace_s / 5)``).
    - `watchers`: `SpotWatcher` objects polled in background threads while the guard is active.

    Use it as a context manager from the main thread; poll `checkpoint_if_preempted()` (or
    `preempted` + `exit()`) at safe points.
    """

    def __init__(
        self,
        *hooks: Callable[[], object],
        flush: Iterable[Callable[..., object]] = (),
        signals: Iterable[int] = (signal.SIGTERM,),
        grace_s: float | None = None,
        watchers: Iterable[SpotWatcher] = (),
        exit_code: int = PREEMPTED_EXIT_CODE,
        flush_reserve_s: float | None = None,
    ) -> None:
        for hook in hooks:
            if not callable(hook):
                raise ConfigurationError(f"hook {hook!r} is not callable")
        self._hooks: list[Callable[[], object]] = list(hooks)
        self._flushes: list[tuple[Callable[..., object], bool]] = []
        for fn in flush:
            self.add_flush(fn)
        try:
            self._signals = frozenset(signal.Signals(s) for s in signals)
        except ValueError as exc:
            raise ConfigurationError(f"not a signal: {exc}") from None
        if not self._signals or self._signals & _UNCATCHABLE:
            raise ConfigurationError(
                "PreemptionGuard needs at least one catchable signal (not SIGKILL or SIGSTOP)"
            )
        self._grace_s = resolve_grace_s(grace_s)
        if flush_reserve_s is None:
            flush_reserve_s = min(_MAX_FLUSH_RESERVE_S, self._grace_s / 5)
        if not (0 <= flush_reserve_s <= self._grace_s):
            raise ConfigurationError(
                f"flush_reserve_s must be between 0 and grace_s ({self._grace_s}), "
                f"found {flush_reserve_s!r}"
            )
        self._flush_reserve_s = float(flush_reserve_s)
        self._watchers = list(watchers)
        if isinstance(exit_code, bool) or not isinstance(exit_code, int):
            raise ConfigurationError(f"exit_code must be an int, found {exit_code!r}")
        self._exit_code = exit_code
        self._trigger: _Trigger | None = None
        self._signals_seen = 0
        self._prev_handlers: dict[int, Any] = {}
        self._phase = "new"  # new -> active -> (shutdown | watchdog) -> closed
        self._hooks_ran = False
        self._hook_errors: list[BaseException] = []

    # --- state ---------------------------------------------------------------------------
    @property
    def grace_s(self) -> float:
        """Seconds from the first preemption request to the end of the process."""
        return self._grace_s

    @property
    def flush_reserve_s(self) -> float:
        """How long before the deadline the watchdog starts the flushes (when no safe point)."""
        return self._flush_reserve_s

    @property
    def preempted(self) -> bool:
        """Whether preemption was requested (by a signal, a watcher or `request()`)."""
        return self._trigger is not None

    @property
    def reason(self) -> str | None:
        """Why preemption was requested (e.g. ``"SIGTERM"``), or None."""
        trig = self._trigger
        if trig is None:
            return None
        if trig.reason is not None:
            return trig.reason
        return _signal_name(trig.signum) if trig.signum is not None else "requested"

    @property
    def signum(self) -> int | None:
        """The signal that requested preemption, if one did."""
        trig = self._trigger
        return None if trig is None else trig.signum

    @property
    def deadline(self) -> float | None:
        """`time.monotonic()` value by which the process will have ended, or None."""
        return None if self._trigger is None else self._deadline_of()

    def remaining_s(self) -> float:
        """Seconds left before the deadline (`inf` while no preemption was requested)."""
        if self._trigger is None:
            return math.inf
        return self._deadline_of() - time.monotonic()

    def _deadline_of(self) -> float:
        trig = self._trigger
        return math.inf if trig is None else trig.t + self._grace_s

    def _note(
        self, reason: str | None, signum: int | None, now: float, *, handler: bool = False
    ) -> None:
        # Runs inside signal handlers too: attribute assignments only. The watchdog also notes
        # signals (from the wake-up fd) but only the handler counts them, so none counts twice.
        if self._trigger is None:
            self._trigger = _Trigger(reason, signum, now)
        if handler:
            self._signals_seen += 1

    @property
    def late_signals(self) -> int:
        """Signals that arrived after the first request (ignored, apart from this count)."""
        trig = self._trigger
        first = 1 if trig is not None and trig.signum is not None else 0
        return max(0, self._signals_seen - first)

    # --- registration --------------------------------------------------------------------
    def add_hook(self, hook: Callable[[], object]) -> None:
        """Append a hook (run once at the preemption safe point)."""
        if not callable(hook):
            raise ConfigurationError(f"hook {hook!r} is not callable")
        self._hooks.append(hook)

    def add_flush(self, fn: Callable[..., object]) -> None:
        """Append a flush callable: ``fn(remaining_s)`` or ``fn()``."""
        if not callable(fn):
            raise ConfigurationError(f"flush callable {fn!r} is not callable")
        self._flushes.append((fn, _takes_remaining(fn)))

    # --- requests and safe points ----------------------------------------------------------
    def request(self, reason: str) -> None:
        """Raise the flag from code (spot watchers, schedulers); any thread may call it."""
        self._note(str(reason), None, time.monotonic())
        _signals.poke()

    def checkpoint_if_preempted(self) -> None:
        """A safe point: if preemption was requested, run hooks and flushes and raise Preempted."""
        if self._trigger is not None:
            self.exit()

    def exit(self, reason: str | None = None) -> NoReturn:
        """Run the hooks (once) and flushes, then raise `Preempted`; call at a safe point.

        Without a pending request this requests preemption first (with `reason`).
        """
        if self._trigger is None:
            self.request(reason or "exit requested")
        if not _signals.begin_shutdown(self):
            self._wait_for_watchdog()
        late = self.late_signals
        extra = f" (+{late} later signal(s) ignored)" if late else ""
        if not self._hooks_ran:
            self._hooks_ran = True
            logger.warning(
                "preemption requested (%s)%s; at a safe point with %.1f s left: running %d "
                "hook(s) and %d flush(es), then exiting %d",
                self.reason,
                extra,
                self.remaining_s(),
                len(self._hooks),
                len(self._flushes),
                self._exit_code,
            )
            self._run_hooks()
            self._wait_for_saves()
            self._run_flushes(self._deadline_of())
            if self.late_signals > late:
                logger.info(
                    "%d more signal(s) arrived during shutdown; ignored", self.late_signals - late
                )
        exc = Preempted(
            self.reason or "requested",
            signum=self.signum,
            code=self._exit_code,
            hook_errors=self._hook_errors,
        )
        if self._hook_errors:
            raise exc from self._hook_errors[0]
        raise exc

    def _run_hooks(self) -> None:
        for hook in self._hooks:
            if self.remaining_s() <= 0:
                logger.error("grace period exhausted; skipping preemption hook %r", hook)
                continue
            try:
                hook()
            except Exception as exc:
                self._hook_errors.append(exc)
                logger.exception(
                    "preemption hook %r failed; the previous snapshot stays the latest, the "
                    "remaining hooks still run and the exit code stays %d",
                    hook,
                    self._exit_code,
                )

    def _wait_for_saves(self) -> None:
        """Let background snapshot saves in flight finish, leaving the flushes their reserve."""
        if _inflight.pending():
            _inflight.wait_all(self._deadline_of() - self._flush_reserve_s)

    def _run_flushes(self, hard: float) -> None:
        for fn, takes_remaining in self._flushes:
            left = hard - time.monotonic()
            if left <= 0:
                logger.error("grace period exhausted; skipping flush %r", fn)
                continue
            try:
                fn(left) if takes_remaining else fn()
            except Exception:
                logger.exception("preemption flush %r failed", fn)

    def _wait_for_watchdog(self) -> NoReturn:
        # The watchdog already decided to end the process and is flushing: do nothing more.
        backstop = self._deadline_of() + 1.0
        while time.monotonic() < backstop:
            time.sleep(0.05)
        os._exit(self._exit_code)  # pragma: no cover - the watchdog exits first

    # --- context manager -----------------------------------------------------------------
    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            raise ConfigurationError(
                "PreemptionGuard must be entered in the main thread: Python installs signal "
                "handlers only there. Enter it in the main thread and poll `guard.preempted` "
                "(or `current_guard()`) from worker threads."
            )
        if self._phase != "new":
            raise ConfigurationError("a PreemptionGuard can be entered only once")
        _signals.push(self)  # before the handlers: a signal in between must find this guard
        for signum in self._signals:
            self._prev_handlers[signum] = signal.signal(signum, _signals.on_signal)
        for watcher in self._watchers:
            watcher.start(self)
        logger.debug(
            "preemption guard active: signals=%s grace=%.1fs hooks=%d flushes=%d watchers=%d",
            ",".join(sorted(_signal_name(s) for s in self._signals)),
            self._grace_s,
            len(self._hooks),
            len(self._flushes),
            len(self._watchers),
        )
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if not _signals.pop(self):
            self._wait_for_watchdog()
        for watcher in self._watchers:
            watcher.stop()
        for signum in reversed(list(self._prev_handlers)):
            prev = self._prev_handlers[signum]
            signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
        _signals.stop_if_idle()
        if exc_type is None and self._trigger is not None:
            logger.warning(
                "preemption requested (%s) after the last safe point; the work is complete, "
                "finishing normally",
                self.reason,
            )


# --- snapshot glue ---------------------------------------------------------------------------

Extra = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None
# What a snapshot holds: nested mappings, lists and tuples of arrays (numpy, torch, JAX, ...), or
# an object with state_dict(); no static type covers that (see resumable.snapshot).
Graph: TypeAlias = Any


class _SnapshotHook:
    """Zero-argument callable saving one snapshot per call (see make_preempt_snapshot_hook)."""

    def __init__(
        self,
        graph: Graph,
        url: str,
        extra: Extra,
        storage_options: Mapping[str, Any] | None,
        keep: int | None,
    ) -> None:
        from .snapshot import display_url

        self.graph = graph
        self.url = url
        self.extra = extra
        self.storage_options = storage_options
        self.keep = keep
        self.saves = 0
        self._display = display_url(url)

    def __call__(self) -> None:
        from .snapshot import save_state_with_manifest

        extra = self.extra() if callable(self.extra) else self.extra
        t0 = time.monotonic()
        report = save_state_with_manifest(
            self.graph,
            self.url,
            extra=extra,
            storage_options=self.storage_options,
            keep=self.keep,
        )
        self.saves += 1
        logger.info(
            "snapshot saved to %s (%d arrays, %.1f MB) in %.2f s",
            self._display,
            len(report.arrays),
            report.array_bytes / 1e6,
            time.monotonic() - t0,
        )

    def __repr__(self) -> str:
        return f"<snapshot hook -> {self._display}>"


def make_preempt_snapshot_hook(
    graph: Graph,
    url: str,
    extra: Extra = None,
    storage_options: Mapping[str, Any] | None = None,
    keep: int | None = None,
) -> Callable[[], None]:
    """A zero-argument callable that saves one snapshot of `graph` to `url` per call.

    `extra` is a JSON dict, or a callable returning one evaluated at each save (so it can report
    the current step). The same hook serves as the guard's preemption hook and for periodic
    snapshots; exiting is the guard's job. A background save to the same `url` still in flight
    is waited for first (one save per target at a time), so the newest state always wins.
    """
    if extra is not None and not callable(extra) and not isinstance(extra, Mapping):
        raise ConfigurationError("extra must be None, a mapping, or a callable returning one")
    return _SnapshotHook(graph, url, extra, storage_options, keep)


def resume_from_url(
    graph: Graph,
    url: str | None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Load `graph` from the snapshot at `url` and return its `extra`; None for a fresh start.

    None or "" means no resume source; a source that does not exist is a fresh start too (both
    logged). An unreachable source raises `SourceUnreachableError` and a damaged or mismatched
    snapshot raises: neither is ever taken for a fresh start.
    """
    from .errors import ObjectNotFoundError
    from .snapshot import display_url, download_and_load_state

    if not url:
        logger.info("no resume source given: starting fresh")
        return None
    try:
        extra = download_and_load_state(graph, url, storage_options=storage_options)
    except ObjectNotFoundError:
        logger.warning("resume source %s does not exist: starting fresh", display_url(url))
        return None
    logger.info("resumed from %s (extra=%s)", display_url(url), extra)
    return extra
