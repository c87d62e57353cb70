"""A finished sweep left in the ways users leave it, for test_exit_paths.py.

usage: exit_worker.py CHECKPOINT_PATH MIRROR N MODE [FLUSH_TIMEOUT_S]

MODE: "no-close" (records N items, never closes, returns from main: interpreter exit);
"with" (the same inside `with`, the usual way). The mirror paces itself once an hour, so
records reach it only through flush/close. The default logging set-up (none) is kept: what
users see is what Python's last-resort handler prints to stderr. Prints "recorded N" when done
recording and "leaving" just before the sweep is left.
"""

from __future__ import annotations

import sys

from resumable import MirrorOptions, ResumableSweep


def main() -> int:
    ckpt, mirror, n, mode = sys.argv[1:5]
    options = MirrorOptions(interval_s=3600.0, max_backoff_s=0.5)
    if len(sys.argv) > 5:
        options = MirrorOptions(
            interval_s=3600.0, max_backoff_s=0.5, flush_timeout_s=float(sys.argv[5])
        )
    items = list(range(int(n)))
    sweep = ResumableSweep(
        items, key=str, checkpoint_path=ckpt, snapshot_dir=mirror, mirror_options=options
    )
    if mode == "with":
        with sweep:
            for item in sweep.pending:
                sweep.record(item, {"x": item * 2})
            print("recorded", n, flush=True)
            print("leaving", flush=True)
    else:
        for item in sweep.pending:
            sweep.record(item, {"x": item * 2})
        print("recorded", n, flush=True)
        print("leaving", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
