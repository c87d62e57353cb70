"""Opening a sweep: consult the local checkpoint, the resume source and the mirror, check the
items against what was recorded, then write the launch record and start the mirror.

Private to `ResumableSweep` (it sets the sweep's writer, state and mirror); kept apart so that
sweep.py stays about recording and iterating.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .checkpoint import CheckpointWriter, Loaded
from .codec import canonical_json, decode
from .errors import (
    CheckpointExistsError,
    CheckpointNotFoundError,
    ConfigurationError,
    ItemsChangedError,
    SourceUnreachableError,
)
from .journal import Record
from .manifest import MANIFEST_NAME, Manifest
from .mirror import Mirror, check_mirror_place
from .remote import read_manifest, source_store
from .resume import open_checkpoint, sharded_root_error
from .shards import (
    DESCRIPTOR_NAME,
    check_descriptor,
    ensure_local_descriptor,
    ensure_remote_descriptor,
    read_descriptor,
)
from .state import State
from .storage import Store

if TYPE_CHECKING:
    from .checkpoint import DirLock
    from .sweep import ResumableSweep

log = logging.getLogger("resumable.sweep")


def _is_http(url: str) -> bool:
    return url.split("://", 1)[0].lower() in ("http", "https") and "://" in url


def open_sweep(sweep: ResumableSweep, resume: str, segment_bytes: int) -> None:
    """Open (or create) the sweep's checkpoint: consult sources, check items, write a launch."""
    source = source_store(sweep.resume_from, sweep.storage_options) if sweep.resume_from else None
    mirror = Store(sweep.snapshot_dir, sweep.storage_options) if sweep.snapshot_dir else None
    if mirror is not None and _is_http(mirror.root):
        raise ConfigurationError(
            f"snapshot_dir {mirror.display} is read-only (http/https); mirror to a local "
            "directory, file://, s3://, gs://, ... (and serve that over HTTP if you like)"
        )
    if mirror is not None:
        check_mirror_place(mirror, sweep.mirror_options)  # before anything is written
        _refuse_overlap(sweep.progress_dir, mirror, "snapshot_dir")
        local_root, _, mirror_root = sweep._sweep_root
        if mirror_root and sweep.shard is not None:
            _refuse_overlap(local_root, Store(mirror_root, sweep.storage_options), "snapshot_dir")
    if source is not None and _same_place(sweep.progress_dir, source):
        log.info(
            "resume_from %s is this sweep's own progress directory: resuming from it as the "
            "local checkpoint",
            source.display,
        )
        source = None
    if sweep.shard is not None:
        _check_shard_descriptors(sweep)
    elif (sweep.progress_dir / DESCRIPTOR_NAME).is_file():
        raise sharded_root_error(str(sweep.progress_dir))
    if resume == "never":
        _refuse_existing(sweep, source)
        source = None
    key = sweep.signing_key
    opened = open_checkpoint(
        sweep.progress_dir,
        sweep.name,
        source=source,
        mirror=mirror,
        signing_key=key,
        unsharded=sweep.shard is None,
    )
    loaded = opened.loaded
    lock: DirLock | None = opened.lock  # None once handed to the writer
    try:
        if resume == "must" and loaded is None:
            where = f"{sweep.progress_dir}" + (f" or {source.display}" if source else "")
            raise CheckpointNotFoundError(f"resume='must' but no checkpoint exists at {where}")
        identity = sweep._items.identity()
        changed = (
            _changed_keys(sweep, loaded)
            if loaded is not None and not sweep._items.matches(loaded.state.items_sha256)
            else []
        )
        if changed and sweep.on_change == "error":
            shown = ", ".join(repr(k) for k in changed[:20])
            more = f" and {len(changed) - 20} more" if len(changed) > 20 else ""
            raise ItemsChangedError(
                f"{len(changed)} item(s) changed since they were recorded in "
                f"{sweep.progress_dir}: {shown}{more}. Pass on_change='rerun' to run them "
                "again or on_change='keep' to keep the recorded results"
            )
        if loaded is None:
            manifest = Manifest(sweep=sweep.name, sweep_id=uuid.uuid4().hex, created=time.time())
            sweep._writer = CheckpointWriter.create(
                sweep.progress_dir,
                manifest,
                segment_bytes=segment_bytes,
                signing_key=key,
                lock=lock,
            )
            lock = None
            sweep._state = State()
        else:
            sweep._writer = CheckpointWriter(
                sweep.progress_dir,
                loaded,
                opened.lock,
                segment_bytes=segment_bytes,
                signing_key=key,
            )
            lock = None
            sweep._state = loaded.state
    except BaseException:
        if lock is not None:
            lock.release_and_tidy()
        raise
    sweep.resumed_from = opened.source
    sweep.resumed_from_location = opened.location
    try:
        _write_launch(sweep, identity, changed)
        if opened.adoption is not None:  # a diverged local history was set aside
            _carry_over(sweep, opened.adoption.carried)
        if mirror is not None:
            sweep._mirror = Mirror(
                mirror,
                sweep._writer,
                options=sweep.mirror_options,
                known=opened.mirror_known,
                owner=f"{sweep.launch_id}@{sweep.host}",
                signing_key=key,
            )
            sweep._mirror.notify()
    except BaseException:
        sweep._writer.close()
        raise


def _resolved(path: Path) -> Path:
    """`path` with symlinks, `..` and `.` resolved (as far as it exists), absolute."""
    return Path(os.path.realpath(os.path.abspath(path)))


def _same_place(progress_dir: Path, store: Store) -> bool:
    return store.local_path is not None and _resolved(store.local_path) == _resolved(progress_dir)


def _refuse_overlap(progress_dir: Path, store: Store, option: str) -> None:
    """A mirror in, at or around the progress directory would replace the checkpoint's own
    manifest with the mirror's (and lose acknowledged records): refuse before anything else."""
    if store.local_path is None:
        return
    mine, theirs = _resolved(progress_dir), _resolved(store.local_path)
    if mine == theirs:
        how = "is"
    elif mine in theirs.parents:
        how = "is inside"
    elif theirs in mine.parents:
        how = "contains"
    else:
        return
    raise ConfigurationError(
        f"{option} {store.display} (resolved: {theirs}) {how} the sweep's own progress directory "
        f"{progress_dir} (resolved: {mine}). The mirror must be somewhere else: its manifest "
        f"would replace the checkpoint's own. Choose another {option}, or another checkpoint_path"
    )


def _check_shard_descriptors(sweep: ResumableSweep) -> None:
    """The shard count is fixed per sweep: check it (or record it, the first time)."""
    assert sweep.shard is not None
    count = sweep.shard[1]
    local_root, resume_root, mirror_root = sweep._sweep_root
    if resume_root:
        source = source_store(resume_root, sweep.storage_options)
        body = read_descriptor(source)
        if body is not None:
            check_descriptor(body, sweep.name, count, source.display)
    ensure_local_descriptor(local_root, sweep.name, count)
    if mirror_root:
        mirror = Store(mirror_root, sweep.storage_options)
        try:
            ensure_remote_descriptor(mirror, sweep.name, count)
        except SourceUnreachableError as exc:
            log.warning(
                "snapshot_dir %s unreachable; shard count not checked: %s", mirror.display, exc
            )


def _refuse_existing(sweep: ResumableSweep, source: Store | None) -> None:
    """resume='never': refuse when a checkpoint exists here or at the source."""
    where = str(sweep.progress_dir) if (sweep.progress_dir / MANIFEST_NAME).exists() else None
    if where is None and source is not None and read_manifest(source) is not None:
        where = source.display
    if where is not None:
        raise CheckpointExistsError(
            f"resume='never' but a checkpoint of sweep {sweep.name!r} exists at {where}"
        )


def _changed_keys(sweep: ResumableSweep, loaded: Loaded) -> list[str]:
    """Keys recorded with a fingerprint that differs from their item's fingerprint now."""
    changed = []
    for source in (loaded.state.results, loaded.state.failure_records):
        for key, rec in source.items():
            if key not in sweep._items.index or rec.fp is None:
                continue
            now = sweep._items.fingerprint(key)
            if now is not None and rec.fp != now:
                changed.append(key)
    return changed


def _carry_over(sweep: ResumableSweep, carried: list[Record]) -> None:
    """Re-record the results only a set-aside local history held (resume.adopt_source_history),
    as they were: same value, duration, launch and item fingerprint."""
    for rec in carried:
        sweep._append("result", rec.body(), key=rec.key, fp=rec.fp)


def _write_launch(sweep: ResumableSweep, identity: str, changed: list[str]) -> None:
    sweep._append(
        "launch",
        {
            "launch": sweep.launch_id,
            "host": sweep.host,
            "pid": os.getpid(),
            "items_sha256": identity,
            "n_items": len(sweep._items.keys),
            "library_version": __version__,
        },
    )
    if identity != sweep._state.items_sha256:  # only the appended entries, if that is all
        state = sweep._state
        payload = sweep._items.record_payload(state.items_sha256, state.items_count)
        sweep._append("items", payload, fp=identity)
    if changed and sweep.on_change == "rerun":
        done = [k for k in changed if k in sweep._state.results]
        failed = [k for k in changed if k in sweep._state.failures]
        if done:
            sweep._append("invalidate", {"keys": done, "reason": "item changed"})
        if failed:
            sweep._append("retry", {"keys": failed, "reason": "item changed"})
    sweep._persisted_meta = canonical_json(sweep._state.meta)
    if sweep.meta:
        sweep._save_meta()
    else:
        sweep.meta = {k: v for k, v in decode(sweep._state.meta, where="meta").items()}


# -- recording ---------------------------------------------------------------------------
