#!/usr/bin/env python3
"""Benchmark: `resumable status` on a sweep finished in one launch vs in many (preempted often).

Both sweeps hold the same N items, all finished; the second took L launches of N/L results each
(a launch record each, as a sweep preempted L-1 times writes). Status should cost about the
same for both: one pass over the journal, O(records + launches). Every figure comes from a
fresh process (the CLI's own code, `resumable status --json`), rounds interleaved, medians
printed, so the ratio in one run is comparable on a noisy machine.

The many-launch sweep is built on tmpfs by appending the records a relaunch writes (its launch
record, then its results) through the checkpoint writer, not by L real relaunches (each
rebuilds the N-item list: minutes for L = 1000); its first launch is a real one.

Run: python scripts/bench_status_launches.py [--items 100000] [--launches 1000] [--rounds 3]
     [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_scale  # beside this script
from bench_scale import items, key, work


def make(n: int, launches: int, dest: Path) -> None:
    """A finished N-item sweep at dest/exp.h5, recorded over `launches` launches."""
    from resumable import ResumableSweep, __version__
    from resumable._checkpoint import CheckpointWriter, DirLock, load
    from resumable._codec import encode

    its = items(n)
    per = -(-n // launches)
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="bench-status-") as shm:
        path = Path(shm) / "exp.h5"
        with ResumableSweep(its, key=key, checkpoint_path=path, handle_signals=False) as sweep:
            first = its[: per if launches > 1 else n]
            for start in range(0, len(first), 4096):
                sweep.record_many([(c, work(c)) for c in first[start : start + 4096]])
            progress = sweep.progress_dir
        if launches > 1:
            loaded = load(progress)
            assert loaded is not None
            state = loaded.state
            fps = {e[0]: e[1] for e in state.items_with_fingerprints()}
            writer = CheckpointWriter(progress, loaded, DirLock(progress))
            try:
                for start in range(per, n, per):
                    launch = uuid.uuid4().hex[:12]
                    body = {
                        "launch": launch,
                        "host": "bench",
                        "pid": os.getpid(),
                        "items_sha256": state.items_sha256,
                        "n_items": n,
                        "library_version": __version__,
                    }
                    writer.append("launch", body)
                    chunk = its[start : start + per]
                    for at in range(0, len(chunk), 32):  # a few groups per launch
                        writer.append_many(
                            [
                                (
                                    "result",
                                    {"value": encode(work(c)), "duration": 0.001, "launch": launch},
                                    key(c),
                                    fps[key(c)],
                                )
                                for c in chunk[at : at + 32]
                            ]
                        )
            finally:
                writer.close()
        shutil.copytree(progress, dest / "exp.h5.resumable")


def child_status(root: Path) -> dict[str, Any]:
    from resumable.cli import main as cli_main

    out = io.StringIO()
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(out):
        code = cli_main(["status", "--json", str(root / "exp.h5")])
    s, cpu = time.perf_counter() - t0, time.process_time() - c0
    d = json.loads(out.getvalue())
    assert code in (0, None) and d["verified"] and d["pending"] == 0, (code, d.get("pending"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"s": s, "cpu": cpu, "peak_kb": peak, "launches": d["launches"], "done": d["done"]}


def run_child(*args: Any) -> dict[str, Any]:
    return bench_scale.run_child(*args, script=__file__)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        if kind == "make":
            make(int(rest[0]), int(rest[1]), Path(rest[2]))
            print("{}")
        else:
            print(json.dumps(child_status(Path(rest[0]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--launches", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="a directory on disk (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-status-") as tmp:
        roots = {}
        for launches in (1, args.launches):
            root = Path(tmp) / f"l{launches}"
            root.mkdir()
            t0 = time.perf_counter()
            run_child("make", args.items, launches, root)
            print(
                f"built {args.items:,} items in {launches:,} launch(es): "
                f"{time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            roots[launches] = root
        rows: dict[int, list[dict[str, Any]]] = {k: [] for k in roots}
        for _ in range(args.rounds):
            for launches, root in roots.items():
                rows[launches].append(run_child("status", root))
        print(
            f"\n`resumable status --json`, {args.items:,} finished items, medians of "
            f"{args.rounds} (fresh processes)"
        )
        print(f"{'launches':>9} | {'time':>9} | {'CPU':>9} | {'peak RSS':>9} | launches reported")
        med: dict[int, dict[str, float]] = {}
        for launches, rs in rows.items():
            med[launches] = {
                f: statistics.median(r[f] for r in rs) for f in ("s", "cpu", "peak_kb")
            }
            m = med[launches]
            print(
                f"{launches:>9,} | {m['s'] * 1000:>6.0f} ms | {m['cpu'] * 1000:>6.0f} ms | "
                f"{m['peak_kb'] / 1024:>6.0f} MB | {rs[0]['launches']:,}"
            )
        one, many = med[1], med[args.launches]
        print(
            f"{args.launches:,} launches / 1 launch: time {many['s'] / one['s']:.2f}x, "
            f"CPU {many['cpu'] / one['cpu']:.2f}x (CPU: less sensitive to a busy machine)"
        )


if __name__ == "__main__":
    main()
