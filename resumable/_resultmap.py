"""`ResultMap`: a sweep's results (key -> result record) in record order, kept compactly.

After an open, a million results replayed in bulk from sealed segments are a dict of keys to
one shared marker plus columns (sequence numbers, times, line offsets): no Record per result
until one is looked at. `_state.State` keeps one; `_loading.py` fills it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from itertools import islice
from itertools import repeat as _repeat
from operator import countOf, indexOf
from typing import Any

import numpy as np

from ._journal import LazyRecord, LineSource, Record

# lazy entries of a ResultMap looked up one by one before it makes its key -> row index
SCAN_LOOKUPS = 8


class ResultMap(dict):  # type: ignore[type-arg]  # values: a Record, or a row (lazy)
    """key -> its result `Record`, in record order; a dict, so `in`, `len` and iterating keys
    run at C speed.

    Results replayed in bulk from sealed segments (`add_rows`) are kept compactly: the dict
    holds one shared marker (`_LAZY`, no object per result) and columns (sequence number,
    time, line offset, per part of a segment) hold the rest, about 16 bytes a result. The
    n-th lazy entry in the dict's order is row `_lazy_base + n`: rows are added in order, a
    dict keeps insertion order, and before a lazy entry is removed (`pop`, `del`, ...) every
    lazy entry is pinned to its row number (`_pin`), so the order never has to account for
    a gap. Looking one up makes a `LazyRecord`, whose payload is read back from its
    (re-verified) segment when asked for. Results recorded since the open are plain Records.
    """

    __slots__ = (
        "_found",
        "_lazy",
        "_lazy_base",
        "_parts",
        "_rows",
        "_rows_of",
        "_starts",
        "share_keys",
    )

    def __init__(self) -> None:
        super().__init__()
        self._starts: list[int] = []  # first row of each part
        # per part: (first seq, seqs - first seq, times, line offsets, segment, source, lines)
        self._parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, int, str, LineSource]]
        self._parts = []
        self._rows = 0
        self._lazy = 0  # lazy entries in the dict (with the _LAZY marker)
        self._lazy_base = 0  # the row of the first of them
        self._rows_of: dict[str, int] | None = None  # key -> row of the lazy entries, on demand
        self._found = 0  # lazy entries looked up by a scan of the keys (see `_lazy_row`)
        # gives equal key objects held elsewhere (the sweep's items): one copy of each key
        self.share_keys: Callable[[list[str]], list[str]] | None = None

    def add_rows(
        self,
        keys: list[str],
        seqs: np.ndarray,
        times: np.ndarray,
        offsets: np.ndarray,
        *,
        segment: int,
        source: str,
        lines: LineSource,
    ) -> bool:
        """Add results of keys none of which is here yet (False, and the map is unusable,
        if one was)."""
        first = self._rows
        before = len(self)
        if self.share_keys is not None:
            keys = self.share_keys(keys)
        self.update(zip(keys, _repeat(_LAZY)))
        seq0 = int(seqs[0]) if len(seqs) else 0
        rel = seqs - seq0
        small = len(rel) == 0 or int(rel[-1]) < (1 << 32)
        self._starts.append(first)
        self._parts.append(
            (
                seq0,
                rel.astype(np.uint32) if small else np.asarray(rel, np.int64),
                np.asarray(times, np.float64),
                offsets.astype(np.uint32) if int(offsets.max(initial=0)) < (1 << 32) else offsets,
                segment,
                source,
                lines,
            )
        )
        self._rows = first + len(keys)
        self._lazy += len(keys)
        self._rows_of = None
        return len(self) == before + len(keys)

    def _row_index(self) -> dict[str, int]:
        """key -> row of every lazy entry (made when first needed, then kept)."""
        if self._rows_of is None:
            lazy = [k for k, v in dict.items(self) if v is _LAZY]
            if len(lazy) != self._lazy:  # a lazy entry replaced behind the map's back
                raise RuntimeError("ResultMap: lazy rows were changed outside its methods")
            base = self._lazy_base
            self._rows_of = dict(zip(lazy, range(base, base + len(lazy)), strict=True))
        return self._rows_of

    def _lazy_row(self, key: str) -> int:
        """The row of the lazy entry `key`. The first few are found by a scan of the keys at
        C speed (a status asks for the few keys that failed or were retried: a key -> row
        index of a million keys would cost more than a second); from the SCAN_LOOKUPS-th on,
        by the index (`_row_index`), made once."""
        if self._rows_of is None and self._found < SCAN_LOOKUPS:
            self._found += 1
            at = indexOf(dict.keys(self), key)  # the n-th entry...
            if self._lazy != len(self):  # ...after at - (lazy ones before it) others
                at = countOf(islice(dict.values(self), at), _LAZY)
            return self._lazy_base + at
        return self._row_index()[key]

    def _pin(self) -> None:
        """Give every lazy entry its row number (before one is removed: see the class doc)."""
        if self._lazy:
            for key, row in self._row_index().items():
                dict.__setitem__(self, key, row)
        self._lazy = 0
        self._lazy_base = self._rows
        self._rows_of = None

    def first_seq(self) -> int | None:
        """The sequence number of the first result in the map's order (None if empty),
        without the key -> row index a lookup of a lazy entry needs (see `_row_index`)."""
        for value in dict.values(self):  # only the first
            if value is _LAZY:  # the first lazy entry in the dict's order: see the class doc
                value = self._lazy_base
            elif type(value) is not int:
                return int(value.seq)
            i = bisect.bisect_right(self._starts, value) - 1
            seq0, seqs = self._parts[i][:2]
            return seq0 + int(seqs[value - self._starts[i]])
        return None

    def _record(self, key: str, value: Any) -> Record:
        if value is _LAZY:
            value = self._lazy_row(key)
        elif type(value) is not int:
            return value  # type: ignore[no-any-return]  # not a row: a Record
        i = bisect.bisect_right(self._starts, value) - 1
        seq0, seqs, times, offsets, segment, source, lines = self._parts[i]
        j = value - self._starts[i]
        return LazyRecord(
            seq0 + int(seqs[j]),
            "result",
            key,
            float(times[j]),
            source,
            lines,
            segment,
            int(offsets[j]),
        )

    def __getitem__(self, key: str) -> Record:
        return self._record(key, dict.__getitem__(self, key))

    def get(self, key: str, default: Any = None) -> Any:
        value = dict.get(self, key, _MISSING)
        return default if value is _MISSING else self._record(key, value)

    def pop(self, key: str, *default: Any) -> Any:
        value = dict.get(self, key, _MISSING)
        if value is _MISSING:
            if default:
                return default[0]
            raise KeyError(key)
        record = self._record(key, value)
        if value is _LAZY:
            self._pin()
        dict.pop(self, key)
        return record

    def __delitem__(self, key: str) -> None:
        self.pop(key)

    def popitem(self) -> tuple[str, Record]:
        self._pin()
        key, value = dict.popitem(self)
        return key, self._record(key, value)

    def clear(self) -> None:
        self._pin()
        dict.clear(self)

    # values() and items() give Records (lazy rows resolved), generators where dict's are views
    def values(self) -> Iterator[Record]:  # type: ignore[override]
        record = self._record
        return (record(k, v) for k, v in dict.items(self))

    def items(self) -> Iterator[tuple[str, Record]]:  # type: ignore[override]
        record = self._record
        return ((k, record(k, v)) for k, v in dict.items(self))

    def copy(self) -> dict[str, Record]:
        return dict(self.items())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict) and dict(self.items()) == dict(other.items())

    __hash__ = None

    def seqs_and_times(self) -> tuple[np.ndarray, np.ndarray]:
        """Sequence numbers and times of the results, in the map's order, without making a
        Record per result."""
        if self._parts:
            all_seqs = np.concatenate([p[1].astype(np.int64) + p[0] for p in self._parts])
            all_times = np.concatenate([p[2] for p in self._parts])
        else:
            all_seqs, all_times = np.zeros(0, np.int64), np.zeros(0)
        n_lazy = countOf(dict.values(self), _LAZY)  # at C speed (identity first), no list
        if n_lazy != self._lazy:
            raise RuntimeError("ResultMap: lazy rows were changed outside its methods")
        if n_lazy == len(self):  # every entry lazy, the usual case after an open
            if self._lazy_base == 0 and n_lazy == len(all_seqs):  # every row, in order
                return all_seqs, all_times
            rows = self._lazy_base + np.arange(n_lazy, dtype=np.int64)
            values: list[Any] = []
        else:
            values = list(dict.values(self))
            lazy = _LAZY
            rows = np.fromiter(
                (-2 if v is lazy else v if type(v) is int else -1 for v in values),
                dtype=np.int64,
                count=len(values),
            )
            is_lazy = rows == -2
            if int(is_lazy.sum()) != self._lazy:
                raise RuntimeError("ResultMap: lazy rows were changed outside its methods")
            rows[is_lazy] = self._lazy_base + np.arange(self._lazy)
        live = np.flatnonzero(rows < 0)
        seqs = all_seqs[np.maximum(rows, 0)] if len(all_seqs) else np.zeros(len(rows), np.int64)
        times = all_times[np.maximum(rows, 0)] if len(all_times) else np.zeros(len(rows))
        for i in live:
            seqs[i] = values[i].seq
            times[i] = values[i].t
        return seqs, times


_LAZY: Any = object()  # the value of a lazy entry (see ResultMap)


_MISSING: Any = object()
