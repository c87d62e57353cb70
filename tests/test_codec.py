"""Lossless result encoding, proven through a real sweep: record, close, reopen, read back.

Unsupported values must be refused with a clear `UnsupportedValueError` before anything is
written.
"""

from __future__ import annotations

import collections
import enum
import math
import os
import struct
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from resumable import ResumableError, ResumableSweep
from resumable._checkpoint import progress_dir_for
from resumable._codec import decode, encode
from resumable.errors import IntegrityError, UnsupportedValueError

# -- comparison ------------------------------------------------------------------------------------


def assert_identical(got, want, where="value"):
    """Same type everywhere, same dict key order, bitwise-equal floats and arrays."""
    assert type(got) is type(want), f"{where}: type {type(got)} != {type(want)}"
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype, f"{where}: dtype {got.dtype} != {want.dtype}"
        assert got.shape == want.shape, f"{where}: shape {got.shape} != {want.shape}"
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), (
            f"{where}: array bytes differ"
        )
        if want.dtype.names is None and want.dtype.kind not in "fcmM":
            assert np.array_equal(got, want), f"{where}: values differ"
    elif isinstance(want, np.generic):
        assert got.dtype == want.dtype, f"{where}: dtype {got.dtype} != {want.dtype}"
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes(), f"{where}: bytes differ"
    elif isinstance(want, float):
        assert struct.pack("<d", got) == struct.pack("<d", want), f"{where}: {got!r} != {want!r}"
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            assert_identical(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_identical(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


# -- the values --------------------------------------------------------------------------------


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    out: dict[str, np.ndarray] = {}
    out["bool"] = np.array([True, False, True])
    for dt in ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"):
        info = np.iinfo(dt)
        out[dt] = np.array([info.min, 0, 1, info.max], dtype=dt)
    for dt in ("f2", "f4", "f8"):
        out[dt] = np.array([0.0, -0.0, 1.5, np.nan, np.inf, -np.inf, 1e-3], dtype=dt)
    out["f8_random_2d"] = rng.standard_normal((3, 4))
    out["c8"] = np.array([1 + 2j, np.nan + 1j, -0.0 - 0.0j], dtype="c8")
    out["c16"] = rng.standard_normal(5) + 1j * rng.standard_normal(5)
    out["longdouble"] = np.array([1.0, 1 / 3], dtype=np.longdouble)
    out["big_endian_i4"] = np.arange(5, dtype=">i4")
    out["big_endian_f8"] = np.linspace(0, 1, 4).astype(">f8")
    out["datetime64_ns"] = np.array(["2024-01-01T00:00:00.123456789", "NaT"], dtype="M8[ns]")
    out["datetime64_D"] = np.array(["1970-01-01", "2262-04-11"], dtype="M8[D]")
    out["timedelta64_s"] = np.array([1, -5, 3600], dtype="m8[s]")
    out["unicode_U"] = np.array(["", "héllo", "ünïcødé ✓", "日本語"], dtype="U8")
    out["bytes_S"] = np.array([b"", b"ab\x00c", b"\xff"], dtype="S4")
    point = np.dtype([("x", "<f8"), ("y", "<i4"), ("name", "U5")])
    out["structured"] = np.array([(1.5, 2, "a"), (np.nan, -1, "bé")], dtype=point)
    nested = np.dtype([("id", "<u2"), ("pos", point), ("m", "<f4", (2, 2))])
    arr = np.zeros(3, dtype=nested)
    arr["id"] = [1, 2, 3]
    arr["pos"]["x"] = [0.5, -0.0, np.inf]
    arr["m"] = np.arange(12, dtype="f4").reshape(3, 2, 2)
    out["structured_nested"] = arr
    out["structured_big_endian"] = np.array([(1, 2.0)], dtype=[("a", ">i2"), ("b", ">f8")])
    out["zero_d"] = np.array(3.25)
    out["zero_d_int"] = np.array(7, dtype="u2")
    out["empty_1d"] = np.array([], dtype="f8")
    out["empty_2d"] = np.zeros((0, 3), dtype="i4")
    out["empty_3d"] = np.zeros((2, 0, 4), dtype="c16")
    out["fortran"] = np.asfortranarray(np.arange(12, dtype="i8").reshape(3, 4))
    base = np.arange(40, dtype="f8").reshape(5, 8)
    out["view_strided"] = base[::2, 1::3]
    out["view_transposed"] = base.T
    out["view_column"] = base[:, 2]
    out["view_reversed"] = base[::-1]
    out["high_dim"] = np.arange(2 * 1 * 3 * 1 * 2, dtype="i2").reshape(2, 1, 3, 1, 2)
    return out


def _scalars() -> dict[str, np.generic]:
    return {
        "np_bool": np.bool_(True),
        "np_int8": np.int8(-128),
        "np_uint8": np.uint8(255),
        "np_int16": np.int16(-3),
        "np_uint16": np.uint16(65535),
        "np_int32": np.int32(-(2**31)),
        "np_uint32": np.uint32(2**32 - 1),
        "np_int64": np.int64(-(2**63)),
        "np_uint64": np.uint64(2**64 - 1),
        "np_float16": np.float16(0.1),
        "np_float32": np.float32(np.nan),
        "np_float64": np.float64(-0.0),
        "np_float64_inf": np.float64(np.inf),
        "np_longdouble": np.longdouble(1) / 3,
        "np_complex64": np.complex64(1 - 2j),
        "np_complex128": np.complex128(complex(np.inf, -0.0)),
        "np_datetime64": np.datetime64("2024-02-29T12:34:56", "s"),
        "np_timedelta64": np.timedelta64(-7, "ms"),
        "np_str": np.str_("ünï"),
        "np_bytes": np.bytes_(b"ab\x01"),
        "np_void_structured": np.array([(1, 2.5)], dtype=[("a", "i4"), ("b", "f8")])[0],
    }


def _python_values() -> dict[str, object]:
    return {
        "dict": {"a": 1, "b": [1, 2], "c": {"d": None}},
        "dict_empty": {},
        "dict_key_order": {"z": 1, "a": 2, "m": 3},
        "dict_unicode_keys": {"ключ": 1, "": 2, "a\x00b": 3, "\n": 4},
        "list": [1, "two", 3.0, None, True],
        "list_empty": [],
        "tuple": (1, 2, 3),
        "tuple_empty": (),
        "tuple_single": ("x",),
        "tuple_nested": ((1, (2, (3,))), [(4,)], {"t": (5, 6)}),
        "list_of_tuples": [(1, 2), (3, 4)],
        "str": "plain",
        "str_empty": "",
        "str_unicode": 'ünïcødé ✓ 日本語 🎉 \u2028 \u0085 \t \x00 "quoted" \\',
        "int_zero": 0,
        "int_negative": -17,
        "int_big": 2**64 + 1,
        "int_bigger": -(2**200) + 3,
        "int_4000_digits": 10**3999 + 7,
        "float": 0.1,
        "float_tiny": 5e-324,
        "float_max": 1.7976931348623157e308,
        "float_nan": math.nan,
        "float_inf": math.inf,
        "float_neg_inf": -math.inf,
        "float_neg_zero": -0.0,
        "float_pos_zero": 0.0,
        "float_integral": 3.0,
        "bool_true": True,
        "bool_false": False,
        "none": None,
        "user_dict_with_tag_key": {"__t": "nd", "v": 1},
        "user_dict_with_tag_key_tuple": {"__t": "tuple", "v": [1, 2]},
        "user_dict_with_only_tag_key": {"__t": None},
        "nested_user_tag": {"outer": {"__t": "dict", "v": {"__t": "f"}}},
        "floats_in_containers": [math.nan, -0.0, {"x": (math.inf, -math.inf)}],
        "arrays_in_dict": {"a": np.arange(3), "b": {"c": np.ones((2, 2), dtype="f4")}},
        "arrays_in_list": [np.zeros(2, dtype="u1"), [np.array(["x"], dtype="U1")]],
        "arrays_in_tuple": (np.arange(2, dtype="i2"), np.float32(2.5)),
        "scalars_in_dict": {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(False)},
        "deep_but_allowed": _nest(50),
    }


def _nest(depth: int):
    value: object = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


VALUES: dict[str, object] = {
    **_python_values(),
    **{f"array_{k}": v for k, v in _arrays().items()},
    **_scalars(),
}


@pytest.fixture(scope="module")
def reopened(tmp_path_factory):
    """Record every value in VALUES in one sweep, close it, and reopen it."""
    ckpt = tmp_path_factory.mktemp("codec") / "values.h5"
    items = sorted(VALUES)
    with ResumableSweep(items, checkpoint_path=ckpt, key=str) as sweep:
        for name in sweep.pending:
            sweep.record(name, VALUES[name])
        # The live object answers from the same stored encoding.
        assert_identical(sweep.result("float_nan"), VALUES["float_nan"])
    sweep = ResumableSweep(items, checkpoint_path=ckpt, key=str)
    yield sweep
    sweep.close()


@pytest.mark.parametrize("name", sorted(VALUES))
def test_round_trip_through_sweep(reopened, name):
    assert_identical(reopened.result(name), VALUES[name], name)


def test_completed_yields_all_values_in_record_order(reopened):
    got = list(reopened.completed_items())
    assert [item for item, _ in got] == sorted(VALUES)
    for item, value in got:
        assert_identical(value, VALUES[item], item)
    assert len(list(reopened.completed)) == len(VALUES)


def test_results_come_back_as_fresh_writable_objects(reopened):
    a = reopened.result("array_f8_random_2d")
    assert a.flags.writeable
    a[0, 0] = 99.0  # must not corrupt what the next call returns
    assert reopened.result("array_f8_random_2d")[0, 0] != 99.0


def test_huge_int_round_trips(tmp_path):
    """ints are supported; Python 3.11+ refuses int<->str for more than 4300 digits by default.

    Either the int round-trips or it is refused up front with UnsupportedValueError; a raw
    ValueError from deep inside json after the sweep started writing is neither.
    """
    value = {"n": 10**5000 + 1, "m": -(7**9000)}
    ckpt = tmp_path / "huge.h5"
    with ResumableSweep(["a"], checkpoint_path=ckpt, key=str) as sweep:
        sweep.record("a", value)
    with ResumableSweep(["a"], checkpoint_path=ckpt, key=str) as sweep:
        assert sweep.result("a") == value


# -- direct codec checks (fast, no disk) ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUES))
def test_encode_decode_direct(name):
    assert_identical(decode(encode(VALUES[name])), VALUES[name], name)


def test_encoding_is_plain_json_without_pickle():
    import json

    enc = encode({"a": np.arange(3), "t": (1, 2), "f": math.nan})
    text = json.dumps(enc, allow_nan=False)
    assert "pickle" not in text.lower()


@pytest.mark.parametrize(
    "bad",
    [
        {"__t": "nope"},
        {"__t": "nd", "d": "<f8", "s": [3], "b": "AAAA"},  # wrong byte count
        {"__t": "nd", "d": "|O", "s": [1], "b": "AAAAAAAAAAA="},  # object dtype
        {"__t": "np", "d": "<i4", "b": "AA=="},
        {"__t": "f", "v": "maybe"},
        {"__t": "tuple"},
        {"__t": "nd", "d": "<f8", "s": [1], "b": "not base64!"},
    ],
)
def test_decode_of_malformed_value_is_integrity_error(bad):
    with pytest.raises(IntegrityError):
        decode(bad, where="somewhere")


# -- refused values ------------------------------------------------------------------------------


class _Obj:
    pass


class _MyIntEnum(enum.IntEnum):
    A = 1


class _MyDict(dict):
    pass


class _MyFloat(float):
    pass


class _MyInt(int):
    pass


class _MyStr(str):
    pass


class _MyList(list):
    pass


_Point = collections.namedtuple("_Point", "x y")


def _matrix():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.asmatrix(np.eye(2))


def _recursive_list():
    x: list = []
    x.append(x)
    return x


# (id, result, text that must appear in the message to say where the bad value sits)
BAD_RESULTS = [
    ("object_nested", {"a": [1, 2, _Obj()]}, "result['a'][2]"),
    ("object_top", _Obj(), "_Obj"),
    ("set", {"s": {1, 2}}, "result['s']"),
    ("frozenset", [frozenset()], "result[0]"),
    ("int_dict_key", {"d": {1: "x"}}, "result['d']"),
    ("tuple_dict_key", {"d": {(1, 2): "x"}}, "result['d']"),
    ("none_dict_key", {None: 1}, "None"),
    ("object_array", {"arr": np.array([1, "a"], dtype=object)}, "result['arr']"),
    ("object_field", {"arr": np.zeros(2, dtype=[("a", "i4"), ("o", "O")])}, "result['arr']"),
    ("int_enum", {"e": _MyIntEnum.A}, "result['e']"),
    ("ordered_dict", {"od": collections.OrderedDict(a=1)}, "result['od']"),
    ("namedtuple", {"p": _Point(1, 2)}, "result['p']"),
    ("dict_subclass", [_MyDict()], "result[0]"),
    ("float_subclass", [1, _MyFloat(1.0)], "result[1]"),
    ("int_subclass", {"x": [_MyInt(3)]}, "result['x'][0]"),
    ("str_subclass", {"x": _MyStr("s")}, "result['x']"),
    ("list_subclass", {"x": _MyList()}, "result['x']"),
    ("bytes", {"b": b"raw"}, "result['b']"),
    ("complex", {"c": 1j}, "result['c']"),
    ("fraction", {"f": Fraction(1, 3)}, "result['f']"),
    ("path", {"p": Path("/tmp")}, "result['p']"),
    ("matrix", {"m": _matrix()}, "result['m']"),
    ("masked", {"m": np.ma.masked_array([1, 2], mask=[0, 1])}, "result['m']"),
    ("lone_surrogate", {"s": "a\udc80b"}, "result['s']"),
    ("lone_surrogate_key", {"a\ud800": 1}, "result"),
    ("too_deep", _nest(200), "deeper"),
    ("recursive", _recursive_list(), "deeper"),
    ("function", {"f": print}, "result['f']"),
]


@pytest.mark.parametrize(
    ("result", "where"), [b[1:] for b in BAD_RESULTS], ids=[b[0] for b in BAD_RESULTS]
)
def test_unsupported_result_is_refused_and_writes_nothing(tmp_path, result, where):
    ckpt = tmp_path / "bad.h5"
    items = ["good", "victim-key"]
    sweep = ResumableSweep(items, checkpoint_path=ckpt, key=str)
    sweep.record("good", 1)
    before = _journal_bytes(ckpt)

    with pytest.raises(UnsupportedValueError) as info:
        sweep.record("victim-key", result)
    err = info.value
    assert isinstance(err, TypeError)
    assert isinstance(err, ResumableError)
    msg = str(err)
    assert "victim-key" in msg, msg
    assert where in msg, msg

    assert _journal_bytes(ckpt) == before
    assert not sweep.is_done("victim-key")
    # The sweep is still usable after a refused value.
    sweep.record("victim-key", "fine")
    sweep.close()
    with ResumableSweep(items, checkpoint_path=ckpt, key=str) as again:
        assert again.result("victim-key") == "fine"
        assert again.status().done == 2


def test_refused_result_leaves_checkpoint_unchanged_on_reopen(tmp_path):
    ckpt = tmp_path / "bad.h5"
    items = ["a", "b"]
    with ResumableSweep(items, checkpoint_path=ckpt, key=str) as sweep:
        sweep.record("a", 1)
        with pytest.raises(UnsupportedValueError):
            sweep.record("b", {"x": {1, 2}})
    with ResumableSweep(items, checkpoint_path=ckpt, key=str) as again:
        assert again.status().done == 1
        assert list(again.pending) == ["b"]


def test_unsupported_meta_is_refused_before_anything_is_written(tmp_path):
    ckpt = tmp_path / "m.h5"
    with pytest.raises(UnsupportedValueError) as info:
        ResumableSweep(["a"], checkpoint_path=ckpt, key=str, meta={"when": {1, 2}})
    assert "meta" in str(info.value)
    assert not progress_dir_for(ckpt).exists()


def test_unsupported_meta_set_later_is_refused_at_record(tmp_path):
    ckpt = tmp_path / "m.h5"
    with ResumableSweep(["a", "b"], checkpoint_path=ckpt, key=str) as sweep:
        sweep.record("a", 1)
        before = _journal_bytes(ckpt)
        sweep.meta["bad"] = object()
        with pytest.raises(UnsupportedValueError):
            sweep.record("b", 2)
        assert _journal_bytes(ckpt) == before
        del sweep.meta["bad"]


def _journal_bytes(ckpt) -> dict[str, bytes]:
    pdir = progress_dir_for(ckpt)
    return {
        os.path.relpath(p, pdir): p.read_bytes()
        for p in sorted(pdir.rglob("*"))
        if p.is_file() and p.name != "LOCK"
    }


def _random_value(rng, depth: int = 0):
    """Plain JSON values mixed with everything `encode` tags or refuses."""
    r = rng.random()
    if depth > 4 or r < 0.5:
        return rng.choice(
            [
                1.5,
                -0.0,
                math.nan,
                -math.inf,
                3,
                True,
                None,
                'é\u2028\x00"\\',
                "\ud800",
                2**12_000,  # past the codec's plain int limit, within int->str's
                10**30,
                np.float64(2.0),
                np.int32(3),
                (1, "a"),
                enum.IntEnum("E", "A").A,
                object(),
            ]
        )
    if r < 0.75:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["a", "__t", "\ud800", 1, "b"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_encode_json_is_compact_json_of_encode():
    """The hot path's shortcut (plain values straight to the C encoder) writes the very bytes
    of compact_json(encode(value)), and refuses what encode refuses, with its message."""
    import random

    from resumable._codec import compact_json, encode_json

    rng = random.Random(14)
    for _ in range(5000):
        value = _random_value(rng)
        try:
            want = compact_json(encode(value, what="r"))
        except UnsupportedValueError as exc:
            with pytest.raises(UnsupportedValueError) as got:
                encode_json(value, what="r")
            assert str(got.value) == str(exc)
        else:
            assert encode_json(value, what="r") == want
    deep: list = []
    inner = deep
    for _ in range(70):
        inner.append([])
        inner = inner[0]
    with pytest.raises(UnsupportedValueError, match="nested deeper"):
        encode_json(deep)


def test_pool_worker_module_does_not_import_numpy() -> None:
    """A pool's workers import `_worker` (and the codec) before their first item: numpy, most
    of that import, comes only with a value that needs it (encode asks sys.modules)."""
    import subprocess
    import sys

    code = "import sys, resumable._worker; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
