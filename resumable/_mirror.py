"""The mirror: a background uploader that keeps a verifiable copy of the checkpoint remote.

Local disk stays the source of truth and `record()` never waits on the network. A thread
follows the journal: sealed segments are uploaded once, as immutable objects under the same
names; the active segment's new records go up as immutable *chunks* (named by their sequence
range and hash), and when that segment is sealed its chunks, plus one for the records after
them, stand for it remotely (its records are not sent twice); then the manifest naming all of
them, with sizes and SHA-256s, is replaced.
Objects first, manifest last: a reader at any instant sees the previous state or the new one.

Cost per record does not grow with the sweep: each upload sends the records since the last
one, plus a manifest of one entry per sealed segment (each ~4 MiB of records) and at most
`max_chunks` chunk entries; chunks are compacted into one when they pile up, and superseded
objects are deleted after `gc_delay_s`. Writes to the manifest are coalesced to one per
`interval_s` (GCS allows about one write per second to one object name).

The manifest is replaced by compare-and-swap (`Store.write_if`): only if it is still the
version this mirror last wrote or read. At first contact the mirror reads what is there and
checks that it is a prefix of its own history (a shorter or divergent history never overwrites
a longer one); from then on a second writer (a zombie launch thought dead, or a relaunch) that
replaced the manifest makes this mirror's next swap fail: it stops with HistoryConflictError
and leaves the other's history untouched. Where the back end has no conditional write,
mirroring needs `MirrorOptions.allow_unconditional` (then a race is detected, not prevented).

Each sealed part also goes up with its row index beside it (a cache, not named in the
manifest). Superseded objects are deleted `gc_delay_s` after the first manifest not naming them
went up, never sooner (close() included); orphans of killed launches are collected by a later
launch.

This module is the thread, its pacing and the manifest's compare-and-swap with its safety
checks; which objects go up (segments, chunks, indexes) is `_mirror_plan.py`, and the books of
what is garbage since when are `_mirror_gc.py`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._checkpoint import MAX_MANIFEST_READ, SEGMENTS_DIR, CheckpointWriter, WriterView, hash_at
from ._manifest import MANIFEST_NAME, Manifest, SegmentInfo, parse_manifest
from ._mirror_gc import Garbage
from ._mirror_plan import UploadPlan
from ._storage import Store
from ._urls import redact
from .errors import (
    ConfigurationError,
    HistoryConflictError,
    ObjectChangedError,
    ObjectNotFoundError,
    ResumableError,
    SourceUnreachableError,
    StorageError,
)

log = logging.getLogger(__name__)


# How long flush() and close() wait for the mirror by default (close: at the end of a `with`
# block and at interpreter exit). Records that do not reach it in time stay in the local
# checkpoint: the next launch on this machine uploads them, a launch elsewhere redoes them.
DEFAULT_FLUSH_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class MirrorOptions:
    """How the mirror paces itself."""

    interval_s: float = 1.0  # at most one manifest write per interval (flush skips the wait)
    max_chunks: int = 8  # chunks of the active segment before they are compacted into one
    gc_delay_s: float = 30.0  # superseded objects are deleted this long after
    flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S  # default bound for flush() and close()
    max_backoff_s: float = 30.0  # pause between attempts while the remote is down
    # Mirror to a place without conditional writes (e.g. sftp://, a FUSE mount without locks):
    # a second writer is then detected at the next upload, not prevented (see the README).
    allow_unconditional: bool = False


class Mirror:
    """Uploads a checkpoint writer's journal to a Store; see the module docstring."""

    def __init__(
        self,
        store: Store,
        writer: CheckpointWriter,
        *,
        options: MirrorOptions | None = None,
        known: tuple[bytes, Manifest] | None = None,
        owner: str = "",
        signing_key: bytes | None = None,
    ) -> None:
        options = options or MirrorOptions()
        check_mirror_place(store, options)
        if not store.supports_cas:
            log.warning(
                "mirroring to %s without conditional writes (allow_unconditional): a second "
                "writer is detected at the next upload, not prevented",
                store.display,
            )
        self.store = store
        self.signing_key = signing_key
        self.writer = writer
        self.options = options
        self.owner = owner
        self._segdir: Path = writer.segdir
        self._cond = threading.Condition()
        self._busy = threading.Lock()  # the thread's sync/collect vs close()'s final collect
        self._wake = threading.Event()
        self._stop = False
        self._flush_wanted = 0  # seq a flush is waiting for
        self._checked = False  # the remote manifest's version is known (read or written)
        self._version: str | None = None  # that version (None: there is no manifest)
        self._pending: bytes | None = None  # a manifest whose write failed, yet may have landed
        self._garbage = Garbage(options.gc_delay_s)  # superseded objects, and since when
        self._plan = UploadPlan(  # the parts standing for the journal remotely
            store,
            self._segdir,
            self._garbage,
            self._request,
            max_chunks=options.max_chunks,
            signing_key=signing_key,
        )
        self._generation = 0
        self._written = False  # superseded objects are collected only after our own manifest
        self._scanned = False  # looked for orphans (parts no manifest names) once
        self.remote_seq = 0
        self.last_upload: float | None = None
        self.last_error: str | None = None
        self.failed: ResumableError | None = None
        self.state = "idle"
        self.uploads = 0
        self.requests = 0
        self.bytes_sent = 0
        if known is not None:
            self._adopt(*known)
        self._thread = threading.Thread(target=self._run, name="resumable-mirror", daemon=True)
        self._thread.start()

    # -- called from the sweep's thread ----------------------------------------------------------

    def notify(self) -> None:
        """A record was made durable; the thread uploads it within about `interval_s`.

        A wake-up already pending covers this record too (the thread clears it before it
        looks at the writer), so it is set only when it is not: `Event.set` takes a lock."""
        wake = self._wake
        if not wake.is_set():
            wake.set()

    def flush(self, timeout: float | None = None) -> None:
        """Bring the mirror up to date now; raises if it cannot within `timeout` seconds."""
        target = self.writer.view().last_seq
        timeout = self.options.flush_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flush_wanted = max(self._flush_wanted, target)
            self._wake.set()
            self._cond.notify_all()  # cut a coalescing pause short
            while self.remote_seq < target and self.failed is None:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    break
                self._cond.wait(min(left, 0.5))
            if self.failed is not None:
                raise self.failed
            if self.remote_seq < target:
                raise SourceUnreachableError(
                    f"mirror {self.store.display} is {target - self.remote_seq} record(s) behind "
                    f"after {timeout:g} s (last error: {self.last_error or 'none'}); the "
                    "local checkpoint has everything and the mirror catches up on the next run"
                )

    def close(self, timeout: float | None = None) -> None:
        """Flush, delete superseded objects, and stop the thread; raises like flush(), also
        when the mirror had already stopped on an error (a job must not end "successfully"
        with a mirror that is behind)."""
        try:
            if self.failed is None:
                self.flush(timeout)
                with self._busy:
                    # one more look: a second writer may have replaced the manifest after our
                    # last write; then this run's records are not in the mirror, say so
                    self._check_unchanged()
                    # only what is due: a replacement reading our previous manifest during
                    # this shutdown still finds its parts; a later launch collects the rest
                    self._collect()
        finally:
            with self._cond:
                self._stop = True
                self._wake.set()
                self._cond.notify_all()
            self._thread.join(timeout=5.0)
        if self.failed is not None:
            raise self.failed

    def status(self) -> dict[str, Any]:
        seq = self.writer.view().last_seq
        now = time.time()
        return {
            "url": self.store.display,
            "state": self.state,
            "remote_records": self.remote_seq,
            "lag_records": max(0, seq - self.remote_seq),
            "last_upload": self.last_upload,
            "last_upload_age_s": None if self.last_upload is None else now - self.last_upload,
            "last_error": self.last_error,
            "uploads": self.uploads,
            "requests": self.requests,
            "bytes_sent": self.bytes_sent,
        }

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        last_write = float("-inf")  # not 0.0: the monotonic clock may start near zero
        while True:
            wait = None
            if failures:
                wait = min(self.options.max_backoff_s, 0.5 * 2 ** min(failures, 30))
            elif self._garbage:
                wait = self.options.gc_delay_s
            self._wake.wait(wait)
            with self._cond:
                if self._stop:
                    return
                flushing = self._flush_wanted > self.remote_seq
            behind = self.writer.view().last_seq > self.remote_seq
            if behind and not flushing and not failures:  # (gc alone does not wait)
                # coalesce: at most one manifest write per interval; a flush or close (not a
                # record) cuts the pause short, so it must be a wait on the condition
                until = last_write + self.options.interval_s
                with self._cond:
                    while not self._stop and self._flush_wanted <= self.remote_seq:
                        pause = until - time.monotonic()
                        if pause <= 0:
                            break
                        self._cond.wait(pause)
                    if self._stop:
                        return
            self._wake.clear()
            try:
                with self._busy:
                    if self._sync():
                        last_write = time.monotonic()
                    self._collect()
                failures = 0
                self.state = "ok"
            except SourceUnreachableError as exc:
                failures += 1
                self.state = "retrying"
                if self.last_error is None or failures == 1:
                    log.warning("mirror %s unreachable, will retry: %s", self.store.display, exc)
                self.last_error = str(exc)
            except ResumableError as exc:
                self._fail(exc)
                return
            except Exception as exc:  # a bug or an unexpected library error: never silent
                self._fail(StorageError(f"mirror {self.store.display} failed: {exc!r}"))
                log.exception("mirror %s stopped", self.store.display)
                return
            with self._cond:
                self._cond.notify_all()

    def _fail(self, exc: ResumableError) -> None:
        log.error("mirror %s stopped: %s", self.store.display, exc)
        with self._cond:
            self.failed = exc
            self.last_error = str(exc)
            self.state = "failed"
            self._cond.notify_all()

    def _sync(self) -> bool:
        """Upload what is new and write a manifest; False if there was nothing to do."""
        view = self.writer.view()
        if not self._checked:
            self._check_remote(view)
        if view.last_seq == self.remote_seq and self._generation:
            return False
        if self._version is None:
            # Nothing there yet: claim the place with an empty manifest before any object goes
            # up, so that objects without a manifest can only mean damage (see _remote.py).
            self._write_manifest(view, [], 0)
        parts = self._plan.parts(view)
        self._write_manifest(view, parts, view.last_seq)
        if not self._scanned:
            self._scanned = True
            self._find_orphans({p.name for p in parts})
        return True

    def _write_manifest(self, view: WriterView, parts: list[SegmentInfo], seq: int) -> None:
        manifest = Manifest(
            sweep=view.manifest.sweep,
            sweep_id=view.manifest.sweep_id,
            created=view.manifest.created,
            segments=tuple(parts),
            active=None,
            generation=self._generation + 1,
            extra={"writer": self.owner} if self.owner else {},
        )
        data = manifest.to_bytes(self.signing_key)
        # Compare-and-swap: replaced only if still the version we last wrote or read. (A PUT
        # whose response was lost may have landed: write_if recognises these bytes, and if
        # it gives up, the next attempt recognises them as `_pending`.)
        self._resolve_pending()
        self._pending = data
        try:
            version = self._request(
                lambda: self.store.write_if(MANIFEST_NAME, data, version=self._version),
                len(data),
            )
        except ObjectChangedError:
            raise self._conflict() from None
        self._pending = None
        self._version = version
        self._generation = manifest.generation
        self._written = True
        self._garbage.written({p.name for p in parts})
        with self._cond:
            self.remote_seq = seq
            self.last_upload = time.time()
            self.uploads += 1
            self._cond.notify_all()  # a waiting flush() returns now, not at its next poll

    def _request(self, fn: Any, nbytes: int = 0) -> Any:
        self.requests += 1
        self.bytes_sent += nbytes
        return fn()

    # -- safety checks ---------------------------------------------------------------------------

    def _adopt(self, data: bytes, manifest: Manifest) -> None:
        """What the remote holds (read at open, or now): its parts exist and need no upload."""
        self._generation = manifest.generation
        self.remote_seq = manifest.sealed_records
        self._plan.adopt(manifest)
        # garbage unless our manifests name them again
        self._garbage.retire(seg.name for seg in manifest.segments)

    def _read_versioned(self) -> tuple[bytes, str] | None:
        self.requests += 1
        try:
            return self.store.read_versioned(MANIFEST_NAME, max_bytes=MAX_MANIFEST_READ)
        except ObjectNotFoundError:
            return None

    def _check_remote(self, view: WriterView) -> None:
        """First contact: the remote must be empty or a prefix of this history; its version
        is what our first swap is conditioned on."""
        found = self._read_versioned()
        if found is None:
            # (parts without a manifest are damage: remote.read_manifest refused them at open)
            self._version, self._checked = None, True
            return
        data, version = found
        remote = parse_manifest(data, source=redact(self.store.url(MANIFEST_NAME)))
        check_extends(view, self._segdir, remote, self.store.display)
        self._adopt(data, remote)
        self._version, self._checked = version, True

    def _check_unchanged(self) -> None:
        """The manifest must still be the version this mirror last wrote or read."""
        found = self._read_versioned()
        if found is not None and self._pending is not None and found[0] == self._pending:
            self._version, self._pending = found[1], None  # our write landed after all
        if (None if found is None else found[1]) != self._version:
            raise self._conflict()

    def _resolve_pending(self) -> None:
        """A manifest write failed (unreachable): if it landed all the same, it is ours."""
        if self._pending is None:
            return
        found = self._read_versioned()
        if found is not None and found[0] == self._pending:
            self._version = found[1]
        self._pending = None

    def _conflict(self) -> HistoryConflictError:
        return HistoryConflictError(
            f"the manifest at {self.store.display} was replaced by another writer (another "
            "launch of this sweep, or a different sweep, is mirroring to the same place) since "
            "this launch last wrote it; this launch stops mirroring and leaves it untouched. "
            "Stop the other writer, or mirror to another snapshot_dir"
        )

    # -- garbage -------------------------------------------------------------------------------

    def _find_orphans(self, named: set[str]) -> None:
        """Once per launch, after our first manifest: parts no manifest of ours names, left by
        killed launches, become garbage if they are old enough (see `Garbage.orphans`)."""
        try:
            listing = self._request(lambda: self.store.list_dir(SEGMENTS_DIR))
        except ResumableError as exc:
            log.debug("could not list %s for orphans: %s", self.store.display, exc)
            return
        self._garbage.orphans(listing, named)

    def _collect(self) -> None:
        """Delete superseded objects that no manifest we wrote names any more."""
        if not self._garbage or not self._written:
            return
        due = self._garbage.due(self._plan.live(self.writer.view()))
        if not due:
            return
        # A second writer that adopted the same objects may name them in its manifest: delete
        # only while the manifest there is still ours.
        self._check_unchanged()
        for name in due:
            try:
                self._request(lambda n=name: self.store.delete(f"{SEGMENTS_DIR}/{n}"))
            except ResumableError as exc:
                log.debug("could not delete superseded %s: %s", name, exc)
                continue
            self._garbage.deleted(name)
            self._plan.uploaded.pop(name, None)


def check_mirror_place(store: Store, options: MirrorOptions | None) -> None:
    """Refuse a place without conditional writes unless the options accept the risk."""
    if not store.supports_cas and not (options and options.allow_unconditional):
        raise ConfigurationError(
            f"{store.display} offers no conditional write, so a second writer (a zombie "
            "launch) could overwrite this sweep's mirror unnoticed; mirror to a local "
            "directory, s3://, gs:// or az://, or accept the risk with "
            "MirrorOptions(allow_unconditional=True)"
        )


def check_extends(view: WriterView, segdir: Path, remote: Manifest, where: str) -> None:
    """Raise unless the remote history `remote` is a prefix of the local one in `view`."""
    if remote.sweep != view.manifest.sweep:
        raise HistoryConflictError(
            f"{where} holds a checkpoint of sweep {remote.sweep!r}, not "
            f"{view.manifest.sweep!r}; refusing to overwrite it"
        )
    seq = remote.sealed_records
    if remote.sweep_id != view.manifest.sweep_id or seq > view.last_seq:
        raise HistoryConflictError(
            f"{where} holds a {'longer' if seq > view.last_seq else 'different'} history of "
            f"sweep {remote.sweep!r} ({seq} records; this run has {view.last_seq}); refusing to "
            "overwrite it with this one. Resume from it (resume_from=...) or mirror elsewhere"
        )
    if hash_at(view, segdir, seq) != remote.last_hash:
        raise HistoryConflictError(
            f"{where} holds a history of sweep {remote.sweep!r} that diverges from this one at or "
            f"before record {seq}; refusing to overwrite it"
        )
