"""The local progress directory of one sweep: durable appends to it, and rolling its segments.

Layout (beside the user's ``checkpoint_path``, e.g. ``data/exp.h5`` -> ``data/exp.h5.resumable/``)::

    manifest.json          sealed segments (size, SHA-256, seq range) and the active one
    segments/seg-00000001.jsonl ...   append-only journal segments (see _journal.py)
    torn/                  torn tails cut off the active segment at an open (kept, never used)

and beside it ``data/exp.h5.resumable.lock``: one writer at a time (_dirlock.py). Loading lives
in _loading.py and _parts.py, the segment files outside the per-record path in _segfiles.py;
the names other modules use are re-exported from here.

A record is durable when `append` returns: written with one write() and fdatasync'd. Once the
active segment passes `segment_bytes` it is sealed: its size and SHA-256 go into a new manifest,
written atomically, which also names the next (already created) active segment. Recording never
rewrites or re-hashes history: the cost per record does not grow with the sweep.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import _durable as durable
from . import _limits as limits
from . import _owner
from ._dirlock import DirLock
from ._durable import atomic_write_bytes, fsync_file, make_dirs
from ._install_recovery import recover_interrupted_install
from ._loading import Loaded, WriterView, hash_at, load, load_from, load_records
from ._manifest import MANIFEST_NAME, Manifest, check_name
from ._owner import foreign_process_error, process_id
from ._parts import MAX_MANIFEST_READ, SEGMENTS_DIR, Reader, SealedParts
from ._records import LazyRecord, Record, chain_line, dumps
from ._segfiles import (
    WrittenLine,
    create_empty_segment,
    drop_torn_tail,
    next_segment_name,
    plan_seal,
    segment_name,
)
from ._segindex import SegmentIndexer
from ._state import State
from .errors import CheckpointClosedError, CheckpointWriteError

__all__ = [  # names of the modules below that other modules import from here
    "MAX_MANIFEST_READ",
    "SEGMENTS_DIR",
    "CheckpointWriter",
    "DirLock",
    "Loaded",
    "Reader",
    "SealedParts",
    "WriterView",
    "foreign_process_error",
    "hash_at",
    "load",
    "load_from",
    "load_records",
    "process_id",
    "recover_interrupted_install",
]

PROGRESS_SUFFIX = ".resumable"
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
# how long a closing writer lets its background indexer finish the segments it has queued (a
# few 4 MiB segments take tens of milliseconds each; bounded, as a preempted sweep closes
# within its grace period)
INDEX_GRACE_S = 1.0


def progress_dir_for(checkpoint_path: str | os.PathLike[str]) -> Path:
    """Where the progress of the sweep whose output is `checkpoint_path` is kept."""
    return Path(os.fspath(checkpoint_path) + PROGRESS_SUFFIX)


class CheckpointWriter:
    """Appends records durably to the active segment and seals segments as they fill."""

    def __init__(
        self,
        progress_dir: Path,
        loaded: Loaded,
        lock: DirLock,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        on_seal: Callable[[Manifest], None] | None = None,
        signing_key: bytes | None = None,
    ) -> None:
        self.dir = progress_dir
        self.signing_key = signing_key
        self.segdir = progress_dir / SEGMENTS_DIR
        self.manifest = loaded.manifest
        self.lock = lock
        self.segment_bytes = segment_bytes
        self.on_seal = on_seal
        self.last_seq = loaded.state.last_seq
        self._prev = loaded.state.last_hash.encode("ascii")  # the last record's hash, as bytes
        self._active_hash = loaded.active_hash
        self._active_size = loaded.active_size
        self._active_records = loaded.active_records
        self._broken: str | None = None
        self._last_us = 0  # the time of the last group written, in microseconds
        self._mutex = threading.Lock()
        self.owner_pid = os.getpid()  # a forked child inherits this object but may not append
        # row indexes of sealed segments (a cache for the next open), built in the background
        # (not with a signing key: no signature covers them, so the open would not use them)
        self.indexer = SegmentIndexer(self.segdir, enabled=signing_key is None)
        for i in loaded.unindexed:
            self.indexer.submit(loaded.manifest.segments[i])
        if self.manifest.active is None:
            # All parts sealed (a checkpoint fetched from a mirror): start a new active segment.
            active = next_segment_name(self.manifest)
            create_empty_segment(self.segdir / active)
            self.manifest = self.manifest.with_segments(self.manifest.segments, active)
            data = self.manifest.to_bytes(self.signing_key)
            limits.check_manifest(len(data), len(self.manifest.segments), f"checkpoint {self.dir}")
            atomic_write_bytes(self.dir / MANIFEST_NAME, data)
        self._active_path = self.segdir / check_name(self.manifest.active)
        self._active_str = str(self._active_path)  # named in records and errors
        try:
            if loaded.torn_bytes:
                drop_torn_tail(self.dir, self._active_path, self._active_size)
            self._fd = durable.ops.open(self._active_path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            if isinstance(exc, CheckpointWriteError):
                raise
            raise CheckpointWriteError(
                exc.errno, f"cannot open {self._active_path} for appending: {exc.strerror}"
            ) from None

    @classmethod
    def create(
        cls,
        progress_dir: Path,
        manifest: Manifest,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        on_seal: Callable[[Manifest], None] | None = None,
        signing_key: bytes | None = None,
        lock: DirLock | None = None,
    ) -> CheckpointWriter:
        """Lay out a new, empty checkpoint directory and open it for writing (under `lock`, the
        caller's if it holds it already; released on failure only if taken here)."""
        own = lock is None
        lock = DirLock(progress_dir) if lock is None else lock
        try:
            make_dirs(progress_dir / SEGMENTS_DIR)
            active = segment_name(1)
            create_empty_segment(progress_dir / SEGMENTS_DIR / active)
            manifest = Manifest(
                sweep=manifest.sweep,
                sweep_id=manifest.sweep_id,
                created=manifest.created,
                active=active,
                extra=manifest.extra,
            )
            atomic_write_bytes(progress_dir / MANIFEST_NAME, manifest.to_bytes(signing_key))
            loaded = Loaded(manifest=manifest, state=State(), active_hash=hashlib.sha256())
            return cls(
                progress_dir,
                loaded,
                lock,
                segment_bytes=segment_bytes,
                on_seal=on_seal,
                signing_key=signing_key,
            )
        except BaseException:
            if own:
                lock.release()
            raise

    @property
    def broken(self) -> str | None:
        return self._broken

    @property
    def last_hash(self) -> str:
        """The hash of the last record written (the chain goes on from it)."""
        return self._prev.decode("ascii")

    def append(
        self,
        kind: str,
        payload: dict[str, Any] | bytes,
        *,
        key: str | None = None,
        fp: str | None = None,
    ) -> Record:
        """Durably append one record; when this returns it survives SIGKILL and power loss.

        `append_many` of one entry: the same rules, time, write and failure handling, without
        the lists (the path of every `sweep.record`). `payload` is the record's JSON object or
        its encoded bytes (see `journal.encode_record`)."""
        if _owner.pid != self.owner_pid:  # before the mutex: a parent's thread may hold it
            raise foreign_process_error(f"checkpoint {self.dir}", self.owner_pid)
        body = payload if type(payload) is bytes else dumps(payload)
        with self._mutex:
            if self._broken is not None:
                raise CheckpointClosedError(
                    f"checkpoint {self.dir} can no longer record: {self._broken}"
                )
            us, t_b = self._group_time()
            seq = self.last_seq + 1
            before = self._active_size
            # (a payload that fills the segment by itself goes straight to the general path:
            # a line is longer than its payload, and a large one is then encoded once)
            if before + len(body) < self.segment_bytes:
                line, digest = chain_line(self._prev, seq, kind, key, t_b, fp, body)
                size = before + len(line)
                if size < self.segment_bytes and not (before and size > limits.MAX_SEGMENT_BYTES):
                    source = self._active_str
                    self._commit(line, source, before)
                    # From here on nothing can fail: bookkeeping only.
                    self._active_hash.update(line)
                    self._active_size = size
                    self._active_records += 1
                    self.last_seq = seq
                    self._prev = digest
                    return Record(seq, kind, key, us / 1_000_000, fp, body, source)
            out: list[Record] = []  # it seals (or rolls) the segment: the general path
            self._write_chunk([(kind, body, key, fp)], 0, us / 1_000_000, t_b, out)
            return out[0]

    @contextlib.contextmanager
    def _appending(self) -> Iterator[tuple[int, bytes]]:
        """The mutex held for a group of appends, once this process is the owner and the
        writer is not broken; yields the group's time (`_group_time`). (`append`, the path
        of every `sweep.record`, makes the same checks inline.)"""
        if _owner.pid != self.owner_pid:  # before the mutex: a parent's thread may hold it
            raise foreign_process_error(f"checkpoint {self.dir}", self.owner_pid)
        with self._mutex:
            if self._broken is not None:
                raise CheckpointClosedError(
                    f"checkpoint {self.dir} can no longer record: {self._broken}"
                )
            yield self._group_time()

    def _group_time(self) -> tuple[int, bytes]:
        """One time per group, in whole microseconds (written as such: no float repr) and
        later than the previous group's: a torn group is recognised by its single time. The
        time and its bytes; `us / 1_000_000` is exactly the float the bytes read back as."""
        us = time.time_ns() // 1000
        if us <= self._last_us:
            us = self._last_us + 1
        self._last_us = us
        return us, b"%d.%06d" % divmod(us, 1_000_000)

    def append_many(
        self, entries: list[tuple[str, dict[str, Any] | bytes, str | None, str | None]]
    ) -> list[Record]:
        """Durably append (kind, payload, key, fp) records with one write and one fdatasync
        (one per segment when they fill it); when this returns all of them survive SIGKILL and
        power loss. Group commit: the cost of the fdatasync is shared by the whole group. A
        segment is sealed once it reaches `segment_bytes` (its manifest planned, and checked
        against the limits, before the write), and rolled first when a record would take it
        past `limits.MAX_SEGMENT_BYTES`. If this raises, none of the records of the chunk
        being written was acknowledged and the writer records nothing more."""
        with self._appending() as (us, t_b):
            t = us / 1_000_000
            out: list[Record] = []
            pos, n = 0, len(entries)
            while pos < n:
                pos = self._write_chunk(entries, pos, t, t_b, out)
            return out

    def append_kept_on_disk(
        self, kind: str, payload: bytes, *, key: str | None = None, fp: str | None = None
    ) -> Record:
        """`append` one large record (a part of an item listing, 64 MiB) and return it
        without its payload in memory: read back from its segment, checked against its hash,
        when asked for (a sweep of ten million items would otherwise keep 745 MB)."""
        with self._appending() as (us, t_b):
            before, source, prev = self._active_size, self._active_str, self._prev
            out: list[Record] = []
            self._write_chunk([(kind, payload, key, fp)], 0, us / 1_000_000, t_b, out)
            rec = out[0]
            where = before if rec.source == source else 0  # (0: a new segment was begun)
            lines = WrittenLine(rec.source, prev, self._prev)
            return LazyRecord(rec.seq, kind, key, rec.t, rec.source, lines, 0, where, fp=fp)

    def _write_chunk(
        self,
        entries: list[tuple[str, dict[str, Any] | bytes, str | None, str | None]],
        pos: int,
        t: float,
        t_b: bytes,
        out: list[Record],
    ) -> int:
        """Encode entries from `pos` on, up to the one that fills the active segment (or the
        end), write them with one write() and one fdatasync, and add their records to `out`;
        returns the position after them. Under the mutex."""
        lines: list[bytes] = []
        recs: list[Record] = []
        seq, prev, size = self.last_seq, self._prev, self._active_size
        source, cap, fill = self._active_str, limits.MAX_SEGMENT_BYTES, self.segment_bytes
        n = len(entries)
        add_line, add_rec = lines.append, recs.append
        while pos < n:
            kind, payload, key, fp = entries[pos]
            body = payload if type(payload) is bytes else dumps(payload)
            line, digest = chain_line(prev, seq + 1, kind, key, t_b, fp, body)
            if size and size + len(line) > cap:
                if lines:
                    break  # write what we have; the next chunk rolls first
                self._roll()  # first: no segment grows past what the loader reads
                size, source = 0, self._active_str
            seq, prev = seq + 1, digest
            add_line(line)
            add_rec(Record(seq, kind, key, t, fp, body, source))
            size += len(line)
            pos += 1
            if size >= fill:
                break
        data = b"".join(lines)  # one line: the line itself, not a copy
        hasher = plan = None
        if size >= fill:  # this chunk fills the segment: the manifest sealing it is checked first
            hasher = self._active_hash.copy()
            hasher.update(data)
            last_hash = prev.decode("ascii")
            plan = plan_seal(
                self.manifest,
                self._active_path.name,
                size,
                hasher,
                self._active_records + len(lines),
                seq,
                last_hash,
                signing_key=self.signing_key,
                progress_dir=self.dir,
            )
        self._commit(data, source, self._active_size)
        # From here on nothing can fail: bookkeeping only.
        if hasher is None:
            self._active_hash.update(data)
        else:
            self._active_hash = hasher
        self._active_size = size
        self._active_records += len(lines)
        self.last_seq = seq
        self._prev = prev
        out += recs
        if plan is not None:
            self._seal(plan)
        return pos

    def _commit(self, data: bytes, source: str, before: int) -> None:
        """Write `data` at the end of the active segment (`source`, `before` bytes long) and
        fdatasync it (this runs per record: `durable.ops.write` directly, no layer between). On
        any failure the writer is broken for good (the partial write cut back off, best
        effort) and the error raised: nothing of `data` was acknowledged."""
        fd, ops = self._fd, durable.ops
        try:
            done = ops.write(fd, data)
            if done < len(data):  # rare: a short write; go on from where it stopped
                _write_all(fd, memoryview(data)[done:])
        except OSError as exc:
            self._fail(f"{type(exc).__name__}: {exc}", truncate_to=before)
            raise CheckpointWriteError(
                exc.errno, f"recording to {source} failed: {exc.strerror or exc}"
            ) from exc
        except BaseException as exc:  # Ctrl-C (or a SystemExit) between write and bookkeeping
            self._interrupted(exc, before)
            raise
        try:
            fsync_file(fd, source)  # (a CheckpointWriteError naming `source` if it fails)
        except OSError as exc:
            self._fail(f"{type(exc).__name__}: {exc}", truncate_to=before)
            raise
        except BaseException as exc:
            self._interrupted(exc, before)
            raise

    def _interrupted(self, exc: BaseException, before: int) -> None:
        self._fail(
            f"interrupted while recording ({type(exc).__name__}); reopen the sweep",
            truncate_to=before,
        )

    def _roll(self) -> None:
        """Seal the active segment as it stands now (before a record that would not fit)."""
        self._seal(
            plan_seal(
                self.manifest,
                self._active_path.name,
                self._active_size,
                self._active_hash,
                self._active_records,
                self.last_seq,
                self.last_hash,
                signing_key=self.signing_key,
                progress_dir=self.dir,
            )
        )

    def _fail(self, why: str, truncate_to: int | None = None) -> None:
        """Stop recording for good; best effort to cut a partial line back off."""
        self._broken = why
        if truncate_to is not None:
            with contextlib.suppress(OSError):  # a torn tail is dropped on the next load anyway
                durable.ops.ftruncate(self._fd, truncate_to)

    def _seal(self, plan: tuple[str, Manifest, bytes]) -> None:
        new_name, manifest, data = plan
        name = self._active_path.name
        new_path = self.segdir / new_name
        try:
            create_empty_segment(new_path)
            atomic_write_bytes(self.dir / MANIFEST_NAME, data)
        except OSError as exc:
            self._fail(f"sealing segment {name} failed: {exc}")
            raise
        durable.ops.close(self._fd)
        self.manifest = manifest
        self._active_path = new_path
        self._active_str = str(new_path)
        self._fd = durable.ops.open(new_path, os.O_WRONLY | os.O_APPEND)
        self._active_hash = hashlib.sha256()
        self._active_size = 0
        self._active_records = 0
        self.indexer.submit(manifest.segments[-1])  # off this thread: see _segindex
        if self.on_seal is not None:
            self.on_seal(manifest)

    def view(self) -> WriterView:
        """A consistent picture of what is on disk now (for the mirror, from another thread)."""
        with self._mutex:
            return WriterView(
                manifest=self.manifest,
                active=self._active_path.name,
                active_size=self._active_size,
                active_records=self._active_records,
                last_seq=self.last_seq,
                last_hash=self.last_hash,
            )

    def close(self) -> None:
        if os.getpid() != self.owner_pid:
            self._close_inherited()
            return
        self.indexer.stop(grace=INDEX_GRACE_S)  # (under the lock still: see _segindex)
        with self._mutex:
            try:
                if self._fd >= 0:
                    durable.ops.close(self._fd)
                    self._fd = -1
            finally:
                self.lock.release()
                if self._broken is None:
                    self._broken = "the sweep was closed"

    def _close_inherited(self) -> None:
        """In a forked child: close the inherited descriptors, touch nothing on disk."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                durable.ops.close(fd)
        self.lock.release()
        self._broken = "the sweep belongs to another process"


def _write_all(fd: int, data: bytes | memoryview) -> None:
    write = durable.ops.write
    view = memoryview(data)
    while view:
        view = view[write(fd, view) :]
