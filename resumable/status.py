"""`SweepStatus`: a sweep's progress at a glance, computed from its replayed state.

Counts come from the state's sizes (no key looked at when every recorded key is current, see
`State.keys_all_current`); the rate from `ResultColumns`, the results' sequence numbers and
times as two arrays, which a read-only view computes once and shares with its timeline
(_history.py): no Record per result, nothing per launch beyond a binary search.
"""

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
        columns: ResultColumns | None = None,
    ) -> SweepStatus:
        """`columns`: `result_columns(state)`, when the caller has them already."""
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
        rate = _recent_rate(state, columns)
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


@dataclass(frozen=True)
class ResultColumns:
    """The live results' sequence numbers (ascending) and times, and where each sits in the
    result map's order (`order`; None when that order is already ascending, as replay makes
    it)."""

    seqs: np.ndarray
    times: np.ndarray
    order: np.ndarray | None

    def count_below(self, seq: int) -> int:
        """Results recorded before record `seq`."""
        return int(np.searchsorted(self.seqs, seq, side="left"))


def result_columns(state: State) -> ResultColumns:
    """`ResultColumns` of `state`: O(results) at C speed, no Record per result."""
    rseq, rtime = state.results.seqs_and_times()
    order = None
    if len(rseq) > 1 and not (rseq[1:] > rseq[:-1]).all():  # never replayed that way
        order = np.argsort(rseq, kind="stable")
        rseq, rtime = rseq[order], rtime[order]
    return ResultColumns(rseq, rtime, order)


def _recent_rate(state: State, columns: ResultColumns | None = None) -> float | None:
    """Items per second over the latest launch that finished at least two items.

    O(results) at C speed for the columns (or none given), then O(launches * log(results)):
    only the (few) failure records are sorted.
    """
    if not state.launches:
        return None
    cols = columns if columns is not None else result_columns(state)
    rseq, rtime = cols.seqs, cols.times
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
