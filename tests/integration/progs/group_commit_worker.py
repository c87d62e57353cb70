"""Records a sweep's items in groups with `record_many`, printing each group's keys once it is
acknowledged (durable), until killed.

usage: group_commit_worker.py CHECKPOINT_PATH N_ITEMS SEED SEGMENT_BYTES
"""

from __future__ import annotations

import random
import sys

from resumable import ResumableSweep


def main() -> int:
    ckpt, n, seed, segment_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    items = list(range(n))
    with ResumableSweep(
        items, key=str, checkpoint_path=ckpt, segment_bytes=segment_bytes, handle_signals=False
    ) as sweep:
        pending = list(sweep.pending)
        print("ready", flush=True)
        while pending:
            size = rng.randint(1, 300)
            group, pending = pending[:size], pending[size:]
            sweep.record_many([(c, {"v": c * 3, "pad": "x" * rng.randint(0, 200)}) for c in group])
            print("acked " + ",".join(map(str, group)), flush=True)
    print("finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
