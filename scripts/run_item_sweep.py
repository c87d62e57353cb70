#!/usr/bin/env python
"""A worked example: a sweep of long simulations, each resuming mid-item after preemption.

    python scripts/run_item_sweep.py --checkpoint ./out/diffusion.h5 --items 4 --steps 400
    SWEEP_SNAPSHOT_DIR=s3://bucket/sweeps/diffusion SWEEP_RESUME_FROM=s3://bucket/sweeps/diffusion \
        python scripts/run_item_sweep.py --checkpoint /scratch/diffusion.h5

Each item is a 1-D diffusion run with its own diffusivity; its state (the field, updated in
place) is the item's graph, the step counter rides in the snapshot's `extra`. Every
`--snap-every` steps, and at SIGTERM (the sweep's guard runs the item's preemption hook at the
next safe point), the item's state is saved beside the checkpoint and in the mirror. A relaunch,
on this machine or a fresh one resuming from the mirror, continues each unfinished item from its
last snapshot, and every result is bit-for-bit the one of an uninterrupted run.

Prints ``item KEY step S`` every `--report-every` steps, ``item KEY resumed at S`` and
``item KEY saved at S``. Exit status: 0 when done, 75 when preempted (requeue it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

from resumable import ResumableSweep


def diffusion_step(u: np.ndarray, d: float, step: int, seed: int) -> None:
    """One explicit step with a little deterministic noise (a counter-based RNG: the noise of
    step S is the same whether or not the run was interrupted before it)."""
    lap = np.roll(u, 1) + np.roll(u, -1) - 2 * u
    noise = np.random.default_rng([seed, step]).standard_normal(u.shape)
    u += d * lap + 1e-3 * noise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--items", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--snap-every", type=int, default=50)
    p.add_argument("--report-every", type=int, default=10)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per step (for demos)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    items = [{"id": i, "d": 0.05 + 0.1 * i} for i in range(args.items)]
    with ResumableSweep(items, checkpoint_path=args.checkpoint, key=lambda c: str(c["id"])) as sw:
        for item in sw.pending:
            key, seed = sw.key(item), sw.seed(item)
            state = {"u": np.zeros(args.size)}
            state["u"][args.size // 2] = 1.0
            snap = sw.item_snapshot(item)
            extra = snap.restore(state)  # fills state["u"] in place; None: from the start
            clock = {"step": int(extra["step"]) if extra else 0}
            if extra:
                print(f"item {key} resumed at {clock['step']}", flush=True)
            snap.bind(state, extra=lambda c=clock: dict(c))  # what SIGTERM saves
            while clock["step"] < args.steps:
                diffusion_step(state["u"], item["d"], clock["step"], seed)
                clock["step"] += 1
                step = clock["step"]
                if args.sleep:
                    time.sleep(args.sleep)
                if step % args.report_every == 0:
                    print(f"item {key} step {step}", flush=True)
                if step % args.snap_every == 0 and step < args.steps:
                    snap.save()
                    print(f"item {key} saved at {step}", flush=True)
                snap.checkpoint_if_preempted()  # a safe point: the state is one whole step
            sw.record(item, {"u": state["u"].copy(), "steps": step})
    print("finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
