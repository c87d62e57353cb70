"""Item fingerprints and default keys: the fast path for flat dicts must give exactly the
bytes and hashes of the codec's general path (checkpoints written before it must still match)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from resumable.codec import canonical_json, try_fingerprint
from resumable.items import FP_LEN, ItemSet, default_key, fingerprint_of

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
