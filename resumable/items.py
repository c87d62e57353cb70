"""A sweep's items: their keys, fingerprints and recorded parameters, checked up front.

Items are materialised once (any iterable, consumed once). Each gets a string key, from the
user's key function or, by default, the SHA-256 of the item's canonical JSON. Duplicate keys are
refused before anything runs. JSON-like items also have a fingerprint (the SHA-256 of their
canonical JSON), so a resumed sweep can tell when the item under a recorded key has changed.

Fingerprints are computed lazily: reopening a sweep whose item list is unchanged since the last
launch (one hash over the whole list tells) needs none of them, which keeps resuming fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .codec import canonical_json, check_key, encode, sha256_hex, try_fingerprint
from .errors import DuplicateKeyError, InvalidKeyError, UnknownItemError, UnsupportedValueError

MAX_PARAMS_BYTES = 64 * 1024  # larger items are remembered by fingerprint only
_DEFAULT_KEY_LEN = 32
FP_LEN = 32  # hex characters of SHA-256 kept as an item's fingerprint (128 bits)


def default_key(item: Any) -> str:
    """The default key: a stable hash of the item's canonical JSON."""
    fp = try_fingerprint(item)
    if fp is None:
        raise InvalidKeyError(
            f"item {item!r:.200} is not JSON-like, so no default key can be derived from it; "
            "pass key=... (a function returning a str) to ResumableSweep"
        )
    return fp[1][:_DEFAULT_KEY_LEN]


@dataclass
class ItemSet:
    """The materialised items with their keys; fingerprints on demand."""

    items: list[Any]
    keys: list[str]
    index: dict[str, int]
    key_fn: Callable[[Any], Any] | None
    _fps: dict[int, tuple[str | None, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, items: Iterable[Any], key_fn: Callable[[Any], Any] | None) -> ItemSet:
        if isinstance(items, (str, bytes)):
            raise InvalidKeyError(
                f"items must be an iterable of work items, not a {type(items).__name__}"
            )
        materialised = list(items)
        keys = [key_fn_or_default(key_fn, item) for item in materialised]
        index: dict[str, int] = {}
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

    def key_of(self, item: Any) -> str:
        """The key of an item passed back by the user (it must be one of the sweep's items)."""
        key = key_fn_or_default(self.key_fn, item)
        if key not in self.index:
            raise UnknownItemError(
                f"item {item!r:.200} (key {key!r:.200}) is not among this sweep's "
                f"{len(self.keys)} items"
            )
        return key

    def _fp(self, idx: int) -> tuple[str | None, Any]:
        cached = self._fps.get(idx)
        if cached is None:
            fp = try_fingerprint(self.items[idx])
            if fp is None:
                cached = (None, None)
            else:
                small = len(canonical_json(fp[0])) <= MAX_PARAMS_BYTES
                cached = (fp[1][:FP_LEN], fp[0] if small else None)
            self._fps[idx] = cached
        return cached

    def fingerprint(self, key: str) -> str | None:
        return self._fp(self.index[key])[0]

    def identity(self) -> str:
        """One SHA-256 over all keys and items: equal iff the item list is unchanged.

        Fast path for plain JSON items: `json.dumps` (with NaN refused) proves every value is a
        builtin JSON type or a subclass, and `repr` then tells tuples from lists and int keys
        from str keys, which JSON alone would merge. Other items take the exact, slower path
        through the codec. Either way a change of any item changes the identity.
        """
        keys = canonical_json(self.keys)
        try:
            as_json = json.dumps(self.items, sort_keys=True, allow_nan=False, ensure_ascii=False)
            text = "fast\0" + as_json + "\0" + repr(self.items)
            return sha256_hex(keys + b"\0" + text.encode("utf-8", "surrogatepass"))
        except (TypeError, ValueError, RecursionError):
            pass
        try:
            encoded: Any = encode(self.items, what="items")
        except UnsupportedValueError:
            encoded = [self._fp(i)[0] for i in range(len(self.items))]
        return sha256_hex(keys + b"\0exact\0" + canonical_json(encoded))

    def listing(self) -> list[list[Any]]:
        """The items as recorded in the checkpoint: [[key, fingerprint, params], ...]."""
        return [[k, *self._fp(i)] for i, k in enumerate(self.keys)]


def key_fn_or_default(key_fn: Callable[[Any], Any] | None, item: Any) -> str:
    return default_key(item) if key_fn is None else check_key(key_fn(item), item)
