"""Write this version's on-disk formats as small fixtures, for the format-compatibility suite.

Every later version must open, verify and load what an earlier one wrote (or migrate it, with a
test). This script writes, under ``tests/fixtures/format/<version>/``:

    plain/sweep.h5.resumable/         a checkpoint: sealed segments + an active one, results
                                      (arrays, numpy scalars, tuples, NaN), a failure, meta
    sharded/sweep.h5.resumable/       a 2-shard sweep: sweep.json + shard-000I-of-0002/
    signed/sweep.h5.resumable/        a checkpoint signed with SIGNING_KEY (HMAC-SHA256)
    mirrored/local/sweep.h5.resumable/  a checkpoint and its mirror (a local directory),
    mirrored/mirror/                    as a bucket would hold it
    long-list/sweep.h5.resumable/     a checkpoint whose item list is written in parts
                                      (``itemspart`` records closed by ``items``: a small
                                      limits.ITEMS_PART_BYTES stands in for a 10M-item list)
    derived-fps/sweep.h5.resumable/   a checkpoint whose listing has entries of both forms:
                                      ``[key, params]`` (the fingerprint derived) for items of
                                      every kind the codec tags, ``[key, fingerprint, null]``
                                      for items without params (too large, not JSON-like, None)
    inflight/sweep.h5.resumable/      a sweep preempted with an item in flight: that item's
    inflight/sweep.h5.resumable/items/  snapshot (mid-item state) and the interruption index
    snapshots/flat.npz                a graph-state snapshot: dtypes, Fortran order, 0-d
    snapshots/nested.npz              nested dicts, lists and tuples of arrays
    snapshots/signed.npz              a signed snapshot
    expected.json + expected.npz      what every fixture holds, in a plain encoding of its own
                                      (JSON with tagged tuples, floats and numpy scalars; arrays
                                      in a plain ``np.savez`` file), independent of resumable's
                                      codec, so the test compares against the truth and not
                                      against a decoder it is testing

Run once per release whose format changed (``python scripts/make_format_fixtures.py``); it
refuses to overwrite an existing version's directory (``--force`` to rebuild the current one
while it is unreleased; ``--only NAME`` adds one fixture to an existing directory, leaving the
others' bytes as they are). Lock files and other by-products that are not part of the format are
left out. Keep the fixtures small (kilobytes): they are committed.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import resumable  # noqa: E402
from resumable import ResumableSweep  # noqa: E402
from resumable.mirror import MirrorOptions  # noqa: E402
from resumable.snapshot import save_state_with_manifest  # noqa: E402

SIGNING_KEY = "format-fixture-key"  # not a secret: it signs test fixtures
FAILED_KEY = "p05"
SEGMENT_BYTES = 1500  # small segments: the plain checkpoint has sealed ones and an active one
N_ITEMS = 10
SHARDS = 2
LONG_LIST_PART_BYTES = 300  # limits.ITEMS_PART_BYTES for the long-list fixture: a few parts


def items() -> list[dict[str, Any]]:
    return [{"label": f"p{i:02d}", "T": 1.5 + 0.25 * i, "L": 4 + i % 3} for i in range(N_ITEMS)]


def key(item: dict[str, Any]) -> str:
    return str(item["label"])


def result_of(item: dict[str, Any]) -> Any:
    """A result exercising what the codec stores: arrays of several dtypes, numpy scalars,
    tuples, nested lists and dicts, NaN and infinities, None, bools, unicode."""
    i = int(item["label"][1:])
    rng = np.random.default_rng(i)
    out: dict[str, Any] = {
        "energy": float(rng.normal()),
        "m": rng.normal(size=3).astype(np.float32),
        "counts": np.arange(i, i + 4, dtype=np.int64).reshape(2, 2),
        "flags": np.array([True, False, i % 2 == 0]),
        "steps": np.int64(1000 * i),
        "t": np.float32(0.5 * i),
        "pair": (i, "x"),
        "nested": {"list": [1, 2.5, None, "ü"], "ok": True},
    }
    if i == 3:
        out["special"] = [math.nan, math.inf, -math.inf, np.float64(math.nan)]
        out["z"] = np.array([1 + 2j, -0.5j], dtype=np.complex128)
    return out


def flat_graph() -> dict[str, Any]:
    rng = np.random.default_rng(42)
    return {
        "u": rng.normal(size=(4, 5)),
        "i32": np.arange(6, dtype=np.int32),
        "c64": (rng.normal(size=3) + 1j * rng.normal(size=3)).astype(np.complex64),
        "mask": np.array([[True, False], [False, True]]),
        "fortran": np.asfortranarray(rng.normal(size=(3, 2)).astype(np.float32)),
        "scalar0d": np.array(2.5),
        "u8": np.arange(5, dtype=np.uint8),
    }


def nested_graph() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    return {
        "nodes": {
            f"n{k}": {"u": rng.normal(size=4), "v": np.full(2, k, np.int16)} for k in range(3)
        },
        "edges": [np.array([0, 1], np.int64), np.array([1, 2], np.int64)],
        "pair": (np.zeros(2, np.float16), np.ones((1, 2), np.float64)),
    }


INFLIGHT_AT = 3  # the inflight fixture: items before it done, this one in flight
INFLIGHT_EXTRA = {"step": 5, "t": np.float64(0.25)}
SNAP_EXTRA = {"step": 7, "t": np.float64(0.125), "hist": np.arange(3), "tag": ("a", 1)}


# -- the plain encoding of expected.json --------------------------------------------------------


def plain(value: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    """`value` as JSON with tags; arrays go into `arrays` under a name derived from `where`."""
    if isinstance(value, np.ndarray):
        arrays[where] = value
        return {"ndarray": where}
    if isinstance(value, np.generic):
        return {"scalar": value.dtype.str, "repr": repr(value.item())}
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return {"float": repr(value)}
    if isinstance(value, tuple):
        return {"tuple": [plain(v, arrays, f"{where}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [plain(v, arrays, f"{where}/{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {"dict": {k: plain(v, arrays, f"{where}/{k}") for k, v in value.items()}}
    raise TypeError(f"no plain encoding for {type(value).__name__} at {where}")


# -- writers ------------------------------------------------------------------------------------


def run_sweep(checkpoint: Path, **options: Any) -> None:
    """Record every item but FAILED_KEY (a failure), with meta, in two launches."""
    todo = items()
    with ResumableSweep(
        todo,
        key=key,
        checkpoint_path=checkpoint,
        segment_bytes=SEGMENT_BYTES,
        meta={"code_version": "fixture", "n": np.int64(N_ITEMS)},
        handle_signals=False,
        **options,
    ) as sweep:
        for n, item in enumerate(sweep.pending):
            if n == N_ITEMS // 2:
                break  # the first launch stops half-way
            record(sweep, item)
    with ResumableSweep(
        todo,
        key=key,
        checkpoint_path=checkpoint,
        segment_bytes=SEGMENT_BYTES,
        handle_signals=False,
        **options,
    ) as sweep:
        for item in sweep.pending:
            record(sweep, item)


def record(sweep: ResumableSweep, item: dict[str, Any]) -> None:
    if key(item) == FAILED_KEY:
        try:
            raise ValueError(f"fixture failure of {key(item)}")
        except ValueError as exc:
            sweep.record_failure(item, exc)
    else:
        sweep.record(item, result_of(item), duration=0.01)


def write_inflight(checkpoint: Path) -> None:
    """Items recorded up to INFLIGHT_AT; that one saved mid-run (as SIGTERM would) and left."""
    with ResumableSweep(items(), key=key, checkpoint_path=checkpoint, handle_signals=False) as sw:
        for n, item in enumerate(sw.pending):
            if n < INFLIGHT_AT:
                sw.record(item, result_of(item))
                continue
            snap = sw.item_snapshot(item)
            snap.bind(flat_graph(), extra=lambda: dict(INFLIGHT_EXTRA))
            snap.save(preempted=True)  # what the guard's hook does at a safe point
            break


def drop_byproducts(root: Path) -> None:
    """Lock files and caches are not part of the format (and must not be needed to read it)."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.name.endswith((".lock", ".cas-lock", ".idx")) or path.name == "__pycache__":
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def write_long_list(out: Path) -> dict[str, Any]:
    """A checkpoint whose item list is parted (see resumable/_itemlist.py)."""
    from resumable import _limits as limits

    saved = limits.ITEMS_PART_BYTES
    limits.ITEMS_PART_BYTES = LONG_LIST_PART_BYTES
    try:
        run_sweep(out / "long-list" / "sweep.h5")
    finally:
        limits.ITEMS_PART_BYTES = saved
    return {"kind": "checkpoint", "path": "long-list/sweep.h5", "parted": True}


def derived_fps_items() -> list[tuple[str, Any]]:
    """(key, item): items whose params determine their fingerprint (flat dicts, as most sweeps
    have, and values the codec tags or orders), then items without params."""
    nested = {
        "z": [1, (2, "t")],
        "é": {"ключ": -0.0, "b": 1e300, "a": 5e-324},
        "n": math.nan,
        "i": -(2**10_001),
        "__t": "a user's tag key",
    }
    return [
        ("flat-0", {"T": 1.5, "L": 4, "label": "a"}),
        ("flat-1", {"T": 1.75, "L": 5, "label": "b"}),
        ("nested", nested),
        ("tuple", (1, "x", math.inf)),
        ("numpy", {"x": np.float32(0.5), "a": np.arange(3, dtype=np.int16)}),
        ("scalar", "日本語"),
        ("none", None),
        ("large", {"blob": "x" * (70 * 1024)}),
        ("not-json-like", {"s": {1, 2}}),
    ]


def write_derived_fps(out: Path) -> dict[str, Any]:
    """A checkpoint whose listing holds both entry forms (see resumable/_listing.py), with
    what its view must list for it: [key, fingerprint, params] (params as JSON: the codec's
    encoding; fingerprints computed from the items themselves)."""
    from resumable._codec import canonical_json, compact_json, encode
    from resumable._listing import MAX_PARAMS_BYTES, item_fingerprint

    pairs = derived_fps_items()
    keys = {id(item): k for k, item in pairs}
    todo = [item for _, item in pairs]
    with ResumableSweep(
        todo, key=lambda it: keys[id(it)], checkpoint_path=out / "derived-fps" / "sweep.h5",
        handle_signals=False,
    ) as sweep:  # fmt: skip
        sweep.record(todo[0], 1.0)
        sweep.record(todo[2], 2.0)
    listing = []
    for k, item in pairs:
        fp = item_fingerprint(item)
        params = None
        if fp is not None:
            enc = encode(item)
            if len(canonical_json(enc)) <= MAX_PARAMS_BYTES:
                params = json.loads(compact_json(enc))
        listing.append([k, fp, params])
    return {
        "kind": "listing",
        "path": "derived-fps/sweep.h5",
        "listing": listing,
        "entry_lengths": [3 if e[2] is None else 2 for e in listing],
        "results": {"flat-0": 1.0, "nested": 2.0},
    }


# fixtures that --only can add to an existing directory
ONLY = {"long-list": write_long_list, "derived-fps": write_derived_fps}


def write(out: Path) -> dict[str, Any]:
    fixtures: dict[str, Any] = {}
    fixtures["long-list"] = write_long_list(out)
    fixtures["derived-fps"] = write_derived_fps(out)
    run_sweep(out / "plain" / "sweep.h5")
    fixtures["plain"] = {"kind": "checkpoint", "path": "plain/sweep.h5"}
    for index in range(SHARDS):
        run_sweep(out / "sharded" / "sweep.h5", shard=(index, SHARDS))
    fixtures["sharded"] = {"kind": "checkpoint", "path": "sharded/sweep.h5", "shards": SHARDS}
    run_sweep(out / "signed" / "sweep.h5", signing_key=SIGNING_KEY)
    fixtures["signed"] = {"kind": "checkpoint", "path": "signed/sweep.h5", "signed": True}
    run_sweep(
        out / "mirrored" / "local" / "sweep.h5",
        snapshot_dir=str(out / "mirrored" / "mirror"),
        resume_from="",
        mirror_options=MirrorOptions(gc_delay_s=0.0),
    )
    fixtures["mirrored"] = {
        "kind": "checkpoint",
        "path": "mirrored/local/sweep.h5",
        "mirror": "mirrored/mirror",
    }
    write_inflight(out / "inflight" / "sweep.h5")
    fixtures["inflight"] = {
        "kind": "inflight",
        "path": "inflight/sweep.h5",
        "done": [key(it) for it in items()[:INFLIGHT_AT]],
        "in_flight": key(items()[INFLIGHT_AT]),
        "graph": "flat",
        "extra": "inflight_extra",
    }
    snaps = out / "snapshots"
    snaps.mkdir()
    save_state_with_manifest(flat_graph(), snaps / "flat.npz", extra=SNAP_EXTRA)
    save_state_with_manifest(nested_graph(), snaps / "nested.npz", extra=SNAP_EXTRA)
    save_state_with_manifest(
        flat_graph(), snaps / "signed.npz", extra=SNAP_EXTRA, signing_key=SIGNING_KEY
    )
    fixtures["snapshot-flat"] = {"kind": "snapshot", "path": "snapshots/flat.npz", "graph": "flat"}
    fixtures["snapshot-nested"] = {
        "kind": "snapshot",
        "path": "snapshots/nested.npz",
        "graph": "nested",
    }
    fixtures["snapshot-signed"] = {
        "kind": "snapshot",
        "path": "snapshots/signed.npz",
        "graph": "flat",
        "signed": True,
    }
    drop_byproducts(out)
    return fixtures


def add_only(name: str, dest: Path) -> int:
    """Write fixture `name` into the existing directory `dest` and name it in expected.json;
    every other file is left as it is."""
    expected_path = dest / "expected.json"
    expected = json.loads(expected_path.read_text())
    with tempfile.TemporaryDirectory(prefix="format-fixtures-") as tmp:
        out = Path(tmp)
        spec = ONLY[name](out)
        drop_byproducts(out)
        top = spec["path"].split("/")[0]
        if (dest / top).exists():
            shutil.rmtree(dest / top)
        shutil.copytree(out / top, dest / top)
    expected["fixtures"][name] = spec
    expected_path.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"added fixture {name} to {dest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default=resumable.__version__, help="fixture directory name")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "format")
    parser.add_argument("--force", action="store_true", help="replace an existing directory")
    parser.add_argument(
        "--only", choices=sorted(ONLY), help="add this fixture to an existing directory"
    )
    args = parser.parse_args(argv)
    dest = args.out / args.version
    if args.only:
        return add_only(args.only, dest)
    if dest.exists() and not args.force:
        parser.error(f"{dest} exists: fixtures of a released version are never rewritten")
    with tempfile.TemporaryDirectory(prefix="format-fixtures-") as tmp:
        out = Path(tmp) / args.version
        out.mkdir()
        fixtures = write(out)
        arrays: dict[str, np.ndarray] = {}
        expected = {
            "library_version": resumable.__version__,
            "numpy_version": np.__version__,
            "signing_key": SIGNING_KEY,
            "fixtures": fixtures,
            "items": plain(items(), arrays, "items"),
            "key_field": "label",
            "failed": [FAILED_KEY],
            "meta": plain({"code_version": "fixture", "n": np.int64(N_ITEMS)}, arrays, "meta"),
            "results": {
                key(it): plain(result_of(it), arrays, f"results/{key(it)}")
                for it in items()
                if key(it) != FAILED_KEY
            },
            "graphs": {
                "flat": plain(flat_graph(), arrays, "graphs/flat"),
                "nested": plain(nested_graph(), arrays, "graphs/nested"),
            },
            "snapshot_extra": plain(SNAP_EXTRA, arrays, "snapshot_extra"),
            "inflight_extra": plain(INFLIGHT_EXTRA, arrays, "inflight_extra"),
        }
        (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
        np.savez(out / "expected.npz", **arrays)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(out, dest)
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    files = sum(1 for p in dest.rglob("*") if p.is_file())
    print(f"wrote {files} files, {total / 1024:.1f} KiB, to {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
