"""`SweepStatus`: a sweep's progress at a glance, computed from its replayed state."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._state import State


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
        keys: Collection[str] | None,
        location: str,
        launch_id: str | None = None,
        verified: bool | None = None,
        mirror: dict[str, Any] | None = None,
    ) -> SweepStatus:
        if keys is None:  # every recorded key is current (State.keys_all_current)
            assert state.items_count is not None
            total = state.items_count
            done = len(state.results)
            failed_keys = list(state.failures)
        else:
            current = keys if isinstance(keys, (set, frozenset)) else set(keys)
            total = len(current)
            done = sum(map(current.__contains__, state.results))
            failed_keys = [k for k in state.failures if k in current]
        stale = (len(state.results) - done) + (len(state.failures) - len(failed_keys))
        pending = total - done - len(failed_keys)
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
            total=total,
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
    """Items per second over the latest launch that finished at least two items.

    O(results) without sorting them: results replay in ascending seq order; only the (few)
    failure records are sorted.
    """
    if not state.launches:
        return None
    rseq, rtime = state.results.seqs_and_times()  # no Record per result
    if len(rseq) > 1 and not (rseq[1:] > rseq[:-1]).all():
        order = np.argsort(rseq, kind="stable")
        rseq, rtime = rseq[order], rtime[order]
    failures = sorted(state.failure_records.values(), key=lambda r: r.seq)
    fseq = [r.seq for r in failures]
    rend, fend = len(rseq), len(fseq)
    for launch in reversed(state.launches):
        rbegin = int(np.searchsorted(rseq[:rend], launch["seq"], side="left"))
        fbegin = bisect.bisect_left(fseq, launch["seq"], 0, fend)
        count = (rend - rbegin) + (fend - fbegin)
        if count >= 2:
            last: list[tuple[int, float]] = []
            if rend > rbegin:
                last.append((int(rseq[rend - 1]), float(rtime[rend - 1])))
            if fend > fbegin:
                last.append((failures[fend - 1].seq, failures[fend - 1].t))
            span = max(last)[1] - float(launch["t"])
            return count / span if span > 0 else None
        rend, fend = rbegin, fbegin
    return None
