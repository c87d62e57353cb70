"""Preemption: turn SIGTERM (or a spot-interruption notice) into a clean, resumable exit.

Usable without sweeps. `PreemptionGuard`, `Preempted` and the exit codes live in `_guard` (whose
docstring tells the whole story: safe points, grace deadline, watchdog, nesting), the signal
plumbing in `_signals`, the cloud spot-notice watchers in `_spot`.

`make_preempt_snapshot_hook` and `resume_from_url` live with the snapshot code
(`resumable.snapshot`); they are re-exported here lazily because this is where they were taught,
so ``import resumable.preempt`` loads neither the snapshot code nor numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._guard import (
    DEFAULT_GRACE_S,
    GRACE_ENV,
    PREEMPTED_EXIT_CODE,
    PREEMPTION_EXIT_CODES,
    AwsSpotWatcher,
    AzureScheduledEventsWatcher,
    GcpPreemptionWatcher,
    Preempted,
    PreemptionGuard,
    SpotWatcher,
    current_guard,
    resolve_grace_s,
)

if TYPE_CHECKING:
    from ..snapshot._hooks import make_preempt_snapshot_hook, resume_from_url

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

_FROM_SNAPSHOT = frozenset({"make_preempt_snapshot_hook", "resume_from_url"})


def __getattr__(name: str) -> Any:
    """Load the snapshot hooks on first use (PEP 562)."""
    if name in _FROM_SNAPSHOT:
        value = getattr(importlib.import_module("resumable.snapshot._hooks"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names and the loaded submodules."""
    return sorted(set(globals()) | set(__all__))
