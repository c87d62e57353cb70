"""Marking failed items of a closed checkpoint for another attempt (`retry_failed`).

`ResumableSweep.retry_failures()` does this inside an open sweep; this module does it on a
checkpoint no sweep holds open, so that the command line (``resumable retry-failed``) and scripts
share one implementation: every shard's lock is taken first (all or nothing), the failures are
read through the verified loader, and the ``retry`` records are appended through the checkpoint
writer, durably. Local checkpoints only: a mirror follows on the sweep's next launch. Public as
``resumable.sweep.retry_failed``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ._checkpoint import PROGRESS_SUFFIX, CheckpointWriter, DirLock, Loaded, load
from ._manifest import MANIFEST_NAME
from ._urls import is_url, redact
from .errors import CheckpointLockedError, CheckpointNotFoundError, ConfigurationError
from .shards import DESCRIPTOR_NAME, parse_descriptor, shard_dir_name


@dataclass(frozen=True)
class RetryOutcome:
    """What `retry_failed` marked (or, with ``dry_run``, would mark).

    ``keys`` are the marked keys, shard by shard; ``by_type`` counts them by error type;
    ``not_failed`` are asked-for keys that are not failed items (skipped).
    """

    sweep: str
    keys: list[str] = field(default_factory=list)
    by_type: dict[str, int] = field(default_factory=dict)
    not_failed: list[str] = field(default_factory=list)
    dry_run: bool = False


def progress_dirs(target: str | os.PathLike[str]) -> list[Path]:
    """The local progress directories behind a checkpoint (one, or one per started shard).

    ``target`` is a ``checkpoint_path`` or its progress directory. Raises
    `CheckpointNotFoundError` when neither holds a manifest or a shard descriptor.
    """
    base = Path(target).expanduser()
    for cand in (base, Path(str(base) + PROGRESS_SUFFIX)):
        if (cand / MANIFEST_NAME).is_file():
            return [cand]
        if (cand / DESCRIPTOR_NAME).is_file():
            body = parse_descriptor((cand / DESCRIPTOR_NAME).read_bytes(), str(cand))
            dirs = [cand / shard_dir_name(i, body["shards"]) for i in range(body["shards"])]
            return [d for d in dirs if (d / MANIFEST_NAME).is_file()]
    raise CheckpointNotFoundError(
        f"no checkpoint at {target} (looked for {MANIFEST_NAME} or {DESCRIPTOR_NAME} there and "
        f"in {target}{PROGRESS_SUFFIX})"
    )


def retry_failed(
    checkpoint_path: str | os.PathLike[str],
    *,
    keys: Iterable[str] | None = None,
    error_types: Iterable[str] | None = None,
    dry_run: bool = False,
) -> RetryOutcome:
    """Durably mark failed items of a closed local checkpoint as pending again.

    The next launch of the sweep runs them. ``keys`` and ``error_types`` narrow the selection
    (default: every failed item); asked-for keys that are not failed are reported in
    ``not_failed``, not an error. With ``dry_run`` nothing is written. Sharded checkpoints are
    handled whole: every started shard is locked before any is changed.

    Raises `ConfigurationError` for a URL (run it where the sweep runs, on its
    ``checkpoint_path``), `CheckpointNotFoundError` when there is no checkpoint, and
    `CheckpointLockedError` while a sweep holds it open (use ``sweep.retry_failures()`` there).
    """
    if is_url(str(checkpoint_path)):
        raise ConfigurationError(
            f"retry-failed changes a local checkpoint; {redact(str(checkpoint_path))} is a URL. "
            "Run it on the machine that runs the sweep, on its checkpoint_path (the next launch "
            "mirrors the change)"
        )
    wanted = None if keys is None else list(keys)
    types = None if error_types is None else set(error_types)
    dirs = progress_dirs(checkpoint_path)
    locks: list[DirLock] = []
    try:
        for d in dirs:  # every shard locked first: all or nothing
            try:
                locks.append(DirLock(d))
            except CheckpointLockedError as exc:
                raise CheckpointLockedError(
                    f"{exc}. A sweep is running on this checkpoint: stop it first, or call "
                    "sweep.retry_failures() inside it"
                ) from None
        plan: list[tuple[Path, Loaded, DirLock, list[str]]] = []
        failed_all: set[str] = set()
        name = ""
        for d, lock in zip(dirs, locks, strict=True):
            loaded = load(d)
            if loaded is None:  # listed because its manifest exists; gone under our lock
                raise CheckpointNotFoundError(f"no checkpoint at {d} (its manifest disappeared)")
            name = loaded.manifest.sweep
            failures = loaded.state.failures
            failed_all.update(failures)
            chosen = [
                k
                for k in failures
                if (wanted is None or k in wanted)
                and (types is None or failures[k].get("error_type") in types)
            ]
            plan.append((d, loaded, lock, chosen))
        by_type: dict[str, int] = {}
        for _d, loaded, _lock, chosen in plan:
            for k in chosen:
                t = str(loaded.state.failures[k].get("error_type"))
                by_type[t] = by_type.get(t, 0) + 1
        if not dry_run:
            for d, loaded, lock, chosen in plan:
                if not chosen:
                    continue
                writer = CheckpointWriter(d, loaded, lock)
                locks.remove(lock)  # the writer releases it on close
                try:
                    writer.append("retry", {"keys": chosen, "reason": "cli"})
                finally:
                    writer.close()
    finally:
        for lock in locks:
            lock.release()
    return RetryOutcome(
        sweep=name,
        keys=[k for *_, chosen in plan for k in chosen],
        by_type=by_type,
        not_failed=[k for k in (wanted or []) if k not in failed_all],
        dry_run=dry_run,
    )
