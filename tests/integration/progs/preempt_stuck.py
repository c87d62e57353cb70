"""Saves one snapshot, then misses the grace deadline (run by test_preempt_subprocess.py).

``--mode python``: a pure-Python loop mutating the arrays with no safe point (the flag is raised,
but nobody polls it).
``--mode c``: a long C call that releases the GIL (pbkdf2), so the Python-level handler cannot
even run; only the watchdog, woken through the signal wake-up fd, notices the SIGTERM.
``--mode hook``: safe points are reached, but a hook runs past the deadline.
A flush callable writes ``--marker`` with the seconds it was given.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np

from resumable.preempt import PreemptionGuard, make_preempt_snapshot_hook


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--snapshot", required=True)
    p.add_argument("--marker", required=True)
    p.add_argument("--mode", choices=("python", "c", "hook"), default="python")
    args = p.parse_args()

    graph = {"x": np.arange(1000, dtype=np.int64), "y": np.ones((50, 50))}
    save = make_preempt_snapshot_hook(graph, args.snapshot, extra={"step": 1})
    save()

    def flush(remaining: float) -> None:
        Path(args.marker).write_text(f"{remaining:.3f}")

    def hang() -> None:
        time.sleep(60)

    hooks = (hang,) if args.mode == "hook" else (save,)
    with PreemptionGuard(*hooks, flush=[flush]) as guard:
        print("READY", flush=True)
        i = 0
        while True:
            if args.mode == "c":
                hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 50_000_000)
            elif args.mode == "hook":
                time.sleep(0.001)
                guard.checkpoint_if_preempted()  # runs `hang`, which overruns the deadline
            graph["x"][i % 1000] += 1
            graph["y"] *= 1.0000001
            i += 1


if __name__ == "__main__":
    main()
