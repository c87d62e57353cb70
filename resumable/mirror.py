"""The mirror: a background uploader that keeps a verifiable copy of the checkpoint remote.

Local disk stays the source of truth and `record()` never waits on the network. A thread
follows the journal: sealed segments are uploaded once, as immutable objects under the same
names; the active segment's new records go up as immutable *chunks* (named by their sequence
range and hash); then the manifest naming all of them, with sizes and SHA-256s, is replaced.
Objects first, manifest last: a reader at any instant sees the previous state or the new one.

Cost per record does not grow with the sweep: each upload sends the records since the last
one, plus a manifest of one entry per sealed segment (each ~4 MiB of records) and at most
`max_chunks` chunk entries; chunks are compacted into one when they pile up, and superseded
objects are deleted after `gc_delay_s`. Writes to the manifest are coalesced to one per
`interval_s` (GCS allows about one write per second to one object name).

Before its first write, and before every manifest write, the mirror checks that what is
there is what it last wrote (or a prefix of its own history): a shorter or divergent history
never overwrites a longer one, and a second writer (a zombie launch) is detected.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import SEGMENTS_DIR, CheckpointWriter, WriterView, hash_at
from .errors import (
    HistoryConflictError,
    IntegrityError,
    ResumableError,
    SourceUnreachableError,
    StorageError,
)
from .manifest import MANIFEST_NAME, Manifest, SegmentInfo
from .remote import read_manifest
from .storage import Store

log = logging.getLogger("resumable.mirror")


@dataclass(frozen=True)
class MirrorOptions:
    """How the mirror paces itself."""

    interval_s: float = 1.0  # at most one manifest write per interval (flush skips the wait)
    max_chunks: int = 8  # chunks of the active segment before they are compacted into one
    gc_delay_s: float = 30.0  # superseded objects are deleted this long after
    flush_timeout_s: float = 300.0  # default bound for flush() and close()
    max_backoff_s: float = 30.0  # pause between attempts while the remote is down


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
    ) -> None:
        self.store = store
        self.writer = writer
        self.options = options or MirrorOptions()
        self.owner = owner
        self._segdir: Path = writer.segdir
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = False
        self._flush_wanted = 0  # seq a flush is waiting for
        self._checked = known is not None
        self._expected_sha: str | None = None  # SHA-256 of the manifest bytes last seen there
        self._uploaded: dict[str, str] = {}  # object name -> sha256, known to be remote
        self._chunks: list[SegmentInfo] = []
        self._chunk_segment: str | None = None
        self._garbage: dict[str, float] = {}
        self._generation = 0
        self._written = False  # superseded objects are collected only after our own manifest
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
        """A record was made durable; the thread uploads it within about `interval_s`."""
        self._wake.set()

    def flush(self, timeout: float | None = None) -> None:
        """Bring the mirror up to date now; raises if it cannot within `timeout` seconds."""
        target = self.writer.view().last_seq
        timeout = self.options.flush_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flush_wanted = max(self._flush_wanted, target)
            self._wake.set()
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
                    f"after {timeout:.0f} s (last error: {self.last_error or 'none'}); the "
                    "local checkpoint has everything and the mirror catches up on the next run"
                )

    def close(self, timeout: float | None = None) -> None:
        """Flush, delete superseded objects, and stop the thread."""
        try:
            if self.failed is None:
                self.flush(timeout)
                self._collect(force=True)
        finally:
            with self._cond:
                self._stop = True
                self._wake.set()
            self._thread.join(timeout=5.0)

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
        last_write = 0.0
        while True:
            wait = None
            if failures:
                wait = min(self.options.max_backoff_s, 0.5 * 2**failures)
            elif self._garbage:
                wait = self.options.gc_delay_s
            self._wake.wait(wait)
            with self._cond:
                if self._stop:
                    return
                flushing = self._flush_wanted > self.remote_seq
            if not flushing and not failures:
                pause = last_write + self.options.interval_s - time.monotonic()
                if pause > 0:  # coalesce: at most one manifest write per interval
                    time.sleep(pause)
            self._wake.clear()
            try:
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
        parts = list(view.manifest.segments)
        for seg in parts:
            if self._uploaded.get(seg.name) != seg.sha256:
                self._put_file(seg)
        if self._chunk_segment is not None and self._chunk_segment != view.active:
            self._retire(self._chunks)  # that segment is sealed now and uploaded whole
            self._chunks = []
        self._chunk_segment = view.active
        if view.active_records:
            self._put_chunk(view)
            parts.extend(self._chunks)
        manifest = Manifest(
            sweep=view.manifest.sweep,
            sweep_id=view.manifest.sweep_id,
            created=view.manifest.created,
            segments=tuple(parts),
            active=None,
            generation=self._generation + 1,
            extra={"writer": self.owner} if self.owner else {},
        )
        data = manifest.to_bytes()
        self._check_unchanged()
        self._request(lambda: self.store.write_bytes(MANIFEST_NAME, data), len(data))
        self._expected_sha = hashlib.sha256(data).hexdigest()
        self._generation = manifest.generation
        self._written = True
        with self._cond:
            self.remote_seq = view.last_seq
            self.last_upload = time.time()
            self.uploads += 1
        return True

    def _put_file(self, seg: SegmentInfo) -> None:
        with open(self._segdir / seg.name, "rb") as fh:
            data = fh.read(seg.size + 1)
        if len(data) != seg.size or hashlib.sha256(data).hexdigest() != seg.sha256:
            raise IntegrityError(
                f"{self._segdir / seg.name}: local sealed segment no longer matches its "
                "manifest entry; refusing to mirror it"
            )
        name = f"{SEGMENTS_DIR}/{seg.name}"
        self._request(lambda: self.store.write_bytes(name, data, create_only=True), len(data))
        self._uploaded[seg.name] = seg.sha256

    def _put_chunk(self, view: WriterView) -> None:
        covered = sum(c.size for c in self._chunks)
        if view.active_size <= covered:
            return
        if len(self._chunks) >= self.options.max_chunks:  # compact: one chunk from the start
            self._retire(self._chunks)
            self._chunks = []
            covered = 0
        first = view.manifest.sealed_records + 1 + sum(c.records for c in self._chunks)
        fd = os.open(self._segdir / view.active, os.O_RDONLY)
        try:
            data = os.pread(fd, view.active_size - covered, covered)
        finally:
            os.close(fd)
        records = view.last_seq - first + 1
        if len(data) != view.active_size - covered or data.count(b"\n") != records:
            raise IntegrityError(
                f"{self._segdir / view.active}: expected {records} records in bytes "
                f"{covered}..{view.active_size}, found otherwise"
            )
        digest = hashlib.sha256(data).hexdigest()
        info = SegmentInfo(
            name=f"{view.active}.{first:010d}-{view.last_seq:010d}.{digest[:16]}",
            size=len(data),
            sha256=digest,
            records=records,
            first_seq=first,
            last_seq=view.last_seq,
            last_hash=view.last_hash,
        )
        name = f"{SEGMENTS_DIR}/{info.name}"
        self._request(lambda: self.store.write_bytes(name, data, create_only=True), len(data))
        self._uploaded[info.name] = digest
        self._chunks.append(info)

    def _request(self, fn: Any, nbytes: int = 0) -> Any:
        self.requests += 1
        self.bytes_sent += nbytes
        return fn()

    # -- safety checks ---------------------------------------------------------------------------

    def _adopt(self, data: bytes, manifest: Manifest) -> None:
        """What the remote holds (read at open, or now): its parts exist and need no upload."""
        self._expected_sha = hashlib.sha256(data).hexdigest()
        self._generation = manifest.generation
        self.remote_seq = manifest.sealed_records
        for seg in manifest.segments:
            self._uploaded[seg.name] = seg.sha256
            self._garbage.setdefault(seg.name, time.monotonic())  # unless named again
        self._checked = True

    def _check_remote(self, view: WriterView) -> None:
        """First contact: the remote must be empty or a prefix of this history."""
        self.requests += 1
        found = read_manifest(self.store)
        if found is None:
            self._checked = True
            return
        data, remote = found
        check_extends(view, self._segdir, remote, self.store.display)
        self._adopt(data, remote)

    def _check_unchanged(self) -> None:
        """Before replacing the manifest: it must still be the one this mirror last saw."""
        self.requests += 1
        found = read_manifest(self.store)
        if found is None and self._expected_sha is None:
            return
        sha = None if found is None else hashlib.sha256(found[0]).hexdigest()
        if sha != self._expected_sha:
            raise HistoryConflictError(
                f"the manifest at {self.store.display} was changed by another writer (another "
                "launch of this sweep, or a different sweep, is mirroring to the same place); "
                "refusing to overwrite it. Stop the other writer, or mirror to another snapshot_dir"
            )

    # -- garbage -------------------------------------------------------------------------------

    def _retire(self, parts: list[SegmentInfo]) -> None:
        now = time.monotonic()
        for p in parts:
            self._garbage.setdefault(p.name, now)

    def _collect(self, force: bool = False) -> None:
        """Delete superseded objects that no manifest we wrote names any more."""
        if not self._garbage or not self._written:
            return
        view = self.writer.view()
        live = {s.name for s in view.manifest.segments} | {c.name for c in self._chunks}
        now = time.monotonic()
        for name, since in list(self._garbage.items()):
            if name in live:
                del self._garbage[name]
                continue
            if force or now - since >= self.options.gc_delay_s:
                try:
                    self._request(lambda n=name: self.store.delete(f"{SEGMENTS_DIR}/{n}"))
                except ResumableError as exc:
                    log.debug("could not delete superseded %s: %s", name, exc)
                    continue
                del self._garbage[name]
                self._uploaded.pop(name, None)


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


