"""A sweep run on a Ray cluster through `sweep.run(fn, executor=RayExecutor(...))`.

usage: ray_sweep.py CHECKPOINT_PATH GCS_ADDRESS NODE_IP N_ITEMS ITEM_SECONDS

Each item works for ITEM_SECONDS and returns a result computed from its seed only, so a rerun
anywhere gives the same value. Prints "ready" once connected and "finished {json summary}".
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from resumable import ResumableSweep
from resumable.ray_executor import RayExecutor


def work(item: dict, seed: int) -> dict:
    end = time.monotonic() + item["s"]
    while time.monotonic() < end:
        time.sleep(0.005)
    rng = np.random.default_rng(seed)
    return {"i": item["i"], "x": rng.standard_normal(2), "n": int(rng.integers(0, 2**62))}


def main() -> int:
    ckpt, address, node_ip, n_items, seconds = sys.argv[1:6]
    items = [{"i": i, "s": float(seconds)} for i in range(int(n_items))]
    executor = RayExecutor(address=address, _node_ip_address=node_ip, log_to_driver=False)
    print("ready", flush=True)
    with ResumableSweep(items, key=lambda c: str(c["i"]), checkpoint_path=ckpt) as sweep:
        summary = sweep.run(work, executor=executor, progress=False)
    print("finished " + json.dumps({"done": summary.done, "failed": summary.failed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
