"""The open checkpoint of a sweep, as the sweep writes it: its writer, the replayed state each
record is applied to, the mirror told of each, and the one lock around every check-and-append.

`ResumableSweep` (sweep.py) owns one `SweepJournal` from its open to its close. Every record of
the sweep goes through here except `record()`'s own: that hot path reads these public
attributes itself, to add no call per record. Under `lock`, an item is checked not done and
its record appended durably, then applied to `state` (so the state follows the journal's
order); `meta` is recorded first whenever it changed (see _sweep_meta.py). Only the process
that opened the sweep writes (`check_owner`). The item snapshots kept beside the checkpoint
(`_item_snapshot`, made on first use by the sweep) are brought up to date with it by `flush`
and `close`.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._checkpoint import CheckpointWriter, foreign_process_error, process_id
from ._codec import canonical_json, decode, encode
from ._gcpause import gc_paused
from ._itemlist import LISTING_KINDS
from ._items import ItemSet
from ._journal import Record
from ._mirror import Mirror, MirrorOptions
from ._record_payload import Entry, failure_duration, failure_payload, result_entries
from ._state import State
from ._sweep_meta import meta_may_have_changed, same_plain
from .errors import AlreadyRecordedError, CheckpointClosedError

if TYPE_CHECKING:
    from ._opening import Opened


class SweepJournal:
    """The sweep `name`'s checkpoint in `progress_dir`, open for writing by this process."""

    state: State  # the replayed journal; set by `open`, like persisted_meta
    persisted_meta: bytes  # canonical JSON of the meta last recorded

    def __init__(self, name: str, progress_dir: Path) -> None:
        self.name = name
        self.progress_dir = progress_dir
        # One lock around every check-and-append (see `record`): a sweep may be shared by threads.
        self.lock = threading.RLock()
        self.owner_pid = os.getpid()
        self.writer: CheckpointWriter | None = None
        self.mirror: Mirror | None = None
        self.closed = False
        self.meta_seen: Any = None  # a copy of `meta` as last saved (see save_meta)
        self.item_snapshots: Any = None  # item_snapshot.ItemSnapshots, made on first use

    def open(
        self,
        opened: Opened,
        meta: dict[str, Any],
        mirror_options: MirrorOptions,
        owner: str,
        signing_key: bytes | None,
    ) -> dict[str, Any]:
        """Keep what opening returned (`_opening`), record the launch (and the results a
        set-aside history held), then start the mirror. Returns the sweep's `meta`: the one
        given, recorded if it changed, or if empty the one recorded last."""
        self.writer, self.state = opened.writer, opened.state
        try:
            for kind, payload, key, fp in opened.launch:
                if kind in LISTING_KINDS:  # large: not kept in memory once written
                    assert type(payload) is bytes
                    rec = self.writer.append_kept_on_disk(kind, payload, key=key, fp=fp)
                    del payload
                    self.state.apply(rec)
                else:
                    self.append(kind, payload, key=key, fp=fp)
            self.persisted_meta = canonical_json(self.state.meta)
            if meta:
                self.save_meta(meta)
            else:
                meta = dict(decode(self.state.meta, where="meta"))
            for kind, payload, key, fp in opened.carried:
                self.append(kind, payload, key=key, fp=fp)
            self.mirror = opened.start_mirror(mirror_options, owner, signing_key)
        except BaseException:
            opened.writer.close()
            raise
        return meta

    def check_owner(self) -> None:
        """Only the process that opened the sweep records (checked before taking any lock: a
        forked child's copy of a lock may be held by a thread that does not exist there)."""
        if process_id() != self.owner_pid:
            raise foreign_process_error(
                f"sweep {self.name!r} ({self.progress_dir})", self.owner_pid
            )

    def close_inherited(self) -> None:
        """Close in a forked child: release inherited descriptors only. No meta is saved, the
        mirror is not flushed (its threads live in the parent) and the parent's lock stays."""
        self.closed = True
        if self.writer is not None:
            self.writer.close()

    def check_not_done(self, key: str, why: str) -> None:
        if key in self.state.results:
            raise AlreadyRecordedError(
                f"item {key!r} is already recorded as done in {self.progress_dir}; {why}"
            )

    def append(
        self,
        kind: str,
        payload: dict[str, Any] | bytes,
        key: str | None = None,
        fp: str | None = None,
    ) -> Record:
        # (the public methods checked the owner before taking the lock; the writer checks too)
        with self.lock:  # append and apply in one step: the state follows the journal's order
            if self.writer is None or self.closed:
                raise CheckpointClosedError(f"sweep {self.name!r} is closed")
            rec = self.writer.append(kind, payload, key=key, fp=fp)
            self.state.apply(rec)
            if self.mirror is not None:
                self.mirror.notify()
            return rec

    def append_many(self, entries: list[Entry]) -> list[Record]:
        self.check_owner()
        with self.lock:
            if self.writer is None or self.closed:
                raise CheckpointClosedError(f"sweep {self.name!r} is closed")
            recs = self.writer.append_many(entries)
            apply = self.state.apply
            for rec in recs:
                apply(rec)
            if self.mirror is not None:
                self.mirror.notify()
            return recs

    def save_meta(self, meta: dict[str, Any]) -> None:
        """Record `meta` if it changed. Called before every record: an unchanged meta of
        plain values is recognised by a structural comparison with a private copy, without
        encoding it again."""
        with self.lock:
            if self.meta_seen is not None and same_plain(meta, self.meta_seen):
                return
            enc = encode(dict(meta), what="meta")
            blob = canonical_json(enc)
            if blob != self.persisted_meta:
                self.append("meta", {"meta": enc})
                self.persisted_meta = blob
            self.meta_seen = copy.deepcopy(meta)

    def commit_results(
        self,
        rows: list[tuple[str, Any, float | None]],
        measured: bool,
        items: ItemSet,
        pop_started: Callable[[str, None], float | None],
        tail: bytes,
        meta: dict[str, Any],
    ) -> int:
        """Record (key, result, duration) rows of known, distinct keys with one fdatasync;
        everything is encoded (outside the lock) before anything is written. A duration not
        given is measured from when `pending` yielded the item (`pop_started`; `measured`: all
        were measured by the caller); `tail` and `meta` are the sweep's (see `result_entries`,
        `save_meta`). Returns the count.

        The garbage collector is paused meanwhile (as while a checkpoint is replayed): a group
        makes thousands of small acyclic objects, and the collections they would set off
        traverse every object of the process (the items, the results so far) again and again."""
        with gc_paused():
            entries = result_entries(rows, measured, items, pop_started, tail)
            if not entries:
                return 0
            with self.lock:
                results = self.state.results
                for row in rows:
                    if row[0] in results:
                        self.check_not_done(row[0], "each item is recorded once")
                if meta_may_have_changed(meta, self.meta_seen):
                    self.save_meta(meta)
                self.append_many(entries)
            return len(entries)

    def record_failure(
        self,
        key: str,
        text: tuple[str, str, str],
        duration: float | None,
        yielded: dict[str, float],
        launch: str,
        items: ItemSet,
        meta: dict[str, Any],
    ) -> None:
        """Record that the item `key` failed (`text`: see `failure_payload`), `meta` first if
        it changed; its duration is the one given, else measured (`failure_duration`)."""
        with self.lock:
            self.check_not_done(key, "it cannot be recorded as failed")
            self.save_meta(meta)
            self.append(
                "failure",
                failure_payload(
                    text,
                    self.state.attempts.get(key, 0) + 1,
                    failure_duration(key, duration, yielded),
                    launch,
                ),
                key=key,
                fp=items.fingerprint(key, cache=False),
            )

    def flush(self, meta: dict[str, Any], timeout: float | None) -> None:
        """Record `meta` if it changed (unless closed or broken), then bring the mirror fully up
        to date (raises if it cannot; no-op without a mirror) and flush the item snapshots."""
        self.check_owner()
        with self.lock:
            if self.writer is not None and self.writer.broken is None and not self.closed:
                self.save_meta(meta)
        if self.mirror is not None:
            self.mirror.flush(timeout)
        if self.item_snapshots is not None:
            self.item_snapshots.flushed()

    def close(self, meta: dict[str, Any], timeout: float | None) -> None:
        """Record `meta` if it changed (unless broken), close the mirror, flush the item
        snapshots, release the checkpoint. Idempotent.

        Raises if the mirror cannot be brought up to date; the checkpoint is released anyway.
        """
        with self.lock:  # no record of another thread lands half-way through the close
            if self.closed:
                return
            try:
                if self.writer is not None and self.writer.broken is None:
                    self.save_meta(meta)
                if self.mirror is not None:
                    self.mirror.close(timeout)
                if self.item_snapshots is not None:
                    self.item_snapshots.flushed()
            finally:
                self.closed = True
                if self.writer is not None:
                    self.writer.close()

    def retry(self, keys: list[str] | None) -> list[str]:
        """Durably mark failed items (all, or those of `keys`) as pending again."""
        with self.lock:
            wanted = (
                list(self.state.failures)
                if keys is None
                else [k for k in keys if k in self.state.failures]
            )
            if wanted:
                self.append("retry", {"keys": wanted, "reason": "asked"})
            return wanted
