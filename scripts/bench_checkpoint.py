#!/usr/bin/env python3
"""Benchmark: per-item cost of a durable `record()` and the time to resume, against baselines.

For sweeps of 1k, 10k and 100k trivial items it prints, side by side:
- resumable: median (and p90) cost of `record()` over the whole sweep and over its last 1,000
  items, and the time to reopen (resume) the finished checkpoint;
- append one 200-byte line + fdatasync (the floor any durable per-item record pays);
- baseline (a): rewrite the whole progress JSON + SHA-256 + atomic durable replace per item
  (measured at the sweep's size on a sample of items: running all of it at 100k takes hours);
- baseline (b): SQLite insert + commit per item, WAL mode, synchronous=FULL.

Run: python scripts/bench_checkpoint.py [--sizes 1000 10000 100000] [--dir DIR]
Figures, not pass/fail: the targets are printed next to them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resumable import ResumableSweep
from resumable._checkpoint import load, progress_dir_for
from resumable._durable import atomic_write_bytes


def _q(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench_resumable(n: int, root: Path) -> dict[str, float]:
    items = [{"i": i, "x": i * 0.5} for i in range(n)]
    path = root / f"res-{n}" / "exp.h5"
    times: list[float] = []
    with ResumableSweep(items, key=lambda c: str(c["i"]), checkpoint_path=path) as sweep:
        for item in sweep.pending:
            result = {"y": item["x"] * 2.0, "ok": True}
            t0 = time.perf_counter()
            sweep.record(item, result)
            times.append(time.perf_counter() - t0)
    resume = []
    for _ in range(3):
        t0 = time.perf_counter()
        with ResumableSweep(items, key=lambda c: str(c["i"]), checkpoint_path=path) as sweep:
            assert next(iter(sweep.pending), None) is None
        resume.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    loaded = load(progress_dir_for(path))
    load_s = time.perf_counter() - t0
    assert loaded is not None and len(loaded.state.results) == n
    return {
        "median": statistics.median(times),
        "p90": _q(times, 0.9),
        "last1k": statistics.median(times[-1000:]),
        "resume": statistics.median(resume),
        "load": load_s,
    }


def bench_append_line(n: int, root: Path) -> float:
    path = root / "append.log"
    line = (json.dumps({"k": "x" * 150}) + "\n").encode()[:199] + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    times = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, line)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times)


def bench_rewrite_json(n: int, root: Path, samples: int = 30) -> float:
    """Cost of one naive per-item checkpoint when the sweep holds n records."""
    progress = {str(i): {"y": i * 1.0, "ok": True} for i in range(n)}
    path = root / f"naive-{n}.json"
    times = []
    for s in range(samples):
        progress[f"extra-{s}"] = {"y": 1.0, "ok": True}
        t0 = time.perf_counter()
        data = json.dumps({"completed": progress}).encode()
        digest = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(path, data)
        atomic_write_bytes(path.with_suffix(".sha256"), digest.encode())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_sqlite(n: int, root: Path) -> float:
    path = root / f"sqlite-{n}.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE r (k TEXT PRIMARY KEY, v TEXT)")
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        con.execute("BEGIN")
        con.execute("INSERT INTO r VALUES (?, ?)", (str(i), json.dumps({"y": i * 1.0})))
        con.execute("COMMIT")
        times.append(time.perf_counter() - t0)
    con.close()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir here)")
    args = ap.parse_args()
    base = Path(args.dir) if args.dir else None
    with tempfile.TemporaryDirectory(dir=base, prefix="bench-ckpt-") as tmp:
        root = Path(tmp)
        line = bench_append_line(2000, root)
        print(f"append 200 B line + fdatasync: median {line * 1e6:.0f} us\n")
        hdr = (
            f"{'items':>8} | {'record med':>10} {'p90':>8} {'last 1k':>8} {'x line':>6} | "
            f"{'resume':>8} {'load':>8} | {'naive JSON':>10} | {'SQLite FULL':>11}"
        )
        print(hdr)
        print("-" * len(hdr))
        rows = {}
        for n in args.sizes:
            r = bench_resumable(n, root)
            naive = bench_rewrite_json(n, root)
            sql = bench_sqlite(n, root)
            rows[n] = r
            print(
                f"{n:>8} | {r['median'] * 1e6:>8.0f}us {r['p90'] * 1e6:>6.0f}us "
                f"{r['last1k'] * 1e6:>6.0f}us {r['median'] / line:>6.2f} | "
                f"{r['resume'] * 1e3:>6.0f}ms {r['load'] * 1e3:>6.0f}ms | "
                f"{naive * 1e3:>8.2f}ms | {sql * 1e6:>9.0f}us",
                flush=True,
            )
        lo, hi = min(rows), max(rows)
        growth = rows[hi]["median"] / rows[lo]["median"]
        growth_tail = rows[hi]["last1k"] / rows[lo]["last1k"]
        print()
        print(f"targets: per-item cost at {hi} within 1.5x of {lo}: {growth:.2f}x (median), ")
        print(f"         {growth_tail:.2f}x (last 1k items)")
        print(f"         record <= 3x an fsync'd line append: {rows[hi]['median'] / line:.2f}x")
        print(f"         resume of {hi} items < 1 s: {rows[hi]['resume']:.3f} s")


if __name__ == "__main__":
    main()
