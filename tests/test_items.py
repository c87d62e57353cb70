"""Item fingerprints and default keys: the fast path for flat dicts must give exactly the
bytes and hashes of the codec's general path (checkpoints written before it must still match)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from resumable._codec import canonical_json, try_fingerprint
from resumable._items import FP_LEN, IDENTITY_PREFIX, ItemSet, default_key, fingerprint_of

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**9990, max_value=2**10010),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=2),
)
flat = st.dictionaries(st.one_of(st.text(max_size=5), st.just("__t")), scalars, max_size=6)
nested = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
    max_leaves=8,
)


def _reference(item):
    fp = try_fingerprint(item)
    return None if fp is None else (canonical_json(fp[0]), fp[1])


@given(st.one_of(flat, nested, st.tuples(scalars, scalars)))
def test_fast_fingerprint_is_the_codecs(item) -> None:
    got = fingerprint_of(item)
    ref = _reference(item)
    if ref is None:
        assert got is None
        return
    assert got is not None and got[1] == ref[0]
    assert default_key(item) == ref[1][:32]
    items = ItemSet.build([item], key_fn=lambda _: "k")
    assert items.fingerprint("k") == ref[1][:FP_LEN]
    assert items.listing()[0][1] == ref[1][:FP_LEN]


def test_non_finite_floats_and_tags_take_the_codecs_path() -> None:
    for item in ({"x": math.nan}, {"x": math.inf}, {"__t": 1}, {"x": 2**10001}):
        enc, blob = fingerprint_of(item)
        assert blob == canonical_json(try_fingerprint(item)[0])
        assert enc != item


def _journal_bytes(path) -> int:
    from resumable._checkpoint import progress_dir_for

    return sum(f.stat().st_size for f in (progress_dir_for(path) / "segments").glob("*.jsonl"))


def test_appending_items_writes_only_the_new_entries(tmp_path) -> None:
    from resumable import ResumableSweep
    from resumable._items import ItemSet
    from resumable.view import open_view

    path = tmp_path / "exp.h5"
    items = [{"i": i, "pad": "p" * 50} for i in range(2000)]

    def launch(its, **kw):
        before = _journal_bytes(path) if path.with_name("exp.h5.resumable").exists() else 0
        with ResumableSweep(its, key=lambda c: str(c["i"]), checkpoint_path=path, **kw) as s:
            for item in list(s.pending)[:5]:
                s.record(item, item["i"])
        return _journal_bytes(path) - before

    full = launch(items)
    assert full > 2000 * 50
    assert launch(items) < 2000  # unchanged: a launch record and a few results
    grown = items + [{"i": 2000 + j, "pad": "q" * 50} for j in range(10)]
    assert launch(grown) < 4000  # 10 new entries, not the whole list again
    grown2 = grown + [{"i": 3000 + j, "pad": "r"} for j in range(3)]
    assert launch(grown2) < 3000
    expected = ItemSet.build(grown2, lambda c: str(c["i"])).listing()
    view = open_view(str(path))
    assert view.items() == expected
    assert view.keys() == [e[0] for e in expected]
    assert view.status().total == 2013 and view.status().done == 20
    # a changed item (not an append): the whole list again, and still the right listing
    changed = [dict(grown2[0], pad="changed"), *grown2[1:]]
    assert launch(changed, on_change="rerun") > 2000 * 50
    view = open_view(str(path))
    assert view.items() == ItemSet.build(changed, lambda c: str(c["i"])).listing()
    # the timeline counts pending items against each launch's own list
    from resumable._history import timeline

    tl = timeline(view)
    assert [x.n_items for x in tl.launches] == [2000, 2000, 2010, 2013, 2013]
    assert [x.pending_at_end for x in tl.launches] == [1995, 1990, 1995, 1993, 1989]


def test_identity_tells_apart_what_marshal_would_merge() -> None:
    import numpy as np

    keyed = lambda its: ItemSet.build(its, lambda c: str(its.index(c)))  # noqa: E731
    # numpy values read back from marshal as bytes: the exact path, which keeps dtype and shape
    a = keyed([{"m": np.zeros((2, 3))}]).identity()
    b = keyed([{"m": np.zeros((3, 2))}]).identity()
    c = keyed([{"m": np.zeros(6, dtype=np.int64)}]).identity()
    assert len({a, b, c}) == 3
    assert keyed([{"x": np.float64(0.0)}]).identity() != keyed([{"x": np.int64(0)}]).identity()
    assert keyed([[1, 2]]).identity() != keyed([(1, 2)]).identity()
    assert keyed([{"x": 1}]).identity() != keyed([{"x": 1.0}]).identity()
    assert keyed([{"x": True}]).identity() != keyed([{"x": 1}]).identity()
    assert keyed([{"x": 0.0}]).identity() != keyed([{"x": -0.0}]).identity()
    nan = keyed([{"x": math.nan}])
    assert nan.identity() == keyed([{"x": math.nan}]).identity()  # the exact path, stable
    same = [{"i": i, "x": i / 3} for i in range(100)]
    one = ItemSet.build(same, lambda c: str(c["i"]))
    two = ItemSet.build([dict(c) for c in same], lambda c: str(c["i"]))
    assert one.identity() == two.identity() and one.identity().startswith(IDENTITY_PREFIX)
    assert one.identity(upto=50) == ItemSet.build(same[:50], lambda c: str(c["i"])).identity()
    renamed = ItemSet.build(same, lambda c: "k" + str(c["i"]))
    assert renamed.identity() != one.identity()  # the keys count too


def test_checkpoint_with_a_legacy_identity_reopens_unchanged(tmp_path, monkeypatch) -> None:
    """A checkpoint written before the versioned identity (bare hex, json+repr form) reopens
    as unchanged: no item re-checked, O(1) bytes written, and the next open is in the new form."""
    from resumable import ResumableSweep
    from resumable.view import open_view

    path = tmp_path / "exp.h5"
    items = [{"i": i, "pad": "p" * 50} for i in range(2000)]
    key = lambda c: str(c["i"])  # noqa: E731
    with monkeypatch.context() as m:
        m.setattr(ItemSet, "identity", ItemSet.legacy_identity)
        with ResumableSweep(items, key=key, checkpoint_path=path) as s:
            s.record(items[0], 1)
    state = open_view(str(path)).loaded.state
    assert state.items_sha256[:2] not in ("2:", IDENTITY_PREFIX)

    def fingerprint_called(*a, **k):
        raise AssertionError("an unchanged list needs no fingerprints")

    before = _journal_bytes(path)
    with monkeypatch.context() as m:
        m.setattr(ItemSet, "fingerprint", fingerprint_called)
        with ResumableSweep(items, key=key, checkpoint_path=path) as s:
            assert s.result(items[0]) == 1
    assert _journal_bytes(path) - before < 1500  # a launch and an empty items append
    view = open_view(str(path))
    assert view.loaded.state.items_sha256.startswith(IDENTITY_PREFIX)
    assert view.items() == ItemSet.build(items, key).listing()
    before = _journal_bytes(path)
    with ResumableSweep(items, key=key, checkpoint_path=path):
        pass
    assert _journal_bytes(path) - before < 700  # just a launch record
    # a changed list under a legacy identity is still caught
    with monkeypatch.context() as m:
        m.setattr(ItemSet, "identity", ItemSet.legacy_identity)
        with ResumableSweep(items, key=key, checkpoint_path=tmp_path / "b.h5") as s:
            s.record(items[0], 1)
    import pytest

    from resumable.errors import ItemsChangedError

    with pytest.raises(ItemsChangedError):
        ResumableSweep(
            [dict(items[0], pad="x"), *items[1:]], key=key, checkpoint_path=tmp_path / "b.h5"
        )


@given(st.lists(st.one_of(flat, nested, st.tuples(scalars, scalars)), max_size=40))
def test_bulk_fingerprints_are_each_items(items) -> None:
    """A group being recorded is fingerprinted in bulk: the same as item by item, for groups
    below and above the size where the digests are made together."""
    from resumable._listing import item_fingerprint, item_fingerprints

    assert item_fingerprints(items) == [item_fingerprint(it) for it in items]
    assert item_fingerprints([{"i": i, "x": i / 3} for i in range(40)]) == [
        item_fingerprint({"i": i, "x": i / 3}) for i in range(40)
    ]
    itemset = ItemSet.build(list(enumerate(items)), key_fn=lambda it: str(it[0]))
    keys = list(reversed(itemset.keys))
    assert itemset.fingerprints(keys) == [itemset.fingerprint(k, cache=False) for k in keys]


@given(
    st.one_of(
        st.lists(flat, min_size=14, max_size=40),
        st.lists(scalars, min_size=14, max_size=40),
        st.lists(st.one_of(flat, nested), max_size=40),
    )
)
def test_values_json_in_bulk_is_encode_json(values) -> None:
    """A group's result values encoded in bulk give `encode_json`'s bytes, or None where the
    caller encodes the value itself (never other bytes)."""
    from resumable._codec import encode_json
    from resumable._listing import values_json

    got = values_json(values)
    assert len(got) == len(values)
    for value, text in zip(values, got, strict=True):
        if text is not None:
            assert text == encode_json(value)
    shaped = [{"y": i * 0.5, "s": "é\u2028", "n": None, "b": i % 2 == 0} for i in range(40)]
    assert values_json(shaped) == [encode_json(v) for v in shaped]
