"""Format compatibility: this code opens, verifies and loads what every earlier version wrote.

`tests/fixtures/format/<version>/` holds small checkpoints (plain, sharded, signed, mirrored,
one preempted with an item snapshot in flight, listings in parts and of each entry form) and
graph-state snapshots written by that version (`scripts/make_format_fixtures.py`), with
`expected.json` + `expected.npz` saying what they hold in a plain encoding of their own (not
resumable's codec). For every version and fixture: `verify` finds nothing, the read-only view
and a reopened sweep give back every result equal (dtypes, shapes, numpy scalar types, tuples,
NaN), the failure and meta; a reopened sweep records on top of the old history (the format is
appended to, not rewritten) and verifies again; the item in flight resumes from its snapshot;
snapshots verify and load equal, in place.
A version whose format changes adds its own directory; old ones are never rewritten, and one
the code stops reading must come with a tested migration.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resumable import ResumableSweep
from resumable.errors import IntegrityError
from resumable.snapshot import (
    download_and_load_state,
    nest_arrays,
    read_snapshot,
    verify_snapshot,
)
from resumable.view import open_view, verify

FORMAT_DIR = Path(__file__).parent / "fixtures" / "format"
VERSIONS = sorted(p for p in FORMAT_DIR.iterdir() if p.is_dir()) if FORMAT_DIR.is_dir() else []
REQUIRED = {
    "plain",
    "sharded",
    "signed",
    "mirrored",
    "inflight",
    "snapshot-flat",
    "snapshot-nested",
}


class Expected:
    """One version's expected.json + expected.npz, decoded into Python and numpy values."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.raw = json.loads((root / "expected.json").read_text())
        with np.load(root / "expected.npz", allow_pickle=False) as npz:
            self.arrays = {name: npz[name] for name in npz.files}

    def value(self, enc: Any) -> Any:
        if isinstance(enc, list):
            return [self.value(v) for v in enc]
        if not isinstance(enc, dict):
            return enc
        if set(enc) == {"scalar", "repr"}:  # a numpy scalar: its dtype and its value's repr
            return _scalar(np.dtype(enc["scalar"]), enc["repr"])
        ((tag, body),) = enc.items()
        if tag == "ndarray":
            return self.arrays[body]
        if tag == "float":
            return float(body)
        if tag == "tuple":
            return tuple(self.value(v) for v in body)
        if tag == "dict":
            return {k: self.value(v) for k, v in body.items()}
        raise AssertionError(f"unknown tag {tag!r} in {self.root}/expected.json")

    @property
    def items(self) -> list[dict[str, Any]]:
        return self.value(self.raw["items"])

    def key(self, item: dict[str, Any]) -> str:
        return str(item[self.raw["key_field"]])

    @property
    def results(self) -> dict[str, Any]:
        return {k: self.value(v) for k, v in self.raw["results"].items()}


def _scalar(dtype: np.dtype[Any], text: str) -> Any:
    """A numpy scalar from its dtype and the repr of its Python value."""
    kind = dtype.kind
    if kind == "b":
        return dtype.type({"True": True, "False": False}[text])
    if kind in "iu":
        return dtype.type(int(text))
    if kind == "f":
        return dtype.type(float(text))
    if kind == "c":
        return dtype.type(complex(text))
    raise AssertionError(f"no scalar of dtype {dtype} in the fixtures' encoding")


def same(actual: Any, expected: Any, where: str = "") -> None:
    """Assert `actual` equals `expected` in type and value (NaN equal to NaN)."""
    if isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), f"{where}: {type(actual).__name__}, not an array"
        assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
        nan_ok = expected.dtype.kind in "fc"
        assert np.array_equal(actual, expected, equal_nan=nan_ok), f"{where}: values differ"
    elif isinstance(expected, (np.generic, float)):
        assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
        both_nan = bool(np.isnan(expected)) and bool(np.isnan(actual))
        assert both_nan or actual == expected, f"{where}: {actual!r} != {expected!r}"
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            same(a, e, f"{where}[{i}]")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {type(actual).__name__}, not a dict"
        assert sorted(actual) == sorted(expected), f"{where}: keys {sorted(actual)}"
        for k in expected:
            same(actual[k], expected[k], f"{where}/{k}")
    else:
        assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def _cases(kind: str) -> list[Any]:
    out = []
    for version in VERSIONS:
        fixtures = json.loads((version / "expected.json").read_text())["fixtures"]
        for name, spec in sorted(fixtures.items()):
            if spec["kind"] == kind:
                out.append(pytest.param(version, name, spec, id=f"{version.name}-{name}"))
    return out


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RESUMABLE_SIGNING_KEY", "SWEEP_RESUME_FROM", "SWEEP_SNAPSHOT_DIR"):
        monkeypatch.delenv(var, raising=False)


def _copy(version: Path, tmp_path: Path) -> Path:
    """Tests work on a copy: opening a sweep appends a launch record."""
    dest = tmp_path / version.name
    shutil.copytree(version, dest)
    return dest


def test_every_kind_of_fixture_is_there() -> None:
    assert VERSIONS, f"no format fixtures under {FORMAT_DIR}"
    for version in VERSIONS:
        fixtures = json.loads((version / "expected.json").read_text())["fixtures"]
        assert set(fixtures) >= REQUIRED, f"{version.name} lacks {REQUIRED - set(fixtures)}"
        for spec in fixtures.values():
            assert (version / spec["path"]).parent.exists(), spec
        size = sum(p.stat().st_size for p in version.rglob("*") if p.is_file())
        assert size < 256 * 1024, f"{version.name}: {size} bytes of fixtures; keep them small"


@pytest.mark.parametrize(("version", "name", "spec"), _cases("checkpoint"))
def test_checkpoint_verifies_and_reads(
    version: Path, name: str, spec: dict[str, Any], tmp_path: Path
) -> None:
    root = _copy(version, tmp_path)
    exp = Expected(root)
    key = exp.raw["signing_key"] if spec.get("signed") else None
    path = str(root / spec["path"])
    assert verify(path, signing_key=key) == []
    assert verify(Path(path), signing_key=key) == []  # a PathLike as well as a str
    assert open_view(Path(path)).status().done == open_view(path).status().done
    places = [path]
    if "mirror" in spec:
        mirror = str(root / spec["mirror"])
        assert verify(mirror, signing_key=key) == []
        assert verify(path, mirror=mirror) == []  # the mirror holds nothing the local copy lacks
        places.append(mirror)
    if spec.get("signed"):
        assert verify(path, signing_key="not-the-key") != []  # the signature is still checked
    for place in places:
        view = open_view(place)
        got = {k: (params, result) for k, params, result in view.results()}
        expected = exp.results
        assert sorted(got) == sorted(expected)
        by_key = {exp.key(it): it for it in exp.items}
        for k, (params, result) in got.items():
            same(params, by_key[k], f"{place}: params of {k}")
            same(result, expected[k], f"{place}: result of {k}")
        status = view.status()
        assert (status.done, status.failed, status.total) == (
            len(expected),
            len(exp.raw["failed"]),
            len(exp.items),
        )


@pytest.mark.parametrize(
    ("version", "name", "spec"), [c for c in _cases("checkpoint") if c.values[2].get("parted")]
)
def test_parted_item_list_reads_as_one(
    version: Path, name: str, spec: dict[str, Any], tmp_path: Path
) -> None:
    """A list written as itemspart records closed by an items record: one listing, one items
    event, its parts lazy (never decoded to replay)."""
    root = _copy(version, tmp_path)
    exp = Expected(root)
    state = open_view(str(root / spec["path"])).loaded.state
    assert state.item_parts and len(next(iter(state.item_parts.values()))) > 1
    assert [r.type for r in state.events].count("items") == 1
    listing = open_view(str(root / spec["path"])).items()
    assert [e[0] for e in listing] == [exp.key(it) for it in exp.items]
    for (_, fp, params), item in zip(listing, exp.items, strict=True):
        assert type(fp) is str and len(fp) == 32
        same(params, item, "params")


@pytest.mark.parametrize(("version", "name", "spec"), _cases("listing"))
def test_listing_of_both_entry_forms_reads(
    version: Path, name: str, spec: dict[str, Any], tmp_path: Path
) -> None:
    """A listing whose entries store no fingerprint where the params determine it
    (``[key, params]``) and store it where there are none (``[key, fingerprint, null]``): the
    view lists every item with the fingerprint computed from the item itself when the fixture
    was written (a derived one equal to it), the params and results as recorded."""
    root = _copy(version, tmp_path)
    path = str(root / spec["path"])
    assert verify(path) == []
    view = open_view(path)
    assert [len(e) for e in view.loaded.state.items_listing()] == spec["entry_lengths"]
    assert 2 in spec["entry_lengths"] and 3 in spec["entry_lengths"]
    assert view.items() == spec["listing"]
    assert view.keys() == [e[0] for e in spec["listing"]]
    assert {k: result for k, _, result in view.results()} == spec["results"]
    status = view.status()
    assert (status.done, status.total) == (len(spec["results"]), len(spec["listing"]))


@pytest.mark.parametrize(("version", "name", "spec"), _cases("checkpoint"))
def test_checkpoint_resumes_and_appends(
    version: Path, name: str, spec: dict[str, Any], tmp_path: Path
) -> None:
    root = _copy(version, tmp_path)
    exp = Expected(root)
    key = exp.raw["signing_key"] if spec.get("signed") else None
    count = spec.get("shards")
    shards: list[tuple[int, int] | None] = [(i, count) for i in range(count)] if count else [None]
    if "mirror" in spec:  # a new machine: an empty directory, resuming from the mirror
        checkpoint = tmp_path / "new-machine" / "sweep.h5"
        source: str | None = str(root / spec["mirror"])
    else:
        checkpoint, source = root / spec["path"], None
    seen: dict[str, Any] = {}
    failed = set(exp.raw["failed"])
    for shard in shards:
        opts: dict[str, Any] = {
            "key": exp.key,
            "checkpoint_path": checkpoint,
            "shard": shard,
            "signing_key": key,
            "handle_signals": False,
        }
        with ResumableSweep(exp.items, resume="must", resume_from=source, **opts) as sweep:
            assert sweep.resumed_from == ("remote" if source else "local")
            same(sweep.meta, exp.value(exp.raw["meta"]), "meta")
            assert list(sweep.pending) == []  # done and failed items are not pending
            for item, result in sweep.completed_items():
                assert sweep.is_done(item)
                same(result, exp.results[exp.key(item)], f"result of {exp.key(item)}")
                same(sweep.result(item), exp.results[exp.key(item)], "result()")
                seen[exp.key(item)] = result
            mine = sweep.status()
            assert {f.error_type for f in mine.failures} <= {"ValueError"}
        # the current code appends to the old history: rerun the failed item successfully
        with ResumableSweep(exp.items, retry_failed=True, resume_from="", **opts) as sweep:
            for item in sweep.pending:
                assert exp.key(item) in failed
                sweep.record(item, {"retried": np.float64(1.5)})
        with ResumableSweep(exp.items, resume_from="", **opts) as sweep:
            assert list(sweep.pending) == []
            for item, result in sweep.completed_items():
                if exp.key(item) in failed:
                    same(result, {"retried": np.float64(1.5)}, "retried")
                    seen[exp.key(item)] = "retried"
    assert sorted(seen) == sorted(exp.key(it) for it in exp.items)
    assert verify(str(checkpoint), signing_key=key) == []


@pytest.mark.parametrize(("version", "name", "spec"), _cases("inflight"))
def test_item_in_flight_resumes_from_its_snapshot(
    version: Path, name: str, spec: dict[str, Any], tmp_path: Path
) -> None:
    root = _copy(version, tmp_path)
    exp = Expected(root)
    by_key = {exp.key(it): it for it in exp.items}
    path = root / spec["path"]
    assert verify(str(path)) == []
    with ResumableSweep(
        exp.items, key=exp.key, checkpoint_path=path, resume="must", handle_signals=False
    ) as sweep:
        assert sorted(exp.key(it) for it, _ in sweep.completed_items()) == sorted(spec["done"])
        for k in spec["done"]:
            same(sweep.result(by_key[k]), exp.results[k], f"result of {k}")
        pending = [exp.key(it) for it in sweep.pending]
        assert pending[0] == spec["in_flight"]
        item = by_key[spec["in_flight"]]
        snap = sweep.item_snapshot(item)
        assert snap.interrupted >= 1  # the interruption index was read
        state = _zeros_like(exp.value(exp.raw["graphs"][spec["graph"]]))
        extra = snap.restore(state)
        same(extra, exp.value(exp.raw[spec["extra"]]), "the item's extra")
        same(state, exp.value(exp.raw["graphs"][spec["graph"]]), "the item's state")
        sweep.record(item, {"resumed": True})  # the current code finishes it
    with ResumableSweep(
        exp.items, key=exp.key, checkpoint_path=path, resume="must", handle_signals=False
    ) as sweep:
        assert sweep.is_done(item)
        assert sweep.item_snapshot(item).restore(_zeros_like(state)) is None  # deleted once done
    assert verify(str(path)) == []


@pytest.mark.parametrize(("version", "name", "spec"), _cases("snapshot"))
def test_snapshot_verifies_and_loads(
    version: Path, name: str, spec: dict[str, Any], tmp_path: Path
) -> None:
    root = _copy(version, tmp_path)
    exp = Expected(root)
    key = exp.raw["signing_key"] if spec.get("signed") else None
    path = root / spec["path"]
    graph = exp.value(exp.raw["graphs"][spec["graph"]])
    extra = exp.value(exp.raw["snapshot_extra"])

    report = verify_snapshot(path, signing_key=key)
    assert len(report.arrays) == len(_leaves(graph))
    arrays, report = read_snapshot(path, signing_key=key)
    same(nest_arrays(arrays, report), _as_lists(graph), "read_snapshot")
    same(dict(report.extra), extra, "extra")

    target = _zeros_like(graph)
    held = _leaves(target)  # the arrays the program holds: filled in place
    got = download_and_load_state(target, path, signing_key=key)
    same(got, extra, "extra")
    same(target, graph, "loaded graph")
    for before, after in zip(held, _leaves(target), strict=True):
        assert before is after
    if spec.get("signed"):
        with pytest.raises(IntegrityError):
            verify_snapshot(path, signing_key="not-the-key")


def _leaves(graph: Any) -> list[np.ndarray]:
    if isinstance(graph, dict):
        return [leaf for k in graph for leaf in _leaves(graph[k])]
    if isinstance(graph, (list, tuple)):
        return [leaf for v in graph for leaf in _leaves(v)]
    return [graph]


def _as_lists(graph: Any) -> Any:
    """`nest_arrays` rebuilds containers as dicts and lists (it knows no tuples)."""
    if isinstance(graph, dict):
        return {k: _as_lists(v) for k, v in graph.items()}
    if isinstance(graph, (list, tuple)):
        return [_as_lists(v) for v in graph]
    return graph


def _zeros_like(graph: Any) -> Any:
    if isinstance(graph, dict):
        return {k: _zeros_like(v) for k, v in graph.items()}
    if isinstance(graph, (list, tuple)):
        return type(graph)(_zeros_like(v) for v in graph)
    return np.zeros_like(graph)


@pytest.mark.parametrize(("version", "name", "spec"), _cases("checkpoint"))
def test_checkpoint_items_are_recognised_unchanged(
    version: Path, name: str, spec: dict[str, Any], tmp_path: Path
) -> None:
    """Every form of the items identity an earlier version recorded (bare hex, ``2:``) is
    recognised: reopening with the same items (as recorded: in their own key order, which the
    identity keeps) lists none of them again (an empty append moves the checkpoint to the
    current form)."""
    from resumable._checkpoint import progress_dir_for
    from resumable._codec import decode
    from resumable._items import IDENTITY_PREFIX, ItemSet
    from resumable.shards import shard_dir_name
    from resumable.view import CheckpointView

    root = _copy(version, tmp_path)
    exp = Expected(root)
    key = exp.raw["signing_key"] if spec.get("signed") else None
    count = spec.get("shards")
    shards: list[tuple[int, int] | None] = [(i, count) for i in range(count)] if count else [None]
    views: dict[tuple[int, int] | None, CheckpointView] = {}
    recorded_items: dict[str, Any] = {}  # as recorded: in their own key order
    for shard in shards:
        progress = progress_dir_for(root / spec["path"])
        if shard is not None:
            progress = progress / shard_dir_name(*shard)
        view = open_view(progress)
        assert isinstance(view, CheckpointView)
        views[shard] = view
        recorded_items.update((k, decode(params)) for k, _, params in view.items())
    items = [recorded_items[exp.key(it)] for it in exp.items]
    for shard, before in views.items():
        recorded = before.loaded.state.items_sha256
        assert recorded is not None
        current = recorded.startswith(IDENTITY_PREFIX)  # (long-list: written in the current form)
        assert not current or spec.get("parted")
        mine = ItemSet.build(items, exp.key).subset(set(before.keys()).__contains__)
        assert mine.matches(recorded), f"{name}: {recorded[:20]} not recognised"
        with ResumableSweep(
            items,
            key=exp.key,
            checkpoint_path=root / spec["path"],
            shard=shard,
            signing_key=key,
            resume="must",
            resume_from="",
            handle_signals=False,
        ) as sweep:
            progress = sweep.progress_dir
        after = open_view(progress)
        assert isinstance(after, CheckpointView)
        state = after.loaded.state
        assert state.items_sha256 == mine.identity()
        rec = state.items_record
        if current:  # recognised as is: no items record written again
            assert rec is not None and rec.seq < after.loaded.state.launches[-1]["seq"]
            continue
        assert rec is not None and rec.payload.startswith(b'{"base":')
        assert rec.payload.endswith(b'"append":[]}'), f"{name}: items listed again"
