"""Loading a checkpoint: read, verify and replay its journal into a State.

Every sealed segment is read whole and checked against the manifest's size and SHA-256 before
anything in it is used; the active segment is verified record by record (its hash chain) and
may end in a torn tail (see _journal.py). Sealed segments replay in bulk (`_bulk_replay.py`):
their result records become rows of columns (`_resultmap.ResultMap`), found by a vectorised
scan or, in a local progress directory, read from the segment's row index (`_segindex.py`: a
derived cache bound to the segment's SHA-256, ignored unless sound). A local load reads and
checks the next sealed segment in a background thread while one is replayed
(`_parts.verified_ahead`). Payloads are read back (and checked again) only when looked at
(`SealedParts`).

`_checkpoint.py` (the writer) builds on this module; this one never imports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from . import _limits as limits
from . import _segindex as segindex
from ._bulk_replay import replay_active_scanned, replay_indexed, replay_scanned
from ._gcpause import gc_paused
from ._journal import ParsedSegment, parse_sealed_segment, parse_segment
from ._manifest import MANIFEST_NAME, Manifest, SegmentInfo, parse_manifest
from ._parts import (
    SEGMENTS_DIR,
    Reader,
    SealedParts,
    dir_reader,
    read_file,
    verified_ahead,
)
from ._state import State
from .errors import IntegrityError


@dataclass(frozen=True)
class WriterView:
    """What a checkpoint holds on disk at one instant; bytes it names never change after."""

    manifest: Manifest
    active: str | None
    active_size: int
    active_records: int
    last_seq: int
    last_hash: str


@dataclass
class Loaded:
    """A verified checkpoint: its manifest, the replayed state, and the active segment's tail."""

    manifest: Manifest
    state: State
    active_size: int = 0  # verified bytes in the active segment
    active_hash: Any = field(default=None, repr=False)  # running sha256 of those bytes
    active_records: int = 0
    active_bytes: bytes = field(default=b"", repr=False)  # the verified active records
    torn_bytes: int = 0
    parts: SealedParts | None = field(default=None, repr=False)  # lazy records read from here
    # sealed segments (their positions) replayed without a sound row index (see _segindex)
    unindexed: list[int] = field(default_factory=list, repr=False)

    def relocate(self, progress_dir: Path) -> None:
        """The checkpoint's files were moved to `progress_dir` (a download installed): lazy
        records read (and verify) their segments there from now on."""
        if self.parts is not None:
            self.parts.relocate(dir_reader(progress_dir), str(progress_dir))

    def view(self) -> WriterView:
        return WriterView(
            manifest=self.manifest,
            active=self.manifest.active,
            active_size=self.active_size,
            active_records=self.active_records,
            last_seq=self.state.last_seq,
            last_hash=self.state.last_hash,
        )


IndexReader = Callable[[SegmentInfo], "bytes | None"]
"""The row index file of a sealed segment (None if there is none, or it cannot be read)."""


def _index_reader(progress_dir: Path) -> IndexReader:
    segdir = progress_dir / SEGMENTS_DIR

    def read_index(seg: SegmentInfo) -> bytes | None:
        try:
            return read_file(
                segdir / segindex.index_name(seg.name), max_bytes=segindex.max_index_bytes(seg)
            )
        except (OSError, IntegrityError):  # absent, unreadable or too long: not used
            return None

    return read_index


KeySharer = Callable[[list[str]], list[str]]
"""Gives back the keys it is given as equal str objects held elsewhere already (the sweep's
item keys), so that a reopened sweep keeps one copy of each key, not two."""


def key_sharer(index: dict[str, int], keys: list[str]) -> KeySharer:
    """A KeySharer with the objects of `keys`, where `index` maps each to its position."""
    get, at = index.get, keys.__getitem__

    def shared(found: list[str]) -> list[str]:
        # usually a run of the items in their order: one look-up, then compared in a row
        start = get(found[0]) if found else None
        if start is not None:
            run = keys[start : start + len(found)]
            if run == found:
                return run
        rows = list(map(get, found))
        if None in rows:  # keys of items no longer in the list: their own objects
            return [k if r is None else keys[r] for k, r in zip(found, rows, strict=True)]
        return list(map(at, cast("list[int]", rows)))  # no None among them

    return shared


def load(
    progress_dir: Path, *, share_keys: KeySharer | None = None, use_indexes: bool = True
) -> Loaded | None:
    """Read and verify the checkpoint in the local `progress_dir`; None if there is none.

    Sealed segments replay from their row indexes where those are sound (see _segindex),
    unless `use_indexes` is false (a sweep with a signing key: no signature covers them).
    With `share_keys`, the keys of results replayed in bulk are the objects it gives."""

    def read(name: str, max_bytes: int) -> bytes:
        return read_file(progress_dir / name, max_bytes=max_bytes)

    try:
        mbytes = read(MANIFEST_NAME, limits.MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        _check_no_orphans(progress_dir)
        return None
    return load_from(
        read,
        mbytes,
        location=str(progress_dir),
        index=_index_reader(progress_dir) if use_indexes else None,
        share_keys=share_keys,
        prefetch=True,
    )


def load_from(
    read: Reader,
    manifest_bytes: bytes,
    *,
    location: str,
    reread: Reader | None = None,
    index: IndexReader | None = None,
    share_keys: KeySharer | None = None,
    prefetch: bool = False,
) -> Loaded:
    """Verify a checkpoint given its manifest bytes, reading the parts it names with `read`.

    Sealed segments must match the manifest's size and SHA-256 exactly; the active segment (a
    local checkpoint's, or one fetched from another machine's progress directory) is verified
    record by record and may end in a torn tail. Records of sealed segments looked at later
    (results' payloads) are read again with `reread` (default: `read`) and verified again.
    With `index` (a local progress directory's own), sealed segments replay from their row
    indexes where those are sound. With `prefetch` (`read` safe to call from another thread),
    the next sealed segment is read and checked while one is replayed (`verified_ahead`).
    """
    manifest = parse_manifest(manifest_bytes, source=f"{location}/{MANIFEST_NAME}")
    parts = SealedParts(reread or read, manifest, location)
    first = SealedParts(read, manifest, location)

    def sealed() -> Iterator[bytes]:
        """Each sealed segment read and checked just before it is replayed (one at a time in
        memory, not the whole journal)."""
        for i in range(len(manifest.segments)):
            yield first.verified(i)

    return load_records(
        manifest,
        verified_ahead(first) if prefetch else sealed(),
        active_reader(read, manifest, location),
        location=location,
        parts=parts,
        index=index,
        share_keys=share_keys,
    )


def active_reader(read: Reader, manifest: Manifest, location: str) -> Callable[[], bytes | None]:
    """Reads the active segment named by `manifest` (None if it names none) when called."""

    def active() -> bytes | None:
        if manifest.active is None:
            return None
        where = f"{location}/{SEGMENTS_DIR}/{manifest.active}"
        try:
            return read(f"{SEGMENTS_DIR}/{manifest.active}", limits.MAX_SEGMENT_BYTES)
        except FileNotFoundError:
            raise IntegrityError(
                f"{where}: the active segment named by the manifest is missing"
            ) from None

    return active


def load_records(
    manifest: Manifest,
    sealed: Iterable[bytes],
    active: bytes | Callable[[], bytes | None] | None,
    *,
    location: str,
    parts: SealedParts | None = None,
    index: IndexReader | None = None,
    share_keys: KeySharer | None = None,
) -> Loaded:
    """Replay verified sealed segment bytes and the active segment's bytes into a state.

    `sealed` may be a generator (each segment checked as it is read); `active` the bytes or
    a function reading them once the sealed ones are replayed. With `parts` (where the sealed
    segments can be read again), results and items records of sealed segments are kept as
    where they lie (see _resultmap.ResultMap), not as their bytes. The garbage collector is
    paused meanwhile: replay makes millions of objects and no cycles, and its passes cost
    about a quarter of a large reopen.
    """
    with gc_paused():
        return _replay(
            manifest,
            sealed,
            active,
            location=location,
            parts=parts,
            index=index,
            share_keys=share_keys,
        )


# segments of fewer records replay record by record: numpy's fixed cost per call would
# outweigh what it saves there
_SCAN_MIN_RECORDS = 256


# a segment this large scans even with few records: its lines (an items list) are kept as
# where they lie, not copied
_SCAN_MIN_BYTES = 1 << 20


def _replay(
    manifest: Manifest,
    sealed: Iterable[bytes],
    active: bytes | Callable[[], bytes | None] | None,
    *,
    location: str,
    parts: SealedParts | None = None,
    index: IndexReader | None = None,
    share_keys: KeySharer | None = None,
) -> Loaded:
    state = State()
    state.results.share_keys = share_keys
    unindexed: list[int] = []
    prev = ""
    segments = iter(sealed)
    try:
        for i, seg in enumerate(manifest.segments):
            # (no zip: its reused tuple would keep the previous segment's bytes alive while
            # the next one is read)
            data = next(segments, None)
            if data is None:
                raise ValueError(f"{len(manifest.segments)} sealed segments expected, found {i}")
            _replay_sealed(state, data, i, seg, prev, location, parts, index, unindexed)
            del data
            prev = seg.last_hash
        if next(segments, None) is not None:
            raise ValueError(f"more than the {len(manifest.segments)} sealed segments expected")
    finally:
        close = getattr(segments, "close", None)
        if close is not None:  # a generator (verified_ahead: its reading thread ends now)
            close()
    loaded = Loaded(
        manifest=manifest,
        state=state,
        active_hash=hashlib.sha256(),
        parts=parts,
        unindexed=unindexed,
    )
    if callable(active):
        active = active()
    if active is not None:
        assert manifest.active is not None
        source = f"{location}/{SEGMENTS_DIR}/{manifest.active}"
        first_seq = manifest.sealed_records + 1
        lines = active.count(b"\n")
        last = (
            replay_active_scanned(state, active, lines, first_seq, prev, source)
            if parts is not None and lines >= _SCAN_MIN_RECORDS
            else None
        )
        if last is not None:
            loaded.active_size = len(active)
            loaded.active_hash.update(active)
            loaded.active_records = lines
            loaded.active_bytes = active
            state.last_hash = last
            return loaded
        parsed: ParsedSegment = parse_segment(
            active,
            source=source,
            first_seq=first_seq,
            prev_hash=prev,
            allow_torn_tail=True,
        )
        for rec in parsed.records:
            state.apply(rec)
        prev = parsed.last_hash
        loaded.active_size = parsed.good_size
        loaded.active_hash.update(active[: parsed.good_size])
        loaded.active_records = len(parsed.records)
        loaded.active_bytes = active[: parsed.good_size]
        loaded.torn_bytes = parsed.torn_bytes
    state.last_hash = prev
    return loaded


def _replay_sealed(
    state: State,
    data: bytes,
    i: int,
    seg: SegmentInfo,
    prev: str,
    location: str,
    parts: SealedParts | None,
    index: IndexReader | None,
    unindexed: list[int],
) -> None:
    """Replay sealed segment `i` (`data`, checked against the manifest): from its row index,
    its vectorised scan, or record by record (`prev`: the hash of the record before it)."""
    source = f"{location}/{SEGMENTS_DIR}/{seg.name}"
    line_at = data.rfind(b"\n", 0, len(data) - 1) + 1  # (no copy of a long last line)
    tail = data[line_at : line_at + 64].decode("ascii", "replace")
    if seg.records and tail != seg.last_hash:
        raise IntegrityError(
            f"{source}: ends in a record {tail[:16]!r}..., the manifest records "
            f"{seg.records} records ending in {seg.last_hash[:16]!r}..."
        )
    if parts is not None and seg.records:
        raw = index(seg) if index is not None else None
        if raw is not None and replay_indexed(state, data, raw, i, seg, source, parts):
            return
        if index is not None:
            unindexed.append(i)
        if (seg.records >= _SCAN_MIN_RECORDS or seg.size >= _SCAN_MIN_BYTES) and (
            replay_scanned(state, data, i, seg, source, parts)
        ):
            return
    records = parse_sealed_segment(
        data, source=source, first_seq=seg.first_seq, records=seg.records, prev_hash=prev
    )
    if len(records) != seg.records or (records and tail != seg.last_hash):
        raise IntegrityError(
            f"{source}: holds {len(records)} records ending in {tail[:16]!r}..., the "
            f"manifest records {seg.records} ending in {seg.last_hash[:16]!r}..."
        )
    apply = state.apply
    for rec in records:
        apply(rec)


def hash_at(view: WriterView, segdir: Path, seq: int) -> str | None:
    """The hash of record `seq` as of `view` (None past its end); reads at most one segment.

    Used once per open or first mirror contact, to check that one history extends another.
    """
    if seq == 0:
        return ""
    if seq > view.last_seq:
        return None
    if seq == view.last_seq:
        return view.last_hash
    for seg in view.manifest.segments:
        if seg.first_seq <= seq <= seg.last_seq:
            if seq == seg.last_seq:
                return seg.last_hash
            data = read_file(segdir / seg.name, max_bytes=seg.size)
            return _nth_line_hash(data, seq - seg.first_seq)
    assert view.active is not None
    with open(segdir / view.active, "rb") as fh:
        data = fh.read(view.active_size)
    return _nth_line_hash(data, seq - view.manifest.sealed_records - 1)


def _nth_line_hash(data: bytes, n: int) -> str:
    pos = 0
    for _ in range(n):
        pos = data.index(b"\n", pos) + 1
    return data[pos : pos + 64].decode("ascii")


def _check_no_orphans(progress_dir: Path) -> None:
    """No manifest: fine if nothing was ever recorded, damage if segments hold records."""
    segdir = progress_dir / SEGMENTS_DIR
    if not segdir.is_dir():
        return
    for entry in segdir.iterdir():
        if entry.is_file() and entry.stat().st_size > 0:
            raise IntegrityError(
                f"{progress_dir / MANIFEST_NAME} is missing but {entry} holds "
                f"{entry.stat().st_size} bytes of records; refusing to start over"
            )
