"""Open a sweep (optionally resuming from a source), record one item, report the outcome.

argv: checkpoint_path resume_from|- item_index. Prints "ACK <i>" after record() returned, or
"LOCKED" if the checkpoint was held by another launch. Used by test_install_race.py.
"""

from __future__ import annotations

import sys

from resumable import ResumableSweep
from resumable.errors import CheckpointLockedError

ITEMS = [{"i": i} for i in range(20)]


def main() -> int:
    path, source, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        with ResumableSweep(
            ITEMS,
            checkpoint_path=path,
            resume_from=None if source == "-" else source,
            handle_signals=False,
        ) as sweep:
            sweep.record(ITEMS[index], index)
            print(f"ACK {index}", flush=True)
    except CheckpointLockedError:
        print("LOCKED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
