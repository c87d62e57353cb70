"""A checkpoint's whole journal as a timeline, for `resumable status` and `resumable report`.

The replayed state keeps only the latest result or failure per key; a timeline needs every
record: when each launch started and what it did, which launches were interrupted before the
sweep was complete, and how long the sweep stood still in between. `timeline(view)` retells
the journal from the view's replayed state, which keeps the few records that the latest ones
replaced (see _state.py), so opening the view was the one pass over the journal. Every record
is a result or one of those few (launches, failures, superseded records, events): the timeline
walks the few in sequence order and counts the results between them by binary search in the
view's result columns (`ResultColumns`, shared with its status), so it costs O(launches + few
records) beyond those columns, decodes no listing when every recorded key is current, and
makes a Record per result only for the report's detail (durations).

A launch counts as *interrupted* when another launch followed it while items were still
pending at its last record: preempted, killed, crashed or stopped (the journal cannot tell
which). The time lost to it runs from its last record to the next launch's start.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._journal import Record
from ._state import State
from .status import ResultColumns
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
    _replay(tl, view.loaded.state, view.result_columns(), detail)
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


class _Pending:
    """How many items were pending at a point of the journal, asked at launch ends.

    A key whose only record is one result (a *plain* key: never failed, voided or named by a
    retry) is done from that record on, so the plain keys done before a point are counted
    with a binary search in the result columns. The other keys (`few`: they grow with
    failures, retries and invalidations, not with results) are replayed exactly, in sets.
    `covered` counts the few keys of the current item list (the latest items record) that
    are done or failed; when the list must be known (not every recorded key is current),
    `_inside` counts, per result in sequence order, the plain keys in it.
    """

    def __init__(self, state: State, cols: ResultColumns, few_live: list[int]) -> None:
        self.state, self.cols = state, cols
        self.few_live = few_live  # sorted sequence numbers of the few keys' live results
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.keys: set[str] | None = None
        self.covered = 0
        self.n_keys: int | None = None  # the list's length, when its keys are not needed
        self._inside: np.ndarray | None = None
        self._rkeys: list[str] | None = None
        self._below: dict[int, int] = {}

    def ask_at(self, seqs: list[int]) -> None:
        """The points `pending` will be asked at: their result counts in one search."""
        found = np.searchsorted(self.cols.seqs, seqs, side="left").tolist()
        self._below = dict(zip(seqs, found, strict=True))

    def below(self, seq: int) -> int:
        """Results (live) recorded before record `seq`."""
        n = self._below.get(seq)
        return self.cols.count_below(seq) if n is None else n

    def plain_done(self, seq: int) -> int:
        """Plain keys done before record `seq`."""
        return self.below(seq) - bisect.bisect_left(self.few_live, seq)

    def pending(self, seq: int, n_items: int | None) -> int | None:
        """Items pending just before record `seq` (the launch's own `n_items` when no list
        was recorded yet)."""
        if self.n_keys is not None:  # every key done or failed is in the list
            return self.n_keys - self.plain_done(seq) - len(self.done) - len(self.failed)
        if self.keys is not None:
            assert self._inside is not None
            inside = int(self._inside[self.below(seq)])
            return len(self.keys) - self.covered - inside
        if n_items is None:
            return None
        return max(0, n_items - self.plain_done(seq) - len(self.done) - len(self.failed))

    def count_only(self, n: int) -> None:
        self.keys, self.n_keys = None, n

    def listing(self, rec: Record, few: set[str]) -> None:
        state = self.state
        self.n_keys = None
        items = state.items_listing() if rec is state.items_record else state.listing_of(rec)
        self.keys = keys = {e[0] for e in items if type(e) is list and e and type(e[0]) is str}
        self.covered = len(keys & self.done) + len(keys & self.failed)
        if self._rkeys is None:  # the results' keys in sequence order
            rkeys = list(state.results)
            order = self.cols.order
            self._rkeys = rkeys if order is None else [rkeys[i] for i in order.tolist()]
        plain = np.fromiter(
            (k in keys and k not in few for k in self._rkeys), dtype=bool, count=len(self._rkeys)
        )
        self._inside = np.concatenate(([0], np.cumsum(plain, dtype=np.int64)))

    def _mark(self, target: set[str], key: str, add: bool) -> None:
        if add:
            target.add(key)
        else:
            target.discard(key)
        if self.keys is not None and key in self.keys:
            self.covered += 1 if add else -1

    def result(self, key: str) -> None:
        if key in self.failed:
            self._mark(self.failed, key, False)
        if key not in self.done:
            self._mark(self.done, key, True)

    def failure(self, key: str) -> None:
        if key not in self.done and key not in self.failed:
            self._mark(self.failed, key, True)

    def forget(self, target: set[str], keys: list[str]) -> None:
        for key in keys:
            if key in target:
                self._mark(target, key, False)


def _replay(tl: Timeline, state: State, cols: ResultColumns, detail: bool) -> None:
    """Retell the journal launch by launch: every record is a result (in `cols`) or one of
    the few records the state keeps (launches, failures, superseded records, events), so
    walking the few in sequence order, with binary searches in the results' columns between
    them, costs O(launches + few records) beyond the columns themselves."""
    fails = [*state.failure_records.values()]
    fails += [r for r in state.superseded if r.type == "failure"]
    voided = [r for r in state.superseded if r.type == "result"]
    bodies = {id(r): r.body() for r in state.events if r.type in ("retry", "invalidate")}
    # keys with any record besides one result: replayed exactly
    few = {r.key or "" for r in fails} | {r.key or "" for r in voided}
    for body in bodies.values():
        few.update(k for k in body.get("keys") or () if type(k) is str)
    live_few = [hit for k in few if (hit := state.results.get(k)) is not None]
    others: list[tuple[int, Any]] = [(body["seq"], body) for body in state.launches]
    others += [(r.seq, r) for r in (*fails, *voided, *live_few, *state.events)]
    others.sort(key=lambda x: x[0])
    end = state.last_seq + 1
    replay = _Pending(state, cols, sorted(r.seq for r in live_few))
    replay.ask_at([seq for seq, obj in others if isinstance(obj, dict)] + [end])  # launch ends
    all_current = state.keys_all_current()
    current: Launch | None = None

    def close(launch: Launch | None, seq: int) -> None:
        if launch is not None and launch.pending_at_end is None:
            launch.pending_at_end = replay.pending(seq, launch.n_items)

    for seq, obj in others:
        if isinstance(obj, dict):  # a launch
            close(current, seq)
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
        if kind == "result":  # of a few key: live, or voided later by an invalidate record
            replay.result(key)
        elif kind == "failure":
            replay.failure(key)
        elif kind == "retry" or kind == "invalidate":
            body = bodies[id(rec)]
            if body.get("reason") == "cli":  # asked for between launches: ends the last one
                close(current, seq)
            keys = body.get("keys") or []
            replay.forget(replay.failed if kind == "retry" else replay.done, keys)
        elif kind == "items":
            if all_current and current is not None and current.n_items is not None:
                replay.count_only(current.n_items)  # no listing decoded (see keys_all_current)
            else:
                replay.listing(rec, few)
    close(current, end)
    _tally(tl, state, cols, fails, voided)
    if detail:
        _finished(tl, state, cols, fails, voided)
    _outcomes(tl)


def _tally(
    tl: Timeline, state: State, cols: ResultColumns, fails: list[Record], voided: list[Record]
) -> None:
    """Each launch's results, failures and last record time (records before the first
    launch belong to none): binary searches and one reduction over the result columns."""
    if not tl.launches:
        return
    lseqs = [launch.seq for launch in tl.launches]
    bounds = np.searchsorted(cols.seqs, [*lseqs, state.last_seq + 1], side="left")
    counts = np.diff(bounds).tolist()
    starts = bounds[:-1]
    nonempty = np.flatnonzero(np.diff(bounds) > 0)
    # the max time of each launch's run of results (runs are contiguous in the columns)
    maxima: Any = np.maximum.reduceat(cols.times, starts[nonempty]) if len(nonempty) else []
    for launch, count in zip(tl.launches, counts, strict=True):
        launch.results += count
    for i, t in zip(nonempty.tolist(), np.asarray(maxima).tolist(), strict=True):
        tl.launches[i].last_t = max(tl.launches[i].last_t, t)
    metas = [r for r in state.events if r.type == "meta"]
    for rec in (*voided, *fails, *metas):
        i = bisect.bisect_right(lseqs, rec.seq) - 1
        if i < 0:
            continue
        launch = tl.launches[i]
        if rec.type == "result":
            launch.results += 1
        elif rec.type == "failure":
            launch.failures += 1
        launch.last_t = max(launch.last_t, rec.t)


def _finished(
    tl: Timeline, state: State, cols: ResultColumns, fails: list[Record], voided: list[Record]
) -> None:
    """Every result and failure record as a `Finished`, in sequence order (the report's)."""
    lseqs = np.array([launch.seq for launch in tl.launches], dtype=np.int64)
    rkeys = list(state.results)
    if cols.order is not None:
        rkeys = [rkeys[i] for i in cols.order.tolist()]
    where = (np.searchsorted(lseqs, cols.seqs, side="right") - 1).tolist()
    records = state.results
    tl.finished.extend(
        Finished(r.seq, r.t, k, True, idx, _duration(r, None))
        for k, idx in zip(rkeys, where, strict=True)
        for r in (records[k],)
    )
    for rec in (*voided, *fails):
        idx = int(np.searchsorted(lseqs, rec.seq, side="right")) - 1
        if rec.type == "result":
            tl.finished.append(
                Finished(rec.seq, rec.t, rec.key or "", True, idx, _duration(rec, None))
            )
        else:
            body = rec.body()
            etype = str(body.get("error_type", "?"))
            tl.finished.append(
                Finished(rec.seq, rec.t, rec.key or "", False, idx, _duration(rec, body), etype)
            )
    tl.finished.sort(key=_seq)


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


def summary(tls: list[Timeline], *, latest: int | None = None) -> dict[str, Any]:
    """Launch counts across timelines (JSON-ready). `detail` lists every launch, or with
    `latest` only the latest ones of each timeline (`detail_omitted` counts the others), so
    that a sweep preempted a thousand times prints no more than one preempted twice."""
    shown = [t.launches if latest is None else t.launches[-latest:] for t in tls]
    return {
        "launches": sum(len(t.launches) for t in tls),
        "interrupted": sum(len(t.interrupted) for t in tls),
        "lost_s": sum(t.lost_s for t in tls),
        "exact": all(t.exact for t in tls),
        "notes": [t.note for t in tls if t.note],
        "detail": [
            {"shard": list(t.shard) if t.shard else None, **launch.as_dict()}
            for t, launches in zip(tls, shown, strict=True)
            for launch in launches
        ],
        "detail_omitted": sum(len(t.launches) - len(x) for t, x in zip(tls, shown, strict=True)),
    }
