"""Which process may record through an open sweep: this process's id, kept up to date at forks.

A forked child inherits its parent's open sweep (its writer, its descriptors) but may not
record through it: before every record the writer compares the process it belongs to with
`pid` (the sweep with `process_id()`), and refuses with `foreign_process_error`. `pid` is
os.getpid() read once and again in every forked child (a system call per record would cost
more than the rest of the owner check).
"""

from __future__ import annotations

import os

from .errors import ForeignProcessError

pid = os.getpid()  # this process's id (the writer reads it per record: see the docstring)


def process_id() -> int:
    """os.getpid(), kept up to date at every fork (a system call per record would cost more
    than the rest of the owner check)."""
    return pid


def _note_pid_after_fork() -> None:
    """A forked child is another process (the locks it does not hold: see _dirlock)."""
    global pid
    pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_pid_after_fork)


def foreign_process_error(what: str, owner: int) -> ForeignProcessError:
    return ForeignProcessError(
        f"{what} was opened by process {owner}; process {os.getpid()} (a forked child) may not "
        "record through it. Nothing was written. Record in the process that opened the sweep "
        "(return results to it, as sweep.run does), or open a sweep of its own in the child"
    )
