"""Items' canonical JSON, fingerprints and listing entries: one item at a time, or a whole list.

An item's fingerprint is the SHA-256 of its canonical JSON (the codec's encoding, sorted keys, no
spaces), as hex; its first 32 digits are kept (the default key is the same 32 digits). The items
record lists every item as ``[key, params]``, params being the item's encoding as `compact_json`
writes it: the fingerprint is not stored, the params determine it (the canonical JSON of the
params as parsed back is the item's canonical JSON: `derived_fingerprint`; a reader that shows
fingerprints derives them, `with_fingerprints`). An item without params (past MAX_PARAMS_BYTES
of canonical JSON, or not JSON-like) is listed as ``[key, fingerprint, null]``, its
fingerprint stored (null for an item that is not JSON-like); so is the item ``None``, whose
params are null. Checkpoints written before the two-element form list every item as
``[key, fingerprint, params]``: readers take both forms, entry by entry. Storing no fingerprint
saves a million SHA-256s (and 35 of 71 MB) at the first open of a million items.

A million items taken one at a time cost a million calls through the codec. The common sweep, a
list of flat dicts (str keys, values str/int/float/bool/None, of exactly those types) or of such
scalars, is done in bulk instead: CPython's C encoder writes a whole chunk of items with a raw
newline as its item separator. JSON text never holds a raw newline (strings escape control
characters), so in the output every newline is a separator: between two items it is followed by
"{" (or, for scalars, by anything), inside a flat dict by the '"' of the next key; replacing those
by commas and splitting at the rest gives each item's text, byte for byte what the codec writes.
What the codec would write differently (NaN and infinities, tagged; a lone surrogate, refused;
an int past 10,000 bits, tagged: its text alone is longer than `_LONG`) makes the encoder raise or
is caught by length and goes through the codec, item by item. Dicts that all hold the same key
objects in the same order (the common sweep) are written by one %-format of the whole chunk
instead, each value formatted once (`_by_columns`). Fingerprints are hashed with the
interpreter's own SHA-256 when it has one: for a few dozen bytes it costs half of OpenSSL's, whose
per-object setup dominates there; their digests are then cut and turned to hex all at once.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import itertools
import math
import operator
from collections.abc import Callable, Iterator
from typing import Any

from ._codec import TAG, canonical_json, compact_json, encode, json_encoder
from ._gcpause import gc_paused
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
_NUMBERS = frozenset({int, float})
_FLOAT_TEXT = len(repr(-2.2250738585072014e-308))  # the longest repr of a finite float (24)

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


def _bulk(
    chunk: list[Any], params: bool, canon: bool = True
) -> tuple[list[bytes], list[bytes], bool] | None:
    """(canonical JSON, params JSON) of each item of `chunk`, in bulk, and whether every text
    is known to be at most `_LONG` long; None when the chunk is not all flat dicts or all
    scalars (see the module docstring). Without `canon` (and with `params`), the params JSON
    stands for the canonical JSON too: the same text in another key order, of the same
    length, made once. Raises as `_split`."""
    types = set(map(type, chunk))
    if types <= _SCALARS:
        scalars = _split(_BULK_SORTED, chunk, dicts=False)
        return scalars, scalars, False
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
        return _by_columns(values, shape, len(chunk), params, canon)
    if not set(map(type, keys)) <= {str}:
        return None
    shapes = set(map(tuple, chunk))  # the keys, in each dict's own order
    if any(TAG in shape for shape in shapes):
        return None
    if not set(map(type, itertools.chain.from_iterable(map(dict.values, chunk)))) <= _SCALARS:
        return None
    if params and not canon:
        texts = _split(_BULK_INSERTION, chunk, dicts=True)
        return texts, texts, False
    sorted_json = _split(_BULK_SORTED, chunk, dicts=True)
    if not params or all(list(shape) == sorted(shape) for shape in shapes):
        return sorted_json, sorted_json, False  # the params keep the items' key order: the same
    return sorted_json, _split(_BULK_INSERTION, chunk, dicts=True), False


def _by_columns(
    values: list[Any], shape: tuple[str, ...], n: int, params: bool, canon: bool = True
) -> tuple[list[bytes], list[bytes], bool] | None:
    """n dicts with the keys `shape`, in this order, whose values are `values` (all of the
    first dict's, then the second's, ...; a list of the caller's own, changed here): every
    item's text made by one %-format of the whole chunk, each value formatted once. A column of
    ints and finite floats is formatted by ``%s`` itself (str() of an exact int or float is
    the repr the C encoder writes); any other column of scalars is encoded in one call first
    and its texts formatted as they are. An item's text is known to be short when every column
    is of numbers whose texts are short (the longest int is the least or the greatest)."""
    width = len(shape)
    if not width:
        empty = [b"{}"] * n
        return empty, empty, True
    longest = 0
    for j in range(width):
        column = values[j::width]
        types = set(map(type, column))
        if not types <= _SCALARS:
            return None
        if types <= _NUMBERS and (float not in types or _finite(column)):
            # (an int too long for str() makes % raise ValueError, as the encoder does)
            if types == {float}:
                longest += _FLOAT_TEXT
            elif types == {int} and longest <= _LONG:
                longest += max(len(repr(min(column))), len(repr(max(column))))
            else:
                longest += _LONG + 1
            continue
        texts = "".join(_BULK_INSERTION(column, 0))[1:-1].split("\n")
        if len(texts) != n:  # cannot happen (see the module docstring): be sure
            raise ValueError("bulk encoding split into the wrong number of items")
        values[j::width] = texts
        longest += _LONG + 1
    if params and not canon:  # (see `_bulk`)
        rows = _format_rows(values, shape, list(shape), n)
        return rows, rows, longest + len(rows[0]) <= _LONG
    sorted_json = _format_rows(values, shape, sorted(shape), n)
    short = longest + len(sorted_json[0]) <= _LONG  # (the first item's text holds every key's)
    if not params or list(shape) == sorted(shape):
        return sorted_json, sorted_json, short
    return sorted_json, _format_rows(values, shape, list(shape), n), short


def _finite(column: list[Any]) -> bool:
    """Whether a column of ints and floats holds no NaN or infinity (their sum would not be
    finite; a sum that overflows sends the column to the encoder, which is exact anyway)."""
    try:
        return math.isfinite(sum(column))
    except OverflowError:
        return False


def _format_rows(
    values: list[Any], shape: tuple[str, ...], order: list[str], n: int
) -> list[bytes]:
    """Each item's dict JSON, its keys in `order`, from `values` (laid out as in `_by_columns`,
    each either a number or its JSON text): one %-format, one encode, one split."""
    width = len(shape)
    args = values
    if order != list(shape):
        at = {key: j for j, key in enumerate(shape)}
        args = [None] * len(values)
        for j, key in enumerate(order):
            args[j::width] = values[at[key] :: width]
    row = ",".join("".join(_FLAT(key, 0)).replace("%", "%%") + ":%s" for key in order)
    text = "\n".join(itertools.repeat("{" + row + "}", n)) % tuple(args)
    texts = text.encode("utf-8").split(b"\n")
    if len(texts) != n:  # cannot happen (no JSON text holds a raw newline): be sure
        raise ValueError("bulk encoding split into the wrong number of items")
    return texts


def _canonical_chunk(
    chunk: list[Any], params: bool, canon: bool = True
) -> tuple[list[bytes | None], list[bytes]]:
    """(canonical JSON of each item, or None when it is not JSON-like; its params JSON, b"null"
    when too large or not JSON-like) for one chunk; the params only when `params`. Without
    `canon` (with `params`), an item's canonical JSON may be given as its params JSON (the
    same length): it is exact for every item whose params are null."""
    done = None
    with contextlib.suppress(ValueError, UnicodeEncodeError):  # NaN, a surrogate, a huge int
        done = _bulk(chunk, params, canon) if chunk else None  # (then item by item)
    if done is None:
        pairs = list(map(_entry_of, chunk))
        return [c for c, _ in pairs], ([p for _, p in pairs] if params else [])
    texts: list[bytes | None] = list(done[0])
    out = done[1] if params else []
    if (
        not done[2] and max(map(len, done[0])) > _LONG
    ):  # maybe a long int (tagged by the codec), large params
        if out is done[0]:
            out = list(out)
        for i, text in enumerate(done[0]):
            if len(text) > _LONG:
                texts[i], p = _entry_of(chunk[i])
                if params:
                    out[i] = p
    return texts, out


def _chunks(n: int, start: int = 0) -> Iterator[tuple[int, int]]:
    for at in range(start, n, CHUNK):
        yield at, min(at + CHUNK, n)


_digest = type(_small_sha256(b"")).digest


def _hex_heads(texts: list[bytes], digits: int) -> bytes:
    """The first `digits` (even) hex digits of each text's SHA-256, newline-separated: C calls
    only, one object per text for its hash and one for its digest (then all of them at once:
    one join, one numpy slice, one hexlify)."""
    import numpy as np  # (here: a pool's workers import this module, and need no numpy)

    width = digits // 2
    digests = np.frombuffer(b"".join(map(_digest, map(_small_sha256, texts))), np.uint8)
    return binascii.b2a_hex(digests.reshape(-1, 32)[:, :width].tobytes(), b"\n", width)


def _pieces(text: bytes, n: int, before: bytes, after: bytes) -> list[bytes]:
    """``before + part + after`` for each of the n newline-separated parts of `text` (none
    holds a newline): one replace, one split."""
    pieces = (before + text.replace(b"\n", after + b"\n" + before) + after).split(b"\n")
    if len(pieces) != n:  # cannot happen (the parts are JSON texts or hex): be sure
        raise ValueError("bulk encoding split into the wrong number of items")
    return pieces


def _quoted(keys: list[str]) -> bytes:
    """The keys' JSON strings, newline-separated, as the encoder writes them (printable ASCII
    with no quote or backslash, the common key, needs no escape: then only joined)."""
    joined = "".join(keys)
    if joined.isascii() and joined.isprintable() and '"' not in joined and "\\" not in joined:
        return ('"' + '"\n"'.join(keys) + '"').encode("ascii")
    return "".join(_BULK_INSERTION(keys, 0)).encode("utf-8")[1:-1]


def default_keys(items: list[Any]) -> list[str | None]:
    """Each item's default key (its fingerprint), None for an item that is not JSON-like."""
    return _hash_heads(items, DEFAULT_KEY_LEN)


def item_fingerprints(items: list[Any]) -> list[str | None]:
    """`item_fingerprint` of each item, made in bulk (a group of results being recorded: each
    item's canonical JSON made again from the item as it is now, never kept)."""
    return _hash_heads(items, FP_LEN)


_FEW = 16  # fewer items than this are hashed one by one (numpy's set-up costs more)


def values_json(values: list[Any]) -> list[bytes | None]:
    """Each value's `codec.encode_json` bytes (a group of results being recorded), made in
    bulk where `_bulk` can (a chunk of at least `_FEW` values, all flat dicts or all scalars:
    see the module docstring); None where the caller must encode the value itself (every
    value of another chunk, and a text that may hold an int the codec tags)."""
    out: list[bytes | None] = []
    for at, end in _chunks(len(values)):
        chunk = values[at:end]
        done = None
        if len(chunk) >= _FEW:
            with contextlib.suppress(ValueError, UnicodeEncodeError):  # NaN, a surrogate...
                done = _bulk(chunk, params=True, canon=False)  # (the values' own key order)
        if done is None:
            out += [None] * len(chunk)
        elif done[2]:
            out += done[1]
        else:
            out += [text if len(text) <= _LONG else None for text in done[1]]
    return out


def _hash_heads(items: list[Any], digits: int) -> list[str | None]:
    """The first `digits` hex digits of the SHA-256 of each item's canonical JSON, None for an
    item that is not JSON-like (the default keys, the fingerprints)."""
    heads: list[str | None] = []
    for at, end in _chunks(len(items)):
        canon, _ = _canonical_chunk(items[at:end], params=False)
        if None in canon or len(canon) < _FEW:
            sha = _small_sha256
            heads += [None if c is None else sha(c).hexdigest()[:digits] for c in canon]
        else:
            heads += _hex_heads(canon, digits).decode("ascii").split("\n")  # type: ignore[arg-type]
    return heads


def listing_rows(keys: list[str], items: list[Any], start: int) -> Iterator[list[bytes]]:
    """The listing's entries from `start` on, one chunk at a time: three pieces per entry,
    ``],["key",`` then ``""`` and ``params``, or ``"fingerprint",`` and ``null`` for an item
    without params (see the module docstring; every entry's first piece opens with the ``],``
    that closes the entry before it), made in bulk: only the items without params are hashed.
    `keys` are valid Unicode strings (checked when the items were built)."""
    for at, end in _chunks(len(keys), start):
        n = end - at
        # (the canonical JSON is needed only for the items without params: not made in bulk)
        canon, params = _canonical_chunk(items[at:end], params=True, canon=False)
        fps = [b""] * n
        if b"null" in params:  # (rare: items too large, not JSON-like, or None)
            for i, p in enumerate(params):
                if p == b"null":
                    fps[i] = _stored_fp(canon[i])
        row: list[bytes] = [b""] * (3 * n)
        row[0::3] = _pieces(_quoted(keys[at:end]), n, b"],[", b",")
        row[1::3] = fps
        row[2::3] = params
        yield row


def _stored_fp(canon: bytes | None) -> bytes:
    """The fingerprint piece of an entry without params (None: an item not JSON-like)."""
    if canon is None:
        return b"null,"
    return b'"%s",' % _small_sha256(canon).hexdigest()[:FP_LEN].encode("ascii")


def stored_entry(key: str, fp: str | None, params: Any) -> list[Any]:
    """The entry recorded for an item (key, fingerprint, encoded params or None): ``[key,
    params]``, or ``[key, fp, None]`` when it has no params (see the module docstring)."""
    return [key, fp, None] if params is None else [key, params]


def listing_json(
    keys: list[str], items: list[Any], start: int, wrap: tuple[bytes, bytes] = (b"", b"")
) -> bytes:
    """The JSON array of the entries (`stored_entry`) of the items from `start` on, the bytes
    `compact_json` writes for it (between ``wrap[0]`` and ``wrap[1]``: one copy of a large
    listing, not two): `listing_rows` joined once per chunk (the first entry's ``],`` left
    out)."""
    out: list[bytes] = [wrap[0] + b"["]
    out += map(b"".join, listing_rows(keys, items, start))
    if len(out) == 1:
        return wrap[0] + b"[]" + wrap[1]
    out[1] = out[1][2:]  # no "]," before the first entry
    out.append(b"]]" + wrap[1])
    return b"".join(out)


# -- reading -----------------------------------------------------------------------------------


def derived_fingerprint(params: Any) -> str:
    """The fingerprint of the item whose params (its encoding, as parsed from a listing) are
    `params`: their canonical JSON is the item's (JSON numbers and strings parse back to the
    values they were written from). Raises ValueError or RecursionError for what no item's
    params can be (a float that is not finite, nesting too deep to encode)."""
    text: bytes = "".join(_FLAT(params, 0)).encode("utf-8")
    return _small_sha256(text).hexdigest()[:FP_LEN]  # type: ignore[no-any-return]


def with_fingerprints(entries: list[list[Any]]) -> list[list[Any]]:
    """`entries` (of either form: see the module docstring) as ``[key, fingerprint, params]``,
    new lists, the fingerprints of two-element entries derived from their params (in bulk:
    `_canonical_texts`). Raises as `derived_fingerprint`."""
    with gc_paused():  # a million new lists and no cycles
        if set(map(len, entries)) <= {2}:  # (the common case: one zip, no Python loop)
            keys = list(map(_first, entries))
            params = list(map(_second, entries))
            return list(map(list, zip(keys, _derived_fps(params), params, strict=True)))
        two = [e for e in entries if len(e) == 2]
        derived = iter(_derived_fps([e[1] for e in two]))
        return [[e[0], next(derived), e[1]] if len(e) == 2 else list(e) for e in entries]


_first = operator.itemgetter(0)
_second = operator.itemgetter(1)


def _derived_fps(params: list[Any]) -> list[str]:
    """`derived_fingerprint` of each of `params`, in chunks."""
    out: list[str] = []
    for at, end in _chunks(len(params)):
        texts = _canonical_texts(params[at:end])
        out += _hex_heads(texts, FP_LEN).decode("ascii").split("\n")
    return out


def _canonical_texts(values: list[Any]) -> list[bytes]:
    """The canonical JSON of each of `values` (parsed JSON): made in bulk as for items when
    they are all scalars or all flat dicts without the tag key (`_bulk`: the JSON parser gives
    equal keys one object, so a list of one shape takes the columns' path), else one encoding
    each (the values here are JSON as it is, tags included, not items to encode)."""
    with contextlib.suppress(ValueError, UnicodeEncodeError):
        done = _bulk(values, params=False) if values else None
        if done is not None:
            return done[0]
    return ["".join(_FLAT(v, 0)).encode("utf-8") for v in values]
