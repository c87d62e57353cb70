"""The mirror's upload plan: which immutable objects stand for the local journal remotely.

Sealed segments are uploaded once, as immutable objects under content-addressed names; the
active segment's new records go up as immutable *chunks* (named by their sequence range and
hash), and when that segment is sealed its chunks, plus one for the records after them, stand
for it remotely (its records are not sent twice). `UploadPlan.parts` uploads what is missing
and returns the parts the next manifest names; the mirror (_mirror.py) writes that manifest.

Cost per record does not grow with the sweep: each upload sends the records since the last
one, and the manifest has one entry per sealed segment (each ~4 MiB of records) and at most
`max_chunks` chunk entries; chunks are compacted into one when they pile up, and what they
supersede is handed to the garbage (_mirror_gc.py).

Each sealed part also goes up with its row index beside it
(``<part>.idx``, see _segindex; compressed, a few percent of the part's bytes): a resume from
the mirror then replays it without scanning it. Indexes are caches, not named in the manifest:
one that cannot be uploaded is skipped, and readers check every one they use.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import _segindex as segindex
from ._loading import WriterView
from ._manifest import Manifest, SegmentInfo
from ._mirror_gc import Garbage
from ._parts import SEGMENTS_DIR
from ._storage import Store
from .errors import IntegrityError, ResumableError, SourceUnreachableError

log = logging.getLogger("resumable._mirror")  # the mirror's messages, under one name
_MAX_SEALED_PARTS = 8  # a sealed segment stands as at most this many parts remotely

Request = Callable[[Callable[[], Any], int], Any]
"""Makes one request to the store (the function) of that many bytes, counting both."""


class UploadPlan:
    """The remote parts standing for a checkpoint writer's segments; see the module docstring."""

    def __init__(
        self,
        store: Store,
        segdir: Path,
        garbage: Garbage,
        request: Request,
        *,
        max_chunks: int,
        signing_key: bytes | None,
    ) -> None:
        self.store = store
        self.segdir = segdir
        self.garbage = garbage
        self.request = request
        self.max_chunks = max_chunks
        self.signing_key = signing_key
        self.uploaded: dict[str, str] = {}  # object name -> sha256, known to be remote
        self.indexed: set[str] = set()  # parts whose row index is up (or will not be)
        self.chunks: list[SegmentInfo] = []
        self.chunk_segment: str | None = None
        # sealed segment -> the chunks (and final rest) standing for it remotely: records
        # that went up as chunks are not sent again when their segment is sealed
        self.sealed_parts: dict[str, list[SegmentInfo]] = {}

    def adopt(self, manifest: Manifest) -> None:
        """What the remote holds (read at open, or now): its parts exist and need no upload."""
        for seg in manifest.segments:
            self.uploaded[seg.name] = seg.sha256
            self.indexed.add(seg.name)  # (with an index or not: as its uploader left it)

    def parts(self, view: WriterView) -> list[SegmentInfo]:
        """Upload what `view` holds that is not remote yet; the parts standing for it all."""
        parts: list[SegmentInfo] = []
        for seg in view.manifest.segments:
            if seg.name == self.chunk_segment and self.chunks:
                # sealed since the last sync, most of its records already up as chunks: send
                # only the rest, and name those chunks in place of the segment
                finished = self._finish_chunks(seg)
                if finished is not None:
                    self.sealed_parts[seg.name] = finished
                    self.chunks = []
            known = self.sealed_parts.get(seg.name)
            if known is not None:
                parts.extend(known)
                continue
            part = remote_part(seg)
            if self.uploaded.get(part.name) != part.sha256:
                data = self._read_sealed(seg)
                self._upload(part.name, data, part.sha256)
                self._put_index(part, data, self._local_index(seg))
            parts.append(part)
        if self.chunk_segment is not None and self.chunk_segment != view.active:
            self.garbage.retire(c.name for c in self.chunks)  # sealed now and uploaded whole
            self.chunks = []
        self.chunk_segment = view.active
        if view.active_records:
            self._put_chunk(view)
            parts.extend(self.chunks)
        return parts

    def live(self, view: WriterView) -> set[str]:
        """Every object the plan stands on as of `view`: no garbage, whatever was retired."""
        live = {remote_part(s).name for s in view.manifest.segments}
        live |= {c.name for c in self.chunks}
        live |= {p.name for parts in self.sealed_parts.values() for p in parts}
        live |= {segindex.mirror_name(name) for name in live}
        return live

    def _read_sealed(self, seg: SegmentInfo) -> bytes:
        """A local sealed segment's bytes; refused if they no longer match its manifest entry."""
        with open(self.segdir / seg.name, "rb") as fh:
            data = fh.read(seg.size + 1)
        problem = seg.mismatch(data)
        if problem is not None:
            raise IntegrityError(
                f"{self.segdir / seg.name}: local sealed segment no longer matches its "
                f"manifest entry ({problem}); refusing to mirror it"
            )
        return data

    def _local_index(self, seg: SegmentInfo) -> bytes | None:
        """The local row index of sealed segment `seg`, if the writer's indexer has written
        it already (checked by `_put_index`); None otherwise."""
        try:
            with open(self.segdir / segindex.index_name(seg.name), "rb") as fh:
                return fh.read(segindex.max_index_bytes(seg) + 1)
        except OSError:
            return None

    def _put_index(self, part: SegmentInfo, data: bytes, local: bytes | None = None) -> None:
        """Upload the row index of sealed part `part` (its verified bytes `data`) beside it:
        `local` if that is a sound index of it, else one built now. A cache: a failure other
        than an unreachable store (retried with the next sync) is logged and skipped."""
        if (
            self.signing_key is not None  # no signature covers indexes: readers ignore them
            or part.name in self.indexed
            or not segindex.worth_indexing(part)
        ):
            return
        index = local if local is not None and segindex.decode(local, part) else None
        index = index or segindex.build(data, part)
        if index is not None:
            packed = segindex.pack(index)
            name = f"{SEGMENTS_DIR}/{segindex.mirror_name(part.name)}"
            try:
                self.request(
                    lambda: self.store.write_bytes(name, packed, create_only=True), len(packed)
                )
            except SourceUnreachableError:
                raise
            except ResumableError as exc:
                log.debug("row index of %s not mirrored: %s", part.name, exc)
        self.indexed.add(part.name)

    def _finish_chunks(self, seg: SegmentInfo) -> list[SegmentInfo] | None:
        """The remote parts of a just-sealed segment whose first records went up as chunks:
        those chunks, plus one more for the records after them (None: they do not match the
        sealed bytes, so the segment goes up whole as before).

        Each part costs a manifest entry in every later upload, so a sealed segment stands as
        at most `_MAX_SEALED_PARTS`: the first chunks are kept and the last, smallest ones
        (compaction keeps chunk sizes non-increasing) go up again merged into the final part,
        which re-sends far fewer bytes than the whole segment would."""
        data = self._read_sealed(seg)
        kept = self.chunks[: _MAX_SEALED_PARTS - 1]
        pos, first = 0, seg.first_seq
        for chunk in kept:
            piece = data[pos : pos + chunk.size]
            if chunk.first_seq != first or hashlib.sha256(piece).hexdigest() != chunk.sha256:
                return None
            pos += chunk.size
            first += chunk.records
        parts = list(kept)
        if pos < seg.size:
            rest = data[pos:]
            if rest.count(b"\n") != seg.last_seq - first + 1:
                return None
            parts.append(self._put_piece(seg.name, rest, first, seg.last_seq, seg.last_hash))
        elif first != seg.last_seq + 1:
            return None
        # their records are in the final part
        self.garbage.retire(c.name for c in self.chunks[len(kept) :])
        pos = 0
        for part in parts:  # sealed now: for good in the mirror, indexed
            self._put_index(part, data[pos : pos + part.size])
            pos += part.size
        return parts

    def _put_chunk(self, view: WriterView) -> None:
        covered = sum(c.size for c in self.chunks)
        active = view.active
        if active is None or view.active_size <= covered:  # no active segment: nothing new
            return
        if len(self.chunks) >= self.max_chunks:
            # Compact the shortest tail of chunks that, merged with the new bytes, is no larger
            # than the chunk before it (all of them if there is none): chunk sizes stay
            # non-increasing, so a byte is re-sent a few times per segment, not once per
            # `max_chunks` uploads as when merging everything from the start.
            new = view.active_size - covered
            keep, tail = 0, new
            for i in range(len(self.chunks) - 1, 0, -1):
                tail += self.chunks[i].size
                if tail <= self.chunks[i - 1].size:
                    keep = i
                    break
            self.garbage.retire(c.name for c in self.chunks[keep:])
            self.chunks = self.chunks[:keep]
            covered = sum(c.size for c in self.chunks)
        first = view.manifest.sealed_records + 1 + sum(c.records for c in self.chunks)
        fd = os.open(self.segdir / active, os.O_RDONLY)
        try:
            data = os.pread(fd, view.active_size - covered, covered)
        finally:
            os.close(fd)
        records = view.last_seq - first + 1
        if len(data) != view.active_size - covered or data.count(b"\n") != records:
            raise IntegrityError(
                f"{self.segdir / active}: expected {records} records in bytes "
                f"{covered}..{view.active_size}, found otherwise"
            )
        self.chunks.append(self._put_piece(active, data, first, view.last_seq, view.last_hash))

    def _put_piece(
        self, segment: str, data: bytes, first: int, last: int, last_hash: str
    ) -> SegmentInfo:
        """Upload records `first`..`last` of `segment` (its bytes `data`) as an immutable part
        named by that range and its SHA-256: a chunk of the active segment, or the rest of one
        just sealed."""
        digest = hashlib.sha256(data).hexdigest()
        info = SegmentInfo(
            name=f"{segment}.{first:010d}-{last:010d}.{digest[:16]}",
            size=len(data),
            sha256=digest,
            records=last - first + 1,
            first_seq=first,
            last_seq=last,
            last_hash=last_hash,
        )
        self._upload(info.name, data, digest)
        return info

    def _upload(self, remote_name: str, data: bytes, sha256: str) -> None:
        """One create-only PUT of an immutable part (equal names mean equal bytes)."""
        name = f"{SEGMENTS_DIR}/{remote_name}"
        self.request(lambda: self.store.write_bytes(name, data, create_only=True), len(data))
        self.uploaded[remote_name] = sha256


def remote_part(seg: SegmentInfo) -> SegmentInfo:
    """A sealed segment's entry in the mirror: stored under a content-addressed name.

    Segment names are reused by other histories of the sweep: a launch killed after uploading
    `seg-00000007.jsonl` but before its manifest named it leaves that object behind, and the
    relaunch (resumed from the older manifest) writes a different `seg-00000007.jsonl` of its
    own. With the SHA-256 in the name, equal names mean equal bytes, so the create-only upload
    either finds its own bytes (success) or nothing. A name that already ends in its digest (a
    chunk, or a segment downloaded from a mirror) is kept: names do not grow across relaunches.
    """
    tag = "." + seg.sha256[:16]
    return seg if seg.name.endswith(tag) else replace(seg, name=seg.name + tag)
