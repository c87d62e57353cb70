"""A checkpoint's whole journal as a timeline, for `resumable status` and `resumable report`.

The replayed state keeps only the latest result or failure per key; a timeline needs every
record: when each launch started and what it did, which launches were interrupted before the
sweep was complete, and how long the sweep stood still in between. `timeline(view)` retells
the journal from the view's replayed state, which keeps the few records that the latest ones
replaced (see _state.py), so opening the view was the one pass over the journal: the timeline
costs O(records + launches) in memory and decodes only what it needs (launches, failures,
events; durations only for the report's detail).

A launch counts as *interrupted* when another launch followed it while items were still
pending at its last record: preempted, killed, crashed or stopped (the journal cannot tell
which). The time lost to it runs from its last record to the next launch's start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._journal import Record
from ._state import State
from .view import CheckpointView, MergedView

# result/failure payloads end with ..."duration":<x>,"launch":"<id>"} (json.dumps keeps order)
_TAIL_RE = re.compile(rb',"duration":(null|-?[0-9][0-9.eE+-]*),"launch":"([^"\\]*)"\}$')


@dataclass
class Finished:
    """One result or failure record."""

    seq: int
    t: float
    key: str
    ok: bool
    launch: int  # index into Timeline.launches (-1: before any launch record)
    duration: float | None
    error_type: str | None = None


@dataclass
class Launch:
    index: int
    launch_id: str
    host: str
    pid: int | None
    t: float
    seq: int
    n_items: int | None
    last_t: float  # time of the launch's last own record (its start if it recorded nothing)
    results: int = 0
    failures: int = 0
    pending_at_end: int | None = None  # items pending at its last record
    outcome: str = "open"  # "completed" | "interrupted" | "open" (the latest, not complete)
    lost_s: float | None = None  # interrupted: from its last record to the next launch

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Timeline:
    name: str
    location: str
    shard: tuple[int, int] | None
    launches: list[Launch] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)
    exact: bool = True
    note: str | None = None

    @property
    def interrupted(self) -> list[Launch]:
        return [launch for launch in self.launches if launch.outcome == "interrupted"]

    @property
    def lost_s(self) -> float:
        return sum(launch.lost_s or 0.0 for launch in self.launches)


def timelines(view: CheckpointView | MergedView, *, detail: bool = True) -> list[Timeline]:
    """One timeline per checkpoint (per started shard of a sharded sweep)."""
    if isinstance(view, MergedView):
        return [timeline(s, detail=detail) for s in view.shards if s is not None]
    return [timeline(view, detail=detail)]


def timeline(view: CheckpointView, *, detail: bool = True) -> Timeline:
    """The view's journal retold launch by launch, from its replayed state (no second read).

    `detail` also lists every result and failure (`Timeline.finished`, with durations), which
    the report plots; `resumable status` needs only the launches.
    """
    tl = Timeline(name=view.name, location=view.location, shard=view.shard)
    _replay(tl, view.loaded.state, detail)
    return tl


def _tail(rec: Record) -> tuple[float | None, bool]:
    """(duration, found) read from the end of a result/failure payload without decoding it."""
    m = _TAIL_RE.search(rec.payload[-200:])
    if m is None:
        return None, False
    raw = m.group(1)
    return (None if raw == b"null" else float(raw)), True


def _duration(rec: Record, body: dict[str, Any] | None) -> float | None:
    duration, found = _tail(rec)
    if not found:
        d = (body if body is not None else rec.body()).get("duration")
        duration = float(d) if isinstance(d, (int, float)) and type(d) is not bool else None
    return duration


class _Replay:
    """Which items were pending at a point in the journal, kept current record by record.

    `covered` counts the keys of the current item list (the latest items record) that are done
    or failed, so the pending count at any launch's end costs O(1), not O(items).
    """

    def __init__(self) -> None:
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.keys: set[str] | None = None
        self.covered = 0
        self.n_keys: int | None = None  # the list's length, when its keys are not needed

    def count_only(self, n: int) -> None:
        self.keys, self.n_keys = None, n

    def pending(self, n_items: int | None) -> int | None:
        if self.n_keys is not None:  # every key done or failed is in the list
            return self.n_keys - len(self.done) - len(self.failed)
        if self.keys is not None:
            return len(self.keys) - self.covered
        if n_items is None:
            return None
        return max(0, n_items - len(self.done) - len(self.failed))

    def listing(self, rec: Record, state: State) -> None:
        self.n_keys = None
        items = state.items_listing() if rec is state.items_record else state.listing_of(rec)
        self.keys = {e[0] for e in items if type(e) is list and e and type(e[0]) is str}
        self.covered = len(self.keys & self.done) + len(self.keys & self.failed)

    def results(self, keys: list[str]) -> None:
        """Results of `keys` (none done before: a second result is damage)."""
        moved = self.failed.intersection(keys) if self.failed else ()
        self.done.update(keys)
        if self.keys is None:
            self.failed.difference_update(moved)
            return
        inside = self.keys.__contains__
        self.covered += sum(map(inside, keys))
        if moved:  # failed before: already counted
            self.failed.difference_update(moved)
            self.covered -= sum(map(inside, moved))

    def failure(self, key: str) -> None:
        if key in self.done or key in self.failed:
            return
        self.failed.add(key)
        if self.keys is not None and key in self.keys:
            self.covered += 1

    def forget(self, target: set[str], keys: list[str]) -> None:
        for key in keys:
            if key in target:
                target.discard(key)
                if self.keys is not None and key in self.keys:
                    self.covered -= 1


def _replay(tl: Timeline, state: State, detail: bool) -> None:
    """Walk the journal's records in sequence order: the results (the bulk, already in order)
    in slices between the few other records (launches, failures, superseded records, events)."""
    # results by key, sequence number and time (no Record per result unless `detail`)
    rkeys = list(state.results)  # in record order: ascending seq
    rseq, rtime = state.results.seqs_and_times()
    if len(rseq) > 1 and not (rseq[1:] > rseq[:-1]).all():  # never replayed that way
        order = np.argsort(rseq, kind="stable")
        rseq, rtime = rseq[order], rtime[order]
        rkeys = [rkeys[i] for i in order.tolist()]
    seqs = rseq
    all_current = state.keys_all_current()
    others: list[tuple[int, Any]] = [(body["seq"], body) for body in state.launches]
    others += [(r.seq, r) for r in state.failure_records.values()]
    others += [(r.seq, r) for r in state.superseded]
    others += [(r.seq, r) for r in state.events]
    others.sort(key=lambda x: x[0])
    replay = _Replay()
    current: Launch | None = None
    pos = 0

    def close(launch: Launch | None) -> None:
        if launch is not None and launch.pending_at_end is None:
            launch.pending_at_end = replay.pending(launch.n_items)

    def results_until(seq: int) -> None:
        nonlocal pos
        end = pos + int(np.searchsorted(seqs[pos:], seq, side="left"))
        if end == pos:
            return
        begin, pos = pos, end
        keys = rkeys[begin:end]
        replay.results(keys)
        idx = current.index if current is not None else -1
        if current is not None:
            current.results += end - begin
            current.last_t = max(current.last_t, float(rtime[begin:end].max()))
        if detail:
            records = state.results
            tl.finished.extend(
                Finished(r.seq, r.t, k, True, idx, _duration(r, None))
                for k in keys
                for r in (records[k],)
            )

    for seq, obj in others:
        results_until(seq)
        if isinstance(obj, dict):  # a launch
            close(current)
            n = obj.get("n_items")
            pid = obj.get("pid")
            current = Launch(
                index=len(tl.launches),
                launch_id=str(obj.get("launch", "")),
                host=str(obj.get("host", "")),
                pid=pid if type(pid) is int else None,
                t=float(obj["t"]),
                seq=seq,
                n_items=n if type(n) is int else None,
                last_t=float(obj["t"]),
            )
            tl.launches.append(current)
            continue
        rec: Record = obj
        kind = rec.type
        key = rec.key or ""
        if kind == "result":  # a result voided later by an invalidate record
            replay.results([key])
            if current is not None:
                current.results += 1
                current.last_t = max(current.last_t, rec.t)
            if detail:
                idx = current.index if current is not None else -1
                tl.finished.append(Finished(rec.seq, rec.t, key, True, idx, _duration(rec, None)))
        elif kind == "failure":
            replay.failure(key)
            if current is not None:
                current.failures += 1
                current.last_t = max(current.last_t, rec.t)
            if detail:
                body = rec.body()
                idx = current.index if current is not None else -1
                etype = str(body.get("error_type", "?"))
                tl.finished.append(
                    Finished(rec.seq, rec.t, key, False, idx, _duration(rec, body), etype)
                )
        elif kind == "retry" or kind == "invalidate":
            body = rec.body()
            if body.get("reason") == "cli":  # asked for between launches: ends the last one
                close(current)
            keys = body.get("keys") or []
            replay.forget(replay.failed if kind == "retry" else replay.done, keys)
        elif kind == "items":
            if all_current and current is not None and current.n_items is not None:
                replay.count_only(current.n_items)  # no listing decoded (see keys_all_current)
            else:
                replay.listing(rec, state)
        elif kind == "meta" and current is not None:
            current.last_t = max(current.last_t, rec.t)
    results_until(int(seqs[-1]) + 1 if len(seqs) else 0)
    close(current)
    if detail:
        tl.finished.sort(key=_seq)
    _outcomes(tl)


def _seq(x: Record | Finished) -> int:
    return x.seq


def _outcomes(tl: Timeline) -> None:
    for i, launch in enumerate(tl.launches):
        nxt = tl.launches[i + 1] if i + 1 < len(tl.launches) else None
        if launch.pending_at_end == 0:
            launch.outcome = "completed"
        elif nxt is not None:
            launch.outcome = "interrupted"
            launch.lost_s = max(0.0, nxt.t - launch.last_t)
        else:
            launch.outcome = "open"


def summary(tls: list[Timeline]) -> dict[str, Any]:
    """Launch counts across timelines (JSON-ready)."""
    return {
        "launches": sum(len(t.launches) for t in tls),
        "interrupted": sum(len(t.interrupted) for t in tls),
        "lost_s": sum(t.lost_s for t in tls),
        "exact": all(t.exact for t in tls),
        "notes": [t.note for t in tls if t.note],
        "detail": [
            {"shard": list(t.shard) if t.shard else None, **launch.as_dict()}
            for t in tls
            for launch in t.launches
        ],
    }
