"""`SweepStatus`: a sweep's progress at a glance, computed from its replayed state."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .state import State


@dataclass(frozen=True)
class FailureGroup:
    """Failures sharing one error type, with one example."""

    error_type: str
    count: int
    example_key: str
    example_message: str


@dataclass(frozen=True)
class SweepStatus:
    """Counts and times of a sweep; `as_dict()` gives the JSON form the CLI prints."""

    name: str
    location: str
    total: int
    done: int
    failed: int
    pending: int
    stale: int
    launches: int
    launch_id: str | None
    last_finished: float | None
    started: float | None
    rate_per_s: float | None
    eta_s: float | None
    failures: tuple[FailureGroup, ...] = ()
    verified: bool | None = None
    mirror: dict[str, Any] | None = None
    shards: list[dict[str, Any]] | None = field(default=None)

    @classmethod
    def from_state(
        cls,
        *,
        name: str,
        state: State,
        keys: Sequence[str],
        location: str,
        launch_id: str | None = None,
        verified: bool | None = None,
        mirror: dict[str, Any] | None = None,
    ) -> SweepStatus:
        current = set(keys)
        done = sum(1 for k in state.results if k in current)
        failed_keys = [k for k in state.failures if k in current]
        stale = sum(1 for k in state.results if k not in current) + sum(
            1 for k in state.failures if k not in current
        )
        pending = len(current) - done - len(failed_keys)
        rate = _recent_rate(state)
        groups: Counter[str] = Counter()
        examples: dict[str, tuple[str, str]] = {}
        for k in failed_keys:
            rec = state.failures[k]
            groups[rec["error_type"]] += 1
            examples.setdefault(rec["error_type"], (k, str(rec.get("message", ""))[:500]))
        failures = tuple(
            FailureGroup(t, n, examples[t][0], examples[t][1]) for t, n in groups.most_common()
        )
        return cls(
            name=name,
            location=location,
            total=len(current),
            done=done,
            failed=len(failed_keys),
            pending=pending,
            stale=stale,
            launches=len(state.launches),
            launch_id=launch_id,
            last_finished=state.last_finished,
            started=state.launches[0]["t"] if state.launches else None,
            rate_per_s=rate,
            eta_s=(pending / rate) if rate and pending else (0.0 if not pending else None),
            failures=failures,
            verified=verified,
            mirror=mirror,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _recent_rate(state: State) -> float | None:
    """Items per second over the latest launch that finished at least two items."""
    if not state.launches:
        return None
    finished = sorted(
        [(r.seq, r.t) for r in state.results.values()]
        + [(r.seq, r.t) for r in state.failure_records.values()]
    )
    end = len(finished)
    for launch in reversed(state.launches):
        begin = bisect.bisect_left(finished, (launch["seq"], 0.0))
        if end - begin >= 2:
            span = finished[end - 1][1] - float(launch["t"])
            return (end - begin) / span if span > 0 else None
        end = begin
    return None
