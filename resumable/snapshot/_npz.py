"""Low-level .npz streaming for snapshots: write members as they are produced, read them bounded.

Writing streams each array's ``.npy`` bytes into an uncompressed (ZIP_STORED, zip64) member:
header from numpy's own header writer, then the array's memory in 1 MiB slices (numpy's own
chunked writer for non-contiguous arrays). Each slice is first copied into one of a few private
buffers, and the SHA-256 (on a helper thread; hashlib releases the GIL), the zip CRC and the
file write all read that copy: a save hashes exactly the bytes it writes, even while another
thread changes the array, and hashing overlaps the CRC and write on a second core. The zip
structure is written here (`_ZipOut`: local header, data, data descriptor; central directory
last, as `zipfile` writes to a stream), not by `zipfile`, so the CRC is computed once, on the
same private copy, with ISA-L's crc32 where `isal` is installed (several times faster than
zlib's). Locally, the disk starts writing each completed range while the save goes on
(`_Writeback`).

Reading trusts nothing: the end-of-central-directory record is bounded before zipfile parses
the directory, every member must be STORED and unencrypted and lie inside the file, the local
header must agree with the central directory, the ``.npy`` header is bounded before it is read,
parsed by numpy's own ``read_array_header_1_0/2_0`` (``max_header_size`` explicit; never pickle;
3.0 headers, which numpy has no public reader for, with `ast.literal_eval` and the same checks)
and must equal the manifest, and array buffers are
allocated only after their declared size was checked against bytes actually in the file. Each
array is then read (``os.preadv`` straight into its destination buffer) and hashed slice by
slice by one task, arrays in parallel; digests are compared before anything is returned.
"""

from __future__ import annotations

import ast
import ctypes
import ctypes.util
import hashlib
import io
import os
import struct
import warnings
import zipfile
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import numpy as np
from numpy.lib import format as npformat

from .._codec import descr_to_json
from ..errors import IntegrityError, UnsupportedValueError

CHUNK = 1 << 20  # slices small enough to stay in cache between copy, CRC and hash
COPY_CHUNK = 8 << 20  # plain file-to-file copies
MAX_NPY_HEADER_BYTES = 64 << 10
_WORKERS = max(1, min(2, os.cpu_count() or 1))
_INLINE_BELOW = 1 << 20  # arrays smaller than this are hashed on the calling thread
_RING = 8  # private slice buffers of a save (hash of some overlaps the write of others)
_BATCH = 4  # slices hashed per helper task (fewer thread handoffs)
_PREADV = getattr(os, "preadv", None)
_NPY_MAGIC = b"\x93NUMPY"
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
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


@dataclass(frozen=True)
class IntKey:
    """An int key of a mapping in a graph path (plain ints in a path index lists and tuples).

    Optimizer ``state_dict()``s key their per-parameter state by int (``state[0]``); keeping
    such a key apart from a list index and from the string ``"0"`` lets it load back as an
    int into a mapping. In the manifest it is ``{"int": 0}``."""

    key: int

    def to_json(self) -> dict[str, int]:
        return {"int": self.key}


def path_to_json(path: tuple[str | int | IntKey, ...]) -> list[Any]:
    return [p.to_json() if isinstance(p, IntKey) else p for p in path]


@dataclass(frozen=True)
class ArrayRecord:
    """One array of a snapshot, as its manifest describes it."""

    name: str
    member: str  # zip member name, e.g. "a00003.npy"
    dtype: Any  # numpy descr (dtype_to_descr), JSON-normalized
    shape: tuple[int, ...]
    fortran_order: bool
    nbytes: int  # array data bytes
    size: int  # bytes of the whole .npy member (header + data)
    sha256: str  # of the whole .npy member
    path: tuple[str | int | IntKey, ...]  # place in a nested graph (schema 1 files: (name,))
    dtype_name: str | None = None  # an ml_dtypes dtype stored as raw V<n> bytes ("bfloat16")
    kind: str | None = None  # what the leaf was (torch, int, none, ...): see snapshot._graph

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "member": self.member,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "fortran_order": self.fortran_order,
            "nbytes": self.nbytes,
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.path is not None:
            out["path"] = path_to_json(self.path)
        if self.dtype_name is not None:
            out["dtype_name"] = self.dtype_name
        if self.kind is not None:
            out["kind"] = self.kind
        return out


class _Tasks:
    """Whole-array tasks (hash, or read + hash) on a few threads, a bounded number in flight.

    One task per array lets consecutive arrays proceed in parallel with each other and with
    the zip writer (hashlib and file I/O release the GIL); a read task hashes each slice right
    after reading it, while it is still in cache. Small arrays, and everything when `workers`
    is 0, run inline.
    """

    def __init__(self, workers: int) -> None:
        self._pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="resumable-hash") if workers else None
        )
        self._max = workers + 1
        self._pending: deque[Future[Any]] = deque()

    @property
    def parallel(self) -> bool:
        return self._pool is not None

    def submit(self, inline: bool, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self._pool is None or inline:
            fut: Future[Any] = Future()
            try:
                fut.set_result(fn(*args))
            except Exception as exc:
                fut.set_exception(exc)
            return fut
        fut = self._pool.submit(fn, *args)
        self._pending.append(fut)
        while len(self._pending) > self._max:
            futures_wait([self._pending.popleft()])
        return fut

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()


def _update_all(h: Any, bufs: list[memoryview]) -> None:
    for buf in bufs:
        h.update(buf)


class _HashPipe:
    """Copy slices into private buffers; write them here, hash them on a helper thread.

    The copy is what makes a save race-free: the bytes hashed are exactly the bytes written
    (and CRC'd by zipfile), whatever another thread does to the source array meanwhile. A
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
        pool = self._pool if len(data) >= _INLINE_BELOW else None  # None: hash inline
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
            crc = _crc32(buf, crc)
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

    def __init__(self, zout: _ZipOut) -> None:
        self._zout, self.count, self.hash, self.crc = zout, 0, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        n = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        self.hash.update(data)
        self.crc = _crc32(data, self.crc)
        self._zout.write(data)
        self.count += n
        return n


def _load_crc32() -> Callable[..., int]:
    """zlib.crc32, or the same CRC from ISA-L (`isal`, several times faster) where installed."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib.crc32
    probe = b"resumable" * 1000
    return isal_zlib.crc32 if isal_zlib.crc32(probe) == zlib.crc32(probe) else zlib.crc32


_crc32 = _load_crc32()
_ZIP_VERSION = 45  # zip64
_ZIP_FLAGS = 0x08  # sizes and CRC in a data descriptor after the data
_DOS_DATE = (1 << 5) | 1  # 1980-01-01 (_FIXED_DATE), time 00:00:00
_DATA_DESCRIPTOR = struct.Struct("<4sLQQ")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_ZIP64_LOCAL_EXTRA = struct.Struct("<HHQQ")
_ZIP64_CENTRAL_EXTRA = struct.Struct("<HH3Q")
_U32 = 0xFFFFFFFF


class _ZipOut:
    """A streaming writer of uncompressed zip64 archives, the layout `zipfile` writes to a
    non-seekable stream: each member is a local header, the data and a data descriptor (CRC
    and sizes), and the central directory plus zip64 end records come last. It writes straight
    to the file (no seeking, no second pass), and the caller computes each member's CRC on the
    very buffers it writes (`zipfile` would compute it again, with the slower zlib).
    """

    def __init__(self, out: Any, start: int) -> None:
        self._out = out
        self.pos = start
        self._entries: list[tuple[bytes, int, int, int]] = []  # name, CRC, size, offset
        self._member: tuple[bytes, int] | None = None

    def write(self, data: Any) -> None:
        self._out.write(data)
        self.pos += len(data) if isinstance(data, bytes) else memoryview(data).nbytes

    def begin(self, member: str) -> None:
        name = member.encode("ascii")
        local = _LOCAL_HEADER.pack(
            b"PK\x03\x04",
            _ZIP_VERSION,
            0,
            _ZIP_FLAGS,
            zipfile.ZIP_STORED,
            0,
            _DOS_DATE,
            0,
            _U32,
            _U32,
            len(name),
            _ZIP64_LOCAL_EXTRA.size,
        )
        self._member = (name, self.pos)
        self.write(local + name + _ZIP64_LOCAL_EXTRA.pack(1, 16, 0, 0))

    def end(self, crc: int, size: int) -> None:
        assert self._member is not None
        name, offset = self._member
        self._member = None
        self.write(_DATA_DESCRIPTOR.pack(b"PK\x07\x08", crc, size, size))
        self._entries.append((name, crc, size, offset))

    def add(self, member: str, data: bytes) -> None:
        self.begin(member)
        self.write(data)
        self.end(zlib.crc32(data), len(data))

    def close(self) -> None:
        """Write the central directory and the end records."""
        cd_start = self.pos
        parts = []
        for name, crc, size, offset in self._entries:
            parts.append(
                _CENTRAL.pack(
                    b"PK\x01\x02",
                    _ZIP_VERSION,
                    3,
                    _ZIP_VERSION,
                    0,
                    _ZIP_FLAGS,
                    zipfile.ZIP_STORED,
                    0,
                    _DOS_DATE,
                    crc,
                    _U32,
                    _U32,
                    len(name),
                    _ZIP64_CENTRAL_EXTRA.size,
                    0,
                    0,
                    0,
                    0o600 << 16,
                    _U32,
                )
                + name
                + _ZIP64_CENTRAL_EXTRA.pack(1, 24, size, size, offset)
            )
        cd = b"".join(parts)
        n = len(self._entries)
        eocd64_at = cd_start + len(cd)
        tail = (
            _ZIP64_EOCD.pack(
                b"PK\x06\x06",
                _ZIP64_EOCD.size - 12,
                _ZIP_VERSION,
                _ZIP_VERSION,
                0,
                0,
                n,
                n,
                len(cd),
                cd_start,
            )
            + _ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, eocd64_at, 1)
            + _EOCD.pack(
                b"PK\x05\x06",
                0,
                0,
                min(n, 0xFFFF),
                min(n, 0xFFFF),
                min(len(cd), _U32),
                min(cd_start, _U32),
                0,
            )
        )
        self.write(cd + tail)
        self._out.flush()


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
        self._zout = _ZipOut(out, start)
        self._pipe = _HashPipe(_WORKERS > 1)
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
            done, crc = self._pipe.stream(flat.data, h, _crc32(header), zout.write, self._wb)
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


# --- reading -----------------------------------------------------------------------------------


def _zip_bounds(fh: Any, file_size: int, where: str) -> tuple[int, int]:
    """(entry count, central directory size) from the end records, before zipfile parses."""
    tail_len = min(file_size, _EOCD.size + 0xFFFF)
    fh.seek(file_size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < _EOCD.size:
        raise IntegrityError(f"{where} is not a complete zip archive (no end record): truncated?")
    _sig, _d, _dcd, _n_disk, entries, cd_size, _cd_off, _clen = _EOCD.unpack_from(tail, pos)
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF or _cd_off == 0xFFFFFFFF:
        loc_at = file_size - tail_len + pos - _ZIP64_LOCATOR.size
        if loc_at < 0:
            raise IntegrityError(f"{where}: zip64 end record missing")
        fh.seek(loc_at)
        sig, _disk, rec_off, _ndisks = _ZIP64_LOCATOR.unpack(fh.read(_ZIP64_LOCATOR.size))
        if sig != b"PK\x06\x07" or rec_off + _ZIP64_EOCD.size > file_size:
            raise IntegrityError(f"{where}: damaged zip64 end record locator")
        fh.seek(rec_off)
        rec = _ZIP64_EOCD.unpack(fh.read(_ZIP64_EOCD.size))
        if rec[0] != b"PK\x06\x06":
            raise IntegrityError(f"{where}: damaged zip64 end record")
        entries, cd_size = rec[7], rec[8]
    return entries, cd_size


def _parse_header_3_0(text: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of a .npy 3.0 header, checked as numpy checks 1.0/2.0."""
    d = ast.literal_eval(text.decode("utf8"))
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise ValueError("not a .npy header dict")
    shape, fortran = d["shape"], d["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(n, int) for n in shape):
        raise ValueError(f"shape is not valid: {shape!r:.100}")
    if not isinstance(fortran, bool):
        raise ValueError(f"fortran_order is not a valid bool: {fortran!r:.100}")
    return shape, fortran, npformat.descr_to_dtype(d["descr"])


class NpzReader:
    """Bounded, verifying access to the members of a snapshot .npz opened as `fh`."""

    def __init__(self, fh: Any, where: str, *, max_members: int, max_dir_bytes: int) -> None:
        self._fh = fh
        self.where = where
        fh.seek(0, 2)
        self.file_size = fh.tell()
        entries, cd_size = _zip_bounds(fh, self.file_size, where)
        if entries > max_members or cd_size > max_dir_bytes or cd_size > self.file_size:
            raise IntegrityError(
                f"{where}: zip directory declares {entries} members in {cd_size} bytes; refusing "
                f"more than {max_members} members or {max_dir_bytes} directory bytes"
            )
        try:
            fh.seek(0)
            zf = zipfile.ZipFile(fh, "r")
        except Exception as exc:  # BadZipFile, struct.error, ValueError, EOFError ...
            raise IntegrityError(f"{where} is not a valid zip archive: {exc}") from exc
        self._end = min(getattr(zf, "start_dir", self.file_size), self.file_size)
        self.infos: dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            if info.filename in self.infos:
                raise IntegrityError(f"{where}: duplicate zip member {info.filename!r}")
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                raise IntegrityError(
                    f"{where}: member {info.filename!r} is compressed (method "
                    f"{info.compress_type}); snapshots hold only uncompressed members"
                )
            if info.flag_bits & 0x1:
                raise IntegrityError(f"{where}: member {info.filename!r} is encrypted")
            if not 0 <= info.header_offset < self._end:
                raise IntegrityError(
                    f"{where}: member {info.filename!r} starts at offset {info.header_offset}, "
                    f"outside the archive's data (0..{self._end})"
                )
            self.infos[info.filename] = info
        zf.close()  # the file object was passed in, so it stays open
        self._tasks = _Tasks(0)
        self._queued: list[tuple[ArrayRecord, Any, Future[Any]]] = []
        try:
            self._fd: int | None = fh.fileno() if _PREADV is not None else None
        except (AttributeError, OSError, ValueError):
            self._fd = None  # no descriptor: read sequentially on the calling thread
        self._parsed: dict[bytes, tuple[Any, tuple[int, ...], bool, np.dtype]] = {}

    def __enter__(self) -> NpzReader:
        self._tasks = _Tasks(_WORKERS if self._fd is not None else 0)
        return self

    def __exit__(self, *exc: object) -> None:
        self._tasks.close()
        self._tasks = _Tasks(0)

    def _locate(self, member: str) -> tuple[int, int]:
        """(data offset, size) of a member, after checking its local header."""
        info = self.infos.get(member)
        if info is None:
            raise IntegrityError(f"{self.where}: member {member!r} is missing")
        self._fh.seek(info.header_offset)
        raw = self._fh.read(_LOCAL_HEADER.size)
        if len(raw) != _LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
            raise IntegrityError(f"{self.where}: bad local header for member {member!r}")
        fields = _LOCAL_HEADER.unpack(raw)
        name_len, extra_len = fields[10], fields[11]
        name = self._fh.read(name_len)
        expected = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        if name != expected:
            raise IntegrityError(f"{self.where}: member {member!r}: local and central names differ")
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if start + info.file_size > self._end:
            raise IntegrityError(
                f"{self.where}: member {member!r} claims {info.file_size} bytes at offset {start}, "
                f"beyond the data area ({self._end} bytes): truncated or damaged"
            )
        return start, info.file_size

    def _read_exact(self, n: int, what: str) -> bytes:
        data: bytes = self._fh.read(n)
        if len(data) != n:
            raise IntegrityError(f"{self.where}: {what}: expected {n} bytes, found {len(data)}")
        return data

    def read_small(self, member: str, limit: int) -> bytes:
        """A whole small member (e.g. the manifest), CRC-checked, at most `limit` bytes."""
        info = self.infos.get(member)
        if info is None:
            raise IntegrityError(f"{self.where}: member {member!r} is missing")
        if info.file_size > limit:
            raise IntegrityError(
                f"{self.where}: member {member!r} declares {info.file_size} bytes; "
                f"refusing more than {limit}"
            )
        start, size = self._locate(member)
        self._fh.seek(start)
        data = self._read_exact(size, f"member {member!r}")
        if zlib.crc32(data) != info.CRC:
            raise IntegrityError(f"{self.where}: member {member!r} fails its CRC check (damaged)")
        return data

    def _check_npy_header(self, rec: ArrayRecord) -> tuple[bytes, np.dtype]:
        """Read and check a member's .npy header against the manifest; returns its bytes."""
        what = f"array {rec.name!r} (member {rec.member})"
        prefix = self._read_exact(min(10, rec.size), f"{what} header")
        if len(prefix) < 10 or prefix[:6] != _NPY_MAGIC:
            raise IntegrityError(f"{self.where}: {what} is not a .npy member")
        version = (prefix[6], prefix[7])
        if version == (1, 0):
            (hlen,) = struct.unpack("<H", prefix[8:10])
        elif version in ((2, 0), (3, 0)):
            prefix += self._read_exact(2, f"{what} header")
            (hlen,) = struct.unpack("<I", prefix[8:12])
        else:
            raise IntegrityError(f"{self.where}: {what}: unsupported .npy version {version}")
        if hlen > MAX_NPY_HEADER_BYTES or len(prefix) + hlen > rec.size:
            raise IntegrityError(f"{self.where}: {what}: .npy header of {hlen} bytes refused")
        text = self._read_exact(hlen, f"{what} header")
        parsed = self._parsed.get(prefix + text)
        if parsed is None:
            parsed = self._parse_header(prefix, text, what)
            if len(self._parsed) < 10_000 and hlen <= 1024:  # many arrays share a header
                self._parsed[prefix + text] = parsed
        descr, shape, fortran, dtype = parsed
        found = (descr, shape, fortran)
        expected = (rec.dtype, rec.shape, rec.fortran_order)
        if found != expected:
            raise IntegrityError(
                f"{self.where}: {what}: .npy header (dtype, shape, fortran_order) = {found} "
                f"differs from the manifest {expected}"
            )
        if dtype.hasobject:
            raise IntegrityError(f"{self.where}: {what} holds Python objects: refused")
        header = prefix + text
        if len(header) + rec.nbytes != rec.size:
            raise IntegrityError(
                f"{self.where}: {what}: header {len(header)} + data {rec.nbytes} bytes "
                f"!= member size {rec.size}"
            )
        return header, dtype

    def _parse_header(
        self, prefix: bytes, text: bytes, what: str
    ) -> tuple[Any, tuple[int, ...], bool, np.dtype]:
        """(descr as JSON, shape, fortran_order, dtype) of a .npy header (never unpickles).

        Versions 1.0 and 2.0 are parsed by numpy's own ``read_array_header_1_0/2_0`` with an
        explicit ``max_header_size``; numpy has no public reader for 3.0 (UTF-8 headers, written
        for non-Latin-1 field names), which `_parse_header_3_0` reads with the same checks. The
        length was bounded and the bytes read before this, so numpy parses bytes in memory."""
        version = (prefix[6], prefix[7])
        try:
            if version == (3, 0):
                shape, fortran, dtype = _parse_header_3_0(text)
            else:
                reader = (
                    npformat.read_array_header_1_0
                    if version == (1, 0)
                    else npformat.read_array_header_2_0
                )
                shape, fortran, dtype = reader(
                    io.BytesIO(prefix[8:] + text), max_header_size=MAX_NPY_HEADER_BYTES
                )
            if not all(isinstance(n, int) and n >= 0 for n in shape):
                raise ValueError(f"bad shape {shape!r}")
            descr = descr_to_json(dtype)
        except Exception as exc:  # ValueError, SyntaxError, TypeError, RecursionError, ...
            raise IntegrityError(f"{self.where}: {what}: unreadable .npy header ({exc})") from exc
        return descr, shape, fortran, dtype

    def _start(self, rec: ArrayRecord) -> tuple[Any, np.dtype, int]:
        """Check the member's place and .npy header; (hash with the header, dtype, data offset)."""
        start, size = self._locate(rec.member)
        if size != rec.size:
            raise IntegrityError(
                f"{self.where}: array {rec.name!r} (member {rec.member}): expected "
                f"{rec.size} bytes, found {size}"
            )
        self._fh.seek(start)
        header, dtype = self._check_npy_header(rec)
        h = hashlib.sha256(header)
        return h, dtype, start + len(header)

    def _fill(self, rec: ArrayRecord, h: Any, offset: int, dest: memoryview | None) -> None:
        """Read the member's data at `offset` into `dest` (or a scratch buffer), hashing it."""
        total = rec.nbytes if dest is None else len(dest)
        scratch = memoryview(bytearray(min(CHUNK, total))) if dest is None else None
        pos = 0
        if self._fd is None:
            self._fh.seek(offset)
        while pos < total:
            want = min(CHUNK, total - pos)
            piece = scratch[:want] if scratch is not None else dest[pos : pos + want]  # type: ignore[index]  # dest is set when scratch is not
            if self._fd is not None:
                got = _PREADV(self._fd, [piece], offset + pos)  # type: ignore[misc]  # _fd only with preadv
            else:
                got = self._fh.readinto(piece) or 0
            if got <= 0:
                raise IntegrityError(
                    f"{self.where}: array {rec.name!r}: data ends early (truncated file)"
                )
            h.update(piece[:got])
            pos += got

    def check_hashes(self) -> None:
        """Wait for the queued reads; IntegrityError naming every damaged array."""
        for _rec, _h, fut in self._queued:
            fut.result()
        bad = [(rec, h.hexdigest()) for rec, h, _f in self._queued if h.hexdigest() != rec.sha256]
        self._queued.clear()
        if bad:
            details = "; ".join(
                f"{rec.name!r} (member {rec.member}) sha256 expected {rec.sha256}, found {found}"
                for rec, found in bad
            )
            raise IntegrityError(f"{self.where}: {len(bad)} array(s) damaged: {details}")

    def read_array(self, rec: ArrayRecord) -> np.ndarray:
        """The array of `rec` in a new buffer, filled by a queued read: use it only after
        `check_hashes()` returned."""
        h, dtype, offset = self._start(rec)
        order: Literal["F", "C"] = "F" if rec.fortran_order else "C"
        if rec.nbytes == 0:
            self._queued.append((rec, h, self._tasks.submit(True, int)))
            try:
                empty: np.ndarray = np.ndarray(rec.shape, dtype=dtype, order=order)
                return empty
            except (ValueError, TypeError, MemoryError) as exc:
                raise IntegrityError(f"{self.where}: array {rec.name!r}: {exc}") from exc
        raw = np.empty(rec.nbytes, dtype=np.uint8)
        inline = rec.nbytes < _INLINE_BELOW
        fut = self._tasks.submit(inline, self._fill, rec, h, offset, raw.data)
        self._queued.append((rec, h, fut))
        return raw.view(dtype).reshape(rec.shape, order=order)

    def verify_member(self, rec: ArrayRecord) -> None:
        """Queue a check of a member's header and hash without keeping its data."""
        h, _dtype, offset = self._start(rec)
        fut = self._tasks.submit(rec.nbytes < _INLINE_BELOW, self._fill, rec, h, offset, None)
        self._queued.append((rec, h, fut))
