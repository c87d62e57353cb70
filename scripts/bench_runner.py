"""Benchmark `sweep.run`: serial vs a process pool vs Dask and Ray clusters, checkpointing on.

usage: python scripts/bench_runner.py [--items 2000] [--ms 10] [--workers 2] [--rounds 3]
                                      [--no-dask] [--ray]

`--ray` adds a local Ray cluster of `workers` CPUs on 127.0.0.1 (`RayExecutor`).

Each item is a pure-Python busy loop calibrated to ~`ms` of CPU. Every run is a real
ResumableSweep on local disk (each result fsync'd by the parent). The pool and the cluster are
started (and warmed up, resumable imported) once, before any clock starts; their start-up time
is printed separately. The configurations run in interleaved rounds and the best round of each
is shown, so a noisy neighbour hurts all of them alike rather than one.

Columns: wall time; speed-up over the serial sweep; "ideal" = the items' compute time (measured
around `fn` by the worker, in that same run) / workers; "overhead/item" = (wall - ideal) / items,
what the framework adds; the parent's CPU time per item (for the in-process run, minus the
compute); "speed-up at equal item cost" = (N c + O_serial) / (N c / W + O), with c the bare
loop's time per item and O = wall - ideal of each run: the speed-up once the item's own cost
no longer depends on how busy the machine was. Two framework-free rows, the loops run bare in
one process and split over W bare processes, give the machine's own ceiling.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resumable import ResumableSweep
from resumable.runner import RunSummary, worker_initializer


def spin(n: int) -> int:
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc


def busy(item: dict) -> dict:
    """~`ms` of CPU; returns a small result (like a typical sweep item's summary numbers)."""
    return {"i": item["i"], "acc": spin(item["n"])}


def spin_many(n: int, count: int) -> float:
    """`count` items' loops, bare; returns their compute seconds."""
    t0 = time.perf_counter()
    for _ in range(count):
        spin(n)
    return time.perf_counter() - t0


def calibrate(ms: float) -> int:
    n = 20_000
    while _timed(n) < 0.05:
        n *= 2
    best = min(_timed(n) for _ in range(5))
    return max(1, int(n * (ms / 1000) / best))


def _timed(n: int) -> float:
    t0 = time.perf_counter()
    spin(n)
    return time.perf_counter() - t0


def _noop(x: int) -> int:
    return x


def _warm(x: int) -> int:
    """Warm a worker up: import what the runs will need."""
    import resumable.runner  # noqa: F401

    return x


class Clock:
    """Wall time and this process's CPU time over a block."""

    def __enter__(self) -> Clock:
        self.load = os.getloadavg()[0]
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0

    def row(self, **extra: object) -> dict:
        return {"wall": self.wall, "cpu": self.cpu, "load": self.load, **extra}


def bare(n: int, count: int, workers: int) -> dict:
    """The loops with no framework: `workers` processes, one equal share each."""
    if workers == 1:
        with Clock() as clock:
            compute = spin_many(n, count)
        return clock.row(compute=compute)
    ctx = multiprocessing.get_context("fork")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        list(pool.map(_noop, range(workers * 2)))
        shares = [count // workers + (i < count % workers) for i in range(workers)]
        with Clock() as clock:
            compute = sum(pool.map(spin_many, [n] * workers, shares))
    return clock.row(compute=compute)


def run_sweep(name: str, items: list[dict], executor: object, workdir: Path) -> dict:
    """One full run into a fresh checkpoint (see Clock), with the items' compute time."""
    ckpt = workdir / f"{name}-{time.monotonic_ns()}" / "bench.h5"
    with ResumableSweep(items, checkpoint_path=ckpt, handle_signals=False) as sweep:
        with Clock() as clock:
            summary: RunSummary = sweep.run(busy, executor=executor, progress=False)
        # each item's compute time as measured around fn by its worker
        results = sweep._journal.state.results.values()
        compute = sum(rec.body()["duration"] or 0.0 for rec in results)
    assert summary.done == len(items), summary
    return clock.row(compute=compute, batch=summary.max_batch)


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["wall"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--ms", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--ray", action="store_true", help="add a local Ray cluster (RayExecutor)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    w = args.workers
    n = calibrate(args.ms)
    t = min(_timed(n) for _ in range(5))
    print(f"cpus={os.cpu_count()} items={args.items} work/item={t * 1e3:.2f} ms (n={n})")
    items = [{"i": i, "n": n} for i in range(args.items)]
    names = ["bare loops, 1 process", f"bare loops, {w} processes", "run(): in-process"]
    names += [f"run(): ProcessPoolExecutor({w})", f"run(): Dask LocalCluster({w}x1)"]
    names += [f"run(): Ray, local ({w} CPUs)"]
    results: dict[str, list[dict]] = {name: [] for name in names}
    startup: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-runner-")))
        t0 = time.perf_counter()
        pool = stack.enter_context(cf.ProcessPoolExecutor(w, initializer=worker_initializer))
        list(pool.map(_warm, range(w * 4)))
        startup[names[3]] = time.perf_counter() - t0
        executors = {names[2]: None, names[3]: pool}
        if not args.no_dask:
            from distributed import Client, LocalCluster

            t0 = time.perf_counter()
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=w,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
            )
            client = stack.enter_context(Client(cluster))
            client.gather(client.map(_warm, range(w * 4)))
            startup[names[4]] = time.perf_counter() - t0
            executors[names[4]] = client.get_executor()
        if args.ray:
            import ray

            from resumable.ray_executor import RayExecutor

            t0 = time.perf_counter()
            ray.init(
                num_cpus=w,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                configure_logging=False,
            )
            stack.callback(ray.shutdown)
            ray_ex = RayExecutor()
            list(f.result() for f in [ray_ex.submit(_warm, i) for i in range(w * 4)])
            startup[names[5]] = time.perf_counter() - t0
            executors[names[5]] = ray_ex
        for r in range(args.rounds):
            results[names[0]].append(bare(n, args.items, 1))
            results[names[1]].append(bare(n, args.items, w))
            for name, ex in executors.items():
                results[name].append(run_sweep(f"{name}-{r}", items, ex, work))
            print(f"round {r + 1}/{args.rounds} done", flush=True)

    c = min(r["wall"] for r in results[names[0]]) / args.items  # a bare item's cost
    serial = best(results[names[2]])
    serial_over = serial["wall"] - serial["compute"]
    print(
        f"{'':<34}{'wall s':>7}{'speed-up':>9}{'ideal s':>8}{'overhead/item':>14}"
        f"{'parent cpu/item':>16}{'speed-up at equal item cost':>29}{'batch':>6}{'start s':>8}"
        f"{'load':>5}"
    )
    for name in names:
        if not results[name]:
            continue
        r = best(results[name])
        workers = 1 if name in (names[0], names[2]) else w
        ideal = r["compute"] / workers
        over = r["wall"] - ideal
        cpu = r["cpu"] - (r["compute"] if workers == 1 else 0.0)
        norm = (args.items * c + serial_over) / (args.items * c / workers + over)
        shown = f"{norm:.2f}x" if name.startswith("run()") else "-"
        print(
            f"{name:<34}{r['wall']:>7.2f}{serial['wall'] / r['wall']:>8.2f}x{ideal:>8.2f}"
            f"{over / args.items * 1e3:>11.3f} ms{cpu / args.items * 1e3:>13.3f} ms{shown:>29}"
            f"{r.get('batch', '-'):>6}{startup.get(name, 0.0):>8.2f}{r['load']:>5.1f}"
        )
    bare1, bare_w = best(results[names[0]])["wall"], best(results[names[1]])["wall"]
    print(
        f"speed-up ceiling of this machine (bare loops, {w} processes vs 1): {bare1 / bare_w:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
