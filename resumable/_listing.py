"""Items' canonical JSON, fingerprints and listing entries: one item at a time, or a whole list.

An item's fingerprint is the SHA-256 of its canonical JSON (the codec's encoding, sorted keys, no
spaces), as hex; its first 32 digits are kept (the default key is the same 32 digits). The items
record lists every item as ``[key, fingerprint, params]``, params being the item's encoding as
`compact_json` writes it (None past MAX_PARAMS_BYTES of canonical JSON, or for an item that is
not JSON-like: then the fingerprint is None too).

A million items taken one at a time cost a million calls through the codec. The common sweep, a
list of flat dicts (str keys, values str/int/float/bool/None, of exactly those types) or of such
scalars, is done in bulk instead: CPython's C encoder writes a whole chunk of items with a raw
newline as its item separator. JSON text never holds a raw newline (strings escape control
characters), so in the output every newline is a separator: between two items it is followed by
"{" (or, for scalars, by anything), inside a flat dict by the '"' of the next key; replacing those
by commas and splitting at the rest gives each item's text, byte for byte what the codec writes.
What the codec would write differently (NaN and infinities, tagged; a lone surrogate, refused;
an int past 10,000 bits, tagged: its text alone is longer than `_LONG`) makes the encoder raise or
is caught by length and goes through the codec, item by item. Fingerprints are hashed with the
interpreter's own SHA-256 when it has one: for a few dozen bytes it costs half of OpenSSL's, whose
per-object setup dominates there.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import itertools
import operator
from collections.abc import Callable, Iterator
from typing import Any

from ._codec import TAG, canonical_json, compact_json, encode, json_encoder
from .errors import UnsupportedValueError

try:  # CPython's built-in SHA-256 (3.12+: _sha2): cheaper than OpenSSL's for short inputs
    from _sha2 import sha256 as _small_sha256  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the interpreter
    try:
        from _sha256 import sha256 as _small_sha256  # type: ignore[import-not-found, no-redef, unused-ignore]
    except ImportError:
        _small_sha256 = hashlib.sha256
small_sha256: Callable[[bytes], Any] = _small_sha256  # (for one item's text: see item_fingerprint)

MAX_PARAMS_BYTES = 64 * 1024  # larger items are remembered by fingerprint only
FP_LEN = 32  # hex characters of SHA-256 kept as an item's fingerprint (128 bits)
DEFAULT_KEY_LEN = 32
CHUNK = 65_536  # items encoded in one bulk call (bounds the intermediate copies)
_MAX_PLAIN_INT_BITS = 10_000  # codec tags longer ints; such items take the codec's path
_LONG = 3_000  # an item text at most this long holds no int of more than 10,000 bits
_SCALARS = frozenset({str, int, float, bool, type(None)})
_hex = binascii.b2a_hex

_FLAT = json_encoder(sort_keys=True)  # one item's canonical JSON (or a key's)
_BULK_SORTED = json_encoder(sort_keys=True, item_separator="\n")
_BULK_INSERTION = json_encoder(sort_keys=False, item_separator="\n")


# -- one item ----------------------------------------------------------------------------------


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
            return item, "".join(_FLAT(item, 0)).encode("utf-8")
        except (ValueError, UnicodeEncodeError):
            pass  # NaN, a lone surrogate: the codec says what to do
    try:
        enc = encode(item, what="item")
    except UnsupportedValueError:
        return None
    return enc, canonical_json(enc)


def item_fingerprint(item: Any) -> str | None:
    """An item's fingerprint, computed wherever the item is (a pool's worker, from its copy of
    the item); None if the item is not JSON-like."""
    fp = fingerprint_of(item)
    return None if fp is None else _small_sha256(fp[1]).hexdigest()[:FP_LEN]


def _entry_of(item: Any) -> tuple[bytes | None, bytes]:
    """(canonical JSON or None, params JSON or b"null") of one item, through the codec."""
    fp = fingerprint_of(item)
    if fp is None:
        return None, b"null"
    enc, blob = fp
    return blob, (compact_json(enc) if len(blob) <= MAX_PARAMS_BYTES else b"null")


# -- a whole list --------------------------------------------------------------------------------


def _split(encoder: Callable[[Any, int], Any], values: list[Any], dicts: bool) -> list[bytes]:
    """Each value's JSON from one bulk encoding of `values` (see the module docstring); raises
    ValueError (NaN, infinity, an int too long for str()) or UnicodeEncodeError (a surrogate)."""
    data = "".join(encoder(values, 0)).encode("utf-8")
    if dicts:
        data = data.replace(b'\n"', b',"')
    parts = data[1:-1].split(b"\n")
    if len(parts) != len(values):  # cannot happen (every newline is a separator): be sure
        raise ValueError("bulk encoding split into the wrong number of items")
    return parts


def _bulk(chunk: list[Any], params: bool) -> tuple[list[bytes], list[bytes]] | None:
    """(canonical JSON, params JSON) of each item of `chunk`, in bulk; None when the chunk is
    not all flat dicts or all scalars (see the module docstring). Raises as `_split`."""
    types = set(map(type, chunk))
    if types <= _SCALARS:
        canon = _split(_BULK_SORTED, chunk, dicts=False)
        return canon, canon
    if types != {dict}:
        return None
    shape = tuple(chunk[0])
    keys = list(itertools.chain.from_iterable(chunk))
    if (
        set(map(type, shape)) <= {str}
        and TAG not in shape
        and len(keys) == len(shape) * len(chunk)
        and all(map(operator.is_, keys, itertools.cycle(shape)))
    ):  # every dict holds these very key objects, in this order (the common sweep)
        values = list(itertools.chain.from_iterable(map(dict.values, chunk)))
        return _by_columns(values, shape, len(chunk), params)
    if not set(map(type, keys)) <= {str}:
        return None
    shapes = set(map(tuple, chunk))  # the keys, in each dict's own order
    if any(TAG in shape for shape in shapes):
        return None
    if not set(map(type, itertools.chain.from_iterable(map(dict.values, chunk)))) <= _SCALARS:
        return None
    canon = _split(_BULK_SORTED, chunk, dicts=True)
    if not params or all(list(shape) == sorted(shape) for shape in shapes):
        return canon, canon  # the params keep the items' own key order: the same text
    return canon, _split(_BULK_INSERTION, chunk, dicts=True)


def _by_columns(
    values: list[Any], shape: tuple[str, ...], n: int, params: bool
) -> tuple[list[bytes], list[bytes]] | None:
    """n dicts with the keys `shape`, in this order, whose values are `values` (all of the
    first dict's, then the second's, ...): each key's values (a list of scalars, no dict to
    sort) encoded in one call, then put together with the keys' JSON."""
    columns: dict[str, list[bytes]] = {}
    for j, key in enumerate(shape):
        column = values[j :: len(shape)]
        if not set(map(type, column)) <= _SCALARS:
            return None
        columns[key] = _split(_BULK_INSERTION, column, dicts=False)
    canon = _assemble(columns, sorted(shape), n)
    if not params or list(shape) == sorted(shape):
        return canon, canon
    return canon, _assemble(columns, list(shape), n)


def _assemble(columns: dict[str, list[bytes]], order: list[str], n: int) -> list[bytes]:
    """Each item's dict JSON, its keys in `order`, from the values' JSON (`columns`)."""
    if not order:
        return [b"{}"] * n
    width = 2 * len(order) + 1
    pieces: list[bytes] = [b""] * (width * n)
    for j, key in enumerate(order):
        lead = "{" if j == 0 else ","
        pieces[2 * j :: width] = [(lead + "".join(_FLAT(key, 0)) + ":").encode("utf-8")] * n
        pieces[2 * j + 1 :: width] = columns[key]
    pieces[width - 1 :: width] = [b"}\n"] * n
    return b"".join(pieces)[:-1].split(b"\n")


def _canonical_chunk(chunk: list[Any], params: bool) -> tuple[list[bytes | None], list[bytes]]:
    """(canonical JSON of each item, or None when it is not JSON-like; its params JSON, b"null"
    when too large or not JSON-like) for one chunk; the params only when `params`."""
    done = None
    with contextlib.suppress(ValueError, UnicodeEncodeError):  # NaN, a surrogate, a huge int
        done = _bulk(chunk, params) if chunk else None  # (then item by item)
    if done is None:
        pairs = list(map(_entry_of, chunk))
        return [c for c, _ in pairs], ([p for _, p in pairs] if params else [])
    canon: list[bytes | None] = list(done[0])
    out = done[1] if params else []
    if max(map(len, done[0])) > _LONG:  # maybe a long int (tagged by the codec), large params
        if out is done[0]:
            out = list(out)
        for i, text in enumerate(done[0]):
            if len(text) > _LONG:
                canon[i], p = _entry_of(chunk[i])
                if params:
                    out[i] = p
    return canon, out


def _chunks(n: int, start: int = 0) -> Iterator[tuple[int, int]]:
    for at in range(start, n, CHUNK):
        yield at, min(at + CHUNK, n)


_digest = type(_small_sha256(b"")).digest
_head = operator.itemgetter(slice(0, FP_LEN // 2))


def _digests(texts: list[bytes]) -> Iterator[bytes]:
    """The first FP_LEN/2 bytes of each text's SHA-256 (C calls only, no bytecode per item)."""
    return map(_head, map(_digest, map(_small_sha256, texts)))


def default_keys(items: list[Any]) -> list[str | None]:
    """Each item's default key (its fingerprint), None for an item that is not JSON-like."""
    keys: list[str | None] = []
    for at, end in _chunks(len(items)):
        canon, _ = _canonical_chunk(items[at:end], params=False)
        if None in canon:
            sha = _small_sha256
            keys += [None if c is None else sha(c).hexdigest()[:DEFAULT_KEY_LEN] for c in canon]
        else:
            keys += map(bytes.hex, _digests(canon))  # type: ignore[arg-type]
    return keys


def _pieces(texts: list[bytes], before: bytes, after: bytes) -> list[bytes]:
    """``before + text + after`` for each text (none holds a newline), in two C calls."""
    return (before + (after + b"\n" + before).join(texts) + after).split(b"\n")


def listing_json(
    keys: list[str],
    items: list[Any],
    start: int,
    fps_are_keys: bool,
    wrap: tuple[bytes, bytes] = (b"", b""),
) -> bytes:
    """The JSON array ``[[key, fingerprint, params], ...]`` of the items from `start` on, the
    bytes `compact_json` writes for it (between ``wrap[0]`` and ``wrap[1]``: one copy of a
    large listing, not two). `keys` are valid Unicode strings (checked when the items were
    built); `fps_are_keys` when they are the default keys (the fingerprints).

    Each entry is three pieces, ``],["key",`` ``"fingerprint",`` ``params``, made in bulk and
    joined once per chunk (the first entry's ``],`` is left out)."""
    out: list[bytes] = [wrap[0] + b"["]
    for at, end in _chunks(len(keys), start):
        canon, params = _canonical_chunk(items[at:end], params=True)
        quoted = _split(_BULK_INSERTION, keys[at:end], dicts=False)
        if fps_are_keys:  # the fingerprint is the key itself
            fps = _pieces(quoted, b"", b",")
        elif None not in canon:
            fps = _pieces(list(map(_hex, _digests(canon))), b'"', b'",')  # type: ignore[arg-type]
        else:  # some items are not JSON-like: no fingerprint
            fps = [
                b"null," if c is None else b'"%s",' % _hex(_head(_digest(_small_sha256(c))))
                for c in canon
            ]
        row: list[bytes] = [b""] * (3 * len(canon))
        row[0::3] = _pieces(quoted, b"],[", b",")
        row[1::3] = fps
        row[2::3] = params
        out.append(b"".join(row))
    if len(out) == 1:
        return wrap[0] + b"[]" + wrap[1]
    out[1] = out[1][2:]  # no "]," before the first entry
    out.append(b"]]" + wrap[1])
    return b"".join(out)
