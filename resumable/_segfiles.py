"""The segment files of a progress directory as its writer changes them, off the per-record path.

Segments are named ``seg-00000001.jsonl``, ``seg-00000002.jsonl``, ... and each is created empty
(durably) before a manifest names it. When the active one fills, `plan_seal` makes the manifest
that seals it and names the next, checked against the loader's limits before the record that
fills it is written. At an open, a torn tail of the active segment is kept in ``torn/`` and cut
off (`drop_torn_tail`). `WrittenLine` reads back a record the writer appended without keeping
it, checked against its hash.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from . import _durable as durable
from . import _limits as limits
from ._durable import create_durable_file, fsync_file, make_dirs
from ._manifest import Manifest, SegmentInfo
from .errors import IntegrityError

TORN_DIR = "torn"  # torn tails cut off the active segment, kept for inspection
log = logging.getLogger(__name__)
_INDEX_RE = re.compile(r"seg-(\d{8})")


def segment_name(index: int) -> str:
    return f"seg-{index:08d}.jsonl"


def next_segment_name(manifest: Manifest) -> str:
    """A fresh segment name after every one the manifest knows (mirrored parts included)."""
    names = [s.name for s in manifest.segments]
    if manifest.active is not None:
        names.append(manifest.active)
    indices = [int(m.group(1)) for n in names if (m := _INDEX_RE.match(n))]
    return segment_name(max(indices, default=len(names)) + 1)


def create_empty_segment(path: Path) -> None:
    """Create a new, empty segment; an empty leftover of a crash before its manifest is reused."""
    if path.exists() and path.stat().st_size == 0:
        durable.ops.unlink(path)
    create_durable_file(path)


def plan_seal(
    manifest: Manifest,
    active: str,
    size: int,
    hasher: Any,
    records: int,
    last_seq: int,
    last_hash: str,
    *,
    signing_key: bytes | None,
    progress_dir: Path,
) -> tuple[str, Manifest, bytes]:
    """The next segment's name and the manifest (and its bytes) that seal the active segment
    (`active`, in `progress_dir` whose manifest is `manifest`) once it holds `records` records
    in `size` bytes; LimitExceededError if the manifest would break a limit of the loader
    (checked before the record is written)."""
    info = SegmentInfo(
        name=active,
        size=size,
        sha256=hasher.hexdigest(),
        records=records,
        first_seq=last_seq - records + 1,
        last_seq=last_seq,
        last_hash=last_hash,
    )
    new_name = next_segment_name(manifest)
    manifest = manifest.with_segments((*manifest.segments, info), new_name)
    data = manifest.to_bytes(signing_key)
    limits.check_manifest(len(data), len(manifest.segments), f"checkpoint {progress_dir}")
    return new_name, manifest, data


def drop_torn_tail(progress_dir: Path, active_path: Path, good_size: int) -> None:
    """Keep the torn tail's bytes in ``torn/`` (durably), then cut it off the active segment
    (`active_path`, valid up to `good_size` bytes) so that appends follow the last valid
    record. Never acknowledged, never deleted."""
    fd = durable.ops.open(active_path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        tail = durable.ops.pread(fd, size - good_size, good_size)
        if tail:
            keep = (
                progress_dir
                / TORN_DIR
                / (f"{active_path.name}.at-{good_size}.{time.time_ns()}.torn")
            )
            make_dirs(keep.parent)
            create_durable_file(keep, tail)
            log.warning(
                "%s: dropped a torn tail of %d bytes after the last valid record (byte %d): "
                "an append cut short by a crash, never acknowledged. Its bytes are kept in %s",
                active_path,
                len(tail),
                good_size,
                keep,
            )
        durable.ops.ftruncate(fd, good_size)
        fsync_file(fd, str(active_path))
    finally:
        durable.ops.close(fd)


class WrittenLine:
    """The line of one record this writer appended, read back from its segment file and
    checked against the record's hash (and its predecessor's, which the hash covers)."""

    def __init__(self, path: str, prev: bytes, digest: bytes) -> None:
        self._path = path
        self._prev = prev
        self._digest = digest

    def line(self, segment: int, offset: int) -> bytes:
        try:
            with open(self._path, "rb") as fh:
                fh.seek(offset)
                line = fh.readline(limits.MAX_RECORD_BYTES + 1)
        except OSError as exc:
            raise IntegrityError(
                f"{self._path}: cannot read back the record at byte {offset}: {exc}"
            ) from None
        line = line[:-1] if line.endswith(b"\n") else b""
        if (
            line[: len(self._digest)] != self._digest
            or hashlib.sha256(self._prev + b"\n" + line[len(self._digest) + 1 :])
            .hexdigest()
            .encode("ascii")
            != self._digest
        ):
            raise IntegrityError(
                f"{self._path}: the record at byte {offset} changed since it was written"
            )
        return line
