#!/usr/bin/env python3
"""A resumable sweep whose owner runs on a stable node and whose Dask workers are SLURM jobs
on preemptible capacity (dask-jobqueue's SLURMCluster).

    pip install "resumable-sweeps[dask-slurm]"   # dask[distributed] + dask-jobqueue
    python jobs/dask-slurm/sweep_with_slurm_workers.py --queue low --workers 4 \
        --out /project/me/sweeps/ising.h5

The pattern (see jobs/README.md):
- the owner (this script) holds the checkpoint and records every result; run it where it is
  not preempted: a login/head node, a small job in a non-preemptible partition, a VM. Give it
  a mirror (SWEEP_SNAPSHOT_DIR / SWEEP_RESUME_FROM) if that machine can go away too;
- the workers only compute. They are SLURM jobs in the preemptible partition (`--queue`);
  when one is preempted (SIGTERM, GraceTime, SIGKILL), the Dask scheduler reschedules the
  tasks it held on the other workers, and `cluster.adapt()` submits replacement jobs, which
  start as soon as the partition has room again. A result is recorded once, by the owner,
  when its task finishes somewhere; a task lost with its worker simply runs again;
- results are the same as a serial run: each item is seeded from its key (`seed=`).

Exit codes: 0 done (every item recorded, none failed); 1 a failure or an error.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

import numpy as np

from resumable import ResumableSweep


def make_items(n: int, seconds: float) -> list[dict]:
    return [{"i": i, "seconds": seconds} for i in range(n)]


def simulate(item: dict, seed: int) -> dict:
    """A stand-in for real work: `seconds` of it, with a result that depends on the seed only."""
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(1000)
    time.sleep(item["seconds"])
    return {"i": item["i"], "mean": float(samples.mean()), "hist": np.histogram(samples, 8)[0]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="checkpoint_path (the HDF5 output)")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--item-seconds", type=float, default=5.0)
    ap.add_argument("--queue", default="low", help="the (preemptible) partition of the workers")
    ap.add_argument("--workers", type=int, default=4, help="worker jobs to keep running")
    ap.add_argument("--walltime", default="01:00:00")
    ap.add_argument("--memory", default="2GB", help="per worker job")
    ap.add_argument("--interface", default=None, help="network interface (e.g. ib0, lo)")
    ap.add_argument("--python", default=sys.executable, help="the workers' python")
    ap.add_argument("--log-directory", default=None, help="where the worker jobs' logs go")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("resumable").setLevel(logging.INFO)
    from dask.distributed import Client
    from dask_jobqueue import SLURMCluster

    # Importing dask_jobqueue makes Ctrl-C call sys.exit() wherever it lands (even inside a
    # record()); give SIGINT back to Python so that sweep.run handles it at its safe points.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cluster = SLURMCluster(
        queue=args.queue,
        cores=1,
        processes=1,
        memory=args.memory,
        walltime=args.walltime,
        python=args.python,
        interface=args.interface,
        log_directory=args.log_directory,
        job_name="resumable-worker",
    )
    # adapt (not scale): replacement jobs are submitted when preempted workers go away
    cluster.adapt(minimum=args.workers, maximum=args.workers)
    client = Client(cluster)
    try:
        with ResumableSweep(
            make_items(args.items, args.item_seconds),
            key=lambda item: f"item-{item['i']:05d}",
            checkpoint_path=args.out,
        ) as sweep:
            print(f"sweep {sweep.name!r}: {sweep.status().pending} items to run", flush=True)
            summary = sweep.run(simulate, executor=client)
            print(f"done: {summary}", flush=True)
            return 0 if summary.failed == 0 and sweep.status().pending == 0 else 1
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
