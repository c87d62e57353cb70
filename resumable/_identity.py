"""The identity of an item list: one SHA-256 over every key and item, exact, versioned.

Equal identities mean an unchanged list, so a relaunch with the same items needs neither
fingerprints nor a new items record. An identity must never be equal for lists that differ (a
change would go unseen); lists that are equal may get different identities (written in another
dict order, or holding sets): that costs a re-check at the open, never a missed change.

Current form, ``3:`` + hex: the SHA-256 of the keys and items as CPython's C pickler writes them
(protocol 5, fast mode: no memo, so shared objects are written again and the bytes do not depend
on which objects are shared), streamed into the hash (no copy). The pickler writes None, bool,
int, float (its 8 bytes: NaN, -0.0 kept), str, bytes, bytearray, tuple, list, dict, set and
frozenset of exactly these types itself, each with its own opcodes, so that the stream reads back
as the very same values: equal streams mean equal lists. Every other object (a subclass, a numpy
value, anything with a reduce method) goes through `reducer_override` first, which refuses it
before any of its code runs; such lists take the codec's exact path: the SHA-256 of the keys'
and the items' canonical JSON (tuples, arrays, numpy scalars tagged), or of their fingerprints
for items that are not JSON-like. The stream is only hashed: never stored, never loaded.

Earlier forms, still recognised (`ItemSet.matches`), computed only when a checkpoint holds one:
``2:`` hashed `marshal`'s form (format 2, 4096 items per call) when it read back equal (which a
NaN or a numpy value never does; those took the codec's path); unprefixed identities hashed
``json.dumps`` and ``repr`` (`legacy`). A relaunch of such a checkpoint records the ``3:`` form.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import pickle
from collections.abc import Callable
from typing import Any

from ._codec import canonical_json, encode, sha256_hex
from .errors import UnsupportedValueError

IDENTITY_PREFIX = "3:"
V2_PREFIX = "2:"
_PICKLE_HEADER = b"pickle5-fast\0"
_MARSHAL_CHUNK = 4096  # items per marshal call (part of the ``2:`` identity's definition)
_MARSHAL_HEADER = b"marshal2\0"
# what the C pickler writes itself (the pure-Python one asks `reducer_override` about these too)
_PICKLED_AS_IS = frozenset(
    {type(None), bool, int, float, str, bytes, bytearray, tuple, list, dict, set, frozenset}
)

Fingerprints = Callable[[int], list[Any]]
"""The fingerprints of the first n items (for the codec's path, items not JSON-like)."""


class _NotExact(Exception):
    """An object the pickler would write through its reduce method: not in the exact form."""


class _ExactPickler(pickle.Pickler):
    """Protocol 5, fast mode, refusing every object it does not write as is."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in _PICKLED_AS_IS:
            return NotImplemented
        raise _NotExact(type(obj).__name__)


def _refuse_buffer(buffer: Any) -> None:
    raise _NotExact("PickleBuffer")  # (written in band it would read back as bytes)


class _HashSink:
    """A file for the pickler whose writes go into a hash."""

    def __init__(self, digest: Any) -> None:
        self.write = digest.update


def _pickle_digest(keys: list[str], items: list[Any]) -> str:
    """The hex SHA-256 of the exact pickle stream (raises _NotExact, ValueError (a cycle),
    RecursionError (too deep), AttributeError (no fast mode in this interpreter))."""
    digest = hashlib.sha256(_PICKLE_HEADER)
    pickler = _ExactPickler(_HashSink(digest), 5, buffer_callback=_refuse_buffer)
    pickler.fast = True  # no memo: the bytes do not depend on which objects are shared
    pickler.dump((keys, items))
    return digest.hexdigest()


def _marshal_digest(keys: list[str], items: list[Any], check: bool) -> str:
    """The hex SHA-256 of the marshal form of ``2:`` identities (raises ValueError when it
    cannot be written, or, with `check`, does not read back equal)."""
    digest = hashlib.sha256(_MARSHAL_HEADER)
    for at in range(0, len(items), _MARSHAL_CHUNK):  # chunks: no copy of the whole list
        part = (keys[at : at + _MARSHAL_CHUNK], items[at : at + _MARSHAL_CHUNK])
        blob = marshal.dumps(part, 2)
        if check and marshal.loads(blob) != part:
            raise ValueError("does not read back equal")
        digest.update(blob)
    return digest.hexdigest()


def _exact_digest(keys: list[str], items: list[Any], fingerprints: Fingerprints) -> str:
    """The codec's exact path: canonical JSON of the keys and of the encoded items (their
    fingerprints when some item is not JSON-like)."""
    try:
        encoded: Any = encode(items, what="items")
    except UnsupportedValueError:
        encoded = fingerprints(len(items))
    return sha256_hex(canonical_json(keys) + b"\0exact\0" + canonical_json(encoded))


def identity(keys: list[str], items: list[Any], fingerprints: Fingerprints) -> str:
    """The current identity (``3:``) of `keys` and `items` (lists of equal length; the keys
    valid strings, as `ItemSet` checks them)."""
    try:
        return IDENTITY_PREFIX + _pickle_digest(keys, items)
    except (_NotExact, ValueError, RecursionError, AttributeError):
        pass
    return IDENTITY_PREFIX + _exact_digest(keys, items, fingerprints)


def identity_v2(keys: list[str], items: list[Any], fingerprints: Fingerprints) -> str:
    """The ``2:`` identity, as it was computed: marshal's form when it reads back equal."""
    try:
        return V2_PREFIX + _marshal_digest(keys, items, check=True)
    except (ValueError, TypeError, RecursionError, EOFError):
        pass
    return V2_PREFIX + _exact_digest(keys, items, fingerprints)


def legacy(keys: list[str], items: list[Any], fingerprints: Fingerprints) -> str:
    """The unversioned identity that checkpoints written before ``2:`` recorded (json.dumps and
    repr of the items): kept so that they reopen as unchanged."""
    keys_json = canonical_json(keys)
    try:
        as_json = json.dumps(items, sort_keys=True, allow_nan=False, ensure_ascii=False)
        text = "fast\0" + as_json + "\0" + repr(items)
        return sha256_hex(keys_json + b"\0" + text.encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        encoded: Any = encode(items, what="items")
    except UnsupportedValueError:
        encoded = fingerprints(len(items))
    return sha256_hex(keys_json + b"\0exact\0" + canonical_json(encoded))
