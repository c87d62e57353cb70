"""Replaying a segment's records in bulk: results as rows of columns, the others one by one.

A sealed segment's result records become rows of columns (`_resultmap.ResultMap`), found by a
vectorised scan (`_journal.scan_sealed`) or read from the segment's row index (`_segindex.py`:
a derived cache bound to the segment's SHA-256, ignored unless sound); a whole, undamaged
active segment replays from its scan too, every record's hash chain checked as
`parse_segment` would. Each function here applies nothing and answers False (or None) when
anything is unusual: the loader (_loading.py) then replays record by record, which says
what is wrong.
"""

from __future__ import annotations

import hashlib

import numpy as np

from . import _segindex as segindex
from ._itemlist import LISTING_KINDS
from ._journal import LazyRecord, LineSource, Record, header_record, scan_sealed
from ._manifest import SegmentInfo
from ._parts import SealedParts
from ._state import State
from .errors import IntegrityError


def replay_scanned(
    state: State, data: bytes, index: int, seg: SegmentInfo, source: str, parts: SealedParts
) -> bool:
    """Replay a sealed segment from its vectorised scan (results in bulk); False if the scan
    finds it unusual (nothing applied then), to be replayed record by record instead."""
    scan = scan_sealed(data, first_seq=seg.first_seq, records=seg.records)
    if scan is None:
        return False
    rows = segindex.rows_of_scan(scan)
    return _apply_rows(state, data, rows, scan.keys, seg.first_seq, index, source, parts)


def replay_indexed(
    state: State,
    data: bytes,
    raw: bytes,
    index: int,
    seg: SegmentInfo,
    source: str,
    parts: SealedParts,
) -> bool:
    """Replay a sealed segment from its row index `raw`; False (nothing applied) unless the
    index is a sound one of exactly this segment."""
    rows = segindex.decode(raw, seg)
    if rows is None:
        return False
    keys = rows.keys()
    if keys is None:
        return False
    return _apply_rows(state, data, rows, keys, seg.first_seq, index, source, parts)


class _HeldLines:
    """Record lines of the active segment's verified bytes, held in memory (for LazyRecord)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def line(self, segment: int, offset: int) -> bytes:
        return self.data[offset : self.data.index(b"\n", offset)]


def replay_active_scanned(
    state: State, data: bytes, records: int, first_seq: int, prev_hash: str, source: str
) -> str | None:
    """Replay a whole, undamaged active segment from its vectorised scan, every line's hash
    chained to the one before as `parse_segment` checks it; the last hash, or None (nothing
    applied) when anything is unusual, a torn tail included: `parse_segment` then decides.
    `records` is the number of newlines in `data`."""
    if not data.endswith(b"\n"):
        return None
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
    rows = segindex.rows_of_scan(scan)
    if not _apply_rows(state, data, rows, scan.keys, first_seq, -1, source, _HeldLines(data)):
        return None
    return prev.decode("ascii")


def _apply_rows(
    state: State,
    data: bytes,
    rows: segindex.SegmentRows,
    keys: list[str],
    first_seq: int,
    index: int,
    source: str,
    parts: LineSource,
) -> bool:
    """Apply a segment's records in order: runs of results in bulk, the others one by one
    (each of their headers parsed from `data` first: False, nothing applied, if one is not
    a record line there, or is malformed)."""
    result_lines = rows.result_lines
    others = rows.others.tolist()
    # check the other lines first: any oddity and the slow path says what it is
    recs: list[Record] = []
    for line, start, tab, end in others:
        if (
            (start and data[start - 1 : start] != b"\n")
            or data[end : end + 1] != b"\n"
            or data[tab : tab + 1] != b"\t"
            or data[start + 64 : start + 65] != b" "
        ):
            return False
        try:
            rec = header_record(
                data[start + 65 : tab], b"", seq=first_seq + line, source=source, offset=start
            )
        except IntegrityError:
            return False
        if rec.type in LISTING_KINDS:  # possibly large, decoded only when asked for
            rec = LazyRecord(
                rec.seq, rec.type, rec.key, rec.t, source, parts, index, start, fp=rec.fp
            )
        else:
            rec.payload = data[tab + 1 : end]
        recs.append(rec)
    starts, times = rows.result_starts, rows.times
    seqs = result_lines + first_seq
    at = 0
    for (line, *_), rec in zip(others, recs, strict=True):
        upto = int(np.searchsorted(result_lines, line))
        if upto > at:
            state.apply_results(
                keys[at:upto],
                seqs[at:upto],
                times[at:upto],
                starts[at:upto],
                segment=index,
                source=source,
                lines=parts,
            )
            at = upto
        state.apply(rec)
    if at < len(result_lines):
        state.apply_results(
            keys[at:] if at else keys,
            seqs[at:],
            times[at:],
            starts[at:],
            segment=index,
            source=source,
            lines=parts,
        )
    return True
