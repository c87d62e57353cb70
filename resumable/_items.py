"""A sweep's items: their keys, fingerprints and recorded parameters, checked up front.

Items are materialised once (any iterable, consumed once). Each gets a string key, from the
user's key function or, by default, the SHA-256 of the item's canonical JSON. Duplicate keys are
refused before anything runs. JSON-like items also have a fingerprint (the SHA-256 of their
canonical JSON), so a resumed sweep can tell when the item under a recorded key has changed.

Fingerprints are computed lazily: reopening a sweep whose item list is unchanged since the last
launch (one hash over the whole list tells: `_identity`) needs none of them, which keeps resuming
fast. A whole list's canonical JSON, fingerprints and items record are made in bulk (`_listing`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _identity
from ._codec import check_key, compact_json
from ._gcpause import gc_paused
from ._identity import IDENTITY_PREFIX, V2_PREFIX
from ._itemlist import listing_records
from ._listing import (
    DEFAULT_KEY_LEN,
    FP_LEN,
    MAX_PARAMS_BYTES,
    default_keys,
    fingerprint_of,
    item_fingerprint,
    item_fingerprints,
    listing_json,
    listing_rows,
    small_sha256,
)
from .errors import DuplicateKeyError, InvalidKeyError, UnknownItemError

__all__ = [
    "FP_LEN",
    "IDENTITY_PREFIX",
    "MAX_PARAMS_BYTES",
    "ItemSet",
    "default_key",
    "fingerprint_of",
    "item_fingerprint",
    "key_fn_or_default",
]


def _gc_paused_each(it: Iterator[Any]) -> Iterator[Any]:
    """`it`'s values, each made with the garbage collector paused (see _gcpause.py), not
    while the caller uses it."""
    while True:
        with gc_paused():
            try:
                value = next(it)
            except StopIteration:
                return
        yield value


def default_key(item: Any) -> str:
    """The default key: a stable hash of the item's canonical JSON."""
    fp = fingerprint_of(item)
    if fp is None:
        raise _not_json_like(item)
    key: str = small_sha256(fp[1]).hexdigest()[:DEFAULT_KEY_LEN]  # (see item_fingerprint)
    return key


def _not_json_like(item: Any) -> InvalidKeyError:
    return InvalidKeyError(
        f"item {item!r:.200} is not JSON-like, so no default key can be derived from it; "
        "pass key=... (a function returning a str) to ResumableSweep"
    )


_UNSET: Any = object()  # (no key computed yet)


@dataclass
class ItemSet:
    """The materialised items with their keys; fingerprints on demand."""

    items: list[Any]
    keys: list[str]
    index: dict[str, int]
    key_fn: Callable[[Any], Any] | None
    _fps: dict[int, tuple[str | None, Any]] = field(default_factory=dict, repr=False)
    _identities: dict[tuple[str, int], str] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, items: Iterable[Any], key_fn: Callable[[Any], Any] | None) -> ItemSet:
        if isinstance(items, (str, bytes)):
            raise InvalidKeyError(
                f"items must be an iterable of work items, not a {type(items).__name__}"
            )
        with gc_paused():
            materialised = list(items)
            keys = _keys_of(materialised, key_fn)
            index = dict(zip(keys, range(len(keys)), strict=True))  # C speed; the last of equals
        if len(index) == len(keys):
            return cls(materialised, keys, index, key_fn)
        index = {}
        duplicates: list[str] = []
        for i, key in enumerate(keys):
            first = index.setdefault(key, i)
            if first != i:
                duplicates.append(f"{key!r:.200} (items {first} and {i})")
        if duplicates:
            shown = ", ".join(duplicates[:10])
            more = f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else ""
            raise DuplicateKeyError(
                f"{len(duplicates)} duplicate item key(s): {shown}{more}; every item needs "
                "its own key"
            )
        return cls(materialised, keys, index, key_fn)

    def subset(self, keep: Callable[[str], bool]) -> ItemSet:
        """The items whose keys `keep` accepts (a shard's share), in the same order."""
        chosen = [i for i, k in enumerate(self.keys) if keep(k)]
        keys = [self.keys[i] for i in chosen]
        return ItemSet(
            [self.items[i] for i in chosen], keys, {k: n for n, k in enumerate(keys)}, self.key_fn
        )

    def key_of(self, item: Any, computed: Any = _UNSET) -> str:
        """The key of an item passed back by the user (it must be one of the sweep's items);
        `computed`: what the key function already returned for it (not called again)."""
        if computed is _UNSET or self.key_fn is None:
            key = key_fn_or_default(self.key_fn, item)
        else:
            key = check_key(computed, item)
        if key not in self.index:
            raise UnknownItemError(
                f"item {item!r:.200} (key {key!r:.200}) is not among this sweep's "
                f"{len(self.keys)} items"
            )
        return key

    def _fp(self, idx: int) -> tuple[str | None, Any]:
        cached = self._fps.get(idx)
        if cached is None:
            fp = fingerprint_of(self.items[idx])
            if fp is None:
                cached = (None, None)
            else:
                enc, blob = fp
                small = len(blob) <= MAX_PARAMS_BYTES
                cached = (small_sha256(blob).hexdigest()[:FP_LEN], enc if small else None)
            self._fps[idx] = cached
        return cached

    def _fingerprints(self, n: int) -> list[Any]:
        return [self._fp(i)[0] for i in range(n)]

    def fingerprint(self, key: str, *, cache: bool = True) -> str | None:
        """The fingerprint of the item under `key` (None if it is not JSON-like). With the
        default keys it is the key itself: both are the first 32 hex digits of the SHA-256 of
        the item's canonical JSON. `cache=False` keeps no copy (recording asks once per item)."""
        if self.key_fn is None and DEFAULT_KEY_LEN == FP_LEN:
            return key
        idx = self.index[key]
        cached = self._fps.get(idx)
        if cached is not None or cache:
            return (cached or self._fp(idx))[0]
        return item_fingerprint(self.items[idx])

    def fingerprints(self, keys: list[str]) -> list[str | None]:
        """`fingerprint(key, cache=False)` of each of `keys` (a group being recorded): those
        not kept already are made again from the items as they are now, in bulk
        (`_listing.item_fingerprints`), never kept."""
        if self.key_fn is None and DEFAULT_KEY_LEN == FP_LEN:
            return list(keys)
        at = list(map(self.index.__getitem__, keys))
        fps = item_fingerprints(list(map(self.items.__getitem__, at)))
        if self._fps:  # kept ones answer, as in `fingerprint`
            for n, idx in enumerate(at):
                cached = self._fps.get(idx)
                if cached is not None:
                    fps[n] = cached[0]
        return fps

    def identity(self, upto: int | None = None) -> str:
        """The list's identity (its first `upto` items'): see `_identity`. Equal identities
        mean an unchanged item list."""
        return self._identity_in(_identity.identity, upto)

    def identity_v2(self, upto: int | None = None) -> str:
        """The ``2:`` identity that checkpoints written before ``3:`` recorded."""
        return self._identity_in(_identity.identity_v2, upto)

    def legacy_identity(self, upto: int | None = None) -> str:
        """The unversioned identity that checkpoints written before ``2:`` recorded."""
        return self._identity_in(_identity.legacy, upto)

    def _identity_in(self, form: Callable[..., str], upto: int | None) -> str:
        n = len(self.items) if upto is None else upto
        cached = self._identities.get((form.__name__, n))
        if cached is None:
            items = self.items if n == len(self.items) else self.items[:n]
            keys = self.keys if n == len(self.keys) else self.keys[:n]
            with gc_paused():
                cached = form(keys, items, self._fingerprints)
            self._identities[(form.__name__, n)] = cached
        return cached

    def matches(self, recorded: str | None, upto: int | None = None) -> bool:
        """Whether `recorded` (an identity read from a checkpoint) is this list's (its first
        `upto` items'), in the current form or in an earlier one (computed only for those, and
        for ``2:`` only when its digest is not the current one's, once per `upto`)."""
        if recorded is None:
            return False
        if recorded.startswith(IDENTITY_PREFIX):
            return recorded == self.identity(upto)
        if recorded.startswith(V2_PREFIX):
            # the same marshal bytes hashed, when both forms took marshal's path
            if recorded[len(V2_PREFIX) :] == self.identity(upto)[len(IDENTITY_PREFIX) :]:
                return True
            return recorded == self.identity_v2(upto)
        return recorded == self.legacy_identity(upto)

    def record_payload(self, prev_identity: str | None, prev_count: int | None) -> bytes:
        """The payload (JSON bytes) of the items record for this list in one record (see
        _state.py): only the new entries when the previous list (`prev_identity`,
        `prev_count` entries) is a prefix of it. (`record_entries` splits a long one.)"""
        head, field, start = self._record_form(prev_identity, prev_count)
        return self.listing_json(start=start, wrap=(head + b'"%s":' % field, b"}"))

    def record_entries(
        self, prev_identity: str | None, prev_count: int | None, identity: str
    ) -> Iterator[tuple[str, bytes, str | None, str]]:
        """The records (kind, payload, key, fingerprint) that record this list (of identity
        `identity`), as `record_payload` says but split into parts when long (see
        _itemlist.py); made one at a time, as they are written."""
        head, field, start = self._record_form(prev_identity, prev_count)
        rows = listing_rows(self.keys, self.items, start)
        return _gc_paused_each(listing_records(rows, head, field, identity))

    def _record_form(
        self, prev_identity: str | None, prev_count: int | None
    ) -> tuple[bytes, bytes, int]:
        """(payload head, entries field, first entry) of the items record: an append to the
        previous list when that list is a prefix of this one, else the whole list."""
        n = len(self.keys)
        if (
            prev_identity is not None
            and prev_count is not None
            and 0 < prev_count <= n
            and self.matches(prev_identity, upto=prev_count)
        ):
            # (prev_count == n: a list recorded under an earlier identity, unchanged: a record
            # of no new entries moves it to the current identity in O(1) bytes)
            head = b'{"base":%s,"base_n":%d,' % (compact_json(prev_identity), prev_count)
            return head, b"append", prev_count
        return b"{", b"items", 0

    def listing_json(self, start: int = 0, wrap: tuple[bytes, bytes] = (b"", b"")) -> bytes:
        """`listing` as JSON (the bytes `compact_json` writes for it, between ``wrap[0]`` and
        ``wrap[1]``), made in bulk."""
        with gc_paused():
            return listing_json(self.keys, self.items, start, wrap=wrap)

    def listing(self, start: int = 0) -> list[list[Any]]:
        """The items as a checkpoint's view lists them: [[key, fingerprint, params], ...],
        from item `start` on (one item at a time, through the codec; the per-item cache is
        bypassed, it would only hold a million small tuples). The checkpoint records each as
        `_listing.stored_entry` says, in bulk: `listing_json`."""
        fps = self._fps
        out = []
        for i in range(start, len(self.keys)):
            k = self.keys[i]
            cached = fps.get(i)
            if cached is None:
                cached = self._fp(i)
                del fps[i]
            out.append([k, *cached])
        return out


def _keys_of(items: list[Any], key_fn: Callable[[Any], Any] | None) -> list[str]:
    """Every item's key, checked as `key_fn_or_default` checks one (in bulk: a million keys
    are one type census and one encode, not a million calls; the first bad key is then found
    and reported one by one)."""
    if key_fn is None:
        defaults = default_keys(items)
        if None in defaults:
            raise _not_json_like(items[defaults.index(None)])
        return defaults  # type: ignore[return-value]  # (no None in it)
    keys = list(map(key_fn, items))
    ok = set(map(type, keys)) <= {str}
    if ok:
        try:
            "".join(keys).encode("utf-8")  # a lone surrogate anywhere fails it
        except UnicodeEncodeError:
            ok = False
    if not ok:
        for item, key in zip(items, keys, strict=True):
            check_key(key, item)
    return keys


def key_fn_or_default(key_fn: Callable[[Any], Any] | None, item: Any) -> str:
    return default_key(item) if key_fn is None else check_key(key_fn(item), item)
