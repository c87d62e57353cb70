#!/usr/bin/env python
"""A worked example: a long Gray-Scott reaction-diffusion run that survives preemption.

    python scripts/run_simulation.py --steps 20000 --snapshot-url ./sim/snapshot.npz
    SNAPSHOT_URL=s3://bucket/runs/gs-1/snapshot.npz python scripts/run_simulation.py

The state (two concentration grids, updated in place) is the graph; the step counter rides in
the snapshot's `extra`. Every `--snapshot-every` steps (and on SIGTERM/SIGUSR1, or a spot
notice with `--spot aws|gcp|azure`) the state is saved durably; a restarted job resumes from
`--resume-from` / SNAPSHOT_RESUME_FROM (default: the snapshot URL itself; `--fresh` ignores it)
and produces bit-for-bit the same grids as an uninterrupted run.

Exit status: 0 when done, 75 when preempted (requeue it), 1 on errors. In a container, `exec`
this script (or use tini) so that it receives the SIGTERM itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

import numpy as np

from resumable.preempt import (
    AwsSpotWatcher,
    AzureScheduledEventsWatcher,
    GcpPreemptionWatcher,
    PreemptionGuard,
    SpotWatcher,
    make_preempt_snapshot_hook,
    resume_from_url,
)

WATCHERS: dict[str, type[SpotWatcher]] = {
    "aws": AwsSpotWatcher,
    "gcp": GcpPreemptionWatcher,
    "azure": AzureScheduledEventsWatcher,
}


def initial_state(n: int, seed: int) -> dict[str, np.ndarray]:
    """U = 1, V = 0, with a noisy square of V in the middle to start the patterns."""
    rng = np.random.default_rng(seed)
    u, v = np.ones((n, n)), np.zeros((n, n))
    lo, hi = n // 2 - n // 10, n // 2 + n // 10
    u[lo:hi, lo:hi], v[lo:hi, lo:hi] = 0.5, 0.25
    u += 0.02 * rng.random((n, n))
    v += 0.02 * rng.random((n, n))
    return {"gray-scott/U": u, "gray-scott/V": v}


def laplacian(a: np.ndarray) -> np.ndarray:
    return np.roll(a, 1, 0) + np.roll(a, -1, 0) + np.roll(a, 1, 1) + np.roll(a, -1, 1) - 4 * a


def advance(state: dict[str, np.ndarray], du: float, dv: float, f: float, k: float) -> None:
    """One explicit Euler step, in place (so a preemption mid-step would leave torn state:
    hence snapshots are taken only at safe points between steps)."""
    u, v = state["gray-scott/U"], state["gray-scott/V"]
    uvv = u * v * v
    lu, lv = laplacian(u), laplacian(v)
    u += du * lu - uvv + f * (1 - u)
    v += dv * lv + uvv - (f + k) * v


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--grid", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--feed", type=float, default=0.037)
    p.add_argument("--kill", type=float, default=0.06)
    p.add_argument(
        "--snapshot-url",
        default=os.environ.get("SNAPSHOT_URL", "sim-snapshot.npz"),
        help="where snapshots go: path or fsspec URL (env SNAPSHOT_URL)",
    )
    p.add_argument(
        "--resume-from",
        default=os.environ.get("SNAPSHOT_RESUME_FROM"),
        help="snapshot to resume from (env SNAPSHOT_RESUME_FROM; default: --snapshot-url)",
    )
    p.add_argument("--fresh", action="store_true", help="ignore any existing snapshot")
    p.add_argument("--snapshot-every", type=int, default=1000, help="steps between snapshots")
    p.add_argument("--keep", type=int, default=None, help="keep this many snapshots")
    p.add_argument("--progress-every", type=int, default=500)
    p.add_argument("--grace-s", type=float, default=None, help="default: RESUMABLE_GRACE_S or 25")
    p.add_argument("--spot", choices=sorted(WATCHERS), action="append", default=[])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state = initial_state(args.grid, args.seed)
    source = None if args.fresh else (args.resume_from or args.snapshot_url)
    extra = resume_from_url(state, source)
    step = int(extra["step"]) if extra else 0
    params = (0.16, 0.08, args.feed, args.kill)

    def snapshot_extra() -> dict[str, object]:
        return {"step": step, "grid": args.grid, "feed": args.feed, "kill": args.kill}

    save = make_preempt_snapshot_hook(
        state, args.snapshot_url, extra=snapshot_extra, keep=args.keep
    )
    watchers = [WATCHERS[name]() for name in args.spot]
    print(f"starting at step {step} of {args.steps} (snapshots -> {args.snapshot_url})")
    t0, first = time.monotonic(), step
    with PreemptionGuard(
        save, signals=(signal.SIGTERM, signal.SIGUSR1), grace_s=args.grace_s, watchers=watchers
    ) as guard:
        while step < args.steps:
            advance(state, *params)
            step += 1
            if args.snapshot_every and step % args.snapshot_every == 0:
                save()
            if args.progress_every and step % args.progress_every == 0:
                rate = (step - first) / max(time.monotonic() - t0, 1e-9)
                v_mean = float(state["gray-scott/V"].mean())
                print(f"step {step:>7}  {rate:7.0f} steps/s  mean V {v_mean:.6f}", flush=True)
            guard.checkpoint_if_preempted()  # safe point: exits 75 after saving if preempted
        save()  # inside the guard: a SIGTERM now comes after the work is done -> exit 0
    print(f"done: {step} steps; final snapshot at {args.snapshot_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
