"""A simulation that saves in the background every step and is SIGTERMed during a save.

Usage: bg_save_sim.py SNAPSHOT MB [--stuck]. At step 3 it starts a background save, sends
itself a real SIGTERM, overwrites its state at once, and reaches a safe point (or, with
--stuck, never does: the watchdog ends it). Prints "inflight N" from its preemption hook and
whether the snapshot exists when its flush callable runs.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

from resumable.preempt import PreemptionGuard
from resumable.snapshot import pending_saves, save_state_with_manifest


def main() -> None:
    url, mb = sys.argv[1], int(sys.argv[2])
    stuck = "--stuck" in sys.argv
    n = (mb << 20) // 8 // 4
    graph = {f"u{i}": np.zeros(n) for i in range(4)}

    def report() -> None:
        print(f"inflight {len(pending_saves())}", flush=True)

    def flush() -> None:  # e.g. a mirror upload: it must see the finished snapshot
        print(f"flush sees snapshot {os.path.exists(url)}", flush=True)

    # stuck: the watchdog fires 0.05 s after the signal, long before the save is done, and
    # may wait up to ~10 s for it
    grace, reserve = (20.0, 19.95) if stuck else (20.0, 1.0)
    with PreemptionGuard(report, flush=[flush], grace_s=grace, flush_reserve_s=reserve) as guard:
        for step in range(1, 10):
            for arr in graph.values():
                arr[:] = step
            if step == 3:
                save_state_with_manifest(graph, url, extra={"step": step}, background=True)
                os.kill(os.getpid(), signal.SIGTERM)
                for arr in graph.values():
                    arr[:] = -1.0  # the copy, not this, must be saved
                if stuck:
                    print(f"stuck {len(pending_saves())}", flush=True)
                    while True:  # no safe point ever again: the watchdog must end it
                        time.sleep(0.01)
            guard.checkpoint_if_preempted()
    print("finished", flush=True)


if __name__ == "__main__":
    main()
