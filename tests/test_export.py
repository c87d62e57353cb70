"""Exporters: HDF5 and JSON Lines round trips, hostile keys, parameters, atomicity."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from resumable import ResumableSweep
from resumable.cli import main
from resumable.codec import decode
from resumable.export import h5_name, iter_jsonl, read_h5, write_h5, write_jsonl

HOSTILE_KEYS = [
    "../x",
    "/",
    "a/b/c",
    "a\x00b",
    "k" * 10_240,
    "ünïcødé ☃ 温度",
    "",
    ".",
    "..",
    "~a",
    " padded ",
    "line\nbreak",
    "T0.50",
    "\u202eevil",
]


def assert_same(a: Any, b: Any, where: str = "value") -> None:
    """Equal values of the same types; arrays with the same dtype, shape and bits."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
        assert a.shape == b.shape, f"{where}: shape {a.shape} != {b.shape}"
        assert a.tobytes() == b.tobytes(), f"{where}: data differ"
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def rich_result(i: int) -> dict[str, Any]:
    structured = np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8", (2,)), ("c", "S3")])
    structured["a"] = [1, 2, 3]
    return {
        "f64": np.linspace(0, 1, 7) * i,
        "f32_2d": np.arange(12, dtype=np.float32).reshape(3, 4),
        "big_endian": np.arange(5, dtype=">f8"),
        "f16": np.array([1.5, -2.0], dtype=np.float16),
        "ints": [np.arange(4, dtype=d) for d in ("i1", "i2", "i4", "i8", "u1", "u8")],
        "bools": np.array([[True, False], [False, True]]),
        "complex": np.array([1 + 2j, -3j], dtype=np.complex64),
        "bytes": np.array([b"ab", b"c\x00d"], dtype="S3"),
        "unicode": np.array(["alpha", "βeta", ""], dtype="<U5"),
        "datetime": np.array(["2024-01-01T00:00:00", "2025-06-30T12:00:00"], dtype="M8[s]"),
        "timedelta": np.array([1, 2], dtype="m8[ms]"),
        "structured": structured,
        "zero_d": np.array(3.25),
        "empty": np.zeros((0, 3)),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "strided": np.arange(20.0)[::3],
        "np_scalars": (
            np.float32(1.5),
            np.int16(-7),
            np.uint64(2**64 - 1),
            np.bool_(True),
            np.complex128(1 - 1j),
            np.str_("s"),
            np.datetime64("2024-02-29", "D"),
        ),
        "py": {
            "int": -(2**62),
            "huge": 3**200,
            "float": 0.1,
            "nan": math.nan,
            "inf": -math.inf,
            "bool": False,
            "none": None,
            "str": "héllo",
            "nul_str": "a\x00b",
            "empty_str": "",
        },
        "lists": {
            "floats": [0.5, 1.5, math.inf],
            "ints": [1, 2, 3],
            "bools": [True, False],
            "strs": ["a", "b"],
            "mixed": [1, "two", 3.0, None, [4, (5,)]],
            "empty": [],
            "tuple": (1, 2),
            "empty_tuple": (),
            "nested": [[1, 2], [3]],
            "huge_ints": [1, 2**70],
        },
        "hostile dict keys": {
            "a/b": 1,
            ".": 2,
            "": 3,
            "~x": 4,
            "nul\x00key": 5,
            "x" * 300: 6,
            "__t": 7,
        },
        "deep": {"a": {"b": {"c": {"d": [np.eye(2)]}}}},
    }


def test_h5_round_trip_every_value_dtype_and_shape(tmp_path: Path) -> None:
    rows = [
        (key, {"i": i, "T": 0.5 * i, "tags": ["a", "b"], "opt": None}, rich_result(i))
        for i, key in enumerate(["first", "../x", "a\x00b"])
    ]
    out = write_h5(iter(rows), tmp_path / "out.h5", sweep="exp", meta={"v": (1, 2)})
    info, back = read_h5(out)
    assert info["sweep"] == "exp" and info["n_items"] == 3
    assert_same(info["meta"], {"v": (1, 2)})
    assert [r[0] for r in back] == [r[0] for r in rows]
    for (k, p, r), (k2, p2, r2) in zip(rows, back, strict=True):
        assert k == k2
        assert_same(p, p2, "params")
        assert_same(r, r2, f"result of {k!r}")

    # and the file itself is what the layout promises, for readers without resumable
    with h5py.File(out, "r") as f:
        assert f.attrs["resumable_format"] == "resumable-export"
        assert list(f["items"]) == [h5_name(k) for k, _, _ in rows]  # record order kept
        g = f["items"]["first"]
        assert g.attrs["resumable_key"] == "first"
        assert g.attrs["i"] == 0 and g.attrs["T"] == 0.0
        assert json.loads(g.attrs["tags"]) == ["a", "b"]
        assert isinstance(g.attrs["opt"], h5py.Empty)
        res = g["result"]
        assert res["f32_2d"].dtype == np.float32 and res["f32_2d"].shape == (3, 4)
        assert res["big_endian"].dtype == np.dtype(">f8")
        assert res["zero_d"].shape == ()
        assert res["empty"].shape == (0, 3)
        assert res["structured"].dtype == rich_result(0)["structured"].dtype
        np.testing.assert_array_equal(res["f64"][()], rich_result(0)["f64"])
        assert (
            res["py"]["float"][()] == 0.1 and res["py"]["float"].attrs["resumable_type"] == "float"
        )
        assert res["py"]["str"].asstr()[()] == "héllo"
        assert isinstance(res["py"]["none"][()], h5py.Empty)
        assert res["lists"]["floats"].dtype == np.float64  # homogeneous lists: 1-d datasets
        assert res["lists"]["mixed"].attrs["resumable_type"] == "list"
        assert isinstance(res["lists"]["mixed"], h5py.Group)
        names = {
            child.attrs.get("resumable_name", name)
            for name, child in res["hostile dict keys"].items()
        }
        assert "a/b" in names and "." in names and "" in names and "~x" in names
        nul = g.parent[h5_name("a\x00b")]
        assert nul.attrs["resumable_key_format"] == "json"
        assert json.loads(nul.attrs["resumable_key"]) == "a\x00b"


def test_a_json_flagged_key_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    # found by mypy: read_h5 returned whatever JSON a "json"-flagged key attribute held (here
    # an int), so a damaged file gave rows whose key was not a str
    path = tmp_path / "out.h5"
    write_h5([("a\x00b", {"n": 1}, 1.5)], path, sweep="s")
    assert read_h5(path)[1][0][0] == "a\x00b"
    with h5py.File(path, "r+") as f:
        f["items"][h5_name("a\x00b")].attrs["resumable_key"] = "17"
    with pytest.raises(ValueError, match=r"resumable_key.*not a string"):
        read_h5(path)


def test_hostile_keys_through_a_real_sweep_and_the_cli(tmp_path: Path) -> None:
    items = [{"k": k, "n": i} for i, k in enumerate(HOSTILE_KEYS)]
    ckpt = tmp_path / "run" / "exp.h5"
    with ResumableSweep(items, key=lambda c: c["k"], checkpoint_path=ckpt) as sweep:
        for item in sweep.pending:
            sweep.record(item, {"n": item["n"], "arr": np.full(3, item["n"], dtype=np.int32)})
    out = tmp_path / "out.h5"
    assert main(["export", str(ckpt), "--h5", str(out)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["out.h5", "run"]
    with h5py.File(out, "r") as f:
        assert list(f) == ["items"]  # "../x" and "/" did not escape the items group
        names = list(f["items"])
        assert len(set(names)) == len(HOSTILE_KEYS)
        for name in names:
            assert "/" not in name and "\x00" not in name and len(name) <= 128
            assert name not in (".", "..") and name.isprintable()
        assert "T0.50" in names  # safe keys keep their own name
        assert f.attrs["done"] == len(HOSTILE_KEYS) and f.attrs["pending"] == 0
    _, rows = read_h5(out)
    assert [r[0] for r in rows] == HOSTILE_KEYS
    for key, params, result in rows:
        assert params == {"k": key, "n": HOSTILE_KEYS.index(key)}
        assert_same(result["arr"], np.full(3, params["n"], dtype=np.int32))


def test_h5_name_is_safe_distinct_and_readable() -> None:
    names = [h5_name(k) for k in [*HOSTILE_KEYS, "~a~x", "a_b", "a/b"]]
    assert len(set(names)) == len(names)
    assert h5_name("T0.50") == "T0.50" and h5_name("run 3") == "run 3"
    assert h5_name("../x").startswith("~") and h5_name("../x") != h5_name("..-x")


def test_params_become_attributes(tmp_path: Path) -> None:
    params = {
        "i": 3,
        "T": 1.5,
        "name": "run",
        "ok": True,
        "none": None,
        "nested": {"a": [1, 2]},
        "tup": (1, "x"),
        "arr": np.arange(3),
        "huge": 2**80,
        "nul": "a\x00b",
        "resumable_key": "not ours",
    }
    out = write_h5([("k", params, 1.0)], tmp_path / "p.h5", sweep="s")
    with h5py.File(out, "r") as f:
        a = f["items/k"].attrs
        assert a["i"] == 3 and a["i"].dtype == np.int64
        assert a["T"] == 1.5 and a["name"] == "run" and bool(a["ok"]) is True
        assert isinstance(a["none"], h5py.Empty)
        assert json.loads(a["nested"]) == {"a": [1, 2]}
        assert json.loads(a["tup"]) == [1, "x"]
        assert json.loads(a["arr"]) == {"dtype": "int64", "shape": [3], "data": [0, 1, 2]}
        assert json.loads(a["huge"]) == 2**80
        assert json.loads(a["nul"]) == "a\x00b"
        assert a["resumable_key"] == "k"  # a parameter cannot shadow the bookkeeping
        assert_same(decode(json.loads(a["resumable_params"])), params)
    _, rows = read_h5(out)
    assert_same(rows[0][1], params)
    # non-dict items: one "params" attribute
    out = write_h5([("k", [1, 2], None), ("j", None, 2)], tmp_path / "q.h5", sweep="s")
    with h5py.File(out, "r") as f:
        assert json.loads(f["items/k"].attrs["params"]) == [1, 2]
        assert isinstance(f["items/j"].attrs["params"], h5py.Empty)
    assert [r[1] for r in read_h5(out)[1]] == [[1, 2], None]


def _rows_then_boom(n: int):
    for i in range(n):
        yield f"k{i}", {"i": i}, {"x": np.arange(1000.0)}
    raise RuntimeError("the row source broke")


@pytest.mark.parametrize("fmt", ["h5", "jsonl"])
def test_an_exception_while_writing_leaves_no_file(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    writer = (lambda rows, p: write_h5(rows, p, sweep="s")) if fmt == "h5" else write_jsonl
    with pytest.raises(RuntimeError, match="row source broke"):
        writer(_rows_then_boom(5), out)
    assert os.listdir(tmp_path) == []  # no output and no temporary file
    # an existing file stays exactly as it was
    writer([("old", None, 1)], out)
    before = out.read_bytes()
    with pytest.raises(RuntimeError):
        writer(_rows_then_boom(3), out)
    assert out.read_bytes() == before
    assert os.listdir(tmp_path) == [out.name]


def test_unwritable_values_fail_cleanly(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_h5([("k", None, {"x": object()})], tmp_path / "o.h5", sweep="s")
    assert os.listdir(tmp_path) == []


def test_jsonl_plain_and_lossless(tmp_path: Path) -> None:
    result = {
        "arr": np.arange(6, dtype=np.float32).reshape(2, 3),
        "c": np.array([1 + 2j]),
        "s": np.float64(2.5),
        "t": (1, [2, math.nan, math.inf]),
        "n": None,
        "dt": np.array(["2024-01-01"], dtype="M8[D]"),
    }
    rows = [("a\x00/../b", {"T": 1.0}, result), ("k2", None, [1, 2])]
    plain = write_jsonl(rows, tmp_path / "p.jsonl")
    lines = plain.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["key"] == "a\x00/../b" and first["params"] == {"T": 1.0}
    assert first["result"]["arr"] == {
        "dtype": "float32",
        "shape": [2, 3],
        "data": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]],
    }
    assert first["result"]["c"]["data"] == [[1.0, 2.0]]
    assert first["result"]["s"] == 2.5
    assert first["result"]["t"] == [1, [2, "NaN", "Infinity"]]
    assert first["result"]["dt"]["__t"] == "nd"  # exotic dtypes keep the codec form
    assert json.loads(lines[1]) == {"key": "k2", "params": None, "result": [1, 2]}

    lossless = write_jsonl(rows, tmp_path / "l.jsonl", lossless=True)
    back = list(iter_jsonl(lossless, lossless=True))
    for row, row2 in zip(rows, back, strict=True):
        assert_same(row, row2)


def test_sweep_export_h5_and_cli_jsonl(tmp_path: Path) -> None:
    ckpt = tmp_path / "exp.h5"
    items = [{"T": t} for t in (0.5, 1.0, 1.5)]
    with ResumableSweep(items, key=lambda c: f"T{c['T']}", checkpoint_path=ckpt) as sweep:
        for item in sweep.pending:
            if item["T"] == 1.5:
                sweep.record_failure(item, ValueError("no"))
            else:
                sweep.record(item, {"m": np.float32(item["T"] * 2)})
        path = sweep.export_h5(tmp_path / "direct.h5")
    _, rows = read_h5(path)
    assert [(k, r) for k, _, r in rows] == [("T0.5", {"m": np.float32(1.0)}), ("T1.0", {"m": 2.0})]
    out = tmp_path / "r.jsonl"
    assert main(["export", str(ckpt), "--jsonl", str(out), "--jsonl-format", "lossless"]) == 0
    back = list(iter_jsonl(out, lossless=True))
    assert [k for k, _, _ in back] == ["T0.5", "T1.0"]
    assert_same(back[0][2], {"m": np.float32(1.0)})
