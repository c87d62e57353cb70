"""Row indexes of sealed segments: a derived cache that spares a reopen the scan of its journal.

Replaying a sealed segment needs, for its result lines, the keys, times and byte offsets, and
for its few other lines (launch, items, failure, ...) where their header and payload lie. The
vectorised scan (`journal.scan_sealed`) finds them in about 10 ms per 4 MB segment; reading them
from an index beside the segment (``segments/seg-00000001.idx``) takes a fraction of that.

An index is never more trusted than the segment it describes, and never needed:

- it embeds the SHA-256, size and record count of its segment as the manifest records them
  (an index left over from another segment of the same name, or a stale one, is ignored);
- it ends in the SHA-256 of its own bytes (a torn, truncated or damaged one is ignored);
- its columns are checked for consistency (counts, order, ranges) before use; the other lines'
  headers are parsed from the segment's verified bytes, sequence numbers checked.

An index that fails any check is ignored and the segment scanned as before (identical state);
`verify` rebuilds every index from its segment and reports one that differs, naming the file.
A local open reads them from its progress directory's own ``segments/``. A mirror uploads the
index of each sealed part beside it (``segments/<part>.idx``, immutable, zlib-compressed: a
few percent of the part's bytes), and a download from a mirror uses the ones that pass the
same checks against the verified manifest (`unpack`), and installs them with the parts; a
missing or unsound one is ignored (the part is scanned, its index built afterwards). `verify`
never uses them. No signature covers them, so a sweep with a signing key neither writes nor
uses them. The writer's
background indexer (`SegmentIndexer`) writes them beside sealed segments, with plain file
operations (not the journal's fault-injectable ones): a crash leaves at worst a missing
index or a temporary file, never a trusted wrong one.

Layout (little-endian)::

    magic "RSMIDX01" | segment SHA-256 (32 raw bytes) | segment size, records, results,
    others, key bytes (5 x u64) | result line numbers (i64) | their byte offsets (i64) |
    their times (f64) | others as (line, start, tab, end) (4 x i64 each) |
    keys (UTF-8, each followed by '"') | SHA-256 of everything before (32 bytes)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._journal import MAX_TIME, SealedScan, scan_sealed
from ._manifest import SegmentInfo

log = logging.getLogger(__name__)

MAGIC = b"RSMIDX01"
SUFFIX = ".idx"
_HEAD = struct.Struct("<8s32s5Q")
_TRAILER = 32


def index_name(segment: str) -> str:
    """The index file of the segment named `segment` ("seg-00000001.jsonl" -> ".idx")."""
    stem, dot, _ext = segment.rpartition(".")
    return (stem if dot else segment) + SUFFIX


@dataclass
class SegmentRows:
    """What replaying one sealed segment needs, as columns (from a scan or an index)."""

    result_lines: np.ndarray  # int64 line numbers of the result records, ascending
    result_starts: np.ndarray  # int64 byte offset of each of those lines
    times: np.ndarray  # float64 time of each
    keys_raw: bytes  # their keys, UTF-8, each followed by '"' (a key holding one is not here)
    others: np.ndarray  # int64 (k, 4): line number, start, tab, end of the other records

    def keys(self) -> list[str] | None:
        """The result keys (one decode and one split); None if they do not add up."""
        try:
            keys = self.keys_raw.decode("utf-8").split('"')
        except UnicodeDecodeError:
            return None
        if keys.pop() != "" or len(keys) != len(self.result_lines):
            return None
        return keys


def rows_of_scan(scan: SealedScan) -> SegmentRows:
    rl = scan.result_lines.astype(np.int64)
    mask = np.ones(len(scan.starts), bool)
    mask[rl] = False
    other = np.flatnonzero(mask)
    others = np.stack([other, scan.starts[other], scan.tabs[other], scan.ends[other]], axis=1)
    return SegmentRows(
        rl,
        scan.starts[rl].astype(np.int64),
        np.asarray(scan.times, np.float64),
        scan.keys_raw,
        others.astype(np.int64).reshape(-1, 4),
    )


def encode(rows: SegmentRows, seg: SegmentInfo) -> bytes:
    """The index file of `seg` holding `rows`."""
    head = _HEAD.pack(
        MAGIC,
        bytes.fromhex(seg.sha256),
        seg.size,
        seg.records,
        len(rows.result_lines),
        len(rows.others),
        len(rows.keys_raw),
    )
    body = b"".join(
        (
            head,
            rows.result_lines.astype("<i8").tobytes(),
            rows.result_starts.astype("<i8").tobytes(),
            rows.times.astype("<f8").tobytes(),
            rows.others.astype("<i8").tobytes(),
            rows.keys_raw,
        )
    )
    return body + hashlib.sha256(body).digest()


def max_index_bytes(seg: SegmentInfo) -> int:
    """An upper bound on the size of `seg`'s index (a longer file is not one)."""
    # every line is at least 67 bytes, its index entry at most 32 bytes plus its key
    return _HEAD.size + _TRAILER + 2 * seg.size + 64


def decode(data: bytes, seg: SegmentInfo) -> SegmentRows | None:
    """The rows of the index `data` if it is a sound index of exactly `seg`, else None."""
    n_head = _HEAD.size
    if len(data) < n_head + _TRAILER or data[:8] != MAGIC:
        return None
    if hashlib.sha256(memoryview(data)[:-_TRAILER]).digest() != data[-_TRAILER:]:
        return None
    _magic, sha, size, records, n, k, n_keys = _HEAD.unpack_from(data)
    if sha.hex() != seg.sha256 or size != seg.size or records != seg.records or n + k != records:
        return None
    if len(data) != n_head + 24 * n + 32 * k + n_keys + _TRAILER:
        return None
    at = n_head
    lines = np.frombuffer(data, "<i8", n, at)
    starts = np.frombuffer(data, "<i8", n, at + 8 * n)
    times = np.frombuffer(data, "<f8", n, at + 16 * n)
    others = np.frombuffer(data, "<i8", 4 * k, at + 24 * n).reshape(k, 4)
    keys_raw = data[at + 24 * n + 32 * k : len(data) - _TRAILER]
    # a partition of the lines 0..records-1, each part ascending; offsets inside the segment
    seen = np.zeros(records, bool)
    for col in (lines, others[:, 0]):
        if len(col) and (col[0] < 0 or col[-1] >= records or (np.diff(col) <= 0).any()):
            return None
        seen[col] = True
    if not seen.all():
        return None
    if n and (starts.min() < 0 or starts.max() >= size or (np.diff(starts) <= 0).any()):
        return None
    if n and not ((times >= 0.0) & (times <= MAX_TIME)).all():
        return None
    if (
        k
        and not (
            (others[:, 1] >= 0) & (others[:, 1] < others[:, 2]) & (others[:, 2] < others[:, 3])
        ).all()
    ):
        return None
    if k and others[-1, 3] >= size:
        return None
    # copies: the columns a reopened sweep keeps should not pin the whole index
    return SegmentRows(lines.copy(), starts.copy(), times.copy(), keys_raw, others.copy())


def build(data: bytes, seg: SegmentInfo) -> bytes | None:
    """The index of sealed segment `seg` from its bytes (checked against `seg` here); None
    when the segment does not scan (it is then always replayed record by record)."""
    if seg.mismatch(data) is not None or seg.records == 0:
        return None
    scan = scan_sealed(data, first_seq=seg.first_seq, records=seg.records)
    if scan is None:
        return None
    return encode(rows_of_scan(scan), seg)


def mismatch(found: bytes, data: bytes, seg: SegmentInfo) -> str | None:
    """How the index file `found` differs from the index of sealed segment `seg` (whose bytes
    `data` matched the manifest) rebuilt now; None if it is exactly that index."""
    expected = build(data, seg)
    if expected is not None and found == expected:
        return None
    if expected is None:
        why = "the segment is not one that is indexed"
    elif decode(found, seg) is None:
        why = "it is damaged, truncated, or belongs to other bytes than the segment's"
    else:
        why = "its rows differ from the segment's"
    return (
        f"the row index of sealed segment {seg.name} does not match it ({why}); it is a cache "
        "that a reopen ignores when unsound: remove it, and the next launch rebuilds it"
    )


def write_index(segdir: Path, seg: SegmentInfo, data: bytes) -> None:
    """Replace ``segdir/<index of seg>`` with `data` atomically (temp file, fsync, rename).

    Plain file operations, not the journal's: an index is a cache, so a crash may lose it
    (then the segment is scanned) but never leaves a torn one under its name."""
    target = segdir / index_name(seg.name)
    tmp = segdir / f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def tidy_temporaries(segdir: Path) -> None:
    """Remove temporary index files that other processes (killed while writing) left."""
    mine = f"{SUFFIX}.tmp-{os.getpid()}-"
    try:
        for entry in os.scandir(segdir):
            name = entry.name
            if name.startswith(".") and f"{SUFFIX}.tmp-" in name and mine not in name:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    except OSError:
        pass


def build_and_write(segdir: Path, seg: SegmentInfo) -> bool:
    """Read sealed segment `seg` from `segdir`, check it, and write its index; False if it
    could not be (unreadable, changed, or a segment that does not scan)."""
    try:
        with open(segdir / seg.name, "rb") as fh:
            data = fh.read(seg.size + 1)
        index = build(data, seg)
        if index is None:
            return False
        write_index(segdir, seg, index)
    except OSError as exc:
        log.debug("no index for %s/%s: %s", segdir, seg.name, exc)
        return False
    return True


class SegmentIndexer:
    """Builds indexes of sealed segments in a background thread, off the recording path.

    `submit` only queues (the writer calls it when it seals a segment); the thread, started
    at the first submit, reads each segment back, checks it against its SHA-256, scans it and
    writes its index. Failures are logged at debug level and forgotten: an index is a cache.
    `wait` lets tests (and a writer that is closing, if it wishes) see the queue drained."""

    def __init__(self, segdir: Path, *, enabled: bool = True) -> None:
        self.segdir = segdir
        self._queue: queue.SimpleQueue[SegmentInfo | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._stopped = not enabled
        self._idle = threading.Condition()

    def submit(self, seg: SegmentInfo) -> None:
        with self._idle:
            if self._stopped:
                return
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"resumable-indexer {self.segdir}", daemon=True
                )
                self._thread.start()
        self._queue.put(seg)

    def wait(self, timeout: float | None = None) -> bool:
        """Until every submitted segment is done; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def stop(self, grace: float = 0.0) -> None:
        """Let the queue drain for up to `grace` seconds, then drop what is left and wait for
        the segment being indexed, if one is: the writer closes, and nothing is written without
        its lock after that. (A writer fed by a fast loop seals segments faster than this
        thread, which shares the GIL with it, indexes them; the grace gives the next open the
        indexes of the last few, instead of scans.)"""
        if grace > 0:
            self.wait(grace)
        with self._idle:
            self._stopped = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _run(self) -> None:
        tidy_temporaries(self.segdir)
        while True:
            seg = self._queue.get()
            if seg is None:
                return
            try:
                if not self._stopped:
                    build_and_write(self.segdir, seg)
            except Exception as exc:  # a cache: never let it take anything down
                log.debug("indexing %s/%s failed: %r", self.segdir, seg.name, exc)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()


# -- indexes in a mirror ------------------------------------------------------------------------


def worth_indexing(seg: SegmentInfo) -> bool:
    """Whether a part has an index in a mirror (one with records: a sealed segment stands as
    at most a few parts, so an index each costs one request per part, a constant)."""
    return seg.records > 0


def mirror_name(part: str) -> str:
    """The mirror object holding the index of part `part` (beside it, named after it whole:
    part names end in their SHA-256, so equal names mean equal bytes here too)."""
    return part + SUFFIX


def mirrored_part(name: str) -> str | None:
    """The part whose index the mirror object `name` holds (None: it is not an index)."""
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else None


def pack(index: bytes) -> bytes:
    """An index as the mirror stores it (compressed: its columns are mostly regular)."""
    return zlib.compress(index, 1)


def unpack(data: bytes, seg: SegmentInfo) -> bytes | None:
    """The index of `seg` that the mirror object `data` holds, if it is a sound one of exactly
    `seg` (see `decode`; decompressed within `max_index_bytes`), else None."""
    bound = max_index_bytes(seg)
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(data, bound + 1)
    except zlib.error:
        return None
    if len(raw) > bound or not inflate.eof or inflate.unused_data or inflate.unconsumed_tail:
        return None
    return raw if decode(raw, seg) is not None else None
