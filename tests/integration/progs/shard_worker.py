"""One shard of a sharded sweep, as one task of a job array would run it.

usage: shard_worker.py CHECKPOINT_PATH ROOT_URL N_ITEMS ITEM_SECONDS

The shard comes from the job-array environment (`shard_from_env`: JOB_COMPLETION_INDEX or
SLURM_ARRAY_TASK_ID ... with the count); without one the sweep runs unsharded (the reference).
ROOT_URL ("-" for none) is both the mirror and the resume source, the same for every task, as
in the job specs. Results depend on the item's seed only. Prints "ready INDEX COUNT SOURCE"
once the sweep is open and "finished DONE" at the end.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from resumable import MirrorOptions, ResumableSweep
from resumable.shards import shard_from_env


class Work:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, item: dict, seed: int) -> dict:
        time.sleep(self.seconds)
        rng = np.random.default_rng(seed)
        return {"i": item["i"], "v": rng.standard_normal(4), "k": int(rng.integers(0, 2**62))}


def main() -> int:
    ckpt, root, n_items, seconds = sys.argv[1:5]
    root_url = None if root == "-" else root
    shard = shard_from_env()
    items = [{"i": i} for i in range(int(n_items))]
    with ResumableSweep(
        items,
        checkpoint_path=ckpt,
        name="exp",
        snapshot_dir=root_url,
        resume_from=root_url,
        shard=shard,
        mirror_options=MirrorOptions(interval_s=0.2),  # a short test: mirror often
    ) as sweep:
        index, count = shard if shard is not None else (0, 1)
        print(f"ready {index} {count} {sweep.resumed_from}", flush=True)
        sweep.run(Work(float(seconds)), progress=False)
        done = sweep.status().done
    print(f"finished {done}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
