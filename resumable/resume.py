"""Where a sweep resumes from: the local checkpoint, a remote source, or a fresh start.

Rules (see the README): a source that does not exist is a fresh start; one that cannot be
reached or read is an error, never a fresh start. When both a local checkpoint and a source
exist, the one whose history extends the other wins (the local one is replaced atomically by a
verified download when the source is ahead); histories that diverge are refused. A snapshot
directory that already holds this sweep's history is never overwritten by a shorter one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import SEGMENTS_DIR, DirLock, Loaded, hash_at, load
from .durable import pause_point
from .errors import (
    ConfigurationError,
    HistoryConflictError,
    SourceUnreachableError,
    SweepMismatchError,
)
from .manifest import Manifest
from .mirror import check_extends
from .remote import discard, download, install, read_manifest
from .shards import DESCRIPTOR_NAME, read_descriptor
from .storage import Store

log = logging.getLogger("resumable.resume")


@dataclass
class Opened:
    """The outcome: the checkpoint to continue (None for a fresh start) and what is known."""

    loaded: Loaded | None
    lock: DirLock  # held from the first look at the local checkpoint to the writer's close
    mirror_known: tuple[bytes, Manifest] | None  # the snapshot dir's manifest, if read
    source: str  # "local", "remote" or "fresh", for logs and status


def sharded_root_error(where: str) -> ConfigurationError:
    return ConfigurationError(
        f"{where} holds a sharded sweep (a {DESCRIPTOR_NAME} beside shard-* directories), but "
        "this launch has no shard=...: pass shard=shard_from_env() (is the job-array index "
        "variable missing?), or use another location for an unsharded sweep"
    )


def _refuse_descriptor(store: Store) -> None:
    """No manifest at `store`: an unsharded launch must not write beside a sharded sweep's
    shards (a job array that lost its index variable would), hiding them from merged views."""
    if read_descriptor(store) is not None:
        raise sharded_root_error(store.display)


def check_name(manifest: Manifest, name: str, where: str) -> None:
    if manifest.sweep != name:
        raise SweepMismatchError(
            f"the checkpoint at {where} belongs to sweep {manifest.sweep!r}, not {name!r}; use "
            f"another location, or name={manifest.sweep!r} if it really is the same sweep"
        )


def open_checkpoint(
    progress_dir: Path,
    name: str,
    *,
    source: Store | None,
    mirror: Store | None,
    signing_key: bytes | None = None,
    unsharded: bool = False,
) -> Opened:
    """Lock and load the local checkpoint, consult the source and the mirror, and decide.

    The writer lock (a file beside `progress_dir`) is taken first and held throughout,
    installing a resumed source included: no second launch can open in between.
    """
    lock = DirLock(progress_dir)
    try:
        return _decide(progress_dir, name, lock, source, mirror, signing_key, unsharded)
    except BaseException:
        lock.release_and_tidy()
        raise


def _decide(
    progress_dir: Path,
    name: str,
    lock: DirLock,
    source: Store | None,
    mirror: Store | None,
    signing_key: bytes | None,
    unsharded: bool,
) -> Opened:
    local = load(progress_dir)
    if local is not None:
        check_name(local.manifest, name, str(progress_dir))
    # With a signing key, a resume source must be signed with it: a URL on someone else's
    # server is trusted only if it proves it was written with the key.
    remote = read_manifest(source, signing_key) if source is not None else None
    if remote is None and source is not None and unsharded:
        _refuse_descriptor(source)
    if remote is not None:
        check_name(remote[1], name, source.display)
    elif source is not None:
        log.info("resume source %s holds no checkpoint of %r", source.display, name)
    mirror_known = _read_mirror(mirror, source, remote, name, unsharded)

    how = "local" if local is not None else "fresh"
    if remote is not None:
        data, manifest = remote
        # A mirror's length is in its manifest; another machine's progress directory (with an
        # active segment) must be fetched to know how far it goes.
        if (
            local is None
            or manifest.active is not None
            or manifest.sealed_records > local.state.last_seq
        ):
            local, lock, taken = _take_remote(
                progress_dir, lock, source, data, manifest, local, signing_key
            )
            how = "remote" if taken else how
        elif (
            manifest.sweep_id != local.manifest.sweep_id
            or hash_at(local.view(), progress_dir / SEGMENTS_DIR, manifest.sealed_records)
            != manifest.last_hash
        ):
            raise _diverged(source, manifest, local)
    if mirror_known is not None:
        if local is None:
            raise HistoryConflictError(
                f"snapshot_dir {mirror.display} already holds {mirror_known[1].sealed_records} "
                f"records of sweep {name!r}, but this run would start fresh; set resume_from "
                "(or SWEEP_RESUME_FROM) to it to resume, or mirror to another snapshot_dir"
            )
        check_extends(local.view(), progress_dir / SEGMENTS_DIR, mirror_known[1], mirror.display)
    if how == "fresh" and source is not None:
        log.info("fresh start of %r: nothing to resume at %s", name, source.display)
    return Opened(loaded=local, lock=lock, mirror_known=mirror_known, source=how)


def _read_mirror(
    mirror: Store | None,
    source: Store | None,
    remote: tuple[bytes, Manifest] | None,
    name: str,
    unsharded: bool,
) -> tuple[bytes, Manifest] | None:
    if mirror is None:
        return None
    if source is not None and mirror.root.rstrip("/") == source.root.rstrip("/"):
        return remote
    try:
        known = read_manifest(mirror)
    except SourceUnreachableError as exc:
        log.warning(
            "snapshot_dir %s is unreachable at start (%s); recording goes on locally and the "
            "mirror catches up when it is back",
            mirror.display,
            exc,
        )
        return None
    if known is not None:
        check_name(known[1], name, mirror.display)
    elif unsharded:
        _refuse_descriptor(mirror)
    return known


def _take_remote(
    progress_dir: Path,
    lock: DirLock,
    source: Store,
    data: bytes,
    manifest: Manifest,
    local: Loaded | None,
    signing_key: bytes | None,
) -> tuple[Loaded, DirLock, bool]:
    """Download the source and install it if it extends the local history (True), keep the
    local checkpoint if that extends the source (False), refuse if they diverge. `lock` (the
    writer lock beside `progress_dir`) is held throughout."""
    tmp, fetched = download(source, data, progress_dir, signing_key=signing_key)
    try:
        if local is not None:
            if manifest.sweep_id != local.manifest.sweep_id:
                raise _diverged(source, manifest, local)
            f, n = fetched.state.last_seq, local.state.last_seq
            if f <= n:
                if hash_at(local.view(), progress_dir / SEGMENTS_DIR, f) != fetched.state.last_hash:
                    raise _diverged(source, manifest, local)
                discard(tmp)
                return local, lock, False
            if hash_at(fetched.view(), tmp / SEGMENTS_DIR, n) != local.state.last_hash:
                raise _diverged(source, manifest, local)
        _install_source(tmp, progress_dir)
    except BaseException:
        discard(tmp)
        raise
    loaded = load(progress_dir)
    assert loaded is not None
    log.info(
        "resumed %r from %s: %d records (%s)",
        manifest.sweep,
        source.display,
        loaded.state.last_seq,
        "replacing an older local checkpoint" if local is not None else "new local checkpoint",
    )
    return loaded, lock, True


def _install_source(downloaded: Path, progress_dir: Path) -> None:
    """Install a verified download as the local checkpoint (under the caller's writer lock)."""
    pause_point("install")  # a test hook: races a second launch against this instant
    install(downloaded, progress_dir)


def _diverged(source: Store, manifest: Manifest, local: Loaded) -> HistoryConflictError:
    return HistoryConflictError(
        f"the checkpoint at {source.display} ({manifest.sealed_records} records) and the local "
        f"one ({local.state.last_seq} records) are different histories of sweep "
        f"{manifest.sweep!r}: neither extends the other. Move one of them away to choose"
    )
