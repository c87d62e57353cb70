"""A sweep's progress as replayed from its journal records: what is done, failed and known.

Record types (the header of each carries ``seq``, ``type``, ``key``, time and fingerprint):

- ``launch``: a process opened the sweep for writing (payload: ``launch``, ``host``, ``pid``,
  ``items_sha256``, ``n_items``).
- ``items``: the item keys with their JSON-like parameters, when the list changed (the header's
  fingerprint field holds the list's identity), each entry ``[key, params]`` (the params
  determine the item's fingerprint, which is not stored) or, for an item without params (too
  large, not JSON-like), ``[key, fingerprint, null]``, the form every entry had before 0.1.0
  (read as well: see _listing.py): the whole list (``items``), or,
  when items were only appended, ``base`` (the previous list's identity), ``base_n`` and the
  new entries (``append``), so growing a list by k items writes O(k) bytes. A listing longer
  than `limits.ITEMS_PART_BYTES` is written as ``itemspart`` records closed by an ``items``
  record that says how many (``parts``) in place of the entries (see _itemlist.py).
- ``result``: an item finished (payload: ``value``, ``duration``, ``launch``).
- ``failure``: an item failed (payload: ``error_type``, ``message``, ``traceback``, ``attempt``,
  ``duration``, ``launch``).
- ``retry``: failed ``keys`` are pending again (asked for on purpose).
- ``invalidate``: results of ``keys`` are void (the item changed and a rerun was asked for).
- ``meta``: the user's ``meta`` dict, whenever it changed.

Result payloads are decoded only when used, so replaying 100k records stays fast.

Besides the latest record per key, the state keeps what a timeline (`_history.py`) needs to
retell the whole journal without reading it again: records that a later one replaced or voided
(`superseded`) and the few records that are not about one item (`events`: retry, invalidate,
items, meta). Both stay small in practice: they grow with failures, retries and changes, not
with results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from . import _itemlist as itemlist
from ._codec import decode
from ._journal import LineSource, Record
from ._listing import with_fingerprints
from ._resultmap import ResultMap
from .errors import IntegrityError

MAX_ATTEMPT = 1 << 31


@dataclass
class State:
    """Replayed progress. `results` keeps record order (dict insertion order)."""

    results: ResultMap = field(default_factory=ResultMap)
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> failure payload
    failure_records: dict[str, Record] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    items_record: Record | None = None
    items_sha256: str | None = None
    items_count: int | None = None  # entries in that list (from its launch record)
    launches: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    last_seq: int = 0
    last_hash: str = ""
    last_finished: float | None = None
    retries: int = 0
    invalidations: int = 0
    superseded: list[Record] = field(default_factory=list)  # replaced or voided, in seq order
    events: list[Record] = field(default_factory=list)  # retry/invalidate/items/meta records
    # closing items record's seq -> the itemspart records it binds (see _itemlist.py)
    item_parts: dict[int, tuple[Record, ...]] = field(default_factory=dict)
    _open_parts: list[Record] = field(default_factory=list, repr=False, compare=False)
    _listing: tuple[Record, list[list[Any]]] | None = field(default=None, repr=False, compare=False)
    _with_fps: Record | None = field(default=None, repr=False, compare=False)  # (_listing's form)

    def apply(self, rec: Record) -> None:
        """Fold one verified record into the state; contradictions are damage."""
        key = rec.key
        if rec.type == "result" and key is not None and key not in self.results:
            if self.failures:  # the common case, a new result, stays cheap
                self._drop_failure(key)
            self.results[key] = rec
            self.last_finished = rec.t
            self.last_seq = rec.seq
            return
        try:
            self._apply(rec)
        except IntegrityError as exc:
            if str(exc).startswith(f"{rec.source}: "):  # already names the file and record
                raise
            raise IntegrityError(f"{rec.source}: record {rec.seq}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise IntegrityError(
                f"{rec.source}: record {rec.seq} ({rec.type}) is malformed: {exc!r:.200}"
            ) from None
        self.last_seq = rec.seq

    def apply_results(
        self,
        keys: list[str],
        seqs: np.ndarray,
        times: np.ndarray,
        offsets: np.ndarray,
        *,
        segment: int,
        source: str,
        lines: LineSource,
    ) -> None:
        """Fold a run of result records (of a sealed segment, in order) into the state at
        once: what `apply` does for each, without a Record per result."""
        if not keys:
            return
        if self.failures:
            hit = self.failures.keys() & set(keys)
            for key in keys:
                if key in hit:
                    self._drop_failure(key)
        before = len(self.results)
        if not self.results.add_rows(
            keys, seqs, times, offsets, segment=segment, source=source, lines=lines
        ):
            # the keys added are the map's last ones (a dict keeps insertion order); the
            # first key done before or seen twice here (set.add returns None, so `or` tests
            # membership first) is the one to name
            added = set(islice(iter(self.results), before, None))
            seen: set[str] = set()
            twice = next(
                (k for k in keys if k not in added or k in seen or seen.add(k)),  # type: ignore[func-returns-value]
                None,
            )
            what = f"key {twice!r}" if twice is not None else "a key"
            raise IntegrityError(
                f"{source}: records {int(seqs[0])}-{int(seqs[-1])}: {what} is recorded as "
                "done twice"
            )
        self.last_finished = float(times[-1])
        self.last_seq = int(seqs[-1])

    def _apply(self, rec: Record) -> None:
        kind = rec.type
        if kind == "result":
            key = _key(rec)
            if key in self.results:
                raise IntegrityError(f"key {key!r} is recorded as done twice")
            self._drop_failure(key)
            self.results[key] = rec
            self.last_finished = rec.t
        elif kind == "failure":
            key = _key(rec)
            if key in self.results:
                raise IntegrityError(f"key {key!r} is recorded as failed after it was done")
            body = rec.body()
            attempt = body["attempt"]
            if type(attempt) is not int or not 0 <= attempt <= MAX_ATTEMPT:
                raise IntegrityError(
                    f"attempt must be an integer in [0, {MAX_ATTEMPT}], found {attempt!r:.40}"
                )
            self._drop_failure(key)
            self.failures[key] = body
            self.failure_records[key] = rec
            self.attempts[key] = attempt
            self.last_finished = rec.t
        elif kind == "retry":
            keys = _keys(rec.body())
            self.retries += 1
            self.events.append(rec)
            for key in keys:
                self._drop_failure(key)
        elif kind == "invalidate":
            keys = _keys(rec.body())
            self.invalidations += 1
            self.events.append(rec)
            for key in keys:
                voided = self.results.pop(key, None)
                if voided is not None:
                    self.superseded.append(voided)
        elif kind == "items":
            # The list's identity travels in the header's fingerprint field, so replaying does
            # not decode the (possibly large) listing itself.
            if rec.fp is None:
                raise IntegrityError("an items record needs the list's identity")
            parts = itemlist.close(self._open_parts, rec)
            self._open_parts = []
            if parts:
                self.item_parts[rec.seq] = parts
            self.items_record = rec
            self.items_sha256 = rec.fp
            # written right after its launch record, whose n_items is the list's length
            n = self.launches[-1].get("n_items") if self.launches else None
            self.items_count = n if type(n) is int else None
            self.events.append(rec)
        elif kind == "itemspart":
            self._open_parts = itemlist.add_part(self._open_parts, rec)
        elif kind == "launch":
            self._open_parts = []  # parts no record closed (an open cut short): ignored
            body = rec.body()
            body["t"] = rec.t
            body["seq"] = rec.seq
            self.launches.append(body)
        elif kind == "meta":
            meta = rec.body()["meta"]
            # small, so checked whole here: it must decode to a dict (a tagged value at the
            # top, {"__t": "i", ...}, would be an int)
            if type(meta) is not dict or type(decode(meta, where="meta")) is not dict:
                raise IntegrityError("meta must be an object that decodes to a dict")
            self.meta = meta
            self.events.append(rec)

    def _drop_failure(self, key: str) -> None:
        self.failures.pop(key, None)
        old = self.failure_records.pop(key, None)
        if old is not None:
            self.superseded.append(old)

    def keys_all_current(self) -> bool:
        """Whether every key with a result or failure is in the current item list, known
        without decoding any listing: that list grew by appends only from the journal's first
        items record, and nothing was recorded before that record (a sweep refuses results of
        items not in its list). `status` then needs counts, not the keys."""
        items = [r for r in self.events if r.type == "items"]
        if not items or items[-1] is not self.items_record or self.items_count is None:
            return False
        # (the first items record holds a whole list: an append would have no base)
        if not all(map(_is_append, items[1:])):
            return False
        return items[0].seq < self._first_finished_seq()

    def _first_finished_seq(self) -> int:
        firsts = [r.seq for r in self.failure_records.values()]
        firsts += [r.seq for r in self.superseded]
        first = self.results.first_seq()  # the first in record order is the least
        if first is not None:
            firsts.append(first)
        return min(firsts, default=self.last_seq + 1)

    def items_listing(self) -> list[list[Any]]:
        """The items as last recorded at an open: their entries as stored, ``[key, params]``
        or ``[key, fingerprint, params]`` (see the module docstring): ``entry[0]`` is the key,
        ``entry[-1]`` the params (every entry has three once `items_with_fingerprints`
        derived the fingerprints).

        Decoded once per items record and kept (read-only views ask for it more than once:
        their status and their timeline); callers must not modify it.
        """
        if self.items_record is None:
            return []
        cached = self._listing
        if cached is not None and cached[0] is self.items_record:
            return cached[1]
        items = self.listing_of(self.items_record)
        self._listing = (self.items_record, items)
        return items

    def items_with_fingerprints(self) -> list[list[Any]]:
        """`items_listing` as [[key, fingerprint, params], ...], the fingerprints that entries
        do not store derived from their params; derived once per items record, the listing
        kept in this form from then on (its keys and params are the same objects: no second
        copy of a large list). Callers must not modify it."""
        entries = self.items_listing()
        rec = self.items_record
        if rec is None or not entries or self._with_fps is rec:
            return entries
        try:
            full = with_fingerprints(entries)
        except (ValueError, TypeError, RecursionError) as exc:
            raise IntegrityError(
                f"{rec.source}: record {rec.seq}: malformed items (an entry's params have no "
                f"canonical JSON: {exc!r:.200})"
            ) from None
        self._listing = (rec, full)
        self._with_fps = rec
        return full

    def listing_of(self, rec: Record) -> list[list[Any]]:
        """The whole item list that the items record `rec` stands for.

        A record holds either the whole list (``items``) or, when a relaunch only appended
        items, the new entries (``append``) after the list of identity ``base`` with
        ``base_n`` entries: the latest items record before it with that identity. Either
        may stand in parts (``parts``: the itemspart records it closes).
        """
        chain = [rec]
        bodies = [rec.body()]
        while "base" in bodies[-1] or ("items" not in bodies[-1] and "parts" not in bodies[-1]):
            body = bodies[-1]
            base, base_n = body.get("base"), body.get("base_n")
            if (
                type(base) is not str
                or type(base_n) is not int
                or ("append" not in body and "parts" not in body)
            ):
                raise IntegrityError(f"{rec.source}: record {chain[-1].seq}: malformed items")
            prev = next(
                (
                    r
                    for r in reversed(self.events)
                    if r.type == "items" and r.seq < chain[-1].seq and r.fp == base
                ),
                None,
            )
            if prev is None:
                raise IntegrityError(
                    f"{rec.source}: record {chain[-1].seq} extends an item list "
                    f"({base[:16]}...) that no earlier items record holds"
                )
            chain.append(prev)
            bodies.append(prev.body())
        items = self._own_entries(chain[-1], bodies[-1], "items")
        for part, body in zip(reversed(chain[:-1]), reversed(bodies[:-1]), strict=True):
            if len(items) != body["base_n"]:
                raise IntegrityError(
                    f"{part.source}: record {part.seq} extends a list of {body['base_n']} "
                    f"items, found {len(items)}"
                )
            items = items + self._own_entries(part, body, "append")
        return items

    def _own_entries(self, rec: Record, body: dict[str, Any], field: str) -> list[list[Any]]:
        if field not in body and "parts" not in body:
            raise IntegrityError(f"{rec.source}: record {rec.seq}: malformed items")
        return itemlist.own_entries(rec, body, field, self.item_parts.get(rec.seq))


def _is_append(rec: Record) -> bool:
    """Whether an items record only appends to an earlier list (a small look at its payload:
    an append's payload starts with its base; a whole list's with "items" or "parts")."""
    return rec.payload[:8] == b'{"base":'


def _key(rec: Record) -> str:
    if rec.key is None:
        raise IntegrityError(f"a {rec.type} record needs a key")
    return rec.key


def _keys(body: dict[str, Any]) -> list[str]:
    keys = body["keys"]
    if type(keys) is not list or any(type(k) is not str for k in keys):
        raise IntegrityError("keys must be a list of strings")
    return keys
