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
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resumable import ResumableSweep


def make_items(sizes: list[int], n_temps: int) -> list[dict]:
    temps = np.round(np.linspace(1.5, 3.5, n_temps), 4)
    return [
        {"label": f"L{size}-T{t:.4f}", "L": size, "T": float(t), "sweeps": 300}
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/ising.h5", help="checkpoint_path (output file)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 12, 16, 24])
    ap.add_argument("--temps", type=int, default=60, help="temperatures per size")
    ap.add_argument("--crash-after", type=int, default=None, help="SIGKILL self after N items")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    items = make_items(args.sizes, args.temps)
    t0 = time.monotonic()
    with ResumableSweep(
        items, key=lambda c: c["label"], checkpoint_path=args.out, meta={"model": "ising-2d"}
    ) as sweep:
        st = sweep.status()
        print(
            f"sweep {sweep.name!r}: {st.total} items, {st.done} already done, "
            f"{st.pending} to run (progress in {sweep.progress_dir})",
            flush=True,
        )
        ran = 0
        for item in sweep.pending:
            result = ising(item, sweep.seed(item))
            sweep.record(item, result)
            ran += 1
            if not args.quiet and ran % 20 == 0:
                print(f"  {ran} items this launch, last {item['label']}", flush=True)
            if args.crash_after is not None and ran >= args.crash_after:
                print(f"  simulating a crash: SIGKILL after {ran} items", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        st = sweep.status()
        print(
            f"done: {st.done}/{st.total} items ({ran} this launch, "
            f"{time.monotonic() - t0:.1f} s), {st.launches} launch(es) in all",
            flush=True,
        )
        by_size: dict[int, list[tuple[float, float]]] = {}
        for item, result in sweep.completed_items():
            by_size.setdefault(item["L"], []).append((item["T"], result["susceptibility"]))
        for size, rows in sorted(by_size.items()):
            t_peak = max(rows, key=lambda r: r[1])[0]
            print(f"  L={size:>3}: susceptibility peaks at T={t_peak:.3f} (Tc = 2.269 exact)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
