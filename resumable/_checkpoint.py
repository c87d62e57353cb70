"""The local progress directory of one sweep: lock, verified load, durable appends, rolling.

Layout (beside the user's ``checkpoint_path``, e.g. ``data/exp.h5`` -> ``data/exp.h5.resumable/``)::

    manifest.json          sealed segments (size, SHA-256, seq range) and the active one
    segments/seg-00000001.jsonl ...   append-only journal segments (see _journal.py)
    torn/                  torn tails cut off the active segment at an open (kept, never used)

and beside it ``data/exp.h5.resumable.lock``: one writer at a time (a POSIX lock, released by the
kernel on death). It lies outside the directory so that it also covers replacing the whole
directory (installing a resumed source).

A record is durable when `append` returns: written with one write() and fdatasync'd. Once the
active segment passes `segment_bytes` it is sealed: its size and SHA-256 go into a new manifest,
written atomically, which also names the next (already created) active segment. Recording never
rewrites or re-hashes history: the cost per record does not grow with the sweep.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _durable as durable
from . import _limits as limits
from ._durable import atomic_write_bytes, create_durable_file, fsync_file, make_dirs
from ._journal import (
    LazyRecord,
    LineSource,
    ParsedSegment,
    Record,
    SealedScan,
    chain_line,
    dumps,
    header_record,
    parse_sealed_segment,
    parse_segment,
    scan_sealed,
)
from ._manifest import MANIFEST_NAME, Manifest, SegmentInfo, check_name, parse_manifest
from ._state import State
from .errors import (
    CheckpointClosedError,
    CheckpointLockedError,
    CheckpointWriteError,
    ForeignProcessError,
    IntegrityError,
)

PROGRESS_SUFFIX = ".resumable"
SEGMENTS_DIR = "segments"
TORN_DIR = "torn"  # torn tails cut off the active segment, kept for inspection
LOCK_SUFFIX = ".lock"
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
log = logging.getLogger(__name__)
_INDEX_RE = re.compile(r"seg-(\d{8})")


def progress_dir_for(checkpoint_path: str | os.PathLike[str]) -> Path:
    """Where the progress of the sweep whose output is `checkpoint_path` is kept."""
    return Path(os.fspath(checkpoint_path) + PROGRESS_SUFFIX)


def segment_name(index: int) -> str:
    return f"seg-{index:08d}.jsonl"


def next_segment_name(manifest: Manifest) -> str:
    """A fresh segment name after every one the manifest knows (mirrored parts included)."""
    names = [s.name for s in manifest.segments]
    if manifest.active is not None:
        names.append(manifest.active)
    indices = [int(m.group(1)) for n in names if (m := _INDEX_RE.match(n))]
    return segment_name(max(indices, default=len(names)) + 1)


def _create_empty_segment(path: Path) -> None:
    """Create a new, empty segment; an empty leftover of a crash before its manifest is reused."""
    if path.exists() and path.stat().st_size == 0:
        durable.ops.unlink(path)
    create_durable_file(path)


@dataclass(frozen=True)
class WriterView:
    """What a checkpoint holds on disk at one instant; bytes it names never change after."""

    manifest: Manifest
    active: str | None
    active_size: int
    active_records: int
    last_seq: int
    last_hash: str


@dataclass
class Loaded:
    """A verified checkpoint: its manifest, the replayed state, and the active segment's tail."""

    manifest: Manifest
    state: State
    active_size: int = 0  # verified bytes in the active segment
    active_hash: Any = field(default=None, repr=False)  # running sha256 of those bytes
    active_records: int = 0
    active_bytes: bytes = field(default=b"", repr=False)  # the verified active records
    torn_bytes: int = 0
    parts: SealedParts | None = field(default=None, repr=False)  # lazy records read from here

    def relocate(self, progress_dir: Path) -> None:
        """The checkpoint's files were moved to `progress_dir` (a download installed): lazy
        records read (and verify) their segments there from now on."""
        if self.parts is not None:
            self.parts.relocate(_dir_reader(progress_dir), str(progress_dir))

    def view(self) -> WriterView:
        return WriterView(
            manifest=self.manifest,
            active=self.manifest.active,
            active_size=self.active_size,
            active_records=self.active_records,
            last_seq=self.state.last_seq,
            last_hash=self.state.last_hash,
        )


def _read_file(path: Path, *, max_bytes: int) -> bytes:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise IntegrityError(f"{path} is {size} bytes; at most {max_bytes} expected")
        # a buffer as large as the file (+1: a file that grew shows as longer than recorded),
        # never one of max_bytes (1 GiB for an active segment: address space under ulimit -v)
        return fh.read(size + 1)


Reader = Callable[[str, int], bytes]
"""Reads the object `name` (e.g. "segments/seg-00000001.jsonl") of at most `max_bytes`;
raises FileNotFoundError (ObjectNotFoundError for a Store) when it does not exist."""


def _dir_reader(progress_dir: Path) -> Reader:
    def read(name: str, max_bytes: int) -> bytes:
        return _read_file(progress_dir / name, max_bytes=max_bytes)

    return read


class SealedParts:
    """A checkpoint's sealed segments, each read and checked against the manifest's size and
    SHA-256 whenever it is read: at the load, and again when a lazy record (a result's
    payload, say) is looked at later. A few recently used segments are kept (at most
    `cache_bytes`), so reading results in record order reads each segment once."""

    def __init__(
        self, read: Reader, manifest: Manifest, location: str, cache_bytes: int = 64 << 20
    ) -> None:
        self._read = read
        self.manifest = manifest
        self.location = location
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._mutex = threading.Lock()

    def relocate(self, read: Reader, location: str) -> None:
        with self._mutex:
            self._read = read
            self.location = location
            self._cache.clear()

    def where(self, index: int) -> str:
        return f"{self.location}/{SEGMENTS_DIR}/{self.manifest.segments[index].name}"

    def verified(self, index: int, *, again: bool = False) -> bytes:
        """The bytes of sealed segment `index`, checked (IntegrityError naming it if not)."""
        seg = self.manifest.segments[index]
        where = self.where(index)
        since = " since the checkpoint was opened" if again else ""
        try:
            data = self._read(f"{SEGMENTS_DIR}/{seg.name}", seg.size)
        except FileNotFoundError:
            raise IntegrityError(
                f"{where}: sealed segment named by the manifest is missing{since} "
                f"(expected {seg.size} bytes)"
            ) from None
        except IntegrityError as exc:
            raise IntegrityError(
                f"{where}: expected {seg.size} bytes as the manifest records, found more{since} "
                f"({exc})"
            ) from None
        seg.check(data, where, since)
        return data

    def line(self, segment: int, offset: int) -> bytes:
        """The record line at byte `offset` of sealed segment `segment` (read and verified
        again unless cached)."""
        with self._mutex:
            data = self._cache.get(segment)
            if data is None:
                data = self.verified(segment, again=True)
                self._cache[segment] = data
                total = sum(map(len, self._cache.values()))
                while len(self._cache) > 1 and total > self._cache_bytes:
                    total -= len(self._cache.popitem(last=False)[1])
            else:
                self._cache.move_to_end(segment)
        end = data.find(b"\n", offset)
        if offset < 0 or end < 0 or (offset and data[offset - 1 : offset] != b"\n"):
            raise IntegrityError(f"{self.where(segment)}: no record line at byte {offset}")
        return data[offset:end]


MAX_MANIFEST_READ = limits.MAX_MANIFEST_BYTES  # an alias for readers elsewhere


def load(progress_dir: Path) -> Loaded | None:
    """Read and verify the checkpoint in the local `progress_dir`; None if there is none."""

    def read(name: str, max_bytes: int) -> bytes:
        return _read_file(progress_dir / name, max_bytes=max_bytes)

    try:
        mbytes = read(MANIFEST_NAME, limits.MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        _check_no_orphans(progress_dir)
        return None
    return load_from(read, mbytes, location=str(progress_dir))


def load_from(
    read: Reader, manifest_bytes: bytes, *, location: str, reread: Reader | None = None
) -> Loaded:
    """Verify a checkpoint given its manifest bytes, reading the parts it names with `read`.

    Sealed segments must match the manifest's size and SHA-256 exactly; the active segment (a
    local checkpoint's, or one fetched from another machine's progress directory) is verified
    record by record and may end in a torn tail. Records of sealed segments looked at later
    (results' payloads) are read again with `reread` (default: `read`) and verified again.
    """
    manifest = parse_manifest(manifest_bytes, source=f"{location}/{MANIFEST_NAME}")
    parts = SealedParts(reread or read, manifest, location)
    first = SealedParts(read, manifest, location)

    def sealed() -> Iterator[bytes]:
        """Each sealed segment read and checked just before it is replayed (one at a time in
        memory, not the whole journal)."""
        for i in range(len(manifest.segments)):
            yield first.verified(i)

    def active() -> bytes | None:
        if manifest.active is None:
            return None
        where = f"{location}/{SEGMENTS_DIR}/{manifest.active}"
        try:
            return read(f"{SEGMENTS_DIR}/{manifest.active}", limits.MAX_SEGMENT_BYTES)
        except FileNotFoundError:
            raise IntegrityError(
                f"{where}: the active segment named by the manifest is missing"
            ) from None

    return load_records(manifest, sealed(), active, location=location, parts=parts)


def load_records(
    manifest: Manifest,
    sealed: Iterable[bytes],
    active: bytes | Callable[[], bytes | None] | None,
    *,
    location: str,
    parts: SealedParts | None = None,
) -> Loaded:
    """Replay verified sealed segment bytes and the active segment's bytes into a state.

    `sealed` may be a generator (each segment checked as it is read); `active` the bytes or
    a function reading them once the sealed ones are replayed. With `parts` (where the sealed
    segments can be read again), results and items records of sealed segments are kept as
    where they lie (see state.ResultMap), not as their bytes. The garbage collector is
    paused meanwhile: replay makes millions of objects and no cycles, and its passes cost
    about a quarter of a large reopen.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        return _replay(manifest, sealed, active, location=location, parts=parts)
    finally:
        if paused:
            gc.enable()


# segments of fewer records replay record by record: numpy's fixed cost per call would
# outweigh what it saves there
_SCAN_MIN_RECORDS = 256


def _replay_scanned(
    state: State, data: bytes, index: int, seg: SegmentInfo, source: str, parts: SealedParts
) -> bool:
    """Replay a sealed segment from its vectorised scan (results in bulk); False if the scan
    finds it unusual (nothing applied then), to be replayed record by record instead."""
    scan = scan_sealed(data, first_seq=seg.first_seq, records=seg.records)
    if scan is None:
        return False
    return _apply_scan(state, data, scan, seg.first_seq, index, source, parts)


class _HeldLines:
    """Record lines of the active segment's verified bytes, held in memory (for LazyRecord)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def line(self, segment: int, offset: int) -> bytes:
        return self.data[offset : self.data.index(b"\n", offset)]


def _replay_active_scanned(
    state: State, data: bytes, first_seq: int, prev_hash: str, source: str
) -> str | None:
    """Replay a whole, undamaged active segment from its vectorised scan, every line's hash
    chained to the one before as `parse_segment` checks it; the last hash, or None (nothing
    applied) when anything is unusual, a torn tail included: `parse_segment` then decides."""
    if not data.endswith(b"\n"):
        return None
    records = data.count(b"\n")
    scan = scan_sealed(data, first_seq=first_seq, records=records)
    if scan is None:
        return None
    prev = prev_hash.encode("ascii")
    view = memoryview(data)
    sha = hashlib.sha256
    for start, end in zip(scan.starts.tolist(), scan.ends.tolist(), strict=True):
        h = sha(prev)
        h.update(b"\n")
        h.update(view[start + 65 : end])
        claimed = data[start : start + 64]
        if h.hexdigest().encode("ascii") != claimed:
            return None
        prev = claimed
    if not _apply_scan(state, data, scan, first_seq, -1, source, _HeldLines(data)):
        return None
    return prev.decode("ascii")


def _apply_scan(
    state: State,
    data: bytes,
    scan: SealedScan,
    first_seq: int,
    index: int,
    source: str,
    parts: LineSource,
) -> bool:
    """Apply a scanned segment's records in order: runs of results in bulk, the others one
    by one (each header checked first: False, nothing applied, if one is malformed)."""
    records = len(scan.starts)
    result_lines = scan.result_lines
    others = np.setdiff1d(np.arange(records), result_lines, assume_unique=True)
    # check the other lines first: any oddity and the slow path says what it is
    recs: list[Record] = []
    for i in others.tolist():
        start, tab, end = int(scan.starts[i]), int(scan.tabs[i]), int(scan.ends[i])
        try:
            rec = header_record(
                data[start + 65 : tab], b"", seq=first_seq + i, source=source, offset=start
            )
        except IntegrityError:
            return False
        if rec.type == "items":  # possibly large, decoded only when its listing is asked for
            rec = LazyRecord(
                rec.seq, rec.type, rec.key, rec.t, source, parts, index, start, fp=rec.fp
            )
        else:
            rec.payload = data[tab + 1 : end]
        recs.append(rec)
    starts = scan.starts[result_lines]
    seqs = result_lines.astype(np.int64) + first_seq
    at = 0
    for i, rec in zip(others.tolist(), recs, strict=True):
        upto = int(np.searchsorted(result_lines, i))
        if upto > at:
            state.apply_results(
                scan.keys[at:upto],
                seqs[at:upto],
                scan.times[at:upto],
                starts[at:upto],
                segment=index,
                source=source,
                lines=parts,
            )
            at = upto
        state.apply(rec)
    if at < len(result_lines):
        state.apply_results(
            scan.keys[at:],
            seqs[at:],
            scan.times[at:],
            starts[at:],
            segment=index,
            source=source,
            lines=parts,
        )
    return True


def _replay(
    manifest: Manifest,
    sealed: Iterable[bytes],
    active: bytes | Callable[[], bytes | None] | None,
    *,
    location: str,
    parts: SealedParts | None = None,
) -> Loaded:
    state = State()
    prev = ""
    for index, (data, seg) in enumerate(zip(sealed, manifest.segments, strict=True)):
        source = f"{location}/{SEGMENTS_DIR}/{seg.name}"
        tail = data[data.rfind(b"\n", 0, len(data) - 1) + 1 :][:64].decode("ascii", "replace")
        if seg.records and tail != seg.last_hash:
            raise IntegrityError(
                f"{source}: ends in a record {tail[:16]!r}..., the manifest records "
                f"{seg.records} records ending in {seg.last_hash[:16]!r}..."
            )
        if (
            parts is not None
            and seg.records >= _SCAN_MIN_RECORDS
            and _replay_scanned(state, data, index, seg, source, parts)
        ):
            prev = seg.last_hash
            continue
        records = parse_sealed_segment(
            data, source=source, first_seq=seg.first_seq, records=seg.records, prev_hash=prev
        )
        if len(records) != seg.records or (records and tail != seg.last_hash):
            raise IntegrityError(
                f"{source}: holds {len(records)} records ending in {tail[:16]!r}..., the "
                f"manifest records {seg.records} ending in {seg.last_hash[:16]!r}..."
            )
        apply = state.apply
        for rec in records:
            apply(rec)
        prev = seg.last_hash
    loaded = Loaded(manifest=manifest, state=state, active_hash=hashlib.sha256(), parts=parts)
    if callable(active):
        active = active()
    if active is not None:
        assert manifest.active is not None
        source = f"{location}/{SEGMENTS_DIR}/{manifest.active}"
        first_seq = manifest.sealed_records + 1
        last = (
            _replay_active_scanned(state, active, first_seq, prev, source)
            if parts is not None and active.count(b"\n") >= _SCAN_MIN_RECORDS
            else None
        )
        if last is not None:
            loaded.active_size = len(active)
            loaded.active_hash.update(active)
            loaded.active_records = active.count(b"\n")
            loaded.active_bytes = active
            state.last_hash = last
            return loaded
        parsed: ParsedSegment = parse_segment(
            active,
            source=source,
            first_seq=first_seq,
            prev_hash=prev,
            allow_torn_tail=True,
        )
        for rec in parsed.records:
            state.apply(rec)
        prev = parsed.last_hash
        loaded.active_size = parsed.good_size
        loaded.active_hash.update(active[: parsed.good_size])
        loaded.active_records = len(parsed.records)
        loaded.active_bytes = active[: parsed.good_size]
        loaded.torn_bytes = parsed.torn_bytes
    state.last_hash = prev
    return loaded


def recover_interrupted_install(progress_dir: Path) -> None:
    """Under the writer lock: undo what an install cut short by a crash left behind.

    Installing a resumed source renames the local checkpoint aside (``.NAME.replaced-*``), then
    the verified download (``.NAME.incoming-*``) into place. A crash between the two renames
    can leave no progress directory at all: the checkpoint set aside (if it loads) is put back,
    and a relaunch that resumes from the source fetches the download again. Removing leftovers
    is `remote.collect_leftovers`' business.
    """
    parent = progress_dir.parent
    if progress_dir.exists() or not parent.is_dir():
        return
    aside = [p for p in parent.glob(f".{progress_dir.name}.replaced-*") if p.is_dir()]
    ranked = sorted((_records_in(p), p.name, p) for p in aside)
    if not ranked or ranked[-1][0] < 0:
        return
    best = ranked[-1][2]
    durable.rename_durably(best, progress_dir)
    durable.fsync_dir(parent)
    log.warning(
        "%s was missing after an install cut short by a crash: put back the checkpoint that "
        "install had set aside (%s)",
        progress_dir,
        best.name,
    )


def _records_in(candidate: Path) -> int:
    """Records in a checkpoint set aside; -1 if it is not one (damaged, or no manifest)."""
    try:
        loaded = load(candidate)
    except (IntegrityError, OSError):
        return -1
    return loaded.state.last_seq if loaded is not None else -1


def hash_at(view: WriterView, segdir: Path, seq: int) -> str | None:
    """The hash of record `seq` as of `view` (None past its end); reads at most one segment.

    Used once per open or first mirror contact, to check that one history extends another.
    """
    if seq == 0:
        return ""
    if seq > view.last_seq:
        return None
    if seq == view.last_seq:
        return view.last_hash
    for seg in view.manifest.segments:
        if seg.first_seq <= seq <= seg.last_seq:
            if seq == seg.last_seq:
                return seg.last_hash
            data = _read_file(segdir / seg.name, max_bytes=seg.size)
            return _nth_line_hash(data, seq - seg.first_seq)
    assert view.active is not None
    with open(segdir / view.active, "rb") as fh:
        data = fh.read(view.active_size)
    return _nth_line_hash(data, seq - view.manifest.sealed_records - 1)


def _nth_line_hash(data: bytes, n: int) -> str:
    pos = 0
    for _ in range(n):
        pos = data.index(b"\n", pos) + 1
    return data[pos : pos + 64].decode("ascii")


def _check_no_orphans(progress_dir: Path) -> None:
    """No manifest: fine if nothing was ever recorded, damage if segments hold records."""
    segdir = progress_dir / SEGMENTS_DIR
    if not segdir.is_dir():
        return
    for entry in segdir.iterdir():
        if entry.is_file() and entry.stat().st_size > 0:
            raise IntegrityError(
                f"{progress_dir / MANIFEST_NAME} is missing but {entry} holds "
                f"{entry.stat().st_size} bytes of records; refusing to start over"
            )


_HELD_LOCKS: set[str] = set()
_HELD_GUARD = threading.Lock()


_pid = os.getpid()


def process_id() -> int:
    """os.getpid(), kept up to date at every fork (a system call per record would cost more
    than the rest of the owner check)."""
    return _pid


def _forget_locks_after_fork() -> None:
    """A forked child holds none of its parent's POSIX locks (they are per process)."""
    global _HELD_GUARD, _pid
    _pid = os.getpid()
    _HELD_GUARD = threading.Lock()  # another thread may have held it at the fork
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_after_fork)


def foreign_process_error(what: str, owner: int) -> ForeignProcessError:
    return ForeignProcessError(
        f"{what} was opened by process {owner}; process {os.getpid()} (a forked child) may not "
        "record through it. Nothing was written. Record in the process that opened the sweep "
        "(return results to it, as sweep.run does), or open a sweep of its own in the child"
    )


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    return missing


def lock_path_for(progress_dir: Path) -> Path:
    """The writer lock of a progress directory: a file *beside* it (``exp.h5.resumable.lock``),
    so that replacing the directory (installing a resumed source) happens under the lock."""
    return progress_dir.with_name(progress_dir.name + LOCK_SUFFIX)


class DirLock:
    """The single-writer lock of a progress directory: an exclusive POSIX lock on the file
    beside it (see `lock_path_for`); the kernel drops it when the holder dies.

    The lock file is removed on release (while still locked). A launch that opened the file
    just before it was removed would then lock an orphan: after locking, the file at the path
    must still be the one locked, else it tries again. POSIX locks belong to a process, so a
    forked child inherits the descriptor but not the lock, and closing its copy leaves the
    parent's lock in place.
    """

    def __init__(self, progress_dir: Path) -> None:
        self.path = lock_path_for(progress_dir)
        self._key = os.path.realpath(progress_dir)
        self._fd: int | None = None
        with _HELD_GUARD:
            if self._key in _HELD_LOCKS:
                raise CheckpointLockedError(
                    f"{progress_dir} is already open for writing in this process; "
                    "close the other ResumableSweep first"
                )
            self.created_dirs = _missing_dirs(self.path.parent)
            make_dirs(self.path.parent)
            for _attempt in range(100):
                fd = self._try_lock(progress_dir)
                if fd is not None:
                    break
            else:  # pragma: no cover - 100 holders releasing in a row
                raise CheckpointLockedError(f"{progress_dir}: could not take {self.path}")
            info = json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            )
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
            self._fd = fd
            self._pid = os.getpid()
            _HELD_LOCKS.add(self._key)

    def _try_lock(self, progress_dir: Path) -> int | None:
        """The locked descriptor, None if the file was replaced meanwhile (try again)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointWriteError(
                exc.errno,
                f"cannot open {self.path} for writing ({exc.strerror}); a checkpoint is "
                "opened for writing by its sweep: is the directory read-only?",
            ) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise CheckpointLockedError(
                    f"{progress_dir} is open for writing by another live process "
                    f"({holder or 'unknown holder'}); one writer at a time"
                ) from None
            raise
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        mine = os.fstat(fd)
        if now is None or (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)  # its holder removed it as we opened it: lock the new one
            return None
        return fd

    def release(self) -> None:
        """Drop the lock. In a forked child this only closes the inherited descriptor: POSIX
        locks belong to the process that took them, so the parent keeps its lock."""
        if self._fd is None:
            return
        with _HELD_GUARD:
            if os.getpid() == self._pid:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)  # still locked: nobody can be using it now
                _HELD_LOCKS.discard(self._key)
            os.close(self._fd)  # closing drops the POSIX lock (in the owner only)
            self._fd = None

    def release_and_tidy(self) -> None:
        """Release after a failed open: also remove the directories the lock created, if they
        are still empty (a refused launch leaves no trace)."""
        self.release()
        for d in self.created_dirs:
            try:
                d.rmdir()
            except OSError:
                break


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
        if self.manifest.active is None:
            # All parts sealed (a checkpoint fetched from a mirror): start a new active segment.
            active = next_segment_name(self.manifest)
            _create_empty_segment(self.segdir / active)
            self.manifest = self.manifest.with_segments(self.manifest.segments, active)
            data = self.manifest.to_bytes(self.signing_key)
            limits.check_manifest(len(data), len(self.manifest.segments), f"checkpoint {self.dir}")
            atomic_write_bytes(self.dir / MANIFEST_NAME, data)
        self._active_path = self.segdir / check_name(self.manifest.active)
        self._active_str = str(self._active_path)  # named in records and errors
        try:
            if loaded.torn_bytes:
                self._drop_torn_tail()
            self._fd = durable.ops.open(self._active_path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            if isinstance(exc, CheckpointWriteError):
                raise
            raise CheckpointWriteError(
                exc.errno, f"cannot open {self._active_path} for appending: {exc.strerror}"
            ) from None

    def _drop_torn_tail(self) -> None:
        """Keep the torn tail's bytes in ``torn/`` (durably), then cut it off the active segment
        so that appends follow the last valid record. Never acknowledged, never deleted."""
        fd = durable.ops.open(self._active_path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            tail = durable.ops.pread(fd, size - self._active_size, self._active_size)
            if tail:
                keep = (
                    self.dir
                    / TORN_DIR
                    / (f"{self._active_path.name}.at-{self._active_size}.{time.time_ns()}.torn")
                )
                make_dirs(keep.parent)
                create_durable_file(keep, tail)
                log.warning(
                    "%s: dropped a torn tail of %d bytes after the last valid record (byte %d): "
                    "an append cut short by a crash, never acknowledged. Its bytes are kept in %s",
                    self._active_path,
                    len(tail),
                    self._active_size,
                    keep,
                )
            durable.ops.ftruncate(fd, self._active_size)
            fsync_file(fd, str(self._active_path))
        finally:
            durable.ops.close(fd)

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
            _create_empty_segment(progress_dir / SEGMENTS_DIR / active)
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
        if _pid != self.owner_pid:  # before the mutex: a parent's thread may hold it
            raise foreign_process_error(f"checkpoint {self.dir}", self.owner_pid)
        body = payload if type(payload) is bytes else dumps(payload)
        with self._mutex:
            if self._broken is not None:
                raise CheckpointClosedError(
                    f"checkpoint {self.dir} can no longer record: {self._broken}"
                )
            us = time.time_ns() // 1000  # (`_group_time`, inline)
            if us <= self._last_us:
                us = self._last_us + 1
            self._last_us = us
            t_b = b"%d.%06d" % divmod(us, 1_000_000)
            seq = self.last_seq + 1
            line, digest = chain_line(self._prev, seq, kind, key, t_b, fp, body)
            before = self._active_size
            size = before + len(line)
            if size >= self.segment_bytes or (before and size > limits.MAX_SEGMENT_BYTES):
                out: list[Record] = []  # it seals (or rolls) the segment: the general path
                self._write_chunk([(kind, body, key, fp)], 0, us / 1_000_000, t_b, out)
                return out[0]
            source = self._active_str
            self._commit(line, source, before)
            # From here on nothing can fail: bookkeeping only.
            self._active_hash.update(line)
            self._active_size = size
            self._active_records += 1
            self.last_seq = seq
            self._prev = digest
            return Record(seq, kind, key, us / 1_000_000, fp, body, source)

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
        if _pid != self.owner_pid:  # before the mutex: a parent's thread may hold it
            raise foreign_process_error(f"checkpoint {self.dir}", self.owner_pid)
        with self._mutex:
            if self._broken is not None:
                raise CheckpointClosedError(
                    f"checkpoint {self.dir} can no longer record: {self._broken}"
                )
            us, t_b = self._group_time()
            t = us / 1_000_000
            out: list[Record] = []
            pos, n = 0, len(entries)
            while pos < n:
                pos = self._write_chunk(entries, pos, t, t_b, out)
            return out

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
            plan = self._plan_seal(size, hasher, self._active_records + len(lines), seq, last_hash)
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
            self._plan_seal(
                self._active_size,
                self._active_hash,
                self._active_records,
                self.last_seq,
                self.last_hash,
            )
        )

    def _fail(self, why: str, truncate_to: int | None = None) -> None:
        """Stop recording for good; best effort to cut a partial line back off."""
        self._broken = why
        if truncate_to is not None:
            with contextlib.suppress(OSError):  # a torn tail is dropped on the next load anyway
                durable.ops.ftruncate(self._fd, truncate_to)

    def _plan_seal(
        self, size: int, hasher: Any, records: int, last_seq: int, last_hash: str
    ) -> tuple[str, Manifest, bytes]:
        """The next segment's name and the manifest (and its bytes) that seal the active segment
        once it holds `records` records in `size` bytes; LimitExceededError if the manifest
        would break a limit of the loader (checked before the record is written)."""
        info = SegmentInfo(
            name=self._active_path.name,
            size=size,
            sha256=hasher.hexdigest(),
            records=records,
            first_seq=last_seq - records + 1,
            last_seq=last_seq,
            last_hash=last_hash,
        )
        new_name = next_segment_name(self.manifest)
        manifest = self.manifest.with_segments((*self.manifest.segments, info), new_name)
        data = manifest.to_bytes(self.signing_key)
        limits.check_manifest(len(data), len(manifest.segments), f"checkpoint {self.dir}")
        return new_name, manifest, data

    def _seal(self, plan: tuple[str, Manifest, bytes]) -> None:
        new_name, manifest, data = plan
        name = self._active_path.name
        new_path = self.segdir / new_name
        try:
            _create_empty_segment(new_path)
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
