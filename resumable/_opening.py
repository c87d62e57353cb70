"""Opening a sweep: consult the local checkpoint, the resume source and the mirror, check the
items against what was recorded, and say what the launch must record.

Private to `ResumableSweep`: `open_sweep` reads the sweep's public settings (plus its items and
roots, passed in by the sweep) and returns an `Opened` value (the writer, the replayed state,
where it resumed from, the records the launch appends, the mirror to start), which the sweep
keeps. It never sets the sweep's fields; kept apart so that sweep.py stays about recording and
iterating.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._checkpoint import CheckpointWriter, Loaded
from ._loading import key_sharer
from ._manifest import MANIFEST_NAME, Manifest
from ._mirror import Mirror, check_mirror_place
from ._remote import read_manifest, source_store
from ._resume import open_checkpoint, sharded_root_error
from ._state import State
from ._storage import Store
from ._version import __version__
from .errors import (
    CheckpointExistsError,
    CheckpointNotFoundError,
    ConfigurationError,
    ItemsChangedError,
    SourceUnreachableError,
)
from .shards import (
    DESCRIPTOR_NAME,
    check_descriptor,
    ensure_local_descriptor,
    ensure_remote_descriptor,
    read_descriptor,
)

if TYPE_CHECKING:
    from ._checkpoint import DirLock
    from ._items import ItemSet
    from ._mirror import MirrorOptions
    from .sweep import ResumableSweep

log = logging.getLogger(__name__)


def _is_http(url: str) -> bool:
    return url.split("://", 1)[0].lower() in ("http", "https") and "://" in url


Entry = tuple[str, "dict[str, Any] | bytes", "str | None", "str | None"]
"""One record to append: (kind, payload or its JSON bytes, key, fingerprint)."""


@dataclass
class Opened:
    """What opening produced; the sweep keeps it (it owns the writer from then on)."""

    writer: CheckpointWriter
    state: State  # replayed from the checkpoint (empty when fresh)
    source: str  # "local", "remote" or "fresh"
    location: str | None  # that place (redacted), None if fresh
    # launch, items (made as they are written: a long list's parts one at a time), invalidate
    # / retry
    launch: Iterable[Entry] = field(default_factory=list)
    carried: list[Entry] = field(default_factory=list)  # results only a set-aside history held
    mirror_store: Store | None = None
    mirror_known: tuple[bytes, Manifest] | None = None

    def start_mirror(
        self, options: MirrorOptions, owner: str, signing_key: bytes | None
    ) -> Mirror | None:
        """The background mirror of `writer` to `mirror_store` (None without one), notified."""
        if self.mirror_store is None:
            return None
        mirror = Mirror(
            self.mirror_store,
            self.writer,
            options=options,
            known=self.mirror_known,
            owner=owner,
            signing_key=signing_key,
        )
        mirror.notify()
        return mirror


def open_sweep(
    sweep: ResumableSweep,
    items: ItemSet,
    sweep_root: tuple[Path, str | None, str | None],
    resume: str,
    segment_bytes: int,
) -> Opened:
    """Open (or create) the sweep's checkpoint: consult sources, check items, and return what
    the sweep keeps. `items` are the sweep's (this shard's); `sweep_root` is (local progress
    directory, resume source, mirror) of the whole sweep, before the shard's subdirectory."""
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
        local_root, _, mirror_root = sweep_root
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
        _check_shard_descriptors(sweep, sweep_root)
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
        share_keys=key_sharer(items.index, items.keys),  # H1 (issue 14): one copy of each key
    )
    loaded = opened.loaded
    lock: DirLock | None = opened.lock  # None once handed to the writer
    try:
        if resume == "must" and loaded is None:
            where = f"{sweep.progress_dir}" + (f" or {source.display}" if source else "")
            raise CheckpointNotFoundError(f"resume='must' but no checkpoint exists at {where}")
        identity = items.identity()
        changed = (
            _changed_keys(items, loaded)
            if loaded is not None and not items.matches(loaded.state.items_sha256)
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
            writer = CheckpointWriter.create(
                sweep.progress_dir,
                manifest,
                segment_bytes=segment_bytes,
                signing_key=key,
                lock=lock,
            )
            lock = None
            state = State()
        else:
            writer = CheckpointWriter(
                sweep.progress_dir,
                loaded,
                opened.lock,
                segment_bytes=segment_bytes,
                signing_key=key,
            )
            lock = None
            state = loaded.state
    except BaseException:
        if lock is not None:
            lock.release_and_tidy()
        raise
    carried = opened.adoption.carried if opened.adoption is not None else []
    return Opened(
        writer=writer,
        state=state,
        source=opened.source,
        location=opened.location,
        launch=_launch_records(sweep, items, state, identity, changed),
        # a diverged local history was set aside: re-record its results as they were (same
        # value, duration, launch and item fingerprint)
        carried=[("result", rec.body(), rec.key, rec.fp) for rec in carried],
        mirror_store=mirror,
        mirror_known=opened.mirror_known,
    )


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


def _check_shard_descriptors(
    sweep: ResumableSweep, sweep_root: tuple[Path, str | None, str | None]
) -> None:
    """The shard count is fixed per sweep: check it (or record it, the first time)."""
    assert sweep.shard is not None
    count = sweep.shard[1]
    local_root, resume_root, mirror_root = sweep_root
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


def _changed_keys(items: ItemSet, loaded: Loaded) -> list[str]:
    """Keys recorded with a fingerprint that differs from their item's fingerprint now."""
    changed = []
    for source in (loaded.state.results, loaded.state.failure_records):
        for key, rec in source.items():
            if key not in items.index or rec.fp is None:
                continue
            now = items.fingerprint(key)
            if now is not None and rec.fp != now:
                changed.append(key)
    return changed


def _launch_records(
    sweep: ResumableSweep, items: ItemSet, state: State, identity: str, changed: list[str]
) -> Iterable[Entry]:
    """The records every open appends, in order: the launch, the items list when it changed
    (only the appended entries, if that is all; a long one in parts, made as they are
    written: see _itemlist.py), and with on_change="rerun" the invalidation of changed
    results and the retry of changed failures."""
    records: list[Entry] = [
        (
            "launch",
            {
                "launch": sweep.launch_id,
                "host": sweep.host,
                "pid": os.getpid(),
                "items_sha256": identity,
                "n_items": len(items.keys),
                "library_version": __version__,
            },
            None,
            None,
        )
    ]
    listing: Iterable[Entry] = ()
    if identity != state.items_sha256:
        listing = items.record_entries(state.items_sha256, state.items_count, identity)
    after: list[Entry] = []
    if changed and sweep.on_change == "rerun":
        done = [k for k in changed if k in state.results]
        failed = [k for k in changed if k in state.failures]
        if done:
            after.append(("invalidate", {"keys": done, "reason": "item changed"}, None, None))
        if failed:
            after.append(("retry", {"keys": failed, "reason": "item changed"}, None, None))
    return itertools.chain(records, listing, after)
