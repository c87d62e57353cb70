"""A sweep worker for the SIGKILL test: deterministic numpy work per item, acknowledged keys.

usage: sweep_worker.py CHECKPOINT_PATH ACK_FILE N_ITEMS SEGMENT_BYTES

Runs (or resumes) a sweep over N_ITEMS items. Each result is computed from `sweep.seed(item)`
only, so any run, interrupted or not, produces bitwise-identical results. After every `record()`
returns, the item's key is appended to ACK_FILE with one write() followed by fsync: a key in
that file was acknowledged as durable. Prints "ready" once the sweep is open and "finished"
at the end; exit code 0 only when every item is done.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from resumable import ResumableSweep


def compute(seed: int, i: int) -> dict:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((6, 6))
    v = rng.standard_normal(6).astype(np.float32)
    w = np.linalg.solve(m + 6 * np.eye(6), v.astype(np.float64))
    return {
        "i": i,
        "w": w,
        "v": v,
        "eig": np.sort(np.linalg.eigvals(m @ m.T).real),
        "n": int(rng.integers(0, 2**62)),
        "s": float(np.sum(np.sin(m))),
        "t": (i, float(w[0])),
    }


def main() -> int:
    ckpt, ack_path, n_items, segment_bytes = sys.argv[1:5]
    items = [{"i": i} for i in range(int(n_items))]
    ack = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    with ResumableSweep(items, checkpoint_path=ckpt, segment_bytes=int(segment_bytes)) as sweep:
        print("ready", flush=True)
        for item in sweep.pending:
            sweep.record(item, compute(sweep.seed(item), item["i"]))
            os.write(ack, (sweep.key(item) + "\n").encode())
            os.fsync(ack)
        done = sweep.status().done
    os.close(ack)
    print("finished", done, flush=True)
    return 0 if done == len(items) else 3


if __name__ == "__main__":
    sys.exit(main())
