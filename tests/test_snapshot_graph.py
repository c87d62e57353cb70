"""Graphs as simulations hold them: in-place loads, nested graphs, extras (issue 13)."""

from __future__ import annotations

import collections
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resumable.errors import IntegrityError, SnapshotMismatchError, UnsupportedValueError
from resumable.preempt import resume_from_url
from resumable.snapshot import (
    download_and_load_state,
    nest_arrays,
    read_snapshot,
    save_state_with_manifest,
    verify_snapshot,
)

FIXTURES = Path(__file__).parent / "fixtures" / "snapshots"


class Simulation:
    """Written the way physicists write them: the state lives on the object."""

    def __init__(self) -> None:
        self.u = np.zeros(16)
        self.step = 0

    def advance(self) -> None:
        self.u += np.arange(16.0)
        self.step += 1


def test_load_fills_the_arrays_the_simulation_holds(tmp_path: Path) -> None:
    url = tmp_path / "snap.npz"
    sim = Simulation()
    for _ in range(7):
        sim.advance()
    save_state_with_manifest({"u": sim.u}, url, extra={"step": sim.step})
    expected = sim.u.copy()

    fresh = Simulation()
    held = fresh.u
    extra = resume_from_url({"u": fresh.u}, str(url))
    assert extra == {"step": 7}
    assert fresh.u is held  # the same array...
    assert np.array_equal(fresh.u, expected)  # ...now holding step 7, not step 0
    fresh2 = Simulation()
    download_and_load_state({"u": fresh2.u}, url)
    assert np.array_equal(fresh2.u, expected)


def test_in_place_load_is_all_or_nothing(tmp_path: Path) -> None:
    url = tmp_path / "snap.npz"
    save_state_with_manifest({"a": np.ones(4), "b": np.ones(3)}, url)
    a, b = np.zeros(4), np.zeros(2)  # "b" has another shape now
    with pytest.raises(SnapshotMismatchError, match="'b'"):
        download_and_load_state({"a": a, "b": b}, url)
    assert not a.any() and not b.any()
    data = bytearray(url.read_bytes())
    data[200] ^= 0xFF  # inside the first array's data: caught by the hash after reading
    url.write_bytes(bytes(data))
    a, b = np.zeros(4), np.zeros(3)
    with pytest.raises(IntegrityError):
        download_and_load_state({"a": a, "b": b}, url)
    assert not a.any() and not b.any()


def test_documented_rule_for_read_only_and_other_arrays(tmp_path: Path) -> None:
    url = tmp_path / "snap.npz"
    ro = np.arange(3.0)
    ro.flags.writeable = False
    graph = {"ro": ro, "scalar": np.float32(2.5), "py": 3, "memmap": None}
    mm = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype="<i4", shape=(5,))
    mm[:] = [1, 2, 3, 4, 5]
    graph["memmap"] = mm
    save_state_with_manifest(graph, url)

    ro2 = np.zeros(3)
    ro2.flags.writeable = False
    mm2 = np.lib.format.open_memmap(tmp_path / "m2.npy", mode="w+", dtype="<i4", shape=(5,))
    target = {"ro": ro2, "scalar": np.float32(0), "py": 0, "memmap": mm2}
    download_and_load_state(target, url)
    assert target["ro"] is not ro2 and not target["ro"].flags.writeable  # replaced, read-only
    assert np.array_equal(target["ro"], ro)
    assert type(target["scalar"]) is np.float32 and target["scalar"] == np.float32(2.5)
    assert type(target["py"]) is int and target["py"] == 3
    assert target["memmap"] is mm2 and list(np.load(tmp_path / "m2.npy", mmap_mode="r")) == [
        1,
        2,
        3,
        4,
        5,
    ]


def test_extra_takes_what_results_take(tmp_path: Path) -> None:
    url = tmp_path / "snap.npz"
    extra = {
        "dt": np.float64(1.5),
        "step": np.int64(7),
        "seed": (1, 2),
        "nan": float("nan"),
        "hist": np.arange(3, dtype=np.int16),
        "nested": {"__t": "not a tag", "ok": [True, None]},
    }
    save_state_with_manifest({"u": np.zeros(2)}, url, extra=extra)
    back = download_and_load_state({"u": np.zeros(2)}, url)
    assert type(back["dt"]) is np.float64 and back["dt"] == 1.5
    assert type(back["step"]) is np.int64 and back["step"] == 7
    assert back["seed"] == (1, 2) and np.isnan(back["nan"])
    assert back["hist"].dtype == np.int16 and list(back["hist"]) == [0, 1, 2]
    assert back["nested"] == {"__t": "not a tag", "ok": [True, None]}
    assert verify_snapshot(url).to_json()["extra"]["dt"]["__t"] == "np"


def test_schema_1_snapshots_still_load() -> None:
    url = FIXTURES / "schema1.npz"  # written by the version before nested graphs
    report = verify_snapshot(url)
    assert report.schema_version == 1 and report.extra == {"step": 7, "t": 1.5, "tag": ["a", 1]}
    target = {
        "u": np.zeros((3, 4)),
        "step/name": np.zeros(3, dtype=np.int32),
        "f": np.zeros((2, 3), dtype="<f4", order="F"),
        "rec": np.ones(2, dtype=[("a", "<i2"), ("b", "<f8")]),
    }
    held = target["u"]
    download_and_load_state(target, url)
    assert target["u"] is held and np.array_equal(held, np.arange(12.0).reshape(3, 4))
    assert list(target["step/name"]) == [1, 2, 3] and not target["rec"]["a"].any()


Pair = collections.namedtuple("Pair", "left right")


def _nested() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    return {
        "nodes": {
            "n0": {"u": rng.random(5), "flags": np.array([True, False])},
            "n/1": {"u": rng.random(5), "hist": [rng.random(2), rng.random(3)]},
        },
        "ring": (rng.random(4), np.arange(3)),
        "pair": Pair(np.ones(2), np.zeros(2)),
        "top": rng.random((2, 2)),
    }


def test_nested_graph_round_trip_in_place(tmp_path: Path) -> None:
    url = tmp_path / "snap.npz"
    graph = _nested()
    report = save_state_with_manifest(graph, url, extra={"step": 1})
    names = [r.name for r in report.arrays]
    assert names == [
        "nodes/n0/u",
        "nodes/n0/flags",
        "nodes/n~11/u",
        "nodes/n~11/hist/0",
        "nodes/n~11/hist/1",
        "ring/0",
        "ring/1",
        "pair/0",
        "pair/1",
        "top",
    ]
    target = _nested()
    held = [target["nodes"]["n0"]["u"], target["nodes"]["n/1"]["hist"][1], target["ring"][0]]
    for arr in held:
        arr[...] = 0
    download_and_load_state(target, url)
    assert target["nodes"]["n0"]["u"] is held[0] and target["ring"][0] is held[2]
    assert target["nodes"]["n/1"]["hist"][1] is held[1]
    assert np.array_equal(held[0], graph["nodes"]["n0"]["u"])
    assert np.array_equal(held[1], graph["nodes"]["n/1"]["hist"][1])
    assert isinstance(target["pair"], Pair)
    arrays, rep = read_snapshot(url)
    tree = nest_arrays(arrays, rep)
    assert np.array_equal(tree["nodes"]["n/1"]["hist"][0], graph["nodes"]["n/1"]["hist"][0])
    assert np.array_equal(tree["ring"][1], graph["ring"][1])


def test_nested_mismatch_names_paths(tmp_path: Path) -> None:
    url = tmp_path / "snap.npz"
    save_state_with_manifest(_nested(), url)
    target = _nested()
    target["nodes"]["n0"]["extra"] = np.zeros(1)
    del target["top"]
    with pytest.raises(SnapshotMismatchError) as info:
        download_and_load_state(target, url)
    diffs = info.value.differences  # type: ignore[attr-defined]
    assert "missing from the snapshot: 'nodes/n0/extra'" in diffs
    assert "not in the current state: 'top'" in diffs


def test_immutable_containers_and_collisions(tmp_path: Path) -> None:
    url = tmp_path / "snap.npz"
    ro = np.zeros(2)
    ro.flags.writeable = False
    save_state_with_manifest({"m": {"x": ro}}, url)
    frozen = np.zeros(2)
    frozen.flags.writeable = False
    target = {"m": types.MappingProxyType({"x": frozen})}
    with pytest.raises(UnsupportedValueError, match="immutable"):
        download_and_load_state(target, url)
    with pytest.raises(UnsupportedValueError, match="share the name"):
        save_state_with_manifest({"a/b": np.zeros(1), "a": {"b": np.zeros(1)}}, tmp_path / "x")
    for bad_key in (1.5, (1, 2), True):
        with pytest.raises(UnsupportedValueError, match="keys must be strings or ints"):
            save_state_with_manifest({"a": {bad_key: np.zeros(1)}}, tmp_path / "x")
    assert not (tmp_path / "x").exists()


class Model:
    def __init__(self) -> None:
        self.w = np.zeros(3)
        self.loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w, "cfg": {"scale": np.float32(1.0)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded = state
        self.w = state["w"]


def test_state_dict_objects_nested_in_a_graph(tmp_path: Path) -> None:
    url = tmp_path / "snap.npz"
    model = Model()
    model.w[:] = [1, 2, 3]
    save_state_with_manifest({"model": model, "u": np.ones(2)}, url)
    fresh = Model()
    download_and_load_state({"model": fresh, "u": np.zeros(2)}, url)
    assert fresh.loaded is not None and list(fresh.w) == [1, 2, 3]
    assert type(fresh.loaded["cfg"]["scale"]) is np.float32


def test_forged_paths_and_dtype_names_refused(tmp_path: Path) -> None:
    import json
    import zipfile

    from resumable.snapshot import MANIFEST_MEMBER

    url = tmp_path / "snap.npz"
    save_state_with_manifest({"a": np.zeros(2, dtype="V2"), "b": np.ones(2)}, url)

    def forge(change: Any) -> Path:
        with zipfile.ZipFile(url) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        manifest = json.loads(members.pop(MANIFEST_MEMBER))
        change(manifest["arrays"])
        out = tmp_path / "forged.npz"
        with zipfile.ZipFile(out, "w") as zf:
            for name, blob in members.items():
                zf.writestr(name, blob)
            zf.writestr(MANIFEST_MEMBER, json.dumps(manifest))
        return out

    inside = forge(lambda arrays: arrays[1].update(path=["a", "x"]))
    with pytest.raises(IntegrityError, match="inside another array"):
        read_snapshot(inside)
    bad_name = forge(lambda arrays: arrays[0].update(dtype_name="finfo"))
    with pytest.raises(IntegrityError):
        read_snapshot(bad_name)


def test_int_keys_stay_ints_apart_from_str_keys_and_list_indices(tmp_path: Path) -> None:
    """Int mapping keys (optimizer state) load back as ints, under names distinct from the
    string "0" and from list index 0; None leaves load back as None."""
    url = tmp_path / "snap.npz"
    graph: dict[str, Any] = {
        "d": {0: np.arange(3.0), "0": np.ones(2), -7: {"x": np.int64(5)}},
        "l": [np.zeros(1), None],
        "n": None,
    }
    report = save_state_with_manifest(graph, url)
    assert [r.name for r in report.arrays] == ["d/~i0", "d/0", "d/~i-7/x", "l/0", "l/1", "n"]
    arrays, rep = read_snapshot(url)
    nested = nest_arrays(arrays, rep)
    assert list(nested["d"]) == [0, "0", -7] and isinstance(nested["l"], list)
    assert (nested["d"][0] == np.arange(3.0)).all() and (nested["d"]["0"] == 1).all()

    target: dict[str, Any] = {
        "d": {0: np.zeros(3), "0": np.zeros(2), -7: {"x": np.int64(0)}},
        "l": [np.ones(1), None],
        "n": None,
    }
    held = target["d"][0]
    download_and_load_state(target, url)
    assert target["d"][0] is held and (held == np.arange(3.0)).all()
    assert (target["d"]["0"] == 1).all() and target["d"][-7]["x"] == 5
    assert target["l"][1] is None and target["n"] is None and (target["l"][0] == 0).all()

    with pytest.raises(SnapshotMismatchError) as err:  # int 0 and str "0" are not the same
        download_and_load_state({"d": {"0": np.zeros(3), 0: np.zeros(2)}, "l": [], "n": None}, url)
    assert "'d/~i-7/x'" in str(err.value)
    with pytest.raises(SnapshotMismatchError, match="'n': shape"):  # None is not an array
        download_and_load_state({**target, "n": np.zeros(1)}, url)
