"""`ResumableSweep`: a loop over independent items that survives preemption.

Opening a sweep materialises the items, checks their keys, and verifies and replays the local
checkpoint (see _checkpoint.py). `pending` then yields only unfinished items; `record()` makes a
result durable before it returns. A relaunch sees every acknowledged record exactly once.

Below it: _sweep_args (constructor checks), _sweep_journal (the open checkpoint it writes),
_record_payload, _sweep_items, _sweep_meta and _sweep_exit; `record()`'s hot path stays here.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from . import _signing as signing
from . import _sweep_items as sweep_items
from ._checkpoint import DEFAULT_SEGMENT_BYTES, process_id, progress_dir_for
from ._codec import encode
from ._items import ItemSet
from ._mirror import MirrorOptions
from ._opening import open_sweep
from ._record_payload import (
    checked_duration,
    duration_json,
    failure_text,
    result_payload,
)
from ._retry import RetryOutcome as RetryOutcome  # re-exported: resumable.sweep.RetryOutcome
from ._retry import retry_failed as retry_failed  # re-exported: resumable.sweep.retry_failed
from ._sweep_args import (
    ENV_RESUME_FROM,
    ENV_SNAPSHOT_DIR,
    OnChange,
    ResumeMode,
    check_key_lengths,
    check_modes,
    from_env,
    shard_places,
    sweep_name,
)
from ._sweep_exit import exit_guarded, flush_at_preemption, left_open
from ._sweep_items import key_of_item
from ._sweep_journal import SweepJournal
from ._worker import EncodedResult as EncodedResult  # (H5) there: pool workers import it alone
from .errors import AlreadyRecordedError, CheckpointClosedError, ConfigurationError
from .preempt import PreemptionGuard, current_guard, resolve_grace_s
from .shards import check_shard
from .status import SweepStatus

log = logging.getLogger(__name__)


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
        check_modes(resume, on_change, segment_bytes)
        self.checkpoint_path = Path(checkpoint_path)
        self.name = sweep_name(name, checkpoint_path)
        self.shard = check_shard(shard) if shard is not None else None
        # absolute: a later os.chdir() must not move the checkpoint under the sweep's feet
        self.progress_dir = progress_dir_for(self.checkpoint_path).absolute()
        self.resume_from = from_env(resume_from, ENV_RESUME_FROM)
        self.snapshot_dir = from_env(snapshot_dir, ENV_SNAPSHOT_DIR)
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
        check_key_lengths(self._items)
        if self.shard is not None:  # this shard's items, in a subdirectory of each place
            self._items, self.progress_dir, self.resume_from, self.snapshot_dir = shard_places(
                self.shard, self._items, self.progress_dir, self.resume_from, self.snapshot_dir
            )
        self.launch_id = uuid.uuid4().hex[:12]
        # every result payload ends so: {"value":...,"duration":...,"launch":"<id>"}
        self._result_tail = b',"launch":"%s"}' % self.launch_id.encode("ascii")
        self.host = socket.gethostname()
        self._yielded: dict[str, float] = {}  # key -> when `pending` yielded it
        self._yielded_ids: dict[int, str] = {}  # id(item) -> key, of items yielded (key_of_item)
        # the checkpoint's writer, state, mirror, lock and item snapshots: _sweep_journal.py
        self._journal = SweepJournal(self.name, self.progress_dir)
        self.resumed_from = "fresh"  # "local", "remote" or "fresh"
        self.resumed_from_location: str | None = None  # that place (redacted), None if fresh
        self._open(resume, segment_bytes)
        left_open.add(self)

    # -- opening ---------------------------------------------------------------------------

    def _open(self, resume: ResumeMode, segment_bytes: int) -> None:
        """Open the checkpoint (`_opening`), then record the launch and start the mirror
        (`SweepJournal.open`)."""
        opened = open_sweep(self, self._items, self._sweep_root, resume, segment_bytes)
        self.resumed_from, self.resumed_from_location = opened.source, opened.location
        owner = f"{self.launch_id}@{self.host}"
        self.meta = self._journal.open(
            opened, self.meta, self.mirror_options, owner, self.signing_key
        )

    def record(self, item: Any, result: Any, *, duration: float | None = None) -> None:
        """Record `item`'s result durably; when this returns it survives SIGKILL and power loss.

        Thread-safe: the already-recorded check and the append happen under one lock, so of
        several threads recording one item exactly one succeeds and the others get
        `AlreadyRecordedError`.

        (The hot path of a sweep: one lookup per step, the value's JSON and the payload made
        outside the lock, one write and one fdatasync under it; see `_record_payload`.)
        """
        key = key_of_item(self._items, self._yielded_ids, item)
        journal = self._journal
        if process_id() != journal.owner_pid:
            journal.check_owner()
        results = journal.state.results
        if key in results:
            journal.check_not_done(key, "each item is recorded once")
        # outside the lock: CPU (the value's JSON, the item's fingerprint)
        duration = checked_duration(key, duration)  # (None: measured from `pending`)
        dur = duration_json(duration, self._yielded.pop(key, None), False)
        body = result_payload(key, result, dur, self._result_tail)
        fp = self._items.fingerprint(key, cache=False)
        with journal.lock:
            if key in results:
                journal.check_not_done(key, "each item is recorded once")
            meta, seen = self.meta, journal.meta_seen  # (meta_may_have_changed, inline)
            if not (type(meta) is dict and not meta and type(seen) is dict and not seen):
                journal.save_meta(meta)
            writer = journal.writer
            if writer is None or journal.closed:
                raise CheckpointClosedError(f"sweep {self.name!r} is closed")
            journal.state.apply(writer.append("result", body, key=key, fp=fp))
            mirror = journal.mirror
            if mirror is not None:
                mirror.notify()
        ids = self._yielded_ids
        if ids:
            ids.pop(id(item), None)
        snaps = journal.item_snapshots
        if snaps is not None:
            snaps.recorded(key)

    def item_snapshot(self, item: Any) -> Any:
        """A handle to restore and save `item`'s state mid-run (`resumable._item_snapshot`)."""
        from ._item_snapshot import ItemSnapshot

        return ItemSnapshot(self._snapshots_of_items(), self._items.key_of(item))

    def _snapshots_of_items(self) -> Any:
        from ._item_snapshot import ItemSnapshots

        snaps = self._journal.item_snapshots  # no lock: the preemption watchdog calls this too
        if snaps is None:
            snaps = self._journal.item_snapshots = ItemSnapshots(self)
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
        self._journal.check_owner()
        prepared: list[tuple[str, Any, float | None]] = []
        seen: set[str] = set()
        results = self._journal.state.results
        items, ids = self._items, self._yielded_ids
        key_of, checked = key_of_item, checked_duration
        for (item, result), duration in zip(pairs, times, strict=True):
            key = key_of(items, ids, item)
            if key in seen:
                raise AlreadyRecordedError(
                    f"item {key!r} appears twice in one record_many call; each item is "
                    "recorded once"
                )
            seen.add(key)
            if key in results:
                self._journal.check_not_done(key, "each item is recorded once")
            prepared.append((key, result, None if duration is None else checked(key, duration)))
        rows = self._journal.commit_results(
            prepared, False, self._items, self._yielded.pop, self._result_tail, self.meta
        )
        ids = self._yielded_ids
        if ids:
            for item, _ in pairs:
                ids.pop(id(item), None)
        return rows

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
        self._journal.check_owner()
        return self._journal.commit_results(
            rows, True, self._items, self._yielded.pop, self._result_tail, self.meta
        )

    def record_failure(
        self, item: Any, error: BaseException | str, *, duration: float | None = None
    ) -> None:
        """Record that `item` failed; a plain re-run skips it until retried on purpose."""
        key = key_of_item(self._items, self._yielded_ids, item)
        journal = self._journal
        journal.check_owner()
        journal.check_not_done(key, "it cannot be recorded as failed")
        text = failure_text(error)
        journal.record_failure(
            key, text, duration, self._yielded, self.launch_id, self._items, self.meta
        )
        self._yielded_ids.pop(id(item), None)

    def retry_failures(self, keys: Iterable[str] | None = None) -> list[str]:
        """Durably mark failed items (all, or the given keys) as pending again."""
        keys = None if keys is None else list(keys)
        self._journal.check_owner()
        return self._journal.retry(keys)

    # -- iteration ---------------------------------------------------------------------------

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
        return sweep_items.pending_with_keys(
            self, self._items, self._journal.state, self._yielded, safe_points
        )

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
        flush_at_preemption(
            in_flight,
            self._snapshots_of_items,
            self._journal.mirror,
            self.name,
            self.progress_dir,
            remaining_s,
        )

    @property
    def completed(self) -> Iterator[Any]:
        """Results of finished items (this run's too), in record order."""
        return (r for _, r in sweep_items.iter_completed(self._items, self._journal.state))

    def completed_items(self) -> Iterator[tuple[Any, Any]]:
        """(item, result) pairs of finished items, in record order."""
        return sweep_items.iter_completed(self._items, self._journal.state)

    def result(self, item: Any) -> Any:
        """The recorded result of one item (KeyError if it is not done)."""
        key = self._items.key_of(item)
        return sweep_items.decode_result(key, self._journal.state.results[key])

    def is_done(self, item: Any) -> bool:
        return self._items.key_of(item) in self._journal.state.results

    def key(self, item: Any) -> str:
        return self._items.key_of(item)

    def seed(self, item: Any) -> int:
        """A stable 63-bit seed derived from the item's key (same on every rerun and machine)."""
        return self.seed_of_key(self._items.key_of(item))

    def seed_of_key(self, key: str) -> int:
        """The seed `sweep.run` passes as `fn(item, seed=...)` to the item with this key: 63 bits
        of SHA-256 of the key, the same on every launch and machine."""
        return sweep_items.seed_of_key(key)

    def rows(self) -> Iterator[tuple[str, Any, Any]]:
        """(key, item, result) of finished items, in record order (for exporters)."""
        return sweep_items.rows(self._items, self._journal.state)

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
            state=self._journal.state,
            keys=self._items.keys,
            launch_id=self.launch_id,
            location=str(self.progress_dir),
            verified=True,
            mirror=self._journal.mirror.status() if self._journal.mirror is not None else None,
        )

    @property
    def closed(self) -> bool:
        return self._journal.closed

    def flush(self, timeout: float | None = None) -> None:
        """Bring the mirror fully up to date now; raises if it cannot (no-op without a mirror).

        Records are durable locally when `record()` returns, whatever happens here.
        """
        self._journal.flush(self.meta, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Persist `meta`, flush the mirror, release the checkpoint. Idempotent.

        Raises if the mirror cannot be brought up to date; the checkpoint is released anyway.
        """
        journal = self._journal
        if os.getpid() != journal.owner_pid:
            journal.close_inherited()
            return
        try:
            journal.close(self.meta, timeout)
        finally:
            left_open.discard(self)

    def __enter__(self) -> ResumableSweep:
        """Install preemption handling (main thread only; see `handle_signals`)."""
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            guard = self.new_guard()
            guard.__enter__()
            self._guard = guard
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        guard, self._guard = self._guard, None
        exit_guarded(self.close, self.name, guard, exc_type, exc, tb)

    def __repr__(self) -> str:
        s = self.status()
        return (
            f"<ResumableSweep {self.name!r} done={s.done} failed={s.failed} "
            f"pending={s.pending} at {str(self.progress_dir)!r}>"
        )
