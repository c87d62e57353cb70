"""Preemption: turn SIGTERM (or a spot-interruption notice) into a clean, resumable exit.

`PreemptionGuard` and its exit codes live in `_guard` (whose docstring tells the whole story),
the signal plumbing in `_signals`, the cloud spot-notice watchers in `_spot`.
"""

from __future__ import annotations

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
    make_preempt_snapshot_hook,
    resolve_grace_s,
    resume_from_url,
)

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
