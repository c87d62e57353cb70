"""A sweep's items: their keys, fingerprints and recorded parameters, checked up front.

Items are materialised once (any iterable, consumed once). Each gets a string key, from the
user's key function or, by default, the SHA-256 of the item's canonical JSON. Duplicate keys are
refused before anything runs. JSON-like items also have a fingerprint (the SHA-256 of their
canonical JSON), so a resumed sweep can tell when the item under a recorded key has changed.

Fingerprints are computed lazily: reopening a sweep whose item list is unchanged since the last
launch (one hash over the whole list tells) needs none of them, which keeps resuming fast.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import marshal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ._codec import TAG, canonical_json, check_key, encode, sha256_hex
from .errors import DuplicateKeyError, InvalidKeyError, UnknownItemError, UnsupportedValueError

MAX_PARAMS_BYTES = 64 * 1024  # larger items are remembered by fingerprint only
_DEFAULT_KEY_LEN = 32
_IDENTITY_CHUNK = 4096  # items per marshal call in the identity (part of its definition)
IDENTITY_PREFIX = "2:"  # identities of the marshal form; older checkpoints hold bare hex
FP_LEN = 32  # hex characters of SHA-256 kept as an item's fingerprint (128 bits)
_MAX_PLAIN_INT_BITS = 10_000  # codec tags longer ints; such items take the codec's path
# codec.canonical_json's exact output, from one encoder made once (json.dumps with options
# builds a new encoder per call, which is most of the cost for small items)
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


@contextlib.contextmanager
def _gc_paused() -> Any:
    """The cyclic garbage collector paused: building a million keys (or reading back a
    million items' encoding) makes millions of containers and no cycles, and each of its
    full passes would walk every one of them (and the user's items) again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _no_default(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} is not JSON")


# Flat dicts (no nesting, so no cycles to mark) go straight to CPython's C encoder, made once
# with the same options: half the cost of JSONEncoder.encode, which rebuilds it per call.
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_FLAT = (
    _c_encoder(
        None, _no_default, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )
    if _c_encoder is not None
    else None
)


def _flat_plain(item: Any) -> bool:
    """True for a dict of str keys to str/int/float/bool/None, which `encode` returns as is
    (non-finite floats and invalid strings are caught by the JSON encoding itself)."""
    if type(item) is not dict or TAG in item:
        return False
    for k, v in item.items():
        t = type(v)
        if type(k) is not str or not (
            t is str
            or t is float
            or t is bool
            or v is None
            or (t is int and v.bit_length() <= _MAX_PLAIN_INT_BITS)
        ):
            return False
    return True


def fingerprint_of(item: Any) -> tuple[Any, bytes] | None:
    """(encoded item, its canonical JSON) when the item is JSON-like, else None."""
    if _flat_plain(item):
        try:
            text = "".join(_FLAT(item, 0)) if _FLAT is not None else _CANONICAL(item)
            return item, text.encode("utf-8")
        except (ValueError, UnicodeEncodeError):
            pass  # NaN, a lone surrogate: the codec says what to do
    try:
        enc = encode(item, what="item")
    except UnsupportedValueError:
        return None
    return enc, _CANONICAL(enc).encode("utf-8")


def item_fingerprint(item: Any) -> str | None:
    """An item's fingerprint (`ItemSet.fingerprint`), computed wherever the item is (a pool's
    worker, from its copy of the item); None if the item is not JSON-like."""
    fp = fingerprint_of(item)
    return None if fp is None else hashlib.sha256(fp[1]).hexdigest()[:FP_LEN]


def default_key(item: Any) -> str:
    """The default key: a stable hash of the item's canonical JSON."""
    fp = fingerprint_of(item)
    if fp is None:
        raise InvalidKeyError(
            f"item {item!r:.200} is not JSON-like, so no default key can be derived from it; "
            "pass key=... (a function returning a str) to ResumableSweep"
        )
    return hashlib.sha256(fp[1]).hexdigest()[:_DEFAULT_KEY_LEN]


@dataclass
class ItemSet:
    """The materialised items with their keys; fingerprints on demand."""

    items: list[Any]
    keys: list[str]
    index: dict[str, int]
    key_fn: Callable[[Any], Any] | None
    _fps: dict[int, tuple[str | None, Any]] = field(default_factory=dict, repr=False)
    _legacy: dict[int, str] = field(default_factory=dict, repr=False)
    _identity: dict[int, str] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, items: Iterable[Any], key_fn: Callable[[Any], Any] | None) -> ItemSet:
        if isinstance(items, (str, bytes)):
            raise InvalidKeyError(
                f"items must be an iterable of work items, not a {type(items).__name__}"
            )
        with _gc_paused():
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
            fp = fingerprint_of(self.items[idx])
            if fp is None:
                cached = (None, None)
            else:
                enc, blob = fp
                small = len(blob) <= MAX_PARAMS_BYTES
                cached = (hashlib.sha256(blob).hexdigest()[:FP_LEN], enc if small else None)
            self._fps[idx] = cached
        return cached

    def fingerprint(self, key: str, *, cache: bool = True) -> str | None:
        """The fingerprint of the item under `key` (None if it is not JSON-like). With the
        default keys it is the key itself: both are the first 32 hex digits of the SHA-256 of
        the item's canonical JSON. `cache=False` keeps no copy (recording asks once per item)."""
        if self.key_fn is None and _DEFAULT_KEY_LEN == FP_LEN:
            return key
        idx = self.index[key]
        cached = self._fps.get(idx)
        if cached is not None or cache:
            return (cached or self._fp(idx))[0]
        return item_fingerprint(self.items[idx])

    def identity(self, upto: int | None = None) -> str:
        """One SHA-256 over all keys and items (the first `upto` of them), versioned
        (``IDENTITY_PREFIX``): equal identities mean an unchanged item list.

        Fast path: `marshal` (format 2: no references, no interning flags, floats as their 8
        bytes) encodes the keys and items in C, 4096 at a time. It accepts only exact builtin types
        (dict, list, tuple, str, int, float, bool, None, ...: a subclass is refused), which
        it tells apart, except objects exposing a buffer (numpy arrays and scalars), which it
        writes as plain bytes; so the encoding must read back equal to the items, which a
        numpy value (read back as bytes) or a NaN never does. Other items take the exact,
        slower path through the codec. Equal lists written in another dict order (or holding
        sets) may get another identity: that costs a re-check at the open, never a missed
        change.
        """
        n = len(self.items) if upto is None else upto
        cached = self._identity.get(n)
        if cached is None:
            with _gc_paused():
                cached = self._identity[n] = self._compute_identity(n)
        return cached

    def _compute_identity(self, n: int) -> str:
        items = self.items if n == len(self.items) else self.items[:n]
        keys = self.keys if n == len(self.keys) else self.keys[:n]
        try:
            digest = hashlib.sha256(b"marshal2\0")
            for at in range(0, n, _IDENTITY_CHUNK):  # chunks: no copy of the whole list
                part = (keys[at : at + _IDENTITY_CHUNK], items[at : at + _IDENTITY_CHUNK])
                blob = marshal.dumps(part, 2)
                if marshal.loads(blob) != part:
                    raise ValueError("does not read back equal")
                digest.update(blob)
            return IDENTITY_PREFIX + digest.hexdigest()
        except (ValueError, TypeError, RecursionError, EOFError):
            pass
        try:
            encoded: Any = encode(items, what="items")
        except UnsupportedValueError:
            encoded = [self._fp(i)[0] for i in range(n)]
        return IDENTITY_PREFIX + sha256_hex(
            canonical_json(keys) + b"\0exact\0" + canonical_json(encoded)
        )

    def matches(self, recorded: str | None, upto: int | None = None) -> bool:
        """Whether `recorded` (an identity read from a checkpoint) is this list's (its first
        `upto` items'): in the current form, or in the unversioned form of checkpoints written
        before it (computed only for those, once per `upto`)."""
        if recorded is None:
            return False
        if recorded.startswith(IDENTITY_PREFIX):
            return recorded == self.identity(upto)
        return recorded == self.legacy_identity(upto)

    def legacy_identity(self, upto: int | None = None) -> str:
        """The unversioned identity that checkpoints written before `IDENTITY_PREFIX` recorded
        (json.dumps and repr of the items): kept so that they reopen as unchanged."""
        n = len(self.items) if upto is None else upto
        cached = self._legacy.get(n)
        if cached is not None:
            return cached
        items = self.items if n == len(self.items) else self.items[:n]
        keys = canonical_json(self.keys if n == len(self.keys) else self.keys[:n])
        try:
            as_json = json.dumps(items, sort_keys=True, allow_nan=False, ensure_ascii=False)
            text = "fast\0" + as_json + "\0" + repr(items)
            out = sha256_hex(keys + b"\0" + text.encode("utf-8", "surrogatepass"))
        except (TypeError, ValueError, RecursionError):
            try:
                encoded: Any = encode(items, what="items")
            except UnsupportedValueError:
                encoded = [self._fp(i)[0] for i in range(n)]
            out = sha256_hex(keys + b"\0exact\0" + canonical_json(encoded))
        self._legacy[n] = out
        return out

    def record_payload(self, prev_identity: str | None, prev_count: int | None) -> dict[str, Any]:
        """The payload of the items record for this list (see _state.py): only the new entries
        when the previous list (`prev_identity`, `prev_count` entries) is a prefix of it."""
        n = len(self.keys)
        if (
            prev_identity is not None
            and prev_count is not None
            and 0 < prev_count <= n
            and self.matches(prev_identity, upto=prev_count)
        ):
            # (prev_count == n: a list recorded under the legacy identity, unchanged: a record
            # of no new entries moves it to the current identity in O(1) bytes)
            return {
                "base": prev_identity,
                "base_n": prev_count,
                "append": self.listing(start=prev_count),
            }
        return {"items": self.listing()}

    def listing(self, start: int = 0) -> list[list[Any]]:
        """The items as recorded in the checkpoint: [[key, fingerprint, params], ...], from
        item `start` on.

        Computed once for the whole list, so the per-item cache is bypassed (it would only
        hold a million small tuples for nothing).
        """
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
        return [default_key(item) for item in items]
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
