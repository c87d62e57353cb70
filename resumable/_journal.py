"""Journal segments: strict and fast parsing of their records, and the one damage forgiven.

A segment is record lines one after another, each hash-chained to the one before it (the line
format and the records are in _records.py; their names are re-exported from here). The
only damage forgiven is a torn tail of the active segment, what a crash or power cut in the
middle of its last append (never acknowledged) leaves: a file's new size can reach the disk
before its data, and its pages and sectors in any order. Either damage (a partial line, zeros,
garbage, of any length) after its last valid record with no record after it; or, as a group
append (`append_many`: many records, one write, one time) can leave, damage consisting only of
NUL bytes covering whole 512-byte sectors (the run may start at the damage and end at the end of
the file), with nothing else up to the end but pieces of that one write: whole records
well formed, numbered on, hash-chained to each other and all of one time, and the cut ends of
records at the zeros and at the end (`torn_group`). Anything else before a record (a flipped
byte, garbage, zeros not covering whole sectors, records of separate commits, a changed record)
is an `IntegrityError`. (Removing the last records of the active segment, or a whole sector of
its last group reading as zeros, looks the same as a torn tail: only an outside reference, a
mirror, can tell; see `verify --mirror`.)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from . import _limits as limits
from ._codec import loads
from ._records import (
    HASH_LEN,
    MAX_TIME,
    RECORD_TYPES,
    LazyRecord,
    LineSource,
    Record,
    chain_line,
    check_time,
    dumps,
    encode_line,
    encode_record,
    header_record,
)
from .errors import IntegrityError

__all__ = [  # the records and their line format live in _records.py; re-exported from here
    "MAX_TIME",
    "SECTOR",
    "LazyRecord",
    "LineSource",
    "ParsedSegment",
    "Record",
    "SealedScan",
    "chain_line",
    "check_time",
    "dumps",
    "encode_line",
    "encode_record",
    "header_record",
    "parse_sealed_segment",
    "parse_segment",
    "record_follows",
    "scan_sealed",
    "torn_group",
]


@dataclass
class ParsedSegment:
    """The verified records of one segment and where a torn tail (if any) starts."""

    records: list[Record]
    good_size: int  # bytes up to the end of the last complete, verified record
    torn_bytes: int  # length of an unterminated tail (0 if none)
    last_hash: str


def parse_segment(
    data: bytes,
    *,
    source: str,
    first_seq: int,
    prev_hash: str,
    allow_torn_tail: bool,
) -> ParsedSegment:
    """Verify and decode every record in `data` (a whole segment read from `source`).

    `first_seq` and `prev_hash` are what the first record must follow. A final unterminated line
    is reported as torn when `allow_torn_tail` (the active segment), else it is damage.
    """
    records: list[Record] = []
    pos = 0
    seq = first_seq
    prev = prev_hash.encode("ascii")
    n = len(data)
    sha = hashlib.sha256
    max_record = limits.MAX_RECORD_BYTES
    while pos < n:
        try:
            end = data.find(b"\n", pos)
            if end < 0:
                raise IntegrityError(
                    f"{source}: record {seq} at byte {pos} is cut short "
                    f"({n - pos} bytes without a line end)"
                    + ("" if allow_torn_tail else " in a sealed segment")
                )
            if end - pos > max_record:
                raise IntegrityError(
                    f"{source}: record {seq} at byte {pos} is {end - pos} bytes; at most "
                    f"{max_record} expected"
                )
            claimed = data[pos : pos + HASH_LEN]
            tab = data.find(b"\t", pos + HASH_LEN + 1, end)
            if tab < 0 or data[pos + HASH_LEN : pos + HASH_LEN + 1] != b" ":
                raise IntegrityError(
                    f"{source}: record {seq} at byte {pos}: expected "
                    f"'<sha256> <header>\\t<payload>', found {data[pos : min(end, pos + 80)]!r}"
                )
            header = data[pos + HASH_LEN + 1 : tab]
            actual = sha(prev + b"\n" + data[pos + HASH_LEN + 1 : end]).hexdigest().encode("ascii")
            if claimed != actual:
                raise IntegrityError(
                    f"{source}: record {seq} at byte {pos}: SHA-256 mismatch (recorded "
                    f"{claimed[:16]!r}..., computed {actual[:16]!r}...): the record or one before "
                    "it was altered, removed or reordered"
                )
            records.append(
                header_record(header, data[tab + 1 : end], seq=seq, source=source, offset=pos)
            )
        except IntegrityError:
            # Damage with no record after it, or what a power cut leaves of one group append,
            # in the active segment: a torn tail (see above).
            if allow_torn_tail and (
                not record_follows(data, pos) or torn_group(data, pos, seq=seq)
            ):
                return ParsedSegment(records, pos, n - pos, prev.decode("ascii"))
            raise
        prev = claimed
        seq += 1
        pos = end + 1
    return ParsedSegment(records, pos, 0, prev.decode("ascii"))


_RECORD_START = re.compile(
    rb"[0-9a-f]{64} ([0-9]{1,18}) [a-z]{1,12} [^ \t\n]{1,40} [^ \t\n]{1,80} [^\t\n]*\t[^\n]*\n"
)


def record_follows(data: bytes, pos: int) -> bool:
    """Whether a whole, well-formed record line lies anywhere after the damage at `pos`.

    A power cut during an unacknowledged append of one record leaves only bytes of that one
    line (a prefix, zeroed or stale pages, its last page without the rest), so damage with a
    record after it is damage to acknowledged records, unless it is what a power cut leaves of
    a group append (`torn_group`). The record may
    start anywhere (its predecessor's newline may be the damaged byte); a raw tab occurs once
    per line (JSON escapes the others), so a payload cannot pass for a record.
    """
    for m in _RECORD_START.finditer(data, pos + 1):
        line = m.group(0)
        tab = line.index(b"\t")
        try:
            header_record(line[HASH_LEN + 1 : tab], b"", seq=int(m.group(1)), source="", offset=0)
        except IntegrityError:
            continue
        return True
    return False


SECTOR = 512  # the unit a disk writes whole: a power cut zeroes whole sectors, never less
_NOT_NUL = re.compile(rb"[^\x00]")
_HEX_PREFIX = re.compile(rb"[0-9a-f]{0,64}")


def torn_group(data: bytes, pos: int, *, seq: int) -> bool:
    """Whether everything from the damage at `pos` to the end is what a power cut during one
    group append (`append_many`: many records, one write, one time) can leave.

    Such a write spans many pages; a power cut may keep the file's new size and some of them
    while others (the first ones too) read as zeros. So every NUL byte must lie in a run that
    begins at `pos` or on a sector boundary and ends at the end or on a sector boundary; the
    bytes between such runs are pieces of that one write: a record's end cut by zeros before
    it, a record's start cut by zeros or the end after it, and in between whole records that
    are well formed, hash-chained to each other, numbered on from the record expected at `pos`
    and all of one time, as one write makes them. The piece at `pos` itself (no zeros before
    it) may only be the start of a record. A flipped byte, garbage, zeros not covering whole
    sectors, or records of separate commits after the damage do not look like this.
    """
    n = len(data)
    times: set[float] = set()
    last_seq = seq
    i = pos
    while i < n:
        if data[i] == 0:
            m = _NOT_NUL.search(data, i)
            j = m.start() if m else n
            if (i != pos and i % SECTOR) or (j != n and j % SECTOR):
                return False
            i = j
            continue
        j = data.find(b"\x00", i)
        j = n if j < 0 else j
        pieces = data[i:j].split(b"\n")
        if i == pos and len(pieces) > 1:
            return False  # a whole line at the damage that does not verify: not a cut
        prev: bytes | None = None
        for line in pieces[1:-1]:  # pieces[0] may be the end of a record zeroed before it
            m = _RECORD_START.fullmatch(line + b"\n")
            if m is None:
                return False
            tab = line.index(b"\t")
            rec_seq = int(m.group(1))
            if rec_seq <= last_seq or (prev is not None and rec_seq != last_seq + 1):
                return False
            try:
                rec = header_record(line[HASH_LEN + 1 : tab], b"", seq=rec_seq, source="", offset=0)
            except IntegrityError:
                return False
            claimed = line[:HASH_LEN]
            if prev is not None:
                digest = hashlib.sha256(prev + b"\n" + line[HASH_LEN + 1 :]).hexdigest()
                if digest.encode("ascii") != claimed:
                    return False
            times.add(rec.t)
            prev, last_seq = claimed, rec_seq
        starts = len(pieces) > 1 or i == pos  # the last piece is a record's start
        if starts and not _HEX_PREFIX.fullmatch(pieces[-1][:HASH_LEN]):
            return False
        i = j
    return len(times) <= 1


_SEALED_LINE = re.compile(  # the hash is not captured: the manifest's SHA-256 vouches for it
    rb"^[0-9a-f]{64} ([0-9]{1,18}) ([a-z]{1,12}) ([^ \t\n]{1,40}) ([^ \t\n]{1,80}) "
    rb"([^\t\n]*)\t([^\n]*)\n",
    re.MULTILINE,
)
_KIND_OF = {k.encode("ascii"): k for k in RECORD_TYPES}  # one shared str per type, not one per line


def parse_sealed_segment(
    data: bytes, *, source: str, first_seq: int, records: int, prev_hash: str
) -> list[Record]:
    """Fast path for a sealed segment whose bytes already matched the manifest's SHA-256.

    The whole-file hash vouches for every byte, so per-line hashes are not recomputed; every
    line must still have the record shape and the sequence numbers must run on. Anything odd
    falls back to `parse_segment`, which says precisely what is wrong.
    """
    matches = _SEALED_LINE.findall(data)
    if len(matches) != records or data.count(b"\n") != records or not data.endswith(b"\n"):
        return parse_segment(
            data, source=source, first_seq=first_seq, prev_hash=prev_hash, allow_torn_tail=False
        ).records
    out: list[Record] = []
    seq = first_seq
    try:
        kind_of = _KIND_OF
        for hseq, kind, t, fp, key, payload in matches:
            if int(hseq) != seq:
                raise ValueError("sequence")
            kind_s = kind_of.get(kind)
            if kind_s is None:
                raise ValueError("type")
            if key[:1] == b'"' and key[-1:] == b'"' and b"\\" not in key:
                key_s: str | None = key[1:-1].decode("utf-8")
            elif key == b"null":
                key_s = None
            else:
                key_s = loads(key)
                if type(key_s) is not str:
                    raise ValueError("key")
            out.append(
                Record(
                    seq,
                    kind_s,
                    key_s,
                    check_time(float(t)),
                    None if fp == b"-" else fp.decode(),
                    payload,
                    source,
                )
            )
            seq += 1
    except (ValueError, UnicodeDecodeError, RecursionError):
        return parse_segment(
            data, source=source, first_seq=first_seq, prev_hash=prev_hash, allow_torn_tail=False
        ).records
    return out


@dataclass
class SealedScan:
    """What replaying a sealed segment needs, found without a Python object per line: where
    each line starts, which lines are results, and the results' keys and times."""

    starts: np.ndarray  # byte offset of every line
    ends: np.ndarray  # offset of every line's newline
    tabs: np.ndarray  # offset of every line's tab
    result_lines: np.ndarray  # indices of the result lines, ascending
    keys: list[str]  # their keys, in order
    times: np.ndarray  # their times (float64), in order
    keys_raw: bytes = b""  # the keys as read: UTF-8, each followed by '"'


_TIME_CHARS = np.zeros(256, bool)
_TIME_CHARS[np.frombuffer(b"0123456789.eE+-", np.uint8)] = True


def _gather(arr: np.ndarray, begin: np.ndarray, end: np.ndarray) -> bytes:
    """The bytes of the ranges [begin, end) (non-empty), concatenated: O(bytes gathered)."""
    lengths = end - begin
    total = int(lengths.sum())
    shift = np.repeat(begin - (np.cumsum(lengths) - lengths), lengths)
    out: bytes = arr[np.arange(total, dtype=np.int64) + shift].tobytes()
    return out


def scan_sealed(data: bytes, *, first_seq: int, records: int) -> SealedScan | None:
    """Vectorised reading of a sealed segment whose bytes matched the manifest's SHA-256.

    Checks for every result line what `parse_sealed_segment` checks (the record shape,
    sequence numbers running on from `first_seq`, plausible times, keys, sizes) with numpy over
    the whole segment (one pass finds every newline, tab and space), and gets the keys out of
    one decode and one split; the other lines (launches, failures, ...: few) the caller parses
    one by one. None when anything is unusual (an escaped key, a control character, a line of
    another shape...): the caller then takes `parse_sealed_segment`, which says precisely
    what is wrong.
    """
    if records <= 0 or not data.endswith(b"\n"):
        return None
    arr = np.frombuffer(data, np.uint8)
    special = np.flatnonzero(arr <= 32)  # JSON escapes control characters: \t \n and space
    what = arr[special]
    ends = special[what == 10]
    tabs = special[what == 9]
    spaces = special[what == 32]
    if len(ends) != records or len(tabs) != records:
        return None
    if len(ends) + len(tabs) + len(spaces) != len(special):
        return None
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    if not ((tabs > starts + HASH_LEN + 8) & (tabs < ends)).all():
        return None
    if int((ends - starts).max()) > limits.MAX_RECORD_BYTES:
        return None
    # the header's spaces: after the hash, the sequence number, the type, the time, the fp
    first = np.searchsorted(spaces, starts + HASH_LEN)
    if int(first[-1]) + 4 >= len(spaces):
        return None
    s0, s1, s2, s3, s4 = (spaces[first + i] for i in range(5))
    if not ((s0 == starts + HASH_LEN) & (s4 < tabs)).all():
        return None
    # sequence numbers: exactly first_seq, first_seq + 1, ... in decimal
    if int((s1 - s0).max()) > 19:
        return None
    expected = " ".join(map(str, range(first_seq, first_seq + records))) + " "
    if _gather(arr, s0 + 1, s1 + 1) != expected.encode("ascii"):
        return None
    # types of 1 to 12 letters; result lines in bulk, the (few) others one by one by the caller
    klen = s2 - s1 - 1
    if int(klen.min()) < 1 or int(klen.max()) > 12:
        return None
    rl = np.flatnonzero(klen == 6)
    for j, c in enumerate(b"result"):
        rl = rl[arr[s1[rl] + 1 + j] == c]
    if len(rl) == 0:
        return SealedScan(starts, ends, tabs, rl, [], np.zeros(0))
    s2, s3, s4 = s2[rl], s3[rl], s4[rl]
    # times: 1 to 40 characters of a float; fingerprints 1 to 80 (checked when read)
    tlen, flen = s3 - s2 - 1, s4 - s3 - 1
    if int(tlen.min()) < 1 or int(tlen.max()) > 40 or int(flen.min()) < 1 or flen.max() > 80:
        return None
    raw_t = _gather(arr, s2 + 1, s3 + 1)  # each time with the space after it
    if int(_TIME_CHARS[np.frombuffer(raw_t, np.uint8)].sum()) != len(raw_t) - len(rl):
        return None
    try:
        times = np.array(list(map(float, raw_t.split())), dtype=np.float64)
    except ValueError:
        return None
    if len(times) != len(rl) or not ((times >= 0.0) & (times <= MAX_TIME)).all():
        return None
    # keys: quoted, no escapes, valid UTF-8: one decode and one split for all
    kb, ke = s4 + 1, tabs[rl]
    if (ke - kb < 2).any() or not ((arr[kb] == 34) & (arr[ke - 1] == 34)).all():
        return None
    raw = _gather(arr, kb + 1, ke)
    if b"\\" in raw:
        return None
    try:
        keys = raw.decode("utf-8").split('"')
    except UnicodeDecodeError:
        return None
    keys.pop()  # after the last closing quote
    if len(keys) != len(rl):
        return None
    if int((ke - kb).max()) - 2 > limits.MAX_KEY_CHARS and any(
        len(k) > limits.MAX_KEY_CHARS for k in keys
    ):
        return None
    return SealedScan(starts, ends, tabs, rl, keys, times, raw)
