"""Where a sweep resumes from: the local checkpoint, a remote source, or a fresh start.

Rules (see the README): a source that does not exist is a fresh start; one that cannot be
reached or read is an error, never a fresh start. When both a local checkpoint and a source
exist, the one whose history extends the other wins (the local one is replaced atomically by a
verified download when the source is ahead). When they diverge, both are histories of one
sweep (the same sweep id) and every key both hold names the same item, the source's history is
adopted (`adopt_source_history`): it is the shared one other machines went on from. The results
only the local copy holds are re-recorded into it, the local directory is kept aside (renamed,
never deleted) and one warning names both. Another sweep under the same name, or another item
under the same key, is refused. A snapshot directory that already holds this sweep's history is
never overwritten by a shorter one.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ._checkpoint import SEGMENTS_DIR, DirLock, Loaded, hash_at, load, recover_interrupted_install
from ._durable import fsync_dir, pause_point
from ._journal import Record
from ._loading import KeySharer
from ._manifest import Manifest
from ._mirror import check_extends
from ._remote import discard, download, install, read_manifest
from ._state import State
from ._storage import Store
from .errors import (
    ConfigurationError,
    HistoryConflictError,
    SourceUnreachableError,
    SweepMismatchError,
)
from .shards import DESCRIPTOR_NAME, read_descriptor

log = logging.getLogger(__name__)
STALE_MARK = ".stale-"  # a set-aside local checkpoint: <progress dir>.stale-<UTC time>-<hex>


@dataclass
class Adoption:
    """The source's history replaced a diverged local one (see `adopt_source_history`)."""

    set_aside: Path  # where the local checkpoint now is (renamed, intact)
    carried: list[Record]  # results only the local copy held, to be re-recorded


@dataclass
class Opened:
    """The outcome: the checkpoint to continue (None for a fresh start) and what is known."""

    loaded: Loaded | None
    lock: DirLock  # held from the first look at the local checkpoint to the writer's close
    mirror_known: tuple[bytes, Manifest] | None  # the snapshot dir's manifest, if read
    source: str  # "local", "remote" or "fresh", for logs and status
    adoption: Adoption | None = None  # set when a diverged local history was set aside
    location: str | None = None  # where it continues from (redacted URL or local path)


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
    share_keys: KeySharer | None = None,
) -> Opened:
    """Lock and load the local checkpoint, consult the source and the mirror, and decide.

    The writer lock (a file beside `progress_dir`) is taken first and held throughout,
    installing a resumed source included: no second launch can open in between.
    """
    lock = DirLock(progress_dir)
    try:
        recover_interrupted_install(progress_dir)
        return _decide(progress_dir, name, lock, source, mirror, signing_key, unsharded, share_keys)
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
    share_keys: KeySharer | None = None,
) -> Opened:
    # row indexes are a cache no signature covers: a sweep with a signing key scans instead
    local = load(progress_dir, share_keys=share_keys, use_indexes=signing_key is None)
    if local is not None:
        check_name(local.manifest, name, str(progress_dir))
    # With a signing key, a resume source must be signed with it: a URL on someone else's
    # server is trusted only if it proves it was written with the key.
    remote = read_manifest(source, signing_key) if source is not None else None
    if remote is None and source is not None and unsharded:
        _refuse_descriptor(source)
    if remote is not None and source is not None:  # (a remote manifest implies a source)
        check_name(remote[1], name, source.display)
    elif source is not None:
        log.debug("resume source %s holds no checkpoint of %r", source.display, name)
    mirror_known = _read_mirror(mirror, source, remote, name, unsharded)

    how = "local" if local is not None else "fresh"
    adoption = None
    if remote is not None and source is not None:
        data, manifest = remote
        if local is not None and manifest.sweep_id != local.manifest.sweep_id:
            raise _diverged(source, manifest, local)  # another sweep under the same name
        # A mirror's length is in its manifest; another machine's progress directory (with an
        # active segment) must be fetched to know how far it goes. A source that diverges from
        # the local history is fetched too: it is adopted (see adopt_source_history).
        if (
            local is None
            or manifest.active is not None
            or manifest.sealed_records > local.state.last_seq
            or hash_at(local.view(), progress_dir / SEGMENTS_DIR, manifest.sealed_records)
            != manifest.last_hash
        ):
            local, lock, taken, adoption = _take_remote(
                progress_dir, lock, source, data, manifest, local, signing_key
            )
            how = "remote" if taken else how
    if mirror_known is not None and mirror is not None:  # (mirror_known implies a mirror)
        if local is None:
            raise HistoryConflictError(
                f"snapshot_dir {mirror.display} already holds {mirror_known[1].sealed_records} "
                f"records of sweep {name!r}, but this run would start fresh; set resume_from "
                "(or SWEEP_RESUME_FROM) to it to resume, or mirror to another snapshot_dir"
            )
        check_extends(local.view(), progress_dir / SEGMENTS_DIR, mirror_known[1], mirror.display)
    location = announce_decision(name, how, progress_dir, source, local)
    return Opened(
        loaded=local,
        lock=lock,
        mirror_known=mirror_known,
        source=how,
        adoption=adoption,
        location=location,
    )


def announce_decision(
    name: str, how: str, progress_dir: Path, source: Store | None, loaded: Loaded | None
) -> str | None:
    """Log where the sweep continues from, and return that place (redacted; None if fresh).

    A fresh start although a resume source is configured is a WARNING (it reaches stderr with
    Python's default logging): on a first launch it is expected, after a typo in
    SWEEP_RESUME_FROM it would silently redo the whole sweep.
    """
    if how == "fresh":
        if source is not None:
            log.warning(
                "fresh start of sweep %r: the resume source %s holds no checkpoint (expected "
                "on a first launch; otherwise check the location, or every item runs again)",
                name,
                source.display,
            )
        return None
    assert loaded is not None
    where = source.display if how == "remote" and source is not None else str(progress_dir)
    log.info(
        "sweep %r continues from %s: %s (%d records)",
        name,
        "the resume source" if how == "remote" else "the local checkpoint",
        where,
        loaded.state.last_seq,
    )
    return where


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
) -> tuple[Loaded, DirLock, bool, Adoption | None]:
    """Download the source and install it if it extends the local history (True), keep the
    local checkpoint if that extends the source (False); if they diverge, adopt the source's
    history and set the local one aside (True, with the Adoption), or refuse. `lock` (the
    writer lock beside `progress_dir`) is held throughout."""
    tmp, fetched = download(source, data, progress_dir, signing_key=signing_key)
    adoption = None
    try:
        if local is not None:
            if manifest.sweep_id != local.manifest.sweep_id:
                raise _diverged(source, manifest, local)
            f, n = fetched.state.last_seq, local.state.last_seq
            if f <= n:
                extends = (
                    hash_at(local.view(), progress_dir / SEGMENTS_DIR, f) == fetched.state.last_hash
                )
                if extends:
                    discard(tmp)
                    return local, lock, False, None
            else:
                extends = hash_at(fetched.view(), tmp / SEGMENTS_DIR, n) == local.state.last_hash
            if not extends:
                adoption = adopt_source_history(progress_dir, local, fetched.state, source)
        _install_source(tmp, progress_dir)
    except BaseException:
        discard(tmp)
        raise
    fetched.relocate(progress_dir)  # verified and replayed once, in download: not again
    loaded = fetched
    if adoption is not None:
        assert local is not None
        log.warning(
            "the local checkpoint %s (%d records) and %s (%d records) are different histories "
            "of sweep %r: another machine went on from the source after this one stopped. "
            "Adopted the source's history, re-recording the %d result(s) only the local copy "
            "held; the local copy is kept at %s",
            progress_dir,
            local.state.last_seq,
            source.display,
            loaded.state.last_seq,
            manifest.sweep,
            len(adoption.carried),
            adoption.set_aside,
        )
    else:
        log.info(
            "resumed %r from %s: %d records (%s)",
            manifest.sweep,
            source.display,
            loaded.state.last_seq,
            "replacing an older local checkpoint" if local is not None else "new local checkpoint",
        )
    return loaded, lock, True, adoption


def adopt_source_history(
    progress_dir: Path, local: Loaded, adopted: State, source: Store
) -> Adoption:
    """Set the diverged local checkpoint aside for the source's history; say what to carry over.

    Results are per item and immutable, so two histories of one sweep merge as long as every
    key both hold names the same item (`local_only_results` refuses otherwise, before anything
    is moved). The local directory is renamed beside itself, never deleted: whatever it holds
    stays readable there (`resumable status`, `open_view`). The caller holds the writer lock.
    """
    carried = local_only_results(local.state, adopted, progress_dir, source)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = progress_dir.with_name(f"{progress_dir.name}{STALE_MARK}{stamp}-{secrets.token_hex(3)}")
    os.rename(progress_dir, aside)
    fsync_dir(progress_dir.parent)
    return Adoption(set_aside=aside, carried=carried)


def local_only_results(
    local: State, adopted: State, progress_dir: Path, source: Store
) -> list[Record]:
    """The local results under keys the adopted history has no result for, in record order.

    Raises HistoryConflictError if a key both histories hold was recorded for another item
    (another fingerprint): such results cannot both be true of one sweep.
    """
    carried = []
    for key, rec in local.results.items():
        theirs = adopted.results.get(key) or adopted.failure_records.get(key)
        if theirs is not None and rec.fp is not None and theirs.fp not in (None, rec.fp):
            raise HistoryConflictError(
                f"the local checkpoint {progress_dir} and {source.display} are different "
                f"histories of one sweep that recorded item {key!r:.200} with different "
                "parameters; they cannot be merged. Move one of them away to choose"
            )
        if key not in adopted.results:
            carried.append(rec)
    return carried


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
