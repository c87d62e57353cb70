"""Item listings too long for one journal record: written as parts, read back as one list.

An open records the item list when it changed (see _state.py): a whole list as
``{"items": [...]}``, or only the appended entries as ``{"base": ..., "base_n": ...,
"append": [...]}``. When that one payload would exceed `limits.ITEMS_PART_BYTES` (a list of
ten million items is about 745 MB; a record may hold 256 MiB), the entries are written
instead as consecutive ``itemspart`` records, each ``{"entries": [...]}`` holding the next
slice of entries (split at entry boundaries, at most ITEMS_PART_BYTES unless one entry alone
is longer), followed by a closing ``items`` record, ``{"parts": k}`` or ``{"base": ...,
"base_n": ..., "parts": k}``. A list that fits keeps the one-record form byte for byte.

The headers say how the records belong together, so replay checks them without decoding a
payload: every part and the closing record carry the list's identity in their fingerprint
field; a part's key field is its number (``"0"``, ``"1"``, ...), the closing record's is
the number of parts. A closing record binds the k parts right before it (consecutive
records, the same identity, numbered 0..k-1); anything else is damage. Parts that no closing
record follows are what a crash while an open wrote its records leaves: never acknowledged
as a list, they are ignored (the next open writes the list again).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from . import _limits as limits
from ._journal import Record
from .errors import IntegrityError

PART = "itemspart"
LISTING_KINDS = frozenset({"items", PART})  # records of an item listing (large: kept lazily)
_PART_HEAD = b'{"entries":['
_MAX_PARTS_DIGITS = 12  # a part number or count in a key field: at most this many digits

Entry = tuple[str, bytes, "str | None", str]


# -- writing -----------------------------------------------------------------------------------


def listing_records(
    rows: Iterable[list[bytes]], head: bytes, field: bytes, identity: str
) -> Iterator[Entry]:
    """The records (kind, payload, key, fingerprint) of one item listing: `rows` are the
    entries (`_listing.listing_rows`: three pieces per entry, the first opening with ``],``),
    `head` the payload's start before the entries' field (``{`` or ``{"base":...,"base_n":N,``)
    and `field` that field's name (``items`` or ``append``).

    One record ``head + "field":[...]}`` when it fits in `limits.ITEMS_PART_BYTES`, the same
    bytes as the one-record form always had; else parts and a closing record (see the module
    docstring), each made as its entries come: the whole listing is never in memory at once.
    """
    budget = limits.ITEMS_PART_BYTES
    single = head + b'"' + field + b'":['
    held: list[bytes] = []  # chunks, while the listing may still fit in one record
    # the rows of the last two held chunks: only these can straddle a part's end (the ones
    # before them fit in a part whole: a part's head is at most 3 bytes longer than `single`)
    held_rows: list[list[bytes] | None] = []
    total = len(single) + 1  # the one record's payload: + entries - 2 (the first "],") + "]]}"
    rows_it = iter(rows)
    for row in rows_it:
        data = b"".join(row)
        held.append(data)
        held_rows.append(row)
        if len(held_rows) > 2:
            held_rows[-3] = None
        total += len(data)
        if total > budget:
            break
    else:
        if not held:
            yield "items", single + b"]}", None, identity
        else:
            held[0] = held[0][2:]
            yield "items", b"".join([single, *held, b"]]}"]), None, identity
        return
    packer = _Packer(budget, identity)
    for data, row_of in zip(held, held_rows, strict=True):
        yield from packer.add_chunk(data, row_of)
    del held, held_rows, data
    for row in rows_it:
        yield from packer.add_chunk(b"".join(row), row)
    yield from packer.flush()
    yield "items", head + b'"parts":%d}' % packer.count, str(packer.count), identity


class _Packer:
    """Packs chunks of entries into parts of at most `budget` payload bytes."""

    def __init__(self, budget: int, identity: str) -> None:
        self.budget = budget
        self.identity = identity
        self.count = 0
        self.pieces: list[Any] = []  # slices of chunks (memoryviews)
        self.size = 0  # bytes of the entries in `pieces` (each with its leading "],")

    def add_chunk(self, data: bytes, row: list[bytes] | None) -> Iterator[Entry]:
        room = self.budget - len(_PART_HEAD) - 1  # + entries - 2 + "]]}"
        if self.size + len(data) <= room:  # the whole chunk fits: no need to find its entries
            self.pieces.append(memoryview(data))
            self.size += len(data)
            return
        ends = _entry_ends(data, row)
        view = memoryview(data)
        at = 0  # byte where the entries not yet packed start
        first = 0  # index of the first of them
        while first < len(ends):
            # entries first..m-1 fit when their end minus `at` is within the room left
            m = int(np.searchsorted(ends, at + room - self.size, side="right"))
            if m <= first and not self.pieces:
                m = first + 1  # one entry longer than a part: a part of its own
            if m > first:
                end = int(ends[m - 1])
                self.pieces.append(view[at:end])
                self.size += end - at
                at, first = end, m
            if first < len(ends):
                yield self._part()

    def _part(self) -> Entry:
        pieces = self.pieces
        pieces[0] = pieces[0][2:]  # no "]," before the first entry
        payload = b"".join([_PART_HEAD, *pieces, b"]]}"])
        entry = (PART, payload, str(self.count), self.identity)
        self.count += 1
        self.pieces, self.size = [], 0
        return entry

    def flush(self) -> Iterator[Entry]:
        if self.pieces:
            yield self._part()


def _entry_ends(data: bytes, row: list[bytes] | None) -> np.ndarray:
    """The byte offsets in `data` (a chunk) where each of its entries ends."""
    if row is None:  # cannot be: see listing_records
        raise AssertionError("a chunk's rows are needed to split it")
    lens = np.fromiter(map(len, row), dtype=np.int64, count=len(row))
    ends: np.ndarray = np.cumsum(lens.reshape(-1, 3).sum(axis=1))
    return ends


# -- reading -----------------------------------------------------------------------------------


def _number(rec: Record, what: str) -> int:
    key = rec.key
    if (
        type(key) is not str
        or not key.isdigit()
        or not key.isascii()
        or len(key) > _MAX_PARTS_DIGITS
        or (key != "0" and key[0] == "0")
    ):
        raise IntegrityError(
            f"{rec.source}: record {rec.seq} ({rec.type}): its key must be the {what}, "
            f"found {key!r:.40}"
        )
    return int(key)


def add_part(run: list[Record], rec: Record) -> list[Record]:
    """The run of parts not yet closed once part `rec` is replayed after `run`: part 0 starts
    a new run (one before it that no record closed is dropped: a crash cut it short); any
    other part must follow the run's last part, with the same identity."""
    if rec.fp is None:
        raise IntegrityError(
            f"{rec.source}: record {rec.seq}: a part of an item listing needs its identity"
        )
    n = _number(rec, "part number")
    if n == 0:
        return [rec]
    if not run or run[-1].seq != rec.seq - 1 or run[0].fp != rec.fp or len(run) != n:
        raise IntegrityError(
            f"{rec.source}: record {rec.seq} is part {n} of item list {rec.fp[:16]}... but "
            + (
                f"follows part {len(run) - 1} of list {str(run[0].fp)[:16]}... "
                f"(record {run[-1].seq})"
                if run
                else "no part before it"
            )
        )
    run.append(rec)
    return run


def close(run: list[Record], rec: Record) -> tuple[Record, ...]:
    """The parts the items record `rec` closes (none for the one-record form), checked from
    the headers: the `run` of parts right before it, as many as its key says, numbered
    0..k-1 (`add_part` checked that), of its identity."""
    assert rec.fp is not None
    if rec.key is None:
        if run and run[-1].seq == rec.seq - 1:
            raise IntegrityError(
                f"{rec.source}: record {rec.seq}: an items record of one piece follows "
                f"{len(run)} part(s) of an item listing (records {run[0].seq}-{run[-1].seq})"
            )
        return ()
    k = _number(rec, "number of parts")
    if k == 0 or len(run) != k or run[-1].seq != rec.seq - 1 or run[0].fp != rec.fp:
        found = (
            f"{len(run)} part(s) of list {str(run[0].fp)[:16]}... ending at record {run[-1].seq}"
            if run
            else "no part"
        )
        raise IntegrityError(
            f"{rec.source}: record {rec.seq} closes an item list ({rec.fp[:16]}...) of {k} "
            f"part(s) right before it, found {found}"
        )
    return tuple(run)


def entries(value: Any, rec: Record) -> list[list[Any]]:
    """`value` (a listing's entries, from `rec`), checked: each ``[key, params]`` (params not
    null) or ``[key, fingerprint, params]`` (fingerprint a str or null), key a str (see
    _listing.py)."""
    if type(value) is not list:
        raise IntegrityError(f"{rec.source}: record {rec.seq}: malformed items (not a list)")
    # (C calls only when the entries are all of one form; the first bad entry is then found
    # and named one by one)
    if set(map(type, value)) <= {list}:
        lens = set(map(len, value))
        if lens <= {2, 3} and set(map(type, map(_first, value))) <= {str}:
            seconds = list(map(_second, value))
            if lens == {3} and set(map(type, seconds)) <= set(_FPS):
                return value
            if lens <= {2} and None not in seconds:
                return value
            if not any(map(_problem, value)):  # both forms
                return value
    for i, e in enumerate(value):
        problem = _problem(e)
        if problem:
            raise IntegrityError(
                f"{rec.source}: record {rec.seq}: malformed items: entry {i} {problem}"
            )
    return value  # (not reached: the fast check failed for an entry)


_FPS = (str, type(None))
_first = operator.itemgetter(0)
_second = operator.itemgetter(1)


def _problem(e: Any) -> str:
    """What is wrong with one listing entry ("" if nothing)."""
    if type(e) is not list or len(e) not in (2, 3):
        return "is not a list of 2 or 3 elements"
    if type(e[0]) is not str:
        return "has a key that is not a string"
    if len(e) == 2 and e[1] is None:
        return "has no params and no fingerprint"
    if len(e) == 3 and type(e[1]) not in _FPS:
        return "has a fingerprint that is neither a string nor null"
    return ""


def own_entries(
    rec: Record, body: dict[str, Any], field: str, parts: tuple[Record, ...] | None
) -> list[list[Any]]:
    """The entries an items record adds: its `field` (``items`` or ``append``), or the
    entries of the `parts` it closes (as many as its payload says)."""
    if "parts" not in body:
        return entries(body[field], rec)
    count = body["parts"]
    if field in body or type(count) is not int or parts is None or len(parts) != count:
        raise IntegrityError(
            f"{rec.source}: record {rec.seq}: malformed items (its payload says "
            f"{count!r:.20} parts, {0 if parts is None else len(parts)} precede it)"
        )
    out: list[list[Any]] = []
    for part in parts:
        out += entries(part.body().get("entries"), part)
    return out
