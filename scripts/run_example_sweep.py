#!/usr/bin/env python3
"""A real parameter sweep with resumable: the 2D Ising model across temperatures and sizes.

Each item runs a Metropolis simulation (vectorised checkerboard updates with numpy) of an L x L
Ising lattice at temperature T and returns the mean |magnetisation|, energy, susceptibility,
specific heat and a down-sampled magnetisation trace (a numpy array). Every item is seeded from
its key with `sweep.seed(item)`, so reruns reproduce results bit for bit.

    python scripts/run_example_sweep.py                      # local storage under ./out/
    python scripts/run_example_sweep.py --crash-after 40     # die (SIGKILL) after 40 items
    SWEEP_SNAPSHOT_DIR=s3://bucket/exp python scripts/run_example_sweep.py   # with a mirror

Interrupt it any way you like (Ctrl-C, kill -9, a preemption) and run it again: finished items
are not run twice.

Deployment (see jobs/README.md):
- SWEEP_SNAPSHOT_DIR / SWEEP_RESUME_FROM: mirror the checkpoint there, and resume from there on a
  new machine (ResumableSweep reads both; a missing source is a fresh start).
- Sharding comes from the cluster's job-array environment (`shard_from_env()`): Kubernetes
  Indexed Jobs (JOB_COMPLETION_INDEX + SWEEP_SHARD_COUNT), SLURM arrays (SLURM_ARRAY_TASK_*),
  AWS Batch (AWS_BATCH_JOB_ARRAY_INDEX + SWEEP_SHARD_COUNT), or SWEEP_SHARD_INDEX/COUNT.
- SIGTERM stops the sweep at the next item boundary, flushes the mirror and exits 75
  (PREEMPTED_EXIT_CODE: "preempted, requeue me").

Exit codes: 0 done; 75 preempted (requeue); 78 a problem a relaunch cannot fix (damaged or
conflicting checkpoint, changed items, a changed shard count, a bad setting: fail the job and
look); 2 bad command line; 1 anything else (a crash: retry a bounded number of times).

When every item is done, the results are written to --out (the checkpoint_path) as HDF5 with
`sweep.export_h5()`. The HDF5 file is always rebuilt from the verified checkpoint, never read
back or trusted after a crash.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resumable import ResumableSweep
from resumable.errors import (
    ConfigurationError,
    HistoryConflictError,
    IntegrityError,
    ItemsChangedError,
    SweepMismatchError,
)
from resumable.shards import shard_from_env

EXIT_NEEDS_ATTENTION = 78  # EX_CONFIG: relaunching cannot fix it; job specs fail the job
PERMANENT_ERRORS = (
    ConfigurationError,
    HistoryConflictError,
    IntegrityError,
    ItemsChangedError,
    SweepMismatchError,
)


def make_items(sizes: list[int], n_temps: int, sweeps: int = 300) -> list[dict]:
    temps = np.round(np.linspace(1.5, 3.5, n_temps), 4)
    return [
        {"label": f"L{size}-T{t:.4f}", "L": size, "T": float(t), "sweeps": sweeps}
        for size in sizes
        for t in temps
    ]


def ising(item: dict, seed: int) -> dict:
    """Metropolis simulation of a periodic L x L Ising lattice (J = 1, no field)."""
    rng = np.random.default_rng(seed)
    size, temp, sweeps = item["L"], item["T"], item["sweeps"]
    spins = rng.choice(np.array([-1, 1], dtype=np.int8), size=(size, size))
    ii, jj = np.indices((size, size))
    masks = [(ii + jj) % 2 == c for c in (0, 1)]
    burn = sweeps // 3
    mags, energies = [], []
    for sweep in range(sweeps):
        for mask in masks:
            nb = (
                np.roll(spins, 1, 0)
                + np.roll(spins, -1, 0)
                + np.roll(spins, 1, 1)
                + np.roll(spins, -1, 1)
            )
            delta = 2.0 * spins * nb
            accept = (delta <= 0) | (rng.random(spins.shape) < np.exp(-delta / temp))
            spins = np.where(mask & accept, -spins, spins).astype(np.int8)
        if sweep >= burn:
            nb = np.roll(spins, 1, 0) + np.roll(spins, 1, 1)
            energies.append(-float(np.sum(spins * nb)) / spins.size)
            mags.append(abs(float(spins.mean())))
    m = np.array(mags)
    e = np.array(energies)
    n = size * size
    return {
        "abs_magnetisation": float(m.mean()),
        "energy": float(e.mean()),
        "susceptibility": float(n * m.var() / temp),
        "specific_heat": float(n * e.var() / temp**2),
        "trace": m[:: max(1, len(m) // 50)].astype(np.float32),
    }


def export(sweep: ResumableSweep, out: str) -> None:
    """Rebuild the HDF5 output from the checkpoint (atomically, by resumable.export)."""
    path = sweep.export_h5(out)
    print(f"  results written to {path}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/ising.h5", help="checkpoint_path (the HDF5 output)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 12, 16, 24])
    ap.add_argument("--temps", type=int, default=60, help="temperatures per size")
    ap.add_argument("--sweeps", type=int, default=300, help="Metropolis sweeps per item")
    ap.add_argument("--crash-after", type=int, default=None, help="SIGKILL self after N items")
    ap.add_argument(
        "--item-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sleep after each item (makes a small sweep slow enough to interrupt)",
    )
    ap.add_argument(
        "--progress-every",
        type=int,
        default=20,
        metavar="N",
        help="print a progress line every N items (default 20)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="compute and record items in N threads sharing the one sweep (default 1)",
    )
    ap.add_argument(
        "--run",
        action="store_true",
        help="let sweep.run compute and record the items in-process (group commit)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap.parse_args(argv)


def run_threaded(sweep: ResumableSweep, n_threads: int) -> int:
    """Items from the main thread (which iterates `pending`: its safe points, where SIGTERM
    exits 75) to `n_threads` workers that compute and record them through the one sweep."""
    todo: queue.Queue = queue.Queue(maxsize=n_threads)
    done = [0]
    lock = threading.Lock()

    def worker() -> None:
        while (item := todo.get()) is not None:
            sweep.record(item, ising(item, sweep.seed(item)))
            with lock:
                done[0] += 1

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(n_threads)]
    for w in workers:
        w.start()
    for item in sweep.pending:
        todo.put(item)
    for _ in workers:
        todo.put(None)
    for w in workers:
        w.join()
    return done[0]


def run(args: argparse.Namespace) -> int:
    items = make_items(args.sizes, args.temps, args.sweeps)
    shard = shard_from_env()  # None unless a job array / SWEEP_SHARD_* says otherwise
    t0 = time.monotonic()
    with ResumableSweep(
        items,
        key=lambda c: c["label"],
        checkpoint_path=args.out,
        meta={"model": "ising-2d"},
        shard=shard,
    ) as sweep:
        st = sweep.status()
        where = f"shard {shard[0]} of {shard[1]}, " if shard else ""
        print(
            f"sweep {sweep.name!r}: {where}{st.total} items, {st.done} already done, "
            f"{st.pending} to run (resumed from: {sweep.resumed_from}; "
            f"progress in {sweep.progress_dir})",
            flush=True,
        )
        ran = 0
        if args.run:  # results acknowledged in groups, one fdatasync per group
            ran = sweep.run(lambda item: ising(item, sweep.seed(item)), progress=False).done
        elif args.threads > 1:
            ran = run_threaded(sweep, args.threads)
        for item in sweep.pending:  # a safe point before each item: SIGTERM exits 75 here
            result = ising(item, sweep.seed(item))
            sweep.record(item, result)
            ran += 1
            if not args.quiet and args.progress_every > 0 and ran % args.progress_every == 0:
                print(f"  {ran} items this launch, last {item['label']}", flush=True)
            if args.crash_after is not None and ran >= args.crash_after:
                print(f"  simulating a crash: SIGKILL after {ran} items", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            if args.item_delay > 0:
                time.sleep(args.item_delay)
        st = sweep.status()
        print(
            f"done: {st.done}/{st.total} items ({ran} this launch, "
            f"{time.monotonic() - t0:.1f} s), {st.launches} launch(es) in all",
            flush=True,
        )
        if st.done != st.total:  # failed items (recorded by an earlier version, say)
            print(
                f"  {st.total - st.done} item(s) failed and are skipped: HDF5 output not "
                f"written; exiting {EXIT_NEEDS_ATTENTION}",
                flush=True,
            )
            return EXIT_NEEDS_ATTENTION
        by_size: dict[int, list[tuple[float, float]]] = {}
        for item, result in sweep.completed_items():
            by_size.setdefault(item["L"], []).append((item["T"], result["susceptibility"]))
        for size, rows in sorted(by_size.items()):
            t_peak = max(rows, key=lambda r: r[1])[0]
            print(f"  L={size:>3}: susceptibility peaks at T={t_peak:.3f} (Tc = 2.269 exact)")
        # Inside the with-block: a SIGTERM now is still caught (the guard lets the finished
        # sweep end normally), and the export is atomic, so a kill leaves no half-written file.
        export(sweep, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("resumable").setLevel(logging.INFO)
    try:
        return run(args)
    except PERMANENT_ERRORS as exc:
        print(
            f"error: {type(exc).__name__}: {exc}\n"
            f"a relaunch cannot fix this; exiting {EXIT_NEEDS_ATTENTION}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_NEEDS_ATTENTION


if __name__ == "__main__":
    sys.exit(main())
