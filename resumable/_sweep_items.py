"""A sweep's items against its replayed journal: which key an item has, which are pending, and
the finished ones' results.

`ResumableSweep` (sweep.py) keeps the state (its `ItemSet`, the replayed `State`, the items in
flight) and passes it here; these functions only read it, except that `pending_with_keys` notes
when it yields each item (for the duration of its result). Whole functions moved out of
sweep.py: `record` and the in-process run loop call them as they called the methods they were,
so no call is added per item.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any, Protocol

from ._codec import decode
from ._items import ItemSet
from ._journal import Record
from ._state import State


class PendingSource(Protocol):
    """What `pending_with_keys` asks of the sweep it iterates, each item (public names)."""

    retry_failed: bool

    def checkpoint_if_preempted(self) -> None: ...


def key_of_item(items: ItemSet, ids: dict[int, str], item: Any) -> str:
    """The key of one of the sweep's items. An item just yielded by `pending` is known by
    its identity (`ids`: id(item) -> key; the very object of the item list: its key was
    computed at the open), without calling the key function or hashing it again; a key
    function's str that is one of the list's keys needs no other check (they were all checked
    at the open)."""
    if ids:
        key = ids.get(id(item))
        if key is not None and items.items[items.index[key]] is item:
            return key
    key_fn = items.key_fn
    if key_fn is None:
        return items.key_of(item)  # the default key, or the error saying what is wrong
    key = key_fn(item)
    if type(key) is str and key in items.index:
        return key
    return items.key_of(item, key)  # the error saying what is wrong


def pending_with_keys(
    sweep: PendingSource,
    items: ItemSet,
    state: State,
    yielded: dict[str, float],
    safe_points: bool,
) -> Iterator[tuple[str, Any]]:
    """(key, item) of `items` not done in `state` (nor failed, unless `sweep.retry_failed`),
    in order, each once; `yielded` notes when each was yielded. Each yield is a safe point
    (`sweep.checkpoint_if_preempted`), unless `safe_points` is False."""
    monotonic = time.monotonic
    for key, item in zip(items.keys, items.items, strict=True):
        if key in state.results or (not sweep.retry_failed and key in state.failures):
            continue
        if safe_points:
            sweep.checkpoint_if_preempted()  # a safe point: nothing of ours is in flight
        yielded[key] = monotonic()
        yield key, item


def iter_completed(items: ItemSet, state: State) -> Iterator[tuple[Any, Any]]:
    """(item, result) of `items` with a result in `state`, in record order."""
    index = items.index
    for key, rec in list(state.results.items()):
        idx = index.get(key)
        if idx is None:
            continue
        yield items.items[idx], decode_result(key, rec)


def rows(items: ItemSet, state: State) -> Iterator[tuple[str, Any, Any]]:
    """(key, item, result) of `items` with a result in `state`, in record order."""
    for key, rec in list(state.results.items()):
        idx = items.index.get(key)
        if idx is not None:
            yield key, items.items[idx], decode_result(key, rec)


def decode_result(key: str, rec: Record) -> Any:
    """The value of the result record `rec` of the item with this key."""
    where = f"{rec.source}: result of item {key!r:.200} (record {rec.seq})"
    return decode(rec.body().get("value"), where=where)


def seed_of_key(key: str) -> int:
    """63 bits of SHA-256 of the key, the same on every launch and machine."""
    digest = hashlib.sha256(b"resumable-seed\0" + key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
