"""Snapshot hooks for preemption, and resuming a graph from a URL.

`make_preempt_snapshot_hook` builds the zero-argument callable a `PreemptionGuard` runs at a safe
point (or a loop calls periodically); `resume_from_url` is its counterpart at start-up. They live
beside the snapshot code, not in `preempt`, so that the guard knows nothing of snapshots (it only
waits for background saves through `_inflight`) and `import resumable.preempt` stays light.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigurationError, ObjectNotFoundError
from ._load import download_and_load_state
from ._location import display_url
from ._save import save_state_with_manifest

logger = logging.getLogger(__name__)

Extra = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None


class _SnapshotHook:
    """Zero-argument callable saving one snapshot per call (see make_preempt_snapshot_hook)."""

    def __init__(
        self,
        graph: Any,
        url: str,
        extra: Extra,
        storage_options: Mapping[str, Any] | None,
        keep: int | None,
    ) -> None:
        self.graph = graph
        self.url = url
        self.extra = extra
        self.storage_options = storage_options
        self.keep = keep
        self.saves = 0
        self._display = display_url(url)

    def __call__(self) -> None:
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
    graph: Any,
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
    graph: Any,
    url: str | None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Load `graph` from the snapshot at `url` and return its `extra`; None for a fresh start.

    None or "" means no resume source; a source that does not exist is a fresh start too (both
    logged). An unreachable source raises `SourceUnreachableError` and a damaged or mismatched
    snapshot raises: neither is ever taken for a fresh start.
    """
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
