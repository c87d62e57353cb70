"""Pausing the cyclic garbage collector around bulk work, correctly across threads.

Building a million keys, replaying a journal of a million results and committing a group of
records make millions of small acyclic objects; each full collection would walk every one of
them (and the user's items) again, about a quarter of a large reopen. So that work runs with
the collector paused.

`gc.disable()` is process-wide. The obvious save-and-restore (``was = gc.isenabled()``,
disable, and ``if was: gc.enable()`` afterwards) is wrong as soon as two threads do it at
once, as two user threads calling `record_many` do, or a view deriving fingerprints while a
sweep commits: the second to start finds the collector already disabled and leaves it so; the
first to finish enables it under the other's feet (measured: seconds on a replay of a million
results). And a process forked while another thread held a pause would keep the collector off
for good. `gc_paused` counts the pauses instead, per thread: the first one disables the
collector, the last one to end enables it again (if it was enabled before the first). After a
fork, the child keeps only the pauses of the thread that forked (the others do not run there).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator

_guard = threading.Lock()
_pauses: dict[int, int] = {}  # thread ident -> pauses it holds
_was_enabled = False  # whether the collector ran before the first pause


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while the block runs (re-entrant, thread-safe)."""
    global _was_enabled
    me = threading.get_ident()
    with _guard:
        if not _pauses:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses[me] = _pauses.get(me, 0) + 1
    try:
        yield
    finally:
        with _guard:
            left = _pauses.pop(me) - 1
            if left:
                _pauses[me] = left
            if not _pauses and _was_enabled:
                gc.enable()


def _after_fork_in_child() -> None:
    global _guard
    _guard = threading.Lock()  # another thread may have held it at the fork
    me = threading.get_ident()
    for ident in [i for i in _pauses if i != me]:
        del _pauses[ident]
    if not _pauses and _was_enabled:
        gc.enable()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
