"""The checks and defaults of `ResumableSweep`'s constructor arguments, before anything opens.

A wrong mode, segment size or name, or an item key too long, is a `ConfigurationError` (or the
key's own error) raised by the constructor before the checkpoint is touched; the mirror and
resume locations default to the environment (`SWEEP_RESUME_FROM`, `SWEEP_SNAPSHOT_DIR`), as a
job spec sets them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from . import _limits as limits
from ._items import ItemSet
from ._urls import join
from .errors import ConfigurationError
from .shards import shard_dir_name, shard_of

ResumeMode = Literal["allow", "must", "never"]
OnChange = Literal["error", "rerun", "keep"]
ENV_RESUME_FROM = "SWEEP_RESUME_FROM"
ENV_SNAPSHOT_DIR = "SWEEP_SNAPSHOT_DIR"


def check_modes(resume: str, on_change: str, segment_bytes: int) -> None:
    """Refuse a `resume` or `on_change` mode that does not exist, or a segment size out of
    [1, limits.MAX_SEGMENT_BYTES]."""
    if resume not in ("allow", "must", "never"):
        raise ConfigurationError(f"resume must be 'allow', 'must' or 'never', found {resume!r}")
    if on_change not in ("error", "rerun", "keep"):
        raise ConfigurationError(
            f"on_change must be 'error', 'rerun' or 'keep', found {on_change!r}"
        )
    if not isinstance(segment_bytes, int) or not 1 <= segment_bytes <= limits.MAX_SEGMENT_BYTES:
        raise ConfigurationError(
            f"segment_bytes must be an int in [1, {limits.MAX_SEGMENT_BYTES}] "
            f"(limits.MAX_SEGMENT_BYTES), found {segment_bytes!r}"
        )


def sweep_name(name: str | None, checkpoint_path: str | os.PathLike[str]) -> str:
    """`name`, or the checkpoint file's stem; a clear error when neither gives one."""
    found = name if name is not None else Path(checkpoint_path).stem
    if not found or not isinstance(found, str):
        raise ConfigurationError(
            f"cannot derive a sweep name from checkpoint_path {os.fspath(checkpoint_path)!r}; "
            "pass name=..."
        )
    return found


def check_key_lengths(items: ItemSet) -> None:
    """Refuse items whose longest key is over limits.MAX_KEY_CHARS (naming that item)."""
    if items.keys and max(map(len, items.keys)) > limits.MAX_KEY_CHARS:
        longest = max(items.keys, key=len)
        limits.check_key(longest, f"item {items.items[items.index[longest]]!r:.100}")


def shard_places(
    shard: tuple[int, int],
    items: ItemSet,
    progress_dir: Path,
    resume_from: str | None,
    snapshot_dir: str | None,
) -> tuple[ItemSet, Path, str | None, str | None]:
    """A shard's items (`shard`: index, count) and its places: the subdirectory of each."""
    index, count = shard
    items = items.subset(lambda k: shard_of(k, count) == index)
    sub = shard_dir_name(index, count)
    progress_dir = progress_dir / sub
    resume_from = join(resume_from, sub) if resume_from else None
    snapshot_dir = join(snapshot_dir, sub) if snapshot_dir else None
    return items, progress_dir, resume_from, snapshot_dir


def from_env(value: str | None, var: str) -> str | None:
    """`value`, else the environment variable `var`; None for an empty one."""
    if value is None:
        value = os.environ.get(var)
    return value or None
