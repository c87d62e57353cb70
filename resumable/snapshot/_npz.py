"""The streaming writer of snapshot .npz files: each member written as produced, hashed as written.

Writing streams each array's ``.npy`` bytes into an uncompressed (ZIP_STORED, zip64) member:
header from numpy's own header writer, then the array's memory in 1 MiB slices (numpy's own
chunked writer for non-contiguous arrays). Each slice is first copied into one of a few private
buffers, and the SHA-256 (on a helper thread; hashlib releases the GIL), the zip CRC and the
file write all read that copy: a save hashes exactly the bytes it writes, even while another
thread changes the array, and hashing overlaps the CRC and write on a second core. The zip
structure is written by `_zip.ZipOut` (local header, data, data descriptor; central directory
last, as `zipfile` writes to a stream), not by `zipfile`, so the CRC is computed once, on the
same private copy, with ISA-L's crc32 where `isal` is installed (several times faster than
zlib's). Locally, the disk starts writing each completed range while the save goes on
(`_Writeback`). The reading side is `_npzread`; the records both share are in `_record`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npformat

from .._codec import descr_to_json
from ..errors import UnsupportedValueError
from ._record import CHUNK, INLINE_BELOW, MAX_NPY_HEADER_BYTES, WORKERS, ArrayRecord, IntKey
from ._zip import ZipOut, crc32

COPY_CHUNK = 8 << 20  # plain file-to-file copies
_RING = 8  # private slice buffers of a save (hash of some overlaps the write of others)
_BATCH = 4  # slices hashed per helper task (fewer thread handoffs)
WRITEBACK_EVERY = 32 << 20  # start the disk writing each completed range of this many bytes
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux sync_file_range(2) through ctypes (which releases the GIL), or None elsewhere."""
    if not hasattr(os, "O_DIRECT"):  # not Linux
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _load_sync_file_range()


def _update_all(h: Any, bufs: list[memoryview]) -> None:
    for buf in bufs:
        h.update(buf)


class _HashPipe:
    """Copy slices into private buffers; write them here, hash them on a helper thread.

    The copy is what makes a save race-free: the bytes hashed are exactly the bytes written
    (and CRC'd by `ZipOut`), whatever another thread does to the source array meanwhile. A
    ring of `_RING` buffers lets the hash of slice i (one ordered helper thread; hashlib
    releases the GIL) overlap the CRC and write of slice i+1 on the calling thread; a buffer
    is reused only after its hash finished.
    """

    def __init__(self, parallel: bool) -> None:
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="resumable-hash") if parallel else None
        )
        self._ring = [memoryview(bytearray(CHUNK)) for _ in range(_RING)]
        self._busy: list[Future[Any] | None] = [None] * _RING
        self._next = 0

    def stream(
        self, data: memoryview, h: Any, crc: int, write: Callable[[Any], Any], wb: _Writeback
    ) -> tuple[Future[Any] | None, int]:
        """Write, CRC and hash `data` slice by slice, CRC continuing from `crc`; returns
        (a future for the last hash or None, the CRC)."""
        pool = self._pool if len(data) >= INLINE_BELOW else None  # None: hash inline
        last: Future[Any] | None = None
        group: list[memoryview] = []
        slots: list[int] = []
        for start in range(0, len(data), CHUNK):
            n = min(CHUNK, len(data) - start)
            i = self._next
            self._next = (i + 1) % _RING
            busy = self._busy[i]
            if busy is not None:
                busy.result()
                self._busy[i] = None
            buf = self._ring[i][:n]
            buf[:] = data[start : start + n]
            crc = crc32(buf, crc)
            write(buf)
            wb.wrote(n)
            if pool is None:
                h.update(buf)
                continue
            group.append(buf)
            slots.append(i)
            if len(group) == _BATCH or start + n == len(data):
                last = pool.submit(_update_all, h, group)
                for slot in slots:
                    self._busy[slot] = last
                group, slots = [], []
        return last, crc

    def close(self) -> None:
        for fut in self._busy:
            if fut is not None:
                futures_wait([fut])
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class _Writeback:
    """Starts the disk writing each completed range of a local file while the save goes on.

    Without it the kernel writes a freshly written file back only at the final fsync (or when
    dirty pages pile up), so the disk idles while the save computes, then the CPU idles while
    the disk catches up. ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` on each completed
    `WRITEBACK_EVERY` bytes only *starts* writeback and guarantees nothing: durability still
    comes from the fsync of `durable.atomic_writer`, which then finds little left to write. The
    call can block while the device queue is full, so it runs on a helper thread (ctypes
    releases the GIL) and the save goes on meanwhile; a range completed while the previous call
    still runs joins the next call. A no-op where the call is unavailable or fails (other
    systems, no descriptor).
    """

    def __init__(self, out: Any) -> None:
        self._out = out
        self._fd = -1
        self._done = 0
        if _SYNC_FILE_RANGE is not None and out is not None:
            try:
                self._fd = out.fileno()
                self._done = out.tell()
            except (AttributeError, OSError, ValueError):
                self._fd = -1
        self._pending = 0
        self._pool: ThreadPoolExecutor | None = None
        self._busy: Future[int] | None = None

    def wrote(self, n: int) -> None:
        if self._fd < 0:
            return
        self._pending += n
        if self._pending < WRITEBACK_EVERY or (self._busy is not None and not self._busy.done()):
            return
        if self._busy is not None and self._busy.result() != 0:
            self._fd = -1  # e.g. ESPIPE, EINVAL: leave it all to the final fsync
            return
        self._pending = 0
        self._out.flush()
        end = self._out.tell()
        if end <= self._done:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="resumable-writeback")
        self._busy = self._pool.submit(
            _SYNC_FILE_RANGE,  # type: ignore[arg-type]  # a ctypes function, not typed Callable
            self._fd,
            self._done,
            end - self._done,
            _SYNC_FILE_RANGE_WRITE,
        )
        self._done = end

    def close(self) -> None:
        """Wait for the call in flight (the descriptor is closed after the save)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class _HashingSink:
    """File-like for numpy's own writer: hashes (inline), CRCs and counts what goes out."""

    def __init__(self, zout: ZipOut) -> None:
        self._zout, self.count, self.hash, self.crc = zout, 0, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        n = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        self.hash.update(data)
        self.crc = crc32(data, self.crc)
        self._zout.write(data)
        self.count += n
        return n


def _npy_header(arr: np.ndarray) -> bytes | None:
    """The exact header numpy writes for `arr` (format 1.0 or 2.0), or None for 3.0."""
    d = npformat.header_data_from_array_1_0(arr)
    for writer in (npformat.write_array_header_1_0, npformat.write_array_header_2_0):
        buf = _Collect()
        try:
            writer(buf, d)
        except (ValueError, UnicodeEncodeError):
            continue
        return b"".join(buf.parts)
    return None


class _Collect:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))


class NpzStreamWriter:
    """Writes a ZIP_STORED, zip64 .npz to `out`, one member at a time; see module docstring."""

    def __init__(self, out: BinaryIO, *, seekable: bool) -> None:
        start = out.tell() if seekable else 0
        self._zout = ZipOut(out, start)
        self._pipe = _HashPipe(WORKERS > 1)
        self._wb = _Writeback(out if seekable else None)

    def add_array(
        self,
        member: str,
        name: str,
        arr: np.ndarray,
        path: tuple[str | int | IntKey, ...],
        dtype_name: str | None = None,
        kind: str | None = None,
    ) -> Callable[[], ArrayRecord]:
        """Stream `arr` as member `member`; returns a function giving its manifest record
        (it waits for the array's hash).

        Each slice is first copied into a private buffer; the hash, the zip CRC and the file
        all see that copy, so the archive is self-consistent even if another thread changes
        `arr` meanwhile (the snapshot then holds a mix of old and new slices, each verified:
        save at a safe point, or use a background save, for a consistent state).
        """
        header = _npy_header(arr)
        contiguous = arr.flags.c_contiguous or arr.flags.f_contiguous
        zout = self._zout
        zout.begin(member)
        if header is not None and contiguous and arr.dtype.itemsize > 0:
            flat = (arr if arr.flags.c_contiguous else arr.T).reshape(-1).view(np.uint8)
            h = hashlib.sha256(header)
            zout.write(header)
            done, crc = self._pipe.stream(flat.data, h, crc32(header), zout.write, self._wb)
            size = len(header) + flat.nbytes
        else:  # non-contiguous, or a .npy 3.0 header: numpy's chunked writer (it hands
            # over private bytes copies, hashed, CRC'd and written as they are)
            sink = _HashingSink(zout)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                npformat.write_array(sink, arr, allow_pickle=False)
            h, size, done, crc = sink.hash, sink.count, None, sink.crc
        zout.end(crc, size)
        header_size = size - arr.nbytes
        if header_size > MAX_NPY_HEADER_BYTES:
            raise UnsupportedValueError(
                f"array {name!r}: its .npy header ({header_size} bytes, dtype {arr.dtype}) is "
                f"larger than the {MAX_NPY_HEADER_BYTES} bytes a snapshot reader accepts"
            )
        fortran = bool(arr.flags.f_contiguous and not arr.flags.c_contiguous)
        descr = descr_to_json(arr.dtype)
        shape, nbytes = tuple(int(n) for n in arr.shape), int(arr.nbytes)

        def record() -> ArrayRecord:
            if done is not None:
                done.result()
            digest = h.hexdigest()
            return ArrayRecord(
                name, member, descr, shape, fortran, nbytes, size, digest, path, dtype_name, kind
            )

        return record

    def add_bytes(self, member: str, data: bytes) -> None:
        self._zout.add(member, data)

    def close(self) -> int:
        """Write the central directory; returns the archive size in bytes."""
        try:
            self._zout.close()
        finally:
            self._pipe.close()
            self._wb.close()
        return self._zout.pos

    def abort(self) -> None:
        """Give up after an error (the caller discards the output)."""
        self._pipe.close()
        self._wb.close()
