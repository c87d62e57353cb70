"""Reading a checkpoint's parts: bounded file reads, and sealed segments checked against the
manifest whenever they are read (at the load, and again when a lazy record is looked at)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from . import _limits as limits
from ._manifest import Manifest
from .errors import IntegrityError

SEGMENTS_DIR = "segments"


def read_file(path: Path, *, max_bytes: int) -> bytes:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise IntegrityError(f"{path} is {size} bytes; at most {max_bytes} expected")
        # a buffer as large as the file (+1: a file that grew shows as longer than recorded),
        # never one of max_bytes (1 GiB for an active segment: address space under ulimit -v)
        return fh.read(size + 1)


Reader = Callable[[str, int], bytes]
"""Reads the object `name` (e.g. "segments/seg-00000001.jsonl") of at most `max_bytes`;
raises FileNotFoundError (ObjectNotFoundError for a Store) when it does not exist."""


def dir_reader(progress_dir: Path) -> Reader:
    def read(name: str, max_bytes: int) -> bytes:
        return read_file(progress_dir / name, max_bytes=max_bytes)

    return read


class SealedParts:
    """A checkpoint's sealed segments, each read and checked against the manifest's size and
    SHA-256 whenever it is read: at the load, and again when a lazy record (a result's
    payload, say) is looked at later. A few recently used segments are kept (at most
    `cache_bytes`), so reading results in record order reads each segment once."""

    def __init__(
        self, read: Reader, manifest: Manifest, location: str, cache_bytes: int = 64 << 20
    ) -> None:
        self._read = read
        self.manifest = manifest
        self.location = location
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._mutex = threading.Lock()

    def relocate(self, read: Reader, location: str) -> None:
        with self._mutex:
            self._read = read
            self.location = location
            self._cache.clear()

    def where(self, index: int) -> str:
        return f"{self.location}/{SEGMENTS_DIR}/{self.manifest.segments[index].name}"

    def verified(self, index: int, *, again: bool = False) -> bytes:
        """The bytes of sealed segment `index`, checked (IntegrityError naming it if not)."""
        seg = self.manifest.segments[index]
        where = self.where(index)
        since = " since the checkpoint was opened" if again else ""
        try:
            data = self._read(f"{SEGMENTS_DIR}/{seg.name}", seg.size)
        except FileNotFoundError:
            raise IntegrityError(
                f"{where}: sealed segment named by the manifest is missing{since} "
                f"(expected {seg.size} bytes)"
            ) from None
        except IntegrityError as exc:
            raise IntegrityError(
                f"{where}: expected {seg.size} bytes as the manifest records, found more{since} "
                f"({exc})"
            ) from None
        seg.check(data, where, since)
        return data

    def line(self, segment: int, offset: int) -> bytes:
        """The record line at byte `offset` of sealed segment `segment` (read and verified
        again unless cached)."""
        with self._mutex:
            data = self._cache.get(segment)
            if data is None:
                data = self.verified(segment, again=True)
                self._cache[segment] = data
                total = sum(map(len, self._cache.values()))
                while len(self._cache) > 1 and total > self._cache_bytes:
                    total -= len(self._cache.popitem(last=False)[1])
            else:
                self._cache.move_to_end(segment)
        end = data.find(b"\n", offset)
        if offset < 0 or end < 0 or (offset and data[offset - 1 : offset] != b"\n"):
            raise IntegrityError(f"{self.where(segment)}: no record line at byte {offset}")
        return data[offset:end]


# a sealed segment up to this size is read and checked in the background while the one
# before it is replayed; a larger one (a long item list, say) only when its turn comes
PREFETCH_MAX_BYTES = 64 << 20


def verified_ahead(parts: SealedParts) -> Iterator[bytes]:
    """Every sealed segment of `parts`, in order, each read and checked against the manifest
    (`SealedParts.verified`) before it is given out, the next one read and checked in a
    background thread meanwhile: reading a file and SHA-256 release the GIL, so this overlaps
    with the replay of the one given out. At most one segment is read ahead (none larger
    than PREFETCH_MAX_BYTES), so at most two are in memory if the consumer drops each before
    asking for the next. A segment that fails its check raises here, in order, when its turn
    comes (one read ahead that is never asked for is waited for, and dropped)."""
    segments = parts.manifest.segments
    if not segments:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="resumable-load") as pool:
        ahead: Future[bytes] | None = None
        try:
            for i in range(len(segments)):
                data = ahead.result() if ahead is not None else parts.verified(i)
                ahead = None
                if i + 1 < len(segments) and segments[i + 1].size <= PREFETCH_MAX_BYTES:
                    ahead = pool.submit(parts.verified, i + 1)
                yield data
                del data
        finally:
            if ahead is not None:
                ahead.cancel()


MAX_MANIFEST_READ = limits.MAX_MANIFEST_BYTES  # an alias for readers elsewhere
