"""`ResumableSweep`: a loop over independent items that survives preemption.

Opening a sweep materialises the items, checks their keys, and verifies and replays the local
checkpoint (see _checkpoint.py). `pending` then yields only unfinished items; `record()` makes a
result durable before it returns. A relaunch sees every acknowledged record exactly once.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import logging
import math
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from . import _limits as limits
from . import _signing as signing
from ._checkpoint import (
    DEFAULT_SEGMENT_BYTES,
    CheckpointWriter,
    foreign_process_error,
    process_id,
    progress_dir_for,
)
from ._codec import canonical_json, decode, encode, encode_json
from ._gcpause import gc_paused
from ._itemlist import LISTING_KINDS
from ._items import ItemSet
from ._journal import Record
from ._listing import values_json
from ._mirror import Mirror, MirrorOptions
from ._opening import open_sweep
from ._retry import RetryOutcome as RetryOutcome  # re-exported: resumable.sweep.RetryOutcome
from ._retry import retry_failed as retry_failed  # re-exported: resumable.sweep.retry_failed
from ._state import State
from ._urls import join
from ._worker import EncodedResult  # (H5) moved there: pool workers import it without all of this
from .errors import (
    AlreadyRecordedError,
    CheckpointClosedError,
    ConfigurationError,
    ResumableError,
    UnsupportedValueError,
)
from .preempt import Preempted, PreemptionGuard, current_guard, resolve_grace_s
from .shards import (
    check_shard,
    shard_dir_name,
    shard_of,
)
from .status import SweepStatus

log = logging.getLogger(__name__)
ResumeMode = Literal["allow", "must", "never"]
OnChange = Literal["error", "rerun", "keep"]
MAX_TRACEBACK_CHARS = 32_000
ENV_RESUME_FROM = "SWEEP_RESUME_FROM"
ENV_SNAPSHOT_DIR = "SWEEP_SNAPSHOT_DIR"


class ResumableSweep:
    """A resumable loop over `items`; see the README for the full contract.

    Progress lives beside `checkpoint_path` in ``<checkpoint_path>.resumable/``.

    Threads: one sweep may be shared by many threads of the process that opened it. `record`,
    `record_failure`, `retry_failures`, `flush` and `close` are each atomic (the check that an
    item is not yet done and the durable append happen under one lock), so recording one item
    from two threads gives one record and one `AlreadyRecordedError`. Processes: only the
    process that opened the sweep may record; a forked child (multiprocessing's "fork" start
    method, `os.fork`) that tries gets `ForeignProcessError` and writes nothing, and closing
    the child's copy leaves the parent's lock and checkpoint alone.
    """

    _meta_seen: Any = None  # a copy of `meta` as last saved (see _save_meta)
    _state: State  # the replayed journal; set by open_sweep, like _persisted_meta
    _persisted_meta: bytes  # canonical JSON of the meta last recorded

    def __init__(
        self,
        items: Iterable[Any],
        *,
        checkpoint_path: str | os.PathLike[str],
        key: Callable[[Any], str] | None = None,
        resume_from: str | None = None,
        snapshot_dir: str | None = None,
        resume: ResumeMode = "allow",
        retry_failed: bool = False,
        on_change: OnChange = "error",
        name: str | None = None,
        meta: dict[str, Any] | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        storage_options: dict[str, Any] | None = None,
        mirror_options: MirrorOptions | None = None,
        shard: tuple[int, int] | None = None,
        handle_signals: bool = True,
        signals: Iterable[int] | None = None,
        grace_s: float | None = None,
        signing_key: str | bytes | None = None,
    ) -> None:
        if resume not in ("allow", "must", "never"):
            raise ConfigurationError(f"resume must be 'allow', 'must' or 'never', found {resume!r}")
        if on_change not in ("error", "rerun", "keep"):
            raise ConfigurationError(
                f"on_change must be 'error', 'rerun' or 'keep', found {on_change!r}"
            )
        if not isinstance(segment_bytes, int) or not 1 <= segment_bytes <= limits.MAX_SEGMENT_BYTES:
            raise ConfigurationError(
                f"segment_bytes must be an int in [1, {limits.MAX_SEGMENT_BYTES}] "
                f"(limits.MAX_SEGMENT_BYTES), found {segment_bytes!r}"
            )
        self.checkpoint_path = Path(checkpoint_path)
        self.name = name if name is not None else self.checkpoint_path.stem
        if not self.name or not isinstance(self.name, str):
            raise ConfigurationError(
                f"cannot derive a sweep name from checkpoint_path {os.fspath(checkpoint_path)!r}; "
                "pass name=..."
            )
        self.shard = check_shard(shard) if shard is not None else None
        # absolute: a later os.chdir() must not move the checkpoint under the sweep's feet
        self.progress_dir = progress_dir_for(self.checkpoint_path).absolute()
        self.resume_from = _from_env(resume_from, ENV_RESUME_FROM)
        self.snapshot_dir = _from_env(snapshot_dir, ENV_SNAPSHOT_DIR)
        self._sweep_root = (self.progress_dir, self.resume_from, self.snapshot_dir)
        self.storage_options = storage_options
        # HMAC key: manifests written are signed, resume sources must be (env RESUMABLE_SIGNING_KEY)
        self.signing_key = signing.resolve_key(signing_key)
        self.mirror_options = mirror_options or MirrorOptions()
        self.retry_failed = bool(retry_failed)
        self.handle_signals = bool(handle_signals)
        self._signals = tuple(signals) if signals is not None else (signal.SIGTERM,)
        self._grace_s = resolve_grace_s(grace_s)
        self._guard: PreemptionGuard | None = None
        self.on_change: OnChange = on_change
        self.meta: dict[str, Any] = dict(meta) if meta else {}
        if meta is not None:
            encode(self.meta, what="meta")
        self._items = ItemSet.build(items, key)  # duplicates are checked across all shards
        if self._items.keys and max(map(len, self._items.keys)) > limits.MAX_KEY_CHARS:
            longest = max(self._items.keys, key=len)
            limits.check_key(
                longest, f"item {self._items.items[self._items.index[longest]]!r:.100}"
            )
        if self.shard is not None:
            index, count = self.shard
            self._items = self._items.subset(lambda k: shard_of(k, count) == index)
            sub = shard_dir_name(index, count)
            self.progress_dir = self.progress_dir / sub
            self.resume_from = join(self.resume_from, sub) if self.resume_from else None
            self.snapshot_dir = join(self.snapshot_dir, sub) if self.snapshot_dir else None
        self.launch_id = uuid.uuid4().hex[:12]
        # every result payload ends so: {"value":...,"duration":...,"launch":"<id>"}
        self._result_tail = b',"launch":"%s"}' % self.launch_id.encode("ascii")
        self.host = socket.gethostname()
        self._yielded: dict[str, float] = {}  # key -> when `pending` yielded it
        self._yielded_ids: dict[int, str] = {}  # id(item) -> key, of items yielded (see _key_of)
        self._closed = False
        self._writer: CheckpointWriter | None = None
        self._mirror: Mirror | None = None
        self._item_snapshots: Any = None  # item_snapshot.ItemSnapshots, made on first use
        # One lock around every check-and-append (see `record`): a sweep may be shared by threads.
        self._lock = threading.RLock()
        self._owner_pid = os.getpid()
        self.resumed_from = "fresh"  # "local", "remote" or "fresh"
        self.resumed_from_location: str | None = None  # that place (redacted), None if fresh
        self._open(resume, segment_bytes)
        _left_open.add(self)

    # -- opening ---------------------------------------------------------------------------

    def _open(self, resume: ResumeMode, segment_bytes: int) -> None:
        """Open the checkpoint (`_opening`), keep what it returns, record the launch (and the
        results a set-aside history held), then start the mirror."""
        opened = open_sweep(self, self._items, self._sweep_root, resume, segment_bytes)
        self._writer, self._state = opened.writer, opened.state
        self.resumed_from, self.resumed_from_location = opened.source, opened.location
        try:
            for kind, payload, key, fp in opened.launch:
                if kind in LISTING_KINDS:  # large: not kept in memory once written
                    assert type(payload) is bytes
                    rec = self._writer.append_kept_on_disk(kind, payload, key=key, fp=fp)
                    del payload
                    self._state.apply(rec)
                else:
                    self._append(kind, payload, key=key, fp=fp)
            self._persisted_meta = canonical_json(self._state.meta)
            if self.meta:
                self._save_meta()
            else:
                self.meta = dict(decode(self._state.meta, where="meta"))
            for kind, payload, key, fp in opened.carried:
                self._append(kind, payload, key=key, fp=fp)
            owner = f"{self.launch_id}@{self.host}"
            self._mirror = opened.start_mirror(self.mirror_options, owner, self.signing_key)
        except BaseException:
            opened.writer.close()
            raise

    def _append(
        self,
        kind: str,
        payload: dict[str, Any] | bytes,
        key: str | None = None,
        fp: str | None = None,
    ) -> Record:
        # (the public methods checked the owner before taking the lock; the writer checks too)
        with self._lock:  # append and apply in one step: the state follows the journal's order
            if self._writer is None or self._closed:
                raise CheckpointClosedError(f"sweep {self.name!r} is closed")
            rec = self._writer.append(kind, payload, key=key, fp=fp)
            self._state.apply(rec)
            if self._mirror is not None:
                self._mirror.notify()
            return rec

    def _append_many(
        self, entries: list[tuple[str, dict[str, Any] | bytes, str | None, str | None]]
    ) -> list[Record]:
        self._check_owner()
        with self._lock:
            if self._writer is None or self._closed:
                raise CheckpointClosedError(f"sweep {self.name!r} is closed")
            recs = self._writer.append_many(entries)
            apply = self._state.apply
            for rec in recs:
                apply(rec)
            if self._mirror is not None:
                self._mirror.notify()
            return recs

    def _check_owner(self) -> None:
        """Only the process that opened the sweep records (checked before taking any lock: a
        forked child's copy of a lock may be held by a thread that does not exist there)."""
        if process_id() != self._owner_pid:
            raise foreign_process_error(
                f"sweep {self.name!r} ({self.progress_dir})", self._owner_pid
            )

    def _save_meta(self) -> None:
        """Record `meta` if it changed. Called before every record: an unchanged meta of
        plain values is recognised by a structural comparison with a private copy, without
        encoding it again."""
        with self._lock:
            if self._meta_seen is not None and _same_plain(self.meta, self._meta_seen):
                return
            enc = encode(dict(self.meta), what="meta")
            blob = canonical_json(enc)
            if blob != self._persisted_meta:
                self._append("meta", {"meta": enc})
                self._persisted_meta = blob
            self._meta_seen = copy.deepcopy(self.meta)

    def _checked_duration(self, key: str, duration: float | None) -> float | None:
        """A duration given for `key`, checked (None: measure it from `pending`)."""
        if duration is None:
            return None
        if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration >= 0):
            raise ConfigurationError(
                f"duration for item {key!r:.200} must be a finite number of seconds >= 0, "
                f"found {duration!r}"
            )
        return float(duration)

    def _duration(self, key: str, duration: float | None) -> float | None:
        duration = self._checked_duration(key, duration)
        started = self._yielded.pop(key, None)
        if duration is not None:
            return duration
        return None if started is None else time.monotonic() - started

    def record(self, item: Any, result: Any, *, duration: float | None = None) -> None:
        """Record `item`'s result durably; when this returns it survives SIGKILL and power loss.

        Thread-safe: the already-recorded check and the append happen under one lock, so of
        several threads recording one item exactly one succeeds and the others get
        `AlreadyRecordedError`.

        (The hot path of a sweep: one lookup per step, the value's JSON and the payload made
        outside the lock, one write and one fdatasync under it; see `_result_payload`.)
        """
        key = self._key_of(item)
        if process_id() != self._owner_pid:
            self._check_owner()
        results = self._state.results
        if key in results:
            self._check_not_done(key, "each item is recorded once")
        # outside the lock: CPU (the value's JSON, the item's fingerprint)
        duration = self._checked_duration(key, duration)  # (None: measured from `pending`)
        dur = _duration_json(duration, self._yielded.pop(key, None), False)
        body = self._result_payload(key, result, dur)
        fp = self._items.fingerprint(key, cache=False)
        with self._lock:
            if key in results:
                self._check_not_done(key, "each item is recorded once")
            meta, seen = self.meta, self._meta_seen  # (_meta_may_have_changed, inline)
            if not (type(meta) is dict and not meta and type(seen) is dict and not seen):
                self._save_meta()
            writer = self._writer
            if writer is None or self._closed:
                raise CheckpointClosedError(f"sweep {self.name!r} is closed")
            self._state.apply(writer.append("result", body, key=key, fp=fp))
            mirror = self._mirror
            if mirror is not None:
                mirror.notify()
        ids = self._yielded_ids
        if ids:
            ids.pop(id(item), None)
        if self._item_snapshots is not None:
            self._item_snapshots.recorded(key)

    def _key_of(self, item: Any) -> str:
        """The key of one of the sweep's items. An item just yielded by `pending` is known by
        its identity (the very object of the item list: its key was computed at the open),
        without calling the key function or hashing it again; a key function's str that is
        one of the list's keys needs no other check (they were all checked at the open)."""
        items = self._items
        ids = self._yielded_ids
        if ids:
            key = ids.get(id(item))
            if key is not None and items.items[items.index[key]] is item:
                return key
        key_fn = items.key_fn
        if key_fn is None:
            return items.key_of(item)  # the default key, or the error saying what is wrong
        key = key_fn(item)
        if type(key) is str and key in items.index:
            return key
        return items.key_of(item, key)  # the error saying what is wrong

    def _result_payload(
        self, key: str, result: Any, duration: bytes, value: bytes | None = None
    ) -> bytes:
        """The payload of a result record, as `journal.dumps` would make it from
        {"value": encode(result), "duration": duration, "launch": launch_id}: the value's JSON
        between a fixed prefix and the sweep's fixed suffix (the reports read it from the
        end); `duration` is its JSON with the comma before it (see `_duration_json`); `value`:
        the result's JSON if made already (`_listing.values_json`)."""
        if value is None and type(result) is EncodedResult:
            value = result.json
        elif value is None:
            try:
                value = encode_json(result, what="")
            except UnsupportedValueError:  # again, for the message naming the item
                value = encode_json(result, what=f"the result of item {key!r}")
        return b'{"value":%s%s%s' % (value, duration, self._result_tail)

    def _meta_may_have_changed(self) -> bool:
        """False when `meta` is, as when last saved, an empty dict (checked per record; the
        full comparison is `_save_meta`'s)."""
        meta, seen = self.meta, self._meta_seen
        return not (type(meta) is dict and not meta and type(seen) is dict and not seen)

    def item_snapshot(self, item: Any) -> Any:
        """A handle to restore and save `item`'s state mid-run (`resumable._item_snapshot`)."""
        from ._item_snapshot import ItemSnapshot

        return ItemSnapshot(self._snapshots_of_items(), self._items.key_of(item))

    def _snapshots_of_items(self) -> Any:
        from ._item_snapshot import ItemSnapshots

        snaps = self._item_snapshots  # no lock: the preemption watchdog calls this too
        if snaps is None:
            snaps = self._item_snapshots = ItemSnapshots(self)
        return snaps

    def record_many(
        self,
        pairs: Iterable[tuple[Any, Any]],
        *,
        durations: Iterable[float | None] | None = None,
    ) -> int:
        """Record many `(item, result)` pairs durably with one fdatasync (group commit).

        When this returns every pair survives SIGKILL and power loss; if it raises, none was
        acknowledged (a crash mid-way may leave some durable: a relaunch sees them, each once).
        Everything is checked before anything is written: each item must be one of the sweep's,
        not recorded yet and not twice in `pairs`, and each result storable. Returns the count.
        """
        pairs = list(pairs)
        times = [None] * len(pairs) if durations is None else list(durations)
        if len(times) != len(pairs):
            raise ConfigurationError(
                f"record_many got {len(pairs)} pairs but {len(times)} durations"
            )
        self._check_owner()
        prepared: list[tuple[str, Any, float | None]] = []
        seen: set[str] = set()
        results = self._state.results
        key_of, checked = self._key_of, self._checked_duration
        for (item, result), duration in zip(pairs, times, strict=True):
            key = key_of(item)
            if key in seen:
                raise AlreadyRecordedError(
                    f"item {key!r} appears twice in one record_many call; each item is "
                    "recorded once"
                )
            seen.add(key)
            if key in results:
                self._check_not_done(key, "each item is recorded once")
            prepared.append((key, result, None if duration is None else checked(key, duration)))
        rows = self._prepare_results(prepared)
        ids = self._yielded_ids
        if ids:
            for item, _ in pairs:
                ids.pop(id(item), None)
        return rows

    def _prepare_results(
        self, rows: list[tuple[str, Any, float | None]], measured: bool = False
    ) -> int:
        """Record (key, result, duration) rows of known, distinct keys with one fdatasync;
        everything is encoded (outside the lock) before anything is written. A duration not
        given is measured from when `pending` yielded the item (`measured`: all were measured
        by the caller). Returns the count.

        The garbage collector is paused meanwhile (as while a checkpoint is replayed): a group
        makes thousands of small acyclic objects, and the collections they would set off
        traverse every object of the process (the items, the results so far) again and again."""
        with gc_paused():
            return self._commit_rows(rows, measured)

    def _commit_rows(self, rows: list[tuple[str, Any, float | None]], measure: bool) -> int:
        entries: list[tuple[str, dict[str, Any] | bytes, str | None, str | None]] = []
        add = entries.append
        pop_started = self._yielded.pop
        payload = self._result_payload
        # the items' fingerprints and the values' JSON, in bulk; a pool's worker may have sent
        # both along
        fps = iter(
            self._items.fingerprints(
                [k for k, r, _ in rows if type(r) is not EncodedResult or not r.has_fp]
            )
        )
        values = iter(values_json([r for _, r, _ in rows if type(r) is not EncodedResult]))
        for key, result, duration in rows:
            dur = _duration_json(duration, pop_started(key, None), measure)
            encoded = type(result) is EncodedResult
            value = None if encoded else next(values)
            fp = result.fp if encoded and result.has_fp else next(fps)
            add(("result", payload(key, result, dur, value), key, fp))
        if not entries:
            return 0
        with self._lock:
            results = self._state.results
            for row in rows:
                if row[0] in results:
                    self._check_not_done(row[0], "each item is recorded once")
            if self._meta_may_have_changed():
                self._save_meta()
            self._append_many(entries)
        return len(entries)

    def fingerprints_in_workers(self) -> bool:
        """Whether `encode_result` should compute the items' fingerprints (not with the
        default keys: the key is the fingerprint)."""
        return self._items.key_fn is not None

    def record_by_key(self, rows: list[tuple[str, Any, float | None]]) -> int:
        """`record_many` for `sweep.run` and executors built on it (public so that the runner
        needs no private access): (key, result, duration) of items it took from
        `pending_with_keys` (distinct keys of the sweep's items, so not looked up again), with
        the durations it measured; a result may come as an `EncodedResult` (see
        `fingerprints_in_workers`)."""
        self._check_owner()
        return self._prepare_results(rows, measured=True)

    def _check_not_done(self, key: str, why: str) -> None:
        if key in self._state.results:
            raise AlreadyRecordedError(
                f"item {key!r} is already recorded as done in {self.progress_dir}; {why}"
            )

    def record_failure(
        self, item: Any, error: BaseException | str, *, duration: float | None = None
    ) -> None:
        """Record that `item` failed; a plain re-run skips it until retried on purpose."""
        key = self._key_of(item)
        self._check_owner()
        self._check_not_done(key, "it cannot be recorded as failed")
        if isinstance(error, BaseException):
            etype = type(error).__qualname__
            message = _text(error)
            tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        else:
            etype, message, tb = "Error", str(error), ""
        etype, message, tb = (_utf8(x) for x in (etype, message, tb))
        with self._lock:
            self._check_not_done(key, "it cannot be recorded as failed")
            self._save_meta()
            self._append(
                "failure",
                {
                    "error_type": etype,
                    "message": message[:MAX_TRACEBACK_CHARS],
                    "traceback": tb[-MAX_TRACEBACK_CHARS:],
                    "attempt": self._state.attempts.get(key, 0) + 1,
                    "duration": self._duration(key, duration),
                    "launch": self.launch_id,
                },
                key=key,
                fp=self._items.fingerprint(key, cache=False),
            )
        self._yielded_ids.pop(id(item), None)

    def retry_failures(self, keys: Iterable[str] | None = None) -> list[str]:
        """Durably mark failed items (all, or the given keys) as pending again."""
        keys = None if keys is None else list(keys)
        self._check_owner()
        with self._lock:
            wanted = (
                list(self._state.failures)
                if keys is None
                else [k for k in keys if k in self._state.failures]
            )
            if wanted:
                self._append("retry", {"keys": wanted, "reason": "asked"})
            return wanted

    # -- iteration ---------------------------------------------------------------------------

    def _is_pending(self, key: str) -> bool:
        if key in self._state.results:
            return False
        return self.retry_failed or key not in self._state.failures

    @property
    def pending(self) -> Iterator[Any]:
        """Unfinished items in the given order, each once; a fresh iteration per access."""
        return self._iter_pending()

    def _iter_pending(self) -> Iterator[Any]:
        ids = self._yielded_ids
        for key, item in self.pending_with_keys():
            ids[id(item)] = key
            yield item

    def pending_with_keys(self, *, safe_points: bool = True) -> Iterator[tuple[str, Any]]:
        """(key, item) of unfinished items, in order, each once (what `pending` yields, for
        `sweep.run`, which records by key). Each yield is a safe point, unless `safe_points` is
        False (H5: `sweep.run` on a pool, which looks at the guard itself between batches)."""
        items = self._items
        state = self._state
        yielded = self._yielded
        monotonic = time.monotonic
        for key, item in zip(items.keys, items.items, strict=True):
            if key in state.results or (not self.retry_failed and key in state.failures):
                continue
            if safe_points:
                self.checkpoint_if_preempted()  # a safe point: nothing of ours is in flight
            yielded[key] = monotonic()
            yield key, item

    @property
    def guard(self) -> PreemptionGuard | None:
        """The preemption guard in force: this sweep's own, or an enclosing one."""
        return self._guard if self._guard is not None else current_guard()

    def checkpoint_if_preempted(self) -> None:
        """Safe point: if preemption was requested, flush the mirror and exit with code 75.

        `pending` calls this before yielding each item, so code after the user's loop (which
        would believe the sweep finished) never runs; the exit is a `Preempted` (SystemExit).
        """
        guard = self.guard
        if guard is not None and guard.preempted:
            guard.exit()

    @property
    def own_guard(self) -> PreemptionGuard | None:
        """The guard this sweep installed itself (inside its with-block), else None."""
        return self._guard

    def new_guard(self) -> PreemptionGuard:
        """A new (not yet entered) guard as this sweep installs: its `signals`, its grace period,
        and `flush_on_preemption` as the flush (`sweep.run` uses it outside a with-block)."""
        return PreemptionGuard(
            flush=[self.flush_on_preemption], signals=self._signals, grace_s=self._grace_s
        )

    def flush_on_preemption(self, remaining_s: float) -> None:
        """Note the items in flight as interrupted and bring the mirror up to date within
        `remaining_s` seconds. Run by the guard at the safe point, or by its watchdog when none
        comes in time (a guard of your own can take it as a flush callable).

        A mirror that cannot be brought up to date in the time left is one log line, not a
        traceback: the local checkpoint has every record either way.
        """
        in_flight = list(self._yielded)  # yielded, not yet recorded: interrupted now
        if in_flight:
            try:
                self._snapshots_of_items().note_preempted(in_flight)
            except ResumableError as exc:
                log.warning("could not note the items in flight at preemption: %s", exc)
        if self._mirror is None:
            return
        try:
            self._mirror.flush(timeout=max(0.1, remaining_s - 0.5))
        except ResumableError as exc:
            log.warning(
                "preemption: the mirror of sweep %r is not up to date (%s: %s); every record "
                "is in the local checkpoint %s",
                self.name,
                type(exc).__name__,
                exc,
                self.progress_dir,
            )

    @property
    def completed(self) -> Iterator[Any]:
        """Results of finished items (this run's too), in record order."""
        return (result for _, result in self._iter_completed())

    def completed_items(self) -> Iterator[tuple[Any, Any]]:
        """(item, result) pairs of finished items, in record order."""
        return self._iter_completed()

    def _iter_completed(self) -> Iterator[tuple[Any, Any]]:
        index = self._items.index
        for key, rec in list(self._state.results.items()):
            idx = index.get(key)
            if idx is None:
                continue
            yield self._items.items[idx], self._decode_result(key, rec)

    def result(self, item: Any) -> Any:
        """The recorded result of one item (KeyError if it is not done)."""
        key = self._items.key_of(item)
        return self._decode_result(key, self._state.results[key])

    def _decode_result(self, key: str, rec: Record) -> Any:
        where = f"{rec.source}: result of item {key!r:.200} (record {rec.seq})"
        return decode(rec.body().get("value"), where=where)

    def is_done(self, item: Any) -> bool:
        return self._items.key_of(item) in self._state.results

    def key(self, item: Any) -> str:
        return self._items.key_of(item)

    def seed(self, item: Any) -> int:
        """A stable 63-bit seed derived from the item's key (same on every rerun and machine)."""
        return self.seed_of_key(self._items.key_of(item))

    def seed_of_key(self, key: str) -> int:
        """The seed `sweep.run` passes as `fn(item, seed=...)` to the item with this key: 63 bits
        of SHA-256 of the key, the same on every launch and machine."""
        digest = hashlib.sha256(b"resumable-seed\0" + key.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)

    def rows(self) -> Iterator[tuple[str, Any, Any]]:
        """(key, item, result) of finished items, in record order (for exporters)."""
        for key, rec in list(self._state.results.items()):
            idx = self._items.index.get(key)
            if idx is not None:
                yield key, self._items.items[idx], self._decode_result(key, rec)

    def export_h5(self, path: str | os.PathLike[str]) -> Path:
        """Write every completed result into one HDF5 file, atomically (see export.py)."""
        from .export import write_h5

        return write_h5(self.rows(), path, sweep=self.name, meta=self.meta)

    def run(
        self,
        fn: Callable[[Any], Any],
        executor: Any = None,
        max_in_flight: int | None = None,
        progress: bool | None = None,
        max_failures: int | None = None,
    ) -> Any:
        """Run every pending item through `fn` (see runner.py); returns a summary.

        `max_failures`: raise `TooManyFailuresError` once more items than that failed in this
        run (None: the default rule of runner.py, which stops a run whose every item fails).
        """
        from .runner import run_sweep

        return run_sweep(
            self,
            fn,
            executor=executor,
            max_in_flight=max_in_flight,
            progress=progress,
            max_failures=max_failures,
        )

    # -- status and lifecycle -----------------------------------------------------------------

    def status(self) -> SweepStatus:
        return SweepStatus.from_state(
            name=self.name,
            state=self._state,
            keys=self._items.keys,
            launch_id=self.launch_id,
            location=str(self.progress_dir),
            verified=True,
            mirror=self._mirror.status() if self._mirror is not None else None,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def flush(self, timeout: float | None = None) -> None:
        """Bring the mirror fully up to date now; raises if it cannot (no-op without a mirror).

        Records are durable locally when `record()` returns, whatever happens here.
        """
        self._check_owner()
        with self._lock:
            if self._writer is not None and self._writer.broken is None and not self._closed:
                self._save_meta()
        if self._mirror is not None:
            self._mirror.flush(timeout)
        if self._item_snapshots is not None:
            self._item_snapshots.flushed()

    def close(self, timeout: float | None = None) -> None:
        """Persist `meta`, flush the mirror, release the checkpoint. Idempotent.

        Raises if the mirror cannot be brought up to date; the checkpoint is released anyway.
        """
        if os.getpid() != self._owner_pid:
            self._close_inherited()
            return
        with self._lock:  # no record of another thread lands half-way through the close
            if self._closed:
                return
            try:
                if self._writer is not None and self._writer.broken is None:
                    self._save_meta()
                if self._mirror is not None:
                    self._mirror.close(timeout)
                if self._item_snapshots is not None:
                    self._item_snapshots.flushed()
            finally:
                self._closed = True
                _left_open.discard(self)
                if self._writer is not None:
                    self._writer.close()

    def _close_inherited(self) -> None:
        """Close in a forked child: release inherited descriptors only. No meta is saved, the
        mirror is not flushed (its threads live in the parent) and the parent's lock stays."""
        self._closed = True
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> ResumableSweep:
        """Install preemption handling (main thread only; see `handle_signals`)."""
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            guard = self.new_guard()
            guard.__enter__()
            self._guard = guard
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        guard, self._guard = self._guard, None
        try:
            if isinstance(exc, Preempted) and guard is not None:
                try:  # the local checkpoint has everything; the mirror gets what time allows
                    self.close(timeout=max(0.1, guard.remaining_s() - 0.5))
                except ResumableError as err:
                    log.error("closing the preempted sweep %r: %s", self.name, err)
            else:
                self.close()
        finally:
            if guard is not None:
                guard.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        s = self.status()
        return (
            f"<ResumableSweep {self.name!r} done={s.done} failed={s.failed} "
            f"pending={s.pending} at {str(self.progress_dir)!r}>"
        )


class _OpenSweeps:
    """Sweeps opened by this process and not closed yet, closed at interpreter exit.

    A finished sweep left without `with` or close() would otherwise exit with its mirror
    behind (the mirror thread is a daemon), and a new machine would redo what it lacks.
    Strong references: a sweep dropped unclosed is still closed at exit. A forked child
    inherits the parent's set and leaves it alone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sweeps: dict[int, tuple[int, ResumableSweep]] = {}

    def add(self, sweep: ResumableSweep) -> None:
        with self._lock:
            self._sweeps[id(sweep)] = (os.getpid(), sweep)

    def discard(self, sweep: ResumableSweep) -> None:
        with self._lock:
            self._sweeps.pop(id(sweep), None)

    def close_all(self) -> None:
        with self._lock:
            mine = [s for pid, s in self._sweeps.values() if pid == os.getpid()]
        # one budget for all: the longest flush timeout among them (not one each, in turn)
        budget = max((s.mirror_options.flush_timeout_s for s in mine), default=0.0)
        deadline = time.monotonic() + budget
        for sweep in mine:
            try:
                sweep.close(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                log.warning(
                    "sweep %r was left open and could not be closed at exit (%s: %s); every "
                    "record is in its local checkpoint %s",
                    sweep.name,
                    type(exc).__name__,
                    exc,
                    sweep.progress_dir,
                )


_left_open = _OpenSweeps()
atexit.register(_left_open.close_all)


def _duration_json(duration: float | None, started: float | None, measured: bool) -> bytes:
    """A result payload's duration with the comma before it: the one given (written exactly,
    or to the microsecond if the caller `measured` it), else measured from `started` (when
    `pending` yielded the item) to now, to the microsecond (a float's shortest repr costs as
    much as the rest of the payload), else null."""
    if duration is None:
        if started is None:
            return b',"duration":null'
        return b',"duration":%.6f' % (time.monotonic() - started)
    return (b',"duration":%.6f' if measured else b',"duration":%r') % duration


def _same_plain(a: Any, b: Any) -> bool:
    """True only if `a` and `b` are equal plain JSON-like values of exactly the same types
    (1, 1.0 and True differ, so do 0.0 and -0.0); anything else (numpy values...) is False."""
    t = type(a)
    if t is not type(b):
        return False
    if t is dict:
        return a.keys() == b.keys() and all(_same_plain(v, b[k]) for k, v in a.items())
    if t is list or t is tuple:
        return len(a) == len(b) and all(map(_same_plain, a, b))
    if t is float:
        return (a == b and math.copysign(1.0, a) == math.copysign(1.0, b)) or (a != a and b != b)
    return (t is str or t is int or t is bool or a is None) and a == b


def _text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception as exc:  # a broken __str__ must not hide the failure being recorded
        return f"<str() of the error failed: {type(exc).__name__}>"


def _utf8(text: str) -> str:
    """Text that encodes as UTF-8 (lone surrogates from os.fsdecode become escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _from_env(value: str | None, var: str) -> str | None:
    if value is None:
        value = os.environ.get(var)
    return value or None
