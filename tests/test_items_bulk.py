"""Items in bulk: the items record, default keys and the list identity made for a whole list at
once must be exactly what the one-item-at-a-time codec path gives, and the identity exact.

- The bulk listing (chunked C encodes, a column per key for dicts of one shape) gives the very
  bytes of ``compact_json`` of the entries `listing()` stores (`stored_entry`), and bulk
  default keys the per-item `default_key`, for every kind of item: same-shape dicts (shared
  key objects or not, keys in any order), mixed shapes, scalars, nested values, NaN and
  infinities, huge ints, lone surrogates, the codec's tag key, str subclasses as keys, long and
  oversized items, items that are not JSON-like.
- The ``3:`` identity (an exact pickle stream, hashed) tells apart every pair of values that
  differ in type or bits (numpy values, subclasses, NaN payloads, -0.0, bool/int, tuple/list,
  bytes/bytearray, set/frozenset), does not depend on which objects are shared, and never runs
  an item's own code. Lists it does not take (numpy values, cycles, deep nesting) get the codec's
  exact form.
- A checkpoint recorded under a ``2:`` identity (NaN items included, which took the codec's path
  then) reopens as unchanged: O(1) bytes, no fingerprint, then in the ``3:`` form.
"""

from __future__ import annotations

import itertools
import math
import pickle
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resumable._codec import compact_json, json_encoder
from resumable._identity import V2_PREFIX
from resumable._items import IDENTITY_PREFIX, ItemSet, default_key
from resumable._listing import (
    _LONG,
    CHUNK,
    MAX_PARAMS_BYTES,
    default_keys,
    fingerprint_of,
    stored_entry,
)
from resumable.errors import InvalidKeyError


def stored(listing: list[list[Any]]) -> list[list[Any]]:
    """The entries a checkpoint records for `ItemSet.listing()` (key, fingerprint, params)."""
    return [stored_entry(*entry) for entry in listing]


class S(str):
    pass


class D(dict):  # type: ignore[type-arg]
    pass


class I(int):  # noqa: E742
    pass


class F(float):
    pass


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**9990, max_value=2**10010),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.text(alphabet=st.characters(min_codepoint=0xD7FE, max_codepoint=0xE001), max_size=2),
    st.sampled_from(["\n", '"', "\\", '\n"', "x" * (_LONG + 1), "é☃𝄞", "__t"]),
)
names = st.one_of(st.text(max_size=4), st.sampled_from(["__t", "\n", '"a"', "b"]))


@st.composite
def same_shape(draw: Any) -> list[Any]:
    """Dicts of one shape: the same key objects in the same order (the column path), or
    equal keys made anew per dict, or the keys in another order in some dicts."""
    shape = draw(st.lists(names, unique=True, max_size=4))
    rows = draw(st.lists(st.lists(scalars, min_size=len(shape), max_size=len(shape)), max_size=6))
    how = draw(st.sampled_from(["shared", "fresh", "reordered"]))
    items = []
    for n, row in enumerate(rows):
        pairs = list(zip(shape, row, strict=True))
        if how == "fresh":
            pairs = [("".join([k, ""]).encode().decode(), v) for k, v in pairs]
        elif how == "reordered" and n % 2:
            pairs.reverse()
        items.append(dict(pairs))
    return items


nested = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(names, inner, max_size=3)
        | st.tuples(inner, inner)
    ),
    max_leaves=6,
)
odd = st.sampled_from(
    [
        {S("k"): 1},
        {"k": S("v")},
        {"k": I(1)},
        {"k": F(1.5)},
        D(k=1),
        {"k": np.float64(1.5)},
        {"k": np.zeros(2)},
        {"k": {1, 2}},
        {"k": b"x"},
        object(),
        S("x"),
        {"k": "y" * (MAX_PARAMS_BYTES + 10)},
        {"k": 2**20000},
    ]
)
lists_of_items = st.one_of(
    same_shape(),
    st.lists(st.dictionaries(names, scalars, max_size=4), max_size=6),
    st.lists(scalars, max_size=6),
    st.lists(st.one_of(nested, odd), max_size=6),
    st.builds(lambda a, b: a + b, same_shape(), st.lists(odd, max_size=2)),
)


@given(lists_of_items, st.booleans(), st.integers(min_value=0, max_value=7))
@settings(max_examples=200)
def test_bulk_listing_is_the_per_item_listing(items: list[Any], keyed: bool, start: int) -> None:
    numbers = itertools.count()
    set_ = ItemSet.build(items, lambda c: f"k{next(numbers)}" if keyed else f'"\n{next(numbers)}é')
    start = min(start, len(items))
    assert set_.listing_json(start) == compact_json(stored(set_.listing(start)))
    json_like = [it for it in items if fingerprint_of(it) is not None]
    texts = {fingerprint_of(it)[1] for it in json_like}  # type: ignore[index]
    if len(texts) == len(json_like):  # (equal items would share a default key)
        by_default = ItemSet.build(json_like, None)
        assert by_default.keys == [default_key(it) for it in json_like]
        assert by_default.listing_json() == compact_json(stored(by_default.listing()))


def test_bulk_listing_across_chunks_and_starts() -> None:
    items: list[Any] = [{"i": i, "x": i * 0.25, "s": f"v{i}"} for i in range(CHUNK + 7)]
    items[5] = {"i": 5, "x": math.nan, "s": "nan: this chunk item by item"}
    items[CHUNK + 2] = {"s": "other order", "x": 1.0, "i": -1}
    for key in (lambda c: f"k{c['i']}:{c['s']}", None):
        set_ = ItemSet.build(items, key)
        for start in (0, 1, CHUNK - 1, CHUNK, CHUNK + 6, CHUNK + 7):
            assert set_.listing_json(start) == compact_json(stored(set_.listing(start)))
    assert default_keys(items) == [default_key(it) for it in items]


def test_record_payload_is_the_json_of_the_record() -> None:
    items = [{"i": i, "x": i / 7} for i in range(50)]
    key = lambda c: str(c["i"])  # noqa: E731
    whole = ItemSet.build(items, key)
    assert whole.record_payload(None, None) == compact_json({"items": stored(whole.listing())})
    prefix = ItemSet.build(items[:30], key).identity()
    appended = {"base": prefix, "base_n": 30, "append": stored(whole.listing(30))}
    assert whole.record_payload(prefix, 30) == compact_json(appended)
    same = {"base": whole.identity(), "base_n": 50, "append": []}
    assert whole.record_payload(whole.identity(), 50) == compact_json(same)
    changed = ItemSet.build([dict(items[0], x=-1.0), *items[1:30]], key).identity()
    assert whole.record_payload(changed, 30) == compact_json({"items": stored(whole.listing())})
    assert ItemSet.build([], key).record_payload(None, None) == b'{"items":[]}'


def test_bulk_default_keys_refuse_what_is_not_json_like() -> None:
    assert default_keys([{"a": 1}, {"a": {1}}])[1] is None
    with pytest.raises(InvalidKeyError, match="not JSON-like"):
        ItemSet.build([{"a": 1}, {"a": {1}}], None)


def test_json_encoder_without_the_c_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    value = {"b": [1, 2.5, "x\n"], "a": None, "é": True}
    with_c = "".join(json_encoder(sort_keys=True, item_separator="\n")(value, 0))
    monkeypatch.setattr("json.encoder.c_make_encoder", None)
    without = "".join(json_encoder(sort_keys=True, item_separator="\n")(value, 0))
    assert without == with_c == '{"a":null\n"b":[1\n2.5\n"x\\n"]\n"é":true}'


# -- the identity ------------------------------------------------------------------------------


def _identity(items: list[Any]) -> str:
    numbers = itertools.count()
    return ItemSet.build(items, lambda c: f"k{next(numbers)}").identity()


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


PAIRS = [  # values that are equal to Python (or share marshal's bytes) but not the same
    (1, True),
    (0, False),
    (1, 1.0),
    (0.0, -0.0),
    (float("nan"), struct.unpack("<d", _bits(math.nan)[:-1] + b"\xff")[0]),  # NaN payloads
    ([1, 2], (1, 2)),
    (b"ab", bytearray(b"ab")),
    ({1, 2}, frozenset({1, 2})),
    ({"a": 1}, D(a=1)),
    ("x", S("x")),
    ({"x": 1}, {S("x"): 1}),
    (3, I(3)),
    (1.5, F(1.5)),
    (1.5, np.float64(1.5)),
    (np.float64(0.0), np.int64(0)),
    (np.zeros((2, 3)), np.zeros((3, 2))),
    (np.zeros(6), np.zeros(6, dtype=np.int64)),
    (b"\x00" * 8, np.float64(0.0)),
    (b"ab", pickle.PickleBuffer(b"ab")),
    ({"a": 1, "b": 2}, {"b": 2, "a": 1}),  # another order: another identity (a re-check)
]


@pytest.mark.parametrize(
    ("a", "b"), PAIRS, ids=[f"{type(a).__name__}-{type(b).__name__}" for a, b in PAIRS]
)
def test_identity_tells_apart_values_that_are_not_the_same(a: Any, b: Any) -> None:
    assert _identity([{"v": a}]) != _identity([{"v": b}])
    assert _identity([a]) != _identity([b])


def _rebuilt(value: Any) -> Any:
    """An equal value made of new objects (nothing shared with `value`)."""
    t = type(value)
    if t is list:
        return [_rebuilt(v) for v in value]
    if t is tuple:
        return tuple(_rebuilt(v) for v in value)
    if t is dict:
        return {_rebuilt(k): _rebuilt(v) for k, v in value.items()}
    if t is str:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
    if t is float:
        return struct.unpack("<d", _bits(value))[0]
    return value


@given(st.lists(nested, max_size=6))
def test_identity_is_the_same_for_the_same_items_however_shared(items: list[Any]) -> None:
    shared = [items[0]] * 3 + items if items else items
    assert _identity(shared) == _identity(_rebuilt(shared))
    assert _identity(shared).startswith(IDENTITY_PREFIX)


def test_identity_runs_no_item_code_and_falls_back_exactly() -> None:
    class Loud:
        def __reduce_ex__(self, protocol: Any) -> Any:
            raise AssertionError("the identity ran an item's own pickling code")

        def __eq__(self, other: object) -> bool:
            raise AssertionError("compared")

        __hash__ = object.__hash__

    loud = Loud()
    assert _identity([{"a": loud}]) == _identity([{"a": loud}])
    cycle: list[Any] = []
    cycle.append(cycle)
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    for odd_items in ([cycle], [deep], [{"m": np.arange(3)}]):
        assert _identity(odd_items).startswith(IDENTITY_PREFIX)
    # numpy values take the codec's exact path, which keeps dtype, shape and bits
    assert _identity([{"m": np.arange(3)}]) != _identity([{"m": np.arange(3.0)}])
    assert _identity([{"m": np.arange(3)}]) == _identity([{"m": np.arange(3)}])


@given(nested, nested)
def test_equal_identities_mean_the_same_items(a: Any, b: Any) -> None:
    if _identity([a]) == _identity([b]):
        assert pickle.dumps(_rebuilt(a), 5) == pickle.dumps(_rebuilt(b), 5)


# -- earlier identities --------------------------------------------------------------------------


def _journal_bytes(path: Any) -> int:
    from resumable._checkpoint import progress_dir_for

    return sum(f.stat().st_size for f in (progress_dir_for(path) / "segments").iterdir())


@pytest.mark.parametrize("nan", [False, True])
def test_checkpoint_with_a_v2_identity_reopens_unchanged(tmp_path, monkeypatch, nan) -> None:
    from resumable import ResumableSweep
    from resumable.view import open_view

    path = tmp_path / "exp.h5"
    items = [{"i": i, "x": math.nan if nan and i == 7 else i / 3} for i in range(3000)]
    key = lambda c: str(c["i"])  # noqa: E731
    with monkeypatch.context() as m:
        m.setattr(ItemSet, "identity", ItemSet.identity_v2)
        with ResumableSweep(items, key=key, checkpoint_path=path, handle_signals=False) as s:
            s.record(items[0], 1)
    recorded = open_view(str(path)).loaded.state.items_sha256
    assert recorded.startswith(V2_PREFIX)
    fresh = ItemSet.build(items, key)
    assert fresh.matches(recorded)
    assert recorded[2:] != fresh.identity()[2:]  # another form: recognised, not equal

    def fingerprint_called(*a: Any, **k: Any) -> None:
        raise AssertionError("an unchanged list needs no fingerprints")

    before = _journal_bytes(path)
    with monkeypatch.context() as m:
        m.setattr(ItemSet, "fingerprint", fingerprint_called)
        with ResumableSweep(items, key=key, checkpoint_path=path, handle_signals=False) as s:
            assert s.result(items[0]) == 1
    assert _journal_bytes(path) - before < 1500  # a launch and an empty items append
    view = open_view(str(path))
    assert view.loaded.state.items_sha256 == fresh.identity()
    assert view.items() == fresh.listing()
    # a changed list under a v2 identity is still caught
    from resumable.errors import ItemsChangedError

    changed = [dict(items[0], x=-1.0), *items[1:]]
    with monkeypatch.context() as m:
        m.setattr(ItemSet, "identity", ItemSet.identity_v2)
        with ResumableSweep(items, key=key, checkpoint_path=tmp_path / "b.h5") as s:
            s.record(items[0], 1)
    assert not ItemSet.build(changed, key).matches(
        open_view(str(tmp_path / "b.h5")).loaded.state.items_sha256
    )
    with pytest.raises(ItemsChangedError):
        ResumableSweep(changed, key=key, checkpoint_path=tmp_path / "b.h5")
