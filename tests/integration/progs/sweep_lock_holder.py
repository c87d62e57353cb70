"""Hold a sweep's checkpoint open for writing until killed.

usage: sweep_lock_holder.py CHECKPOINT_PATH

Opens the sweep over items "a".."e" (key=str), records "a", prints "ready <pid>" on stdout
and then blocks reading stdin (the test SIGKILLs it, or closes stdin to let it exit cleanly).
"""

from __future__ import annotations

import os
import sys

from resumable import ResumableSweep


def main() -> int:
    ckpt = sys.argv[1]
    sweep = ResumableSweep(list("abcde"), checkpoint_path=ckpt, key=str)
    if not sweep.is_done("a"):
        sweep.record("a", {"by": os.getpid()})
    print(f"ready {os.getpid()}", flush=True)
    sys.stdin.read()  # until EOF
    sweep.close()
    print("closed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
