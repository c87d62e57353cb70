"""The mirror's garbage: superseded and orphaned objects, and when each may be deleted.

Superseded objects are deleted `gc_delay_s` after the first manifest not naming them went up,
never sooner (close() included): a reader that fetched the previous manifest has that long to
read the objects it names. Objects no manifest names, left by killed launches, are collected
by a later launch once they have been unnamed for `gc_delay_s` and are that old.

This module only keeps the books (what is garbage, since when, what is due); the mirror
(_mirror.py) lists and deletes, and only while the manifest there is still its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from . import _segindex as segindex


class Garbage:
    """Objects a manifest of ours named once (or none ever did), to delete in good time."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        # superseded object -> when a manifest not naming it was written (None: not yet)
        self.since: dict[str, float | None] = {}

    def __bool__(self) -> bool:
        return bool(self.since)

    def retire(self, names: Iterable[str]) -> None:
        for name in names:
            self.since.setdefault(name, None)  # the clock starts with the next manifest

    def written(self, named: set[str]) -> None:
        """A manifest naming `named` went up: what it names is no garbage, what it does not
        name is superseded as of now."""
        now = time.monotonic()
        for name, since in list(self.since.items()):
            if name in named:
                del self.since[name]
            elif since is None:  # superseded as of now: readers get gc_delay_s from here
                self.since[name] = now

    def orphans(self, listing: dict[str, float | None], named: set[str]) -> None:
        """Once per launch, after our first manifest: parts no manifest of ours names, left by
        killed launches (uploaded, never named; or superseded, never deleted), become garbage
        with the usual delay from now, if they are at least `gc_delay_s` old already. Whatever
        a published manifest could still name was superseded no later than the manifest we
        replaced, which was there before now; a part younger than the delay may be another
        launch's upload in flight. `listing`: the remote segments directory, name -> mtime."""
        now, wall = time.monotonic(), time.time()
        for name, mtime in listing.items():
            of = segindex.mirrored_part(name)  # a part's row index lives and goes with it
            if name in named or of in named or name in self.since or mtime is None:
                continue
            if wall - mtime >= self.delay_s:
                self.since[name] = now

    def due(self, live: set[str]) -> list[str]:
        """The objects to delete now: superseded at least `gc_delay_s` ago and not among
        `live` (what our manifests name now; those are no garbage any more)."""
        now = time.monotonic()
        due = []
        for name, since in list(self.since.items()):
            if name in live:
                del self.since[name]
            # never one a manifest still names (since is None: not superseded remotely yet)
            elif since is not None and now - since >= self.delay_s:
                due.append(name)
        return due

    def deleted(self, name: str) -> None:
        del self.since[name]
