"""A checkpoint's whole journal as a timeline, for `resumable status` and `resumable report`.

The replayed state keeps only the latest result or failure per key; a timeline needs every
record: when each launch started and what it did, which launches were interrupted before the
sweep was complete, and how long the sweep stood still in between. `timeline(view)` re-reads
the journal from the view's verified files (`CheckpointView.files`), checking each sealed
segment's SHA-256 again, and decodes only what it needs (headers, `duration`, error types).

A launch counts as *interrupted* when another launch followed it while items were still
pending at its last record: preempted, killed, crashed or stopped (the journal cannot tell
which). The time lost to it runs from its last record to the next launch's start.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .checkpoint import SEGMENTS_DIR
from .errors import ResumableError
from .journal import Record, parse_sealed_segment, parse_segment
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


def timelines(view: CheckpointView | MergedView) -> list[Timeline]:
    """One timeline per checkpoint (per started shard of a sharded sweep)."""
    if isinstance(view, MergedView):
        return [timeline(s) for s in view.shards if s is not None]
    return [timeline(view)]


def timeline(view: CheckpointView) -> Timeline:
    tl = Timeline(name=view.name, location=view.location, shard=view.shard)
    try:
        if view.files is None:
            raise ResumableError("the view has no local files")
        _replay(tl, _records(view))
    except (ResumableError, OSError, ValueError, KeyError, TypeError) as exc:
        tl = Timeline(name=view.name, location=view.location, shard=view.shard, exact=False)
        tl.note = f"journal not re-readable ({type(exc).__name__}: {exc}); approximated"
        _approximate(tl, view)
    return tl


def _records(view: CheckpointView) -> Iterator[Record]:
    assert view.files is not None
    loaded = view.loaded
    manifest = loaded.manifest
    segdir = view.files / SEGMENTS_DIR
    prev = ""
    for seg in manifest.segments:
        data = (segdir / seg.name).read_bytes()
        if len(data) != seg.size or hashlib.sha256(data).hexdigest() != seg.sha256:
            raise ResumableError(f"{segdir / seg.name} changed since it was verified")
        yield from parse_sealed_segment(
            data,
            source=str(segdir / seg.name),
            first_seq=seg.first_seq,
            records=seg.records,
            prev_hash=prev,
        )
        prev = seg.last_hash
    if manifest.active is not None:
        with open(segdir / manifest.active, "rb") as fh:
            data = fh.read(loaded.active_size)
        parsed = parse_segment(
            data,
            source=str(segdir / manifest.active),
            first_seq=manifest.sealed_records + 1,
            prev_hash=prev,
            allow_torn_tail=True,
        )
        yield from parsed.records


def _tail(rec: Record) -> tuple[float | None, bool]:
    """(duration, found) read from the end of a result/failure payload without decoding it."""
    m = _TAIL_RE.search(rec.payload[-200:])
    if m is None:
        return None, False
    raw = m.group(1)
    return (None if raw == b"null" else float(raw)), True


class _Replay:
    """Just enough state to tell whether items were pending at a point in the journal."""

    def __init__(self) -> None:
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.items: Record | None = None
        self._keys: tuple[int, list[str]] | None = None

    def pending(self, n_items: int | None) -> int | None:
        if self.items is not None:
            if self._keys is None or self._keys[0] != self.items.seq:
                self._keys = (self.items.seq, [e[0] for e in self.items.body()["items"]])
            keys = self._keys[1]
            return sum(1 for k in keys if k not in self.done and k not in self.failed)
        if n_items is None:
            return None
        return max(0, n_items - len(self.done) - len(self.failed))


def _replay(tl: Timeline, records: Iterable[Record]) -> None:
    state = _Replay()
    current: Launch | None = None

    def close(launch: Launch | None) -> None:
        if launch is not None and launch.pending_at_end is None:
            launch.pending_at_end = state.pending(launch.n_items)

    for rec in records:
        kind = rec.type
        if kind == "result" or kind == "failure":
            duration, found = _tail(rec)
            body = None
            if not found or kind == "failure":
                body = rec.body()
                d = body.get("duration")
                duration = float(d) if isinstance(d, (int, float)) else None
            idx = current.index if current is not None else -1
            if kind == "result":
                state.done.add(rec.key)
                state.failed.discard(rec.key)
                tl.finished.append(Finished(rec.seq, rec.t, rec.key, True, idx, duration))
                if current is not None:
                    current.results += 1
            else:
                assert body is not None
                if rec.key not in state.done:
                    state.failed.add(rec.key)
                etype = str(body.get("error_type", "?"))
                tl.finished.append(Finished(rec.seq, rec.t, rec.key, False, idx, duration, etype))
                if current is not None:
                    current.failures += 1
            if current is not None:
                current.last_t = max(current.last_t, rec.t)
        elif kind == "launch":
            close(current)
            body = rec.body()
            n = body.get("n_items")
            pid = body.get("pid")
            current = Launch(
                index=len(tl.launches),
                launch_id=str(body.get("launch", "")),
                host=str(body.get("host", "")),
                pid=pid if type(pid) is int else None,
                t=rec.t,
                seq=rec.seq,
                n_items=n if type(n) is int else None,
                last_t=rec.t,
            )
            tl.launches.append(current)
        elif kind == "retry" or kind == "invalidate":
            body = rec.body()
            if body.get("reason") == "cli":  # asked for between launches: ends the last one
                close(current)
            keys = body.get("keys") or []
            target = state.failed if kind == "retry" else state.done
            target.difference_update(keys)
        elif kind == "items":
            state.items = rec
        elif kind == "meta" and current is not None:
            current.last_t = max(current.last_t, rec.t)
    close(current)
    _outcomes(tl)


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


def _approximate(tl: Timeline, view: CheckpointView) -> None:
    """From the replayed state alone (latest record per key): superseded records are missing."""
    state = view.loaded.state
    for body in state.launches:
        n = body.get("n_items")
        tl.launches.append(
            Launch(
                index=len(tl.launches),
                launch_id=str(body.get("launch", "")),
                host=str(body.get("host", "")),
                pid=body.get("pid") if type(body.get("pid")) is int else None,
                t=float(body["t"]),
                seq=int(body["seq"]),
                n_items=n if type(n) is int else None,
                last_t=float(body["t"]),
            )
        )
    starts = [launch.seq for launch in tl.launches]
    recs = sorted(
        [(r, True) for r in state.results.values()]
        + [(r, False) for r in state.failure_records.values()],
        key=lambda x: x[0].seq,
    )
    for rec, ok in recs:
        idx = bisect.bisect_right(starts, rec.seq) - 1
        duration, _ = _tail(rec)
        etype = None
        if not ok:
            body = rec.body()
            etype = str(body.get("error_type", "?"))
        tl.finished.append(Finished(rec.seq, rec.t, rec.key or "", ok, idx, duration, etype))
        if idx >= 0:
            launch = tl.launches[idx]
            launch.last_t = max(launch.last_t, rec.t)
            if ok:
                launch.results += 1
            else:
                launch.failures += 1
    total = len(view.keys())
    finished = 0
    for launch in tl.launches:
        finished += launch.results + launch.failures
        launch.pending_at_end = max(0, (launch.n_items or total) - finished)
    _outcomes(tl)


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
