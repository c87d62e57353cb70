"""A sweep run through `sweep.run` with a process pool, for the preemption tests.

usage: runner_sweep.py CHECKPOINT_PATH MARKER_DIR N_ITEMS ITEM_SECONDS POOL [SIGNALS]

POOL: "own" (run() makes a 2-process pool), "user" (a ProcessPoolExecutor(2) made here with
``initializer=worker_initializer``) or "serial" (no executor). SIGNALS: comma-separated signal
names the sweep treats as preemption (default SIGTERM). Each item writes MARKER_DIR/<i> when
it starts, works for ITEM_SECONDS, and returns a result computed from its seed only. Prints
"ready" once the sweep is open and "finished done=... failed=..." at the end.
"""

from __future__ import annotations

import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from resumable import ResumableSweep
from resumable.runner import worker_initializer


def work(item: dict, seed: int, *, markers: str = "", seconds: float = 0.0) -> dict:
    if markers:
        Path(markers, str(item["i"])).touch()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    rng = np.random.default_rng(seed)
    return {"i": item["i"], "x": rng.standard_normal(3), "n": int(rng.integers(0, 2**62))}


class Work:
    """Picklable callable carrying the marker dir and duration (`seed` is detected on it)."""

    def __init__(self, markers: str, seconds: float) -> None:
        self.markers, self.seconds = markers, seconds

    def __call__(self, item: dict, seed: int) -> dict:
        return work(item, seed, markers=self.markers, seconds=self.seconds)


def main() -> int:
    ckpt, markers, n_items, seconds, pool = sys.argv[1:6]
    names = sys.argv[6].split(",") if len(sys.argv) > 6 else ["SIGTERM"]
    signals = [signal.Signals[name] for name in names]
    items = [{"i": i} for i in range(int(n_items))]
    executor: object = None
    if pool == "own":
        executor = 2
    elif pool == "user":
        executor = ProcessPoolExecutor(2, initializer=worker_initializer)
    fn = Work(markers, float(seconds))
    with ResumableSweep(items, checkpoint_path=ckpt, signals=signals, grace_s=10) as sweep:
        print("ready", flush=True)
        summary = sweep.run(fn, executor=executor, progress=False)
        status = sweep.status()
    print(f"finished done={status.done} failed={status.failed} summary={summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
