"""A sweep worker that mirrors to S3 and resumes from it, for the relaunch test.

usage: mirror_worker.py CHECKPOINT_PATH MIRROR_URL N_ITEMS SEGMENT_BYTES

Like a cluster job whose spec sets both snapshot_dir and resume_from to MIRROR_URL. Each result
is computed from `sweep.seed(item)` only (bitwise-identical on any run). Prints "ready DONE"
once open (DONE: results it resumed with), "flushed DONE" each time `flush()` returned (the
mirror then holds at least DONE results), and "finished DONE" after close(); exit code 0 only
when every item is done. The AWS_* environment points botocore at the test's S3 server.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from resumable import MirrorOptions, ResumableSweep

FLUSH_EVERY = 20


def compute(seed: int, i: int) -> dict:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((5, 5))
    v = rng.standard_normal(5).astype(np.float32)
    return {
        "i": i,
        "w": np.linalg.solve(m + 5 * np.eye(5), v.astype(np.float64)),
        "v": v,
        "n": int(rng.integers(0, 2**62)),
        "s": float(np.sum(np.sin(m))),
    }


def main() -> int:
    ckpt, url, n_items, segment_bytes = sys.argv[1:5]
    items = [{"i": i} for i in range(int(n_items))]
    options = MirrorOptions(interval_s=0.02, max_chunks=4, gc_delay_s=2.0, max_backoff_s=0.5)
    sweep = ResumableSweep(
        items,
        checkpoint_path=ckpt,
        snapshot_dir=url,
        resume_from=url,
        segment_bytes=int(segment_bytes),
        mirror_options=options,
    )
    print("ready", sweep.status().done, flush=True)
    for k, item in enumerate(sweep.pending, 1):
        result = compute(sweep.seed(item), item["i"])
        time.sleep(0.004)  # some work, so that kills land in the middle of the sweep
        sweep.record(item, result)
        if k % FLUSH_EVERY == 0:
            sweep.flush(timeout=60)
            print("flushed", sweep.status().done, flush=True)
    sweep.close(timeout=60)
    done = sweep.status().done
    print("finished", done, flush=True)
    return 0 if done == len(items) else 3


if __name__ == "__main__":
    sys.exit(main())
