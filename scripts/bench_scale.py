#!/usr/bin/env python3
"""Benchmark: million-item sweeps, side by side with SQLite, plain JSON and the fsync floor.

Every figure comes from a fresh process (`--child`), the measurements are interleaved round by
round and medians are printed, so the ratios in one run are comparable on a noisy machine:

- reopen a finished sweep of N items (time, peak RSS beyond the items themselves) against
  SQLite holding the same records (one table, read back whole) and a plain JSON file of the
  results checked by its SHA-256;
- the first open of an N-item sweep (a list of dicts, on an empty directory);
- `resumable status` on the finished sweep (the CLI's own code) against SQLite's count(*);
- durable records per second: a `record()` loop, `record_many()` (when the sweep has it),
  `run()` in-process and on a 2-process pool, against one fdatasync'd append per item and the
  group-commit floors (8 and 64 appends per fdatasync); the pool again on `--pool-items` items
  (50,000), where its start-up (forkserver, workers, ~0.5 s) no longer dominates the rate;
- CPU per `record()` on tmpfs (/dev/shm) against a bare fdatasync'd append there;
- with `--s3` (moto's S3 server on 127.0.0.1): bytes uploaded per record against the journal's
  own bytes, requests per record at each size, and resuming from s3:// onto an empty directory.

Finished sweeps are built on tmpfs (where an fdatasync costs nothing) and copied to disk, so
building a million items takes seconds, not the hours of a durable loop; then the page cache is
warm for every contender alike.

Run: python scripts/bench_scale.py [--sizes 100000 1000000] [--rounds 3] [--rate-items 20000]
     [--pool-items 50000] [--s3] [--ten-million] [--rates-only]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LINE = b"x" * 199 + b"\n"


def items(n: int) -> list[dict[str, Any]]:
    return [{"i": i, "x": i * 0.5} for i in range(n)]


def key(c: dict[str, Any]) -> str:
    return str(c["i"])


def work(c: dict[str, Any]) -> dict[str, Any]:
    return {"y": c["x"] * 2.0}


def _rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# -- children (each runs in a fresh interpreter) ---------------------------------------------


def child_make(n: int, root: Path) -> dict[str, Any]:
    """A finished sweep (built on tmpfs, copied here), SQLite and JSON with the same results."""
    from resumable import ResumableSweep

    its = items(n)
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="bench-scale-") as shm:
        path = Path(shm) / "exp.h5"
        t0 = time.perf_counter()
        with ResumableSweep(its, key=key, checkpoint_path=path, handle_signals=False) as sweep:
            many = getattr(sweep, "record_many", None)
            if many is not None:
                for start in range(0, n, 4096):
                    many([(c, work(c)) for c in its[start : start + 4096]])
            else:
                for c in its:
                    sweep.record(c, work(c))
        built = time.perf_counter() - t0
        shutil.copytree(Path(shm) / "exp.h5.resumable", root / "exp.h5.resumable")
    journal = sum(f.stat().st_size for f in (root / "exp.h5.resumable/segments").glob("*.jsonl"))
    db = sqlite3.connect(root / "results.sqlite")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.executemany(
        "INSERT INTO results VALUES (?, ?)", ((key(c), json.dumps(work(c))) for c in its)
    )
    db.commit()
    db.close()
    blob = json.dumps({key(c): work(c) for c in its}).encode()
    (root / "results.json").write_bytes(blob)
    (root / "results.json.sha256").write_text(hashlib.sha256(blob).hexdigest())
    return {"build_s": built, "journal_bytes": journal}


def child_reopen(n: int, root: Path) -> dict[str, Any]:
    from resumable import ResumableSweep

    its = items(n)
    base = _rss_kb()
    t0 = time.perf_counter()
    sweep = ResumableSweep(
        its, key=key, checkpoint_path=root / "exp.h5", handle_signals=False, resume="must"
    )
    s = time.perf_counter() - t0
    assert next(iter(sweep.pending), None) is None, "the sweep should be finished"
    sweep.close()
    return {"s": s, "peak_beyond_items_kb": _peak_kb() - base}


def child_sqlite(n: int, root: Path) -> dict[str, Any]:
    its = items(n)
    base = _rss_kb()
    t0 = time.perf_counter()
    db = sqlite3.connect(root / "results.sqlite")
    done = dict(db.execute("SELECT key, value FROM results"))
    pending = [c for c in its if key(c) not in done]
    s = time.perf_counter() - t0
    assert not pending and len(done) == n
    return {"s": s, "peak_beyond_items_kb": _peak_kb() - base}


def child_json(n: int, root: Path) -> dict[str, Any]:
    its = items(n)
    base = _rss_kb()
    t0 = time.perf_counter()
    blob = (root / "results.json").read_bytes()
    if hashlib.sha256(blob).hexdigest() != (root / "results.json.sha256").read_text():
        raise SystemExit("results.json damaged")
    done = json.loads(blob)
    pending = [c for c in its if key(c) not in done]
    s = time.perf_counter() - t0
    assert not pending
    return {"s": s, "peak_beyond_items_kb": _peak_kb() - base}


def child_first_open(n: int, root: Path) -> dict[str, Any]:
    from resumable import ResumableSweep

    its = items(n)
    base = _rss_kb()
    where = Path(tempfile.mkdtemp(dir=root, prefix="first-"))
    try:
        t0 = time.perf_counter()
        sweep = ResumableSweep(its, key=key, checkpoint_path=where / "exp.h5", handle_signals=False)
        s = time.perf_counter() - t0
        sweep.close()
        written = sum(f.stat().st_size for f in where.rglob("*") if f.is_file())
        # a relaunch with the same items, then one with k more
        t0 = time.perf_counter()
        ResumableSweep(its, key=key, checkpoint_path=where / "exp.h5", handle_signals=False).close()
        again_s = time.perf_counter() - t0
        again = sum(f.stat().st_size for f in where.rglob("*") if f.is_file()) - written
        more = its + [{"i": n + j, "x": 0.0} for j in range(100)]
        before = written + again
        opts = {"key": key, "checkpoint_path": where / "exp.h5", "handle_signals": False}
        ResumableSweep(more, **opts).close()
        plus = sum(f.stat().st_size for f in where.rglob("*") if f.is_file()) - before
    finally:
        shutil.rmtree(where)
    return {
        "s": s,
        "peak_beyond_items_kb": _peak_kb() - base,
        "written": written,
        "relaunch_s": again_s,
        "relaunch_bytes": again,
        "plus100_bytes": plus,
    }


def child_status(n: int, root: Path) -> dict[str, Any]:
    from resumable.cli import main as cli_main

    base = _rss_kb()
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli_main(["status", "--json", str(root / "exp.h5")])
    s = time.perf_counter() - t0
    d = json.loads(out.getvalue())
    assert code in (0, None) and d["done"] == n and d["verified"], (code, d.get("done"))
    return {"s": s, "peak_beyond_items_kb": _peak_kb() - base}


def child_sqlite_count(n: int, root: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    db = sqlite3.connect(root / "results.sqlite")
    (count,) = db.execute("SELECT count(*) FROM results").fetchone()
    assert count == n
    return {"s": time.perf_counter() - t0, "peak_beyond_items_kb": 0}


def child_rate(n: int, root: Path, mode: str) -> dict[str, Any]:
    """Durable records per second (wall) and CPU per record, in `root` (disk or tmpfs)."""
    where = Path(tempfile.mkdtemp(dir=root, prefix=f"rate-{mode}-"))
    try:
        if mode.startswith("floor"):
            group = int(mode[5:] or 1)
            fd = os.open(where / "a.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            c0, t0 = time.process_time(), time.perf_counter()
            for i in range(n):
                os.write(fd, LINE)
                if (i + 1) % group == 0:
                    os.fdatasync(fd)
            os.fdatasync(fd)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            os.close(fd)
            return {"per_s": n / wall, "cpu_us": 1e6 * cpu / n}
        if mode == "sqlite":
            db = sqlite3.connect(where / "r.sqlite", isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            its = items(n)
            c0, t0 = time.process_time(), time.perf_counter()
            for c in its:
                db.execute("INSERT INTO results VALUES (?, ?)", (key(c), json.dumps(work(c))))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            return {"per_s": n / wall, "cpu_us": 1e6 * cpu / n}
        if mode.startswith("writer"):  # the checkpoint writer alone: append vs append_many
            return _writer_rate(n, where, mode)
        from resumable import ResumableSweep

        its = items(n)
        sweep = ResumableSweep(its, key=key, checkpoint_path=where / "exp.h5", handle_signals=False)
        results = [work(c) for c in its]
        c0, t0 = time.process_time(), time.perf_counter()
        if mode == "record":
            for c, r in zip(its, results, strict=True):
                sweep.record(c, r)
        elif mode == "record_many":
            many = getattr(sweep, "record_many", None)
            if many is None:
                sweep.close()
                return {"per_s": None, "cpu_us": None}
            for start in range(0, n, 256):
                many(list(zip(its[start : start + 256], results[start : start + 256], strict=True)))
        elif mode == "run":
            sweep.run(work, progress=False)
        elif mode == "pool2":
            sweep.run(work, executor=2, progress=False)
        else:
            raise SystemExit(f"unknown mode {mode}")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert sweep.status().done == n
        sweep.close()
        return {"per_s": n / wall, "cpu_us": 1e6 * cpu / n}
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _writer_rate(n: int, where: Path, mode: str) -> dict[str, Any]:
    """CheckpointWriter alone, a result's payload already encoded: `append` one by one
    ("writer"), `append_many` of one entry ("writer_many1", what `append` is), or of 256."""
    from resumable._checkpoint import CheckpointWriter
    from resumable._manifest import Manifest

    writer = CheckpointWriter.create(
        where / "w.resumable", Manifest(sweep="w", sweep_id="0" * 32, created=time.time())
    )
    body = b'{"value":{"y":1.0},"duration":0.000012,"launch":"0123456789ab"}'
    fp = "0123456789abcdef0123456789abcdef"
    keys = [str(i) for i in range(n)]
    c0, t0 = time.process_time(), time.perf_counter()
    if mode == "writer":
        for k in keys:
            writer.append("result", body, key=k, fp=fp)
    elif mode == "writer_many1":
        for k in keys:
            writer.append_many([("result", body, k, fp)])
    else:
        for start in range(0, n, 256):
            writer.append_many([("result", body, k, fp) for k in keys[start : start + 256]])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    writer.close()
    return {"per_s": n / wall, "cpu_us": 1e6 * cpu / n}


def child_s3(n: int, root: Path, url: str) -> dict[str, Any]:
    """Record n items mirrored to `url`, then resume them onto an empty directory."""
    from resumable import MirrorOptions, ResumableSweep

    its = items(n)
    where = Path(tempfile.mkdtemp(dir=root, prefix="s3-"))
    try:
        src = where / "src" / "exp.h5"
        with ResumableSweep(
            its,
            key=key,
            checkpoint_path=src,
            snapshot_dir=url,
            handle_signals=False,
            mirror_options=MirrorOptions(interval_s=0.5),
        ) as sweep:
            many = getattr(sweep, "record_many", None)
            for start in range(0, n, 4096):
                chunk = its[start : start + 4096]
                if many is not None:
                    many([(c, work(c)) for c in chunk])
                else:
                    for c in chunk:
                        sweep.record(c, work(c))
            sweep.flush()
            m = sweep.status().mirror
        segdir = where / "src/exp.h5.resumable/segments"
        journal = sum(f.stat().st_size for f in segdir.glob("*.jsonl"))  # (not the .idx caches)
        base = _rss_kb()
        t0 = time.perf_counter()
        sweep = ResumableSweep(
            its,
            key=key,
            checkpoint_path=where / "new" / "exp.h5",
            resume_from=url,
            handle_signals=False,
        )
        resume_s = time.perf_counter() - t0
        assert sweep.status().done == n
        sweep.close()
        assert m is not None
        return {
            "resume_s": resume_s,
            "peak_beyond_items_kb": _peak_kb() - base,
            "bytes_per_record": m["bytes_sent"] / n,
            "journal_per_record": journal / n,
            "requests_per_record": m["requests"] / n,
        }
    finally:
        shutil.rmtree(where, ignore_errors=True)


CHILDREN = {
    "make": child_make,
    "reopen": child_reopen,
    "sqlite": child_sqlite,
    "json": child_json,
    "first_open": child_first_open,
    "status": child_status,
    "sqlite_count": child_sqlite_count,
}


def run_child(*args: Any, script: str = __file__) -> dict[str, Any]:
    """Run `script --child ARGS` in a fresh interpreter; its last stdout line, as JSON."""
    cmd = [sys.executable, script, "--child", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- parent -------------------------------------------------------------------------------------


def _med(rows: list[dict[str, Any]], field: str) -> float | None:
    vals = [r[field] for r in rows if r.get(field) is not None]
    return statistics.median(vals) if vals else None


def _fmt_s(s: float | None) -> str:
    return "-" if s is None else (f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s")


def _fmt_mb(kb: float | None, n: int) -> str:
    if kb is None:
        return "-"
    return f"{kb / 1024:,.0f} MB ({kb * 1024 / n:,.0f} B/item)"


def bench_size(n: int, rounds: int, disk: Path) -> None:
    root = disk / f"n{n}"
    root.mkdir()
    made = run_child("make", n, root)
    print(
        f"\n== {n:,} items (journal {made['journal_bytes'] / n:.0f} B/record; built on tmpfs in "
        f"{made['build_s']:.1f} s) ==",
        flush=True,
    )
    kinds = ["reopen", "sqlite", "json", "status", "sqlite_count", "first_open"]
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for k in kinds:
            # no dirty pages of the step before (the copy made, a first open's 71 MB) written
            # back while this one is timed: each starts from the same quiet disk
            os.sync()
            rows[k].append(run_child(k, n, root))
    print(f"{'':34} | {'time':>9} | peak RSS beyond the items")
    for label, k in (
        ("reopen: resumable", "reopen"),
        ("reopen: SQLite, same records", "sqlite"),
        ("reopen: JSON + SHA-256", "json"),
        ("first open (empty dir)", "first_open"),
        ("resumable status", "status"),
        ("SQLite count(*)", "sqlite_count"),
    ):
        print(
            f"{label:34} | {_fmt_s(_med(rows[k], 's')):>9} | "
            f"{_fmt_mb(_med(rows[k], 'peak_beyond_items_kb'), n)}"
        )
    fo = rows["first_open"]
    print(
        f"first open wrote {_med(fo, 'written'):,.0f} B; a relaunch with the same items "
        f"{_fmt_s(_med(fo, 'relaunch_s'))} and {_med(fo, 'relaunch_bytes'):,.0f} B; one with "
        f"100 more items {_med(fo, 'plus100_bytes'):,.0f} B",
        flush=True,
    )


def bench_rates(n: int, rounds: int, disk: Path, pool_n: int) -> None:
    modes = ["floor1", "floor8", "floor64", "record", "record_many", "run", "pool2", "sqlite"]
    print(f"\n== durable records per second, {n:,} trivial items, disk ({disk}) ==", flush=True)
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    big = pool_n > n  # the pool again on more items: its start-up (~0.5 s) amortised
    if big:
        rows["pool2_big"] = []
    for _ in range(rounds):
        for m in modes:
            rows[m].append(run_child("rate", n, disk, m))
        if big:
            rows["pool2_big"].append(run_child("rate", pool_n, disk, "pool2"))
    floor = _med(rows["floor1"], "per_s")
    for label, m in (
        ("append + fdatasync per item (floor)", "floor1"),
        ("8 appends per fdatasync", "floor8"),
        ("64 appends per fdatasync", "floor64"),
        ("record() loop", "record"),
        ("record_many(256 pairs)", "record_many"),
        ("run() in-process", "run"),
        ("run() on a 2-process pool", "pool2"),
        (f"run() on a 2-process pool, {pool_n // 1000}k items", "pool2_big"),
        ("SQLite WAL FULL, commit per item", "sqlite"),
    ):
        if m not in rows:
            continue
        v = _med(rows[m], "per_s")
        ratio = f"{v / floor:5.2f}x floor" if v and floor else ""
        shown = f"{v:>10,.0f}/s" if v else f"{'n/a':>12}"
        print(f"{label:38} | {shown} | {ratio}")
    print("\n== CPU per record on tmpfs (/dev/shm) ==", flush=True)
    shm = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="bench-scale-cpu-"))
    try:
        cpu_modes = ["floor1", "writer", "writer_many1", "writer_many256", "record"]
        cpu_modes += ["record_many", "sqlite"]
        cpu: dict[str, list[dict[str, Any]]] = {m: [] for m in cpu_modes}
        for _ in range(rounds):
            for m in cpu_modes:
                cpu[m].append(run_child("rate", n, shm, m))
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    for label, m in (
        ("bare append + fdatasync", "floor1"),
        ("CheckpointWriter.append", "writer"),
        ("CheckpointWriter.append_many(1 entry)", "writer_many1"),
        ("CheckpointWriter.append_many(256)", "writer_many256"),
        ("record()", "record"),
        ("record_many(256 pairs), per record", "record_many"),
        ("SQLite WAL FULL, commit per item", "sqlite"),
    ):
        v = _med(cpu[m], "cpu_us")
        print(f"{label:38} | {'-' if v is None else f'{v:6.1f} us'}")


def bench_s3(sizes: list[int], disk: Path) -> None:
    from bench_mirror import make_bucket, start_s3  # beside this script

    server = start_s3()
    try:
        print(f"\n== mirror to and resume from s3:// (moto on {os.environ['AWS_ENDPOINT_URL']}) ==")
        print(
            f"{'items':>10} | {'bytes up/record':>15} | {'journal/record':>14} | "
            f"{'req/record':>10} | resume onto an empty dir"
        )
        for n in sizes:
            url = make_bucket(f"bench-scale-{n}-{int(time.time())}")
            r = run_child("s3", n, disk, url)
            print(
                f"{n:>10,} | {r['bytes_per_record']:>15.1f} | {r['journal_per_record']:>14.1f} | "
                f"{r['requests_per_record']:>10.5f} | {_fmt_s(r['resume_s'])}, "
                f"{_fmt_mb(r['peak_beyond_items_kb'], n)}",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, n, root, *rest = sys.argv[2:]
        fn = {"rate": child_rate, "s3": child_s3}.get(kind) or CHILDREN[kind]
        print(json.dumps(fn(int(n), Path(root), *rest)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--ten-million", action="store_true", help="add 10,000,000 to --sizes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate-items", type=int, default=20_000)
    ap.add_argument(
        "--pool-items",
        type=int,
        default=50_000,
        help="items of a second 2-process-pool rate (pool start-up amortised; 0: none)",
    )
    ap.add_argument("--s3", action="store_true", help="mirror/resume figures against moto S3")
    ap.add_argument("--s3-sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--skip-rates", action="store_true")
    ap.add_argument("--rates-only", action="store_true", help="only the rate and CPU tables")
    ap.add_argument("--dir", default=None, help="a directory on disk (default: a temp dir)")
    args = ap.parse_args()
    sizes = args.sizes + ([10_000_000] if args.ten_million else [])
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-scale-") as tmp:
        disk = Path(tmp)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, medians of {args.rounds}")
        for n in [] if args.rates_only else sizes:
            bench_size(n, args.rounds, disk)
        if not args.skip_rates:
            bench_rates(args.rate_items, args.rounds, disk, args.pool_items)
        if args.s3:
            bench_s3(args.s3_sizes, disk)


if __name__ == "__main__":
    main()
