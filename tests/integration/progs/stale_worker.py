"""One launch of a mirrored sweep, for the stale-local-checkpoint tests (test_stale_local.py).

usage: stale_worker.py CHECKPOINT_PATH MIRROR KEYS [--flush-after N] [--kill] [--param-of K=V]

Like a cluster task whose spec sets snapshot_dir and resume_from to MIRROR (a directory). Opens
the sweep (60 items "k00".."k59"), records the pending items among KEYS ("a:b" = k<a>..k<b-1>,
or "all") in order, printing "recorded KEY" after each; with --flush-after N it flushes the
mirror after the N-th record and prints "flushed"; with --kill it SIGKILLs itself after the
last record (no close: what the mirror has not got stays only on local disk). The mirror paces
itself once an hour, so only the start and explicit flushes reach it. --param-of changes one
item's parameters (another item under the same key). Prints "opened DONE FROM" first and
"closed DONE" at the end. Results come from the key only: equal on every machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import numpy as np

from resumable import MirrorOptions, ResumableSweep
from resumable.errors import ResumableError

N_ITEMS = 60


def compute(item: dict) -> dict:
    rng = np.random.default_rng(item["i"] * 7919 + item["p"])
    return {"i": item["i"], "x": float(rng.standard_normal()), "v": rng.standard_normal(3)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("mirror")
    ap.add_argument("keys")
    ap.add_argument("--flush-after", type=int, default=None)
    ap.add_argument("--kill", action="store_true")
    ap.add_argument("--param-of", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    params = {}
    if args.param_of:
        k, v = args.param_of.split("=")
        params[k] = int(v)
    items = [{"i": i, "p": params.get(f"k{i:02d}", 0)} for i in range(N_ITEMS)]
    if args.keys == "all":
        wanted = {f"k{i:02d}" for i in range(N_ITEMS)}
    else:
        a, b = (int(x) for x in args.keys.split(":"))
        wanted = {f"k{i:02d}" for i in range(a, b)}
    try:
        sweep = ResumableSweep(
            items,
            key=lambda it: f"k{it['i']:02d}",
            checkpoint_path=args.ckpt,
            snapshot_dir=args.mirror,
            resume_from=args.mirror,
            mirror_options=MirrorOptions(interval_s=3600.0, flush_timeout_s=30.0),
        )
    except ResumableError as exc:
        print(f"refused {type(exc).__name__}: {exc}", flush=True)
        return 78
    print("opened", sweep.status().done, sweep.resumed_from, flush=True)
    n = 0
    for item in sweep.pending:
        key = sweep.key(item)
        if key not in wanted:
            continue
        sweep.record(item, compute(item))
        n += 1
        print("recorded", key, flush=True)
        if args.flush_after is not None and n == args.flush_after:
            sweep.flush(timeout=30)
            print("flushed", flush=True)
    if args.kill:
        os.kill(os.getpid(), signal.SIGKILL)
    sweep.close()
    print("closed", sweep.status().done, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
