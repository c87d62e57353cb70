"""Checkpoints behind a Store: read the manifest, download and verify, install locally.

A remote checkpoint (a mirror) has the local layout minus the active segment: `manifest.json`
naming immutable parts under `segments/`, each with its size and SHA-256. A source may also be
another machine's progress directory, whose active segment is then verified record by record.
A download lands in a temporary directory beside the local checkpoint and is verified in full
there; only then can it be installed (renamed into place). Nothing unverified is ever used.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from ._checkpoint import MAX_MANIFEST_READ, SEGMENTS_DIR, Loaded, load_from
from ._durable import create_durable_file, fsync_dir, make_dirs, remove_tree, rename_durably
from ._manifest import MANIFEST_NAME, Manifest, parse_manifest
from ._storage import Store, redact
from .errors import IntegrityError, ObjectNotFoundError, StorageError

log = logging.getLogger(__name__)

STALE_AFTER_S = 30.0  # leftovers of killed downloads are removed once this old (gc_delay_s)


def source_store(url: str, storage_options: dict[str, Any] | None = None) -> Store:
    """The Store of a resume source: a mirror directory, or the manifest file inside it."""
    path, sep, query = url.partition("?")
    trimmed = path.rstrip("/")
    if trimmed == MANIFEST_NAME or trimmed.endswith("/" + MANIFEST_NAME):
        path = trimmed[: -len(MANIFEST_NAME)].rstrip("/") or "."
    return Store(path + sep + query, storage_options=storage_options)


def read_manifest(store: Store, signing_key: bytes | None = None) -> tuple[bytes, Manifest] | None:
    """The verified manifest at `store`, or None if there is none (a fresh start).

    Only a source that does not exist gives None; an unreachable, forbidden or damaged one
    raises (SourceUnreachableError, StorageError, IntegrityError). A missing manifest beside
    stored parts is damage, not a fresh start: a mirror writes its (empty) manifest before its
    first part, so parts without one mean the manifest was deleted. Parts found after the
    manifest was missing may be a first mirror's, whose manifest landed in between: the manifest
    is read once more before that verdict.
    """
    for second_look in (False, True):
        try:
            data = store.read_bytes(MANIFEST_NAME, max_bytes=MAX_MANIFEST_READ)
            break
        except ObjectNotFoundError:
            if not _holds_parts(store):
                return None
            if second_look:
                parts = redact(store.url(SEGMENTS_DIR))
                raise IntegrityError(
                    f"{redact(store.url(MANIFEST_NAME))} is missing but {parts} holds "
                    "checkpoint parts; refusing to start over (restore the manifest, or move "
                    "the directory away to start afresh)"
                ) from None
    source = redact(store.url(MANIFEST_NAME))
    return data, parse_manifest(data, source=source, signing_key=signing_key)


def _holds_parts(store: Store) -> bool:
    """Whether `segments/` holds anything (raises if that cannot be found out)."""
    if store.local_path is not None:
        segdir = store.local_path / SEGMENTS_DIR
        try:
            return any(e.is_file() and e.stat().st_size > 0 for e in segdir.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise StorageError(f"cannot list {segdir}: {exc.strerror or exc}") from None
    return store.exists(SEGMENTS_DIR)  # S3: a prefix with objects; HTTP: a folder listing


def download(
    store: Store, manifest_bytes: bytes, beside: Path, *, signing_key: bytes | None = None
) -> tuple[Path, Loaded]:
    """Copy the checkpoint at `store` into a new directory beside `beside`, and verify it.

    One pass: each part is checked against the manifest's size and SHA-256 as it arrives,
    written (durably) into the copy and replayed (every record verified), one part in memory at
    a time. The caller installs or discards the directory (`Loaded.relocate` after an
    install). Records looked at later (results' payloads) read their part again from the copy,
    or from `store` once the copy is gone.

    With `signing_key` (the manifest's signature already checked), every byte taken must be
    covered by that signature. A manifest signs its sealed parts by SHA-256, but not the
    bytes of an active segment (another machine's progress directory, still being appended
    to): a source whose active segment holds anything is refused. A mirror never has one.
    """
    manifest = parse_manifest(manifest_bytes, source=redact(store.url(MANIFEST_NAME)))
    make_dirs(beside.parent)
    collect_leftovers(beside)
    tmp = beside.parent / f".{beside.name}.incoming-{secrets.token_hex(4)}"
    segdir = tmp / SEGMENTS_DIR
    make_dirs(segdir)
    sizes = {f"{SEGMENTS_DIR}/{seg.name}": seg.size for seg in manifest.segments}

    def fetch(name: str, max_bytes: int) -> bytes:
        """A part from the store, kept in the copy (load_from checks it against the manifest)."""
        where = redact(store.url(name))
        sealed = name in sizes
        try:
            data = store.read_bytes(name, max_bytes=max_bytes)
        except ObjectNotFoundError:
            raise IntegrityError(
                f"{where}: part named by the manifest is missing (expected {sizes[name]} bytes)"
                if sealed
                else f"{where}: the active segment named by the manifest is missing"
            ) from None
        except IntegrityError:
            if not sealed:
                raise
            raise IntegrityError(
                f"{where}: larger than the {sizes[name]} bytes the manifest records"
            ) from None
        if sealed and len(data) == sizes[name]:
            pass
        elif sealed:
            raise IntegrityError(
                f"{where}: expected {sizes[name]} bytes, found {len(data)}"  # as SegmentInfo.check
            )
        elif signing_key is not None and data:
            raise IntegrityError(
                f"{where}: the active segment holds {len(data)} bytes "
                "not covered by the signature of the manifest naming it (a signature "
                "covers sealed parts only), and a signing key is set: refusing to trust "
                "them. Resume from the sweep's mirror (snapshot_dir), whose signed "
                "manifest covers every part"
            )
        create_durable_file(tmp / name, data)
        return data

    def reread(name: str, max_bytes: int) -> bytes:
        """Later reads: the copy while it exists, else the store."""
        try:
            return _read_local(tmp / name, max_bytes)
        except FileNotFoundError:
            return store.read_bytes(name, max_bytes=max_bytes)

    try:
        loaded = load_from(fetch, manifest_bytes, location=store.display, reread=reread)
        create_durable_file(tmp / MANIFEST_NAME, manifest_bytes)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp, loaded


def _read_local(path: Path, max_bytes: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(max_bytes + 1)


def collect_leftovers(beside: Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove what killed launches left beside `beside`: unfinished downloads
    (`.<name>.incoming-*`) and checkpoints replaced by an install (`.<name>.replaced-*`), once
    untouched for `older_than_s`. (The caller holds the checkpoint's lock; the age covers the
    moment between a download and its install, where it is released.)"""
    removed = []
    now = time.time()
    for pattern in (f".{beside.name}.incoming-*", f".{beside.name}.replaced-*"):
        for path in beside.parent.glob(pattern):
            try:
                age = now - path.lstat().st_mtime
            except OSError:
                continue
            if age >= older_than_s and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed %s, left by a killed launch", path)
                removed.append(path)
    return removed


def install(downloaded: Path, progress_dir: Path) -> None:
    """Atomically make a verified download the local checkpoint at `progress_dir`.

    An existing local checkpoint (one the download extends) is renamed aside first and removed
    once the swap is durable; at no moment is there a missing or partial checkpoint in place.
    """
    parent = progress_dir.parent
    old = None
    if progress_dir.exists():
        old = parent / f".{progress_dir.name}.replaced-{secrets.token_hex(4)}"
        rename_durably(progress_dir, old)
    rename_durably(downloaded, progress_dir)
    fsync_dir(parent)
    if old is not None:
        remove_tree(old)


def discard(downloaded: Path) -> None:
    shutil.rmtree(downloaded, ignore_errors=True)
