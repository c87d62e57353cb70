"""A small deterministic simulation under PreemptionGuard, run by test_preempt_subprocess.py.

Diffusion on a grid (updated in place), a float32 accumulator, random-walking particles whose
noise is derived from the step number (so a resumed run draws exactly the same numbers), and a
0-d step counter. Prints ``READY <step>`` once the guard is active, ``DONE`` at the end.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from resumable.preempt import PreemptionGuard, make_preempt_snapshot_hook, resume_from_url
from resumable.snapshot import save_state_with_manifest


def initial_state(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "field/u": rng.random((n, n)),
        "field/acc": np.zeros((n, n), dtype=np.float32),
        "particles/pos": rng.random((256, 2)),
        "counter": np.zeros((), dtype=np.int64),
    }


def advance(g: dict[str, np.ndarray], step: int) -> None:
    rng = np.random.default_rng([2024, step])
    u = g["field/u"]
    lap = np.roll(u, 1, 0) + np.roll(u, -1, 0) + np.roll(u, 1, 1) + np.roll(u, -1, 1) - 4 * u
    u += 0.1 * lap + 0.001 * rng.standard_normal(u.shape)
    g["field/acc"] += u.astype(np.float32)
    g["particles/pos"] = (g["particles/pos"] + 0.01 * rng.standard_normal((256, 2))) % 1.0
    g["counter"] += 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--snapshot", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--snap-every", type=int, default=0)
    p.add_argument("--step-sleep", type=float, default=0.002)
    args = p.parse_args()

    graph = initial_state(48)
    extra = resume_from_url(graph, os.environ.get("SNAPSHOT_RESUME_FROM"))
    step = extra["step"] if extra else 0
    assert int(graph["counter"]) == step
    hook = make_preempt_snapshot_hook(graph, args.snapshot, extra=lambda: {"step": step})
    with PreemptionGuard(hook) as guard:
        print(f"READY {step}", flush=True)
        while step < args.steps:
            advance(graph, step)
            step += 1
            if args.snap_every and step % args.snap_every == 0:
                hook()
            time.sleep(args.step_sleep)
            guard.checkpoint_if_preempted()
        # still guarded: a SIGTERM from here on arrives after the last safe point, the work is
        # done, and the process finishes normally (exit 0) instead of dying half-way
        save_state_with_manifest(graph, args.out, extra={"step": step})
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
