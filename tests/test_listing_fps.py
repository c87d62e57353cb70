"""Listing entries without a stored fingerprint: ``[key, params]``, the fingerprint derived.

- For any item, the fingerprint derived from its params as a reader parses them back (the
  SHA-256 of their canonical JSON) is exactly `item_fingerprint(item)`: nested dicts with keys
  in any order, non-ASCII keys, floats (-0.0, 1e300, subnormals, NaN and infinities, tagged),
  ints of any size (tagged past 10,000 bits), tuples, numpy values, the codec's tag key.
- An item has the short form exactly when it has params; the others (too large, not JSON-like,
  the item None) keep ``[key, fingerprint, null]``, the fingerprint stored.
- The bulk writer hashes nothing for items with params; a sweep's view shows every item's
  fingerprint ([key, fingerprint, params], as before) and old three-element entries still read.
- Malformed entries of either form are damage naming the file and the record.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resumable import ResumableSweep
from resumable import _listing as listing_mod
from resumable._checkpoint import progress_dir_for
from resumable._codec import compact_json, loads
from resumable._items import ItemSet
from resumable._journal import encode_record, parse_segment
from resumable._listing import (
    CHUNK,
    MAX_PARAMS_BYTES,
    derived_fingerprint,
    item_fingerprint,
    stored_entry,
    with_fingerprints,
)
from resumable._manifest import parse_manifest
from resumable.errors import IntegrityError
from resumable.view import open_view

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-0.0, 0.0, 1e300, -1e300, 5e-324, 2.2250738585072014e-308, 1e16, 0.1]),
)
ints = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.integers(min_value=2**9990, max_value=2**10010),  # tagged past 10,000 bits
    st.integers(max_value=-(2**9990), min_value=-(2**10010)),
)
texts = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["é☃𝄞", "\n", '"', "\\", "\x00\x1f\x7f", "\u2028", "__t", "日本語"]),
)
keys = st.one_of(texts, st.sampled_from(["__t", "ключ", "ß", "Z", "a", "é", "\U0001f600"]))
numpy_values = st.sampled_from(
    [np.float32(1.5), np.int64(-3), np.float64(-0.0), np.bool_(True), np.arange(3, dtype=np.int16)]
)
leaves = st.one_of(st.none(), st.booleans(), ints, floats, texts, numpy_values)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(keys, inner, max_size=4),  # keys in drawn (unsorted) order
    ),
    max_leaves=12,
)


def _parsed_entries(set_: ItemSet) -> list[list[Any]]:
    """The listing as a reader parses it from the bytes the bulk writer makes."""
    parsed: list[list[Any]] = loads(set_.listing_json())
    return parsed


@given(st.lists(values, max_size=8), st.booleans())
@settings(max_examples=400)
def test_derived_fingerprints_are_the_items_fingerprints(items: list[Any], keyed: bool) -> None:
    numbers = itertools.count()
    key = (lambda _: f"k{next(numbers)}") if keyed else None
    try:
        set_ = ItemSet.build(items, key)
    except Exception:  # equal items under default keys: duplicate keys, not this test's point
        return
    entries = _parsed_entries(set_)
    assert len(entries) == len(items)
    for entry, item in zip(entries, items, strict=True):
        fp = item_fingerprint(item)
        assert fp is not None  # (every value drawn is JSON-like)
        if len(entry) == 2:
            assert derived_fingerprint(entry[1]) == fp
        else:  # only without params: the item None
            assert entry[1:] == [fp, None] and item is None
    assert [e[1] for e in with_fingerprints(entries)] == [item_fingerprint(it) for it in items]
    assert with_fingerprints(entries) == set_.listing()


@given(st.lists(st.dictionaries(keys, values, max_size=5), min_size=1, max_size=5))
@settings(max_examples=150)
def test_dicts_in_bulk_and_one_by_one_derive_the_same(items: list[dict[str, Any]]) -> None:
    """`with_fingerprints` encodes flat dicts of scalars in one call, others one by one: both
    give `item_fingerprint` (a mix of flat and nested dicts takes the second way)."""
    numbers = itertools.count()
    set_ = ItemSet.build(items, lambda _: f"k{next(numbers)}")
    got = with_fingerprints(_parsed_entries(set_))
    assert [e[1] for e in got] == [item_fingerprint(it) for it in items]


@given(
    st.lists(st.tuples(leaves, leaves, st.sampled_from([True, None, "s", 1.5])), max_size=20),
    st.sampled_from(["shape", "reordered", "scalars", "nan"]),
)
@settings(max_examples=150)
def test_bulk_derivation_paths(rows: list[tuple[Any, Any, Any]], how: str) -> None:
    """Params of one shape (the columns' path: the parser gives equal keys one object), of
    keys in another order in some, scalars, and tagged flat dicts (NaN: the tag key sends
    them one by one) all derive `item_fingerprint`."""
    if how == "scalars":
        items: list[Any] = [r[0] for r in rows]
    elif how == "nan":
        items = [math.nan if n % 2 else {"__t": r[0]} for n, r in enumerate(rows)]
    else:
        items = [{"b": a, "a": b, "c": c} for a, b, c in rows]
        if how == "reordered":
            items = [dict(reversed(it.items())) if n % 3 else it for n, it in enumerate(items)]
    numbers = itertools.count()
    set_ = ItemSet.build(items, lambda _: f"k{next(numbers)}")
    entries = _parsed_entries(set_)
    assert [e[1] for e in with_fingerprints(entries)] == [item_fingerprint(it) for it in items]


def test_entry_forms_per_item() -> None:
    big = {"k": "y" * (MAX_PARAMS_BYTES + 10)}
    items: list[Any] = [{"b": 1, "a": -0.0}, None, big, {"s": {1, 2}}, (1, math.nan), 2**20000]
    set_ = ItemSet.build(items, lambda it: str(id(it)))  # (ids: distinct while items live)
    entries = _parsed_entries(set_)
    assert [len(e) for e in entries] == [2, 3, 3, 3, 2, 2]
    assert entries[0][1] == {"b": 1, "a": -0.0}  # params in the item's own key order
    assert entries[1][1:] == [item_fingerprint(None), None]
    assert entries[2][1:] == [item_fingerprint(big), None]  # too large: the fp stored
    assert entries[3][1:] == [None, None]  # not JSON-like: no fingerprint at all
    assert with_fingerprints(entries) == set_.listing()
    assert set_.listing_json() == compact_json([stored_entry(*e) for e in set_.listing()])


def test_the_bulk_writer_hashes_only_items_without_params(monkeypatch) -> None:
    items: list[Any] = [{"i": i, "x": i * 0.5} for i in range(CHUNK + 10)]
    items[7] = None  # no params: its fingerprint is stored
    hashed: list[bytes] = []
    real = listing_mod._small_sha256

    def counting(data: bytes = b"") -> Any:
        hashed.append(data)
        return real(data)

    set_ = ItemSet.build(items, lambda c: "none" if c is None else str(c["i"]))
    monkeypatch.setattr(listing_mod, "_small_sha256", counting)
    data = set_.listing_json()
    assert hashed == [b"null"]
    monkeypatch.undo()
    entries = loads(data)
    assert entries[7] == ["none", item_fingerprint(None), None]
    assert entries[8] == ["8", {"i": 8, "x": 4.0}]
    assert with_fingerprints(entries) == set_.listing()
    # an append of k items (one entry at a time through the codec, as the reference) is the
    # bulk bytes for the same items, in either form
    for start in (0, 5, 7, 8, CHUNK, CHUNK + 9):
        expected = compact_json([stored_entry(*e) for e in set_.listing(start)])
        assert set_.listing_json(start) == expected


def test_unsorted_keys_are_formatted_once(monkeypatch) -> None:
    """Dicts whose keys are not in sorted order: the listing needs their params JSON only
    (their canonical JSON, the same length, only for the items without params), so each
    chunk is formatted once; the bytes stay the reference's, long and large items included."""
    items: list[Any] = [{"x": i * 0.5, "i": i, "s": f"v{i}"} for i in range(300)]
    items[10] = {"x": 2**9_999, "i": 10, "s": "long int: the codec's path"}
    items[11] = {"x": 2**10_001, "i": 11, "s": "tagged int"}
    items[12] = {"x": 0.0, "i": 12, "s": "y" * (MAX_PARAMS_BYTES + 1)}  # no params
    calls: list[list[str]] = []
    real = listing_mod._format_rows

    def counting(values: Any, shape: Any, order: list[str], n: int) -> list[bytes]:
        calls.append(order)
        return real(values, shape, order, n)

    set_ = ItemSet.build(items, lambda c: str(c["i"]))
    monkeypatch.setattr(listing_mod, "_format_rows", counting)
    data = set_.listing_json()
    assert calls == [["x", "i", "s"]]  # the items' own order only
    monkeypatch.undo()
    assert data == compact_json([stored_entry(*e) for e in set_.listing()])
    entries = loads(data)
    assert entries[12] == ["12", item_fingerprint(items[12]), None]
    assert with_fingerprints(entries) == set_.listing()
    mixed = [dict(reversed(it.items())) if n % 2 else it for n, it in enumerate(items)]
    set_ = ItemSet.build(mixed, lambda c: str(c["i"]))  # shapes differ: one C encode
    assert set_.listing_json() == compact_json([stored_entry(*e) for e in set_.listing()])
    assert with_fingerprints(loads(set_.listing_json())) == set_.listing()


def test_default_keys_store_no_fingerprint_twice(tmp_path: Path) -> None:
    items = [{"i": i} for i in range(5)]
    set_ = ItemSet.build(items, None)
    entries = _parsed_entries(set_)
    assert entries == [[k, it] for k, it in zip(set_.keys, items, strict=True)]
    assert [e[1] for e in with_fingerprints(entries)] == set_.keys  # the key is the fp


def test_a_sweep_view_derives_every_fingerprint(tmp_path: Path) -> None:
    items: list[Any] = [{"z": i, "a": [i, (i, "t")], "é": i / 3} for i in range(40)]
    items.append({"k": "y" * (MAX_PARAMS_BYTES + 10)})
    key = lambda c: str(c.get("z", "big"))  # noqa: E731
    path = tmp_path / "exp.h5"
    with ResumableSweep(items, key=key, checkpoint_path=path, handle_signals=False) as sweep:
        sweep.record(items[3], 30)
    raw = _items_payload(path)
    assert [len(e) for e in json.loads(raw)["items"]] == [2] * 40 + [3]
    view = open_view(str(path))
    expected = ItemSet.build(items, key).listing()
    assert view.keys() == [e[0] for e in expected]  # (the listing as stored)
    assert view.items() == expected
    assert [e[1] for e in view.items()] == [item_fingerprint(it) for it in items]
    assert view.keys() == [e[0] for e in expected]  # (the listing with fingerprints)
    assert [(k, p) for k, p, _ in view.results()] == [("3", items[3])]
    assert view.items() is view.items()  # derived once, kept (as the stored form was)
    # reopened unchanged: no items record written again
    with ResumableSweep(items, key=key, checkpoint_path=path, handle_signals=False) as sweep:
        assert sweep.result(items[3]) == 30
    assert _items_payload(path) == raw


def test_old_three_element_entries_still_read(tmp_path: Path) -> None:
    """A listing written before the short form (every entry [key, fp, params]), and one mixing
    both forms, read as the same [key, fingerprint, params] (the stored fps kept as stored)."""
    items = [{"i": i, "x": i * 0.5} for i in range(6)]
    set_ = ItemSet.build(items, lambda c: str(c["i"]))
    path = tmp_path / "exp.h5"
    with ResumableSweep(items, key=lambda c: str(c["i"]), checkpoint_path=path) as sweep:
        sweep.record(items[0], 1)
    old = compact_json({"items": set_.listing()})
    both = [e if n % 2 else stored_entry(*e) for n, e in enumerate(set_.listing())]
    mixed = compact_json({"items": both})
    for payload in (old, mixed):
        _replace_items_payload(path, payload)
        view = open_view(str(path))
        assert view.items() == set_.listing()
        assert [(k, p) for k, p, _ in view.results()] == [("0", items[0])]


@pytest.mark.parametrize(
    ("entries", "what"),
    [
        (b'[["k",null]]', "entry 0 has no params and no fingerprint"),
        (b'[["k",{"i":1}],["j",null]]', "entry 1 has no params"),
        (b'[["k"]]', "entry 0 is not a list of 2 or 3"),
        (b'[["k",{"i":1},null,4]]', "entry 0 is not a list of 2 or 3"),
        (b"[[5,{}]]", "entry 0 has a key that is not a string"),
        (b'[["k",{}],[null,"f",null]]', "entry 1 has a key that is not a string"),
        (b'[["k",{}],["j",5,null]]', "entry 1 has a fingerprint that is neither"),
        (b'[["k",[1],null]]', "entry 0 has a fingerprint that is neither"),
        (b'[["k",{}],"j"]', "entry 1 is not a list"),
        (b'{"k":1}', "not a list"),
    ],
)
def test_malformed_entries_are_damage_naming_the_record(
    tmp_path: Path, entries: bytes, what: str
) -> None:
    items = [{"i": i} for i in range(3)]
    path = tmp_path / "exp.h5"
    with ResumableSweep(items, key=lambda c: str(c["i"]), checkpoint_path=path):
        pass
    seq = _replace_items_payload(path, b'{"items":' + entries + b"}")
    with pytest.raises(IntegrityError, match=f"record {seq}: malformed items") as info:
        open_view(str(path)).items()
    assert str(_active(path)) in str(info.value) and what in str(info.value)


def test_params_with_no_canonical_json_are_damage(tmp_path: Path) -> None:
    items = [{"i": i} for i in range(3)]
    path = tmp_path / "exp.h5"
    with ResumableSweep(items, key=lambda c: str(c["i"]), checkpoint_path=path):
        pass
    for depth in (900, 3000):  # fingerprinted; too deep to parse (so to encode): damage
        deep = b"[" * depth + b"]" * depth
        seq = _replace_items_payload(path, b'{"items":[["k",' + deep + b"]]}")
        if depth == 900:
            assert len(open_view(str(path)).items()[0][1]) == 32
            continue
        with pytest.raises(IntegrityError, match=f"record {seq}") as info:
            open_view(str(path)).items()
        assert str(_active(path)) in str(info.value)
    with pytest.raises(IntegrityError, match=r"malformed items .* canonical JSON"):
        with_fingerprints_of_state(path)


def with_fingerprints_of_state(path: Path) -> None:
    """The state's fingerprinting of a listing whose params cannot be encoded (what a parsed
    payload cannot hold, so put in place after parsing)."""
    _replace_items_payload(path, b'{"items":[["k",1]]}')
    state = open_view(str(path)).loaded.state
    state.items_listing()[0][1] = math.nan  # (no JSON text parses to this)
    state.items_with_fingerprints()


# -- the journal, rewritten ---------------------------------------------------------------------


def _active(path: Path) -> Path:
    pdir = progress_dir_for(path)
    manifest = parse_manifest((pdir / "manifest.json").read_bytes(), source="m")
    return pdir / "segments" / manifest.active


def _records(path: Path) -> list[Any]:
    seg = _active(path)
    return parse_segment(
        seg.read_bytes(), source=str(seg), first_seq=1, prev_hash="", allow_torn_tail=False
    ).records


def _items_payload(path: Path) -> bytes:
    (rec,) = [r for r in _records(path) if r.type == "items"]
    return bytes(rec.payload)


def _replace_items_payload(path: Path, payload: bytes) -> int:
    """The active segment (the only one) rewritten with the items record's payload replaced,
    re-hashed as a forger would; the record's sequence number."""
    prev, out, seq = "", [], 0
    for rec in _records(path):
        body = bytes(rec.payload)
        if rec.type == "items":
            body, seq = payload, rec.seq
        line, prev, _ = encode_record(prev, rec.seq, rec.type, rec.key, rec.t, rec.fp, body)
        out.append(line)
    _active(path).write_bytes(b"".join(out))
    return seq
