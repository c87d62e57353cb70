"""Checkpoints behind a Store: read the manifest, download and verify, install locally.

A remote checkpoint (a mirror) has the local layout minus the active segment: `manifest.json`
naming immutable parts under `segments/`, each with its size and SHA-256. A source may also be
another machine's progress directory, whose active segment is then verified record by record.
A download lands in a temporary directory beside the local checkpoint and is verified in full
there; only then can it be installed (renamed into place). Nothing unverified is ever used.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from . import _durable as durable
from . import _segindex as segindex
from ._checkpoint import MAX_MANIFEST_READ, SEGMENTS_DIR, Loaded, SealedParts, load_records
from ._durable import create_durable_file, fsync_dir, make_dirs, remove_tree, rename_durably
from ._limits import MAX_SEGMENT_BYTES
from ._manifest import MANIFEST_NAME, Manifest, SegmentInfo, parse_manifest
from ._storage import Store
from ._urls import redact
from .errors import (
    CheckpointWriteError,
    IntegrityError,
    ObjectNotFoundError,
    ResumableError,
    StorageError,
)

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


# Parts fetched at once, and bytes of parts fetched beyond the one the replay needs next
# (which is always fetched): the network, hashing and disk work on the next parts while one is
# replayed, with memory bounded by the window and the largest part, not by the checkpoint.
FETCH_WORKERS = 4
FETCH_AHEAD_BYTES = 64 << 20


def download(
    store: Store, manifest_bytes: bytes, beside: Path, *, signing_key: bytes | None = None
) -> tuple[Path, Loaded]:
    """Copy the checkpoint at `store` into a new directory beside `beside`, and verify it.

    One pass, one verification: each sealed part is fetched (up to `FETCH_WORKERS` at once,
    each read bounded by its size and the fetch deadline), checked against the manifest's size
    and SHA-256 and written durably into the copy by a worker, and replayed in order by the
    caller's thread as soon as it and the parts before it are in; besides the part the replay
    needs next, at most `FETCH_AHEAD_BYTES` are held ahead of it. The caller installs or
    discards the directory (`Loaded.relocate` after an install). Records looked at later
    (results' payloads) read their part again from the copy, or from `store` once it is gone.

    A part's row index, where the mirror holds one beside it (see _segindex), is fetched by
    the same worker; a sound one (bound to the part's SHA-256 in the verified manifest,
    self-hashed, its columns checked) spares the replay its scan and is installed with the
    part; a missing or unsound one is ignored (scanned, and built afterwards by the writer).

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

    def reread(name: str, max_bytes: int) -> bytes:
        """Later reads: the copy while it exists, else the store."""
        try:
            return _read_local(tmp / name, max_bytes)
        except FileNotFoundError:
            return store.read_bytes(name, max_bytes=max_bytes)

    def active() -> bytes | None:
        """Another machine's active segment (verified record by record by the replay)."""
        if manifest.active is None:
            return None
        name = f"{SEGMENTS_DIR}/{manifest.active}"
        where = redact(store.url(name))
        try:
            data = store.read_bytes(name, max_bytes=MAX_SEGMENT_BYTES)
        except ObjectNotFoundError:
            raise IntegrityError(
                f"{where}: the active segment named by the manifest is missing"
            ) from None
        if signing_key is not None and data:
            raise IntegrityError(
                f"{where}: the active segment holds {len(data)} bytes not covered by the "
                "signature of the manifest naming it (a signature covers sealed parts only), "
                "and a signing key is set: refusing to trust them. Resume from the sweep's "
                "mirror (snapshot_dir), whose signed manifest covers every part"
            )
        create_durable_file(tmp / name, data)
        return data

    location = store.display
    try:
        # row indexes are a cache no signature covers: with a signing key, parts are scanned
        with _Prefetch(store, manifest, segdir, indexes=signing_key is None) as ahead:
            loaded = load_records(
                manifest,
                ahead.sealed(),
                active,
                location=location,
                parts=SealedParts(reread, manifest, location),
                index=ahead.index if signing_key is None else None,
            )
        fsync_dir(segdir)  # the parts' entries, once for all of them
        create_durable_file(tmp / MANIFEST_NAME, manifest_bytes)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp, loaded


class _Prefetch:
    """The sealed parts of `manifest`, fetched, verified and written into `segdir` by a few
    worker threads, handed out in manifest order (see `download`)."""

    def __init__(self, store: Store, manifest: Manifest, segdir: Path, *, indexes: bool) -> None:
        self._store, self._segdir = store, segdir
        self._indexes = indexes
        self._found: dict[str, bytes] = {}  # part name -> its sound row index, until replayed
        self._segments = manifest.segments
        self._jobs: queue.SimpleQueue[tuple[SegmentInfo, Future[bytes]] | None]
        self._jobs = queue.SimpleQueue()
        self._queued: deque[Future[bytes]] = deque()
        self._next = 0  # the next part to submit
        self._ahead = 0  # bytes submitted beyond the first part queued, not yet handed out
        self._stop = threading.Event()
        # daemon threads: a fetch stalled on a dead server never holds up an interrupted
        # launch, nor the interpreter's exit (each fetch is bounded by its deadline anyway)
        self._workers = [
            threading.Thread(target=self._work, name="resumable-fetch", daemon=True)
            for _ in range(FETCH_WORKERS)
        ]
        for t in self._workers:
            t.start()

    def __enter__(self) -> _Prefetch:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        """Stop: nothing new starts and queued parts are dropped. After success or an error,
        running fetches are waited for (each bounded by the fetch deadline), so that nothing
        writes into the copy once the caller removed it; an interrupt (KeyboardInterrupt, a
        preemption signal) does not wait (a part written meanwhile may leave the copy behind,
        for `collect_leftovers`)."""
        self._stop.set()
        for future in self._queued:
            future.cancel()
        for _ in self._workers:
            self._jobs.put(None)
        if kind is None or issubclass(kind, Exception):
            for t in self._workers:
                t.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            seg, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._fetch(seg))
            except BaseException as exc:  # handed to the caller's thread, raised at its turn
                future.set_exception(exc)

    def index(self, seg: SegmentInfo) -> bytes | None:
        """The sound row index fetched with part `seg` (handed out once), or None."""
        return self._found.pop(seg.name, None)

    def sealed(self) -> Iterator[bytes]:
        """Each sealed part's verified bytes, in order (a part's error is raised at its turn)."""
        for i in range(len(self._segments)):
            self._fill()
            data = self._queued.popleft().result()
            if i + 1 < self._next:  # the next part heads the queue now: it no longer counts
                self._ahead -= self._segments[i + 1].size
            self._fill()  # the next ones arrive while this one is replayed
            yield data

    def _fill(self) -> None:
        while self._next < len(self._segments):
            seg = self._segments[self._next]
            if self._queued and (
                len(self._queued) > FETCH_WORKERS or self._ahead + seg.size > FETCH_AHEAD_BYTES
            ):
                return
            self._ahead += seg.size if self._queued else 0
            future: Future[bytes] = Future()
            self._jobs.put((seg, future))
            self._queued.append(future)
            self._next += 1

    def _fetch(self, seg: SegmentInfo) -> bytes:
        """One part: read (bounded by its size), checked, written durably into the copy."""
        name = f"{SEGMENTS_DIR}/{seg.name}"
        where = redact(self._store.url(name))
        if self._stop.is_set():
            raise _Stopped()
        try:
            data = self._store.read_bytes(name, max_bytes=seg.size)
        except ObjectNotFoundError:
            raise IntegrityError(
                f"{where}: part named by the manifest is missing (expected {seg.size} bytes)"
            ) from None
        except IntegrityError:
            raise IntegrityError(
                f"{where}: larger than the {seg.size} bytes the manifest records"
            ) from None
        seg.check(data, where)  # size and SHA-256
        if self._stop.is_set():
            raise _Stopped()
        _write_new(self._segdir / seg.name, data)
        if self._indexes and segindex.worth_indexing(seg):
            index = self._fetch_index(seg)
            if index is not None and self._install_index(seg, index):
                self._found[seg.name] = index
        return data

    def _install_index(self, seg: SegmentInfo, index: bytes) -> bool:
        """Write the index of `seg` into the copy (False if it cannot be: a cache)."""
        try:
            _write_new(self._segdir / segindex.index_name(seg.name), index)
        except CheckpointWriteError as exc:  # e.g. two parts whose index names coincide
            log.debug("row index of %s not installed: %s", seg.name, exc)
            return False
        return True

    def _fetch_index(self, seg: SegmentInfo) -> bytes | None:
        """The mirrored row index of `seg` if there is a sound one (a cache: any failure to
        get one means the part is scanned instead)."""
        name = f"{SEGMENTS_DIR}/{segindex.mirror_name(seg.name)}"
        try:
            packed = self._store.read_bytes(name, max_bytes=segindex.max_index_bytes(seg))
        except ObjectNotFoundError:
            return None  # an older mirror, or a part it did not index
        except ResumableError as exc:
            log.debug("row index %s not used: %s", redact(self._store.url(name)), exc)
            return None
        index = segindex.unpack(packed, seg)
        if index is None:
            log.info(
                "row index %s is not a sound index of its part; ignored (the part is scanned)",
                redact(self._store.url(name)),
            )
        return index


class _Stopped(Exception):
    """A part not fetched because the download stopped (never seen by callers)."""


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` with `data`, fsync'd; its directory entry is the caller's (one fsync of
    the directory for all the parts)."""
    try:
        fd = durable.ops.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise CheckpointWriteError(
            exc.errno, f"cannot create {str(path)!r}: {exc.strerror}"
        ) from exc
    try:
        durable.write_all(fd, data, str(path))
        durable.fsync_file(fd, str(path), data_only=False)
    finally:
        durable.ops.close(fd)


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
