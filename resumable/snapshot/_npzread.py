"""The verified reader of snapshot .npz files: every member bounded, every array hashed before use.

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
import hashlib
import io
import os
import struct
import zipfile
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any, Literal

import numpy as np
from numpy.lib import format as npformat

from .._codec import descr_to_json
from ..errors import IntegrityError
from ._record import CHUNK, INLINE_BELOW, MAX_NPY_HEADER_BYTES, WORKERS, ArrayRecord
from ._zip import LOCAL_HEADER, zip_bounds

_PREADV = getattr(os, "preadv", None)
_NPY_MAGIC = b"\x93NUMPY"


class _Tasks:
    """Whole-array tasks (hash, or read + hash) on a few threads, a bounded number in flight.

    One task per array lets consecutive arrays proceed in parallel with each other and with
    the caller's work (hashlib and file I/O release the GIL); a read task hashes each slice right
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
        entries, cd_size = zip_bounds(fh, self.file_size, where)
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
        self._tasks = _Tasks(WORKERS if self._fd is not None else 0)
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
        raw = self._fh.read(LOCAL_HEADER.size)
        if len(raw) != LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
            raise IntegrityError(f"{self.where}: bad local header for member {member!r}")
        fields = LOCAL_HEADER.unpack(raw)
        name_len, extra_len = fields[10], fields[11]
        name = self._fh.read(name_len)
        expected = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        if name != expected:
            raise IntegrityError(f"{self.where}: member {member!r}: local and central names differ")
        start = info.header_offset + LOCAL_HEADER.size + name_len + extra_len
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
        inline = rec.nbytes < INLINE_BELOW
        fut = self._tasks.submit(inline, self._fill, rec, h, offset, raw.data)
        self._queued.append((rec, h, fut))
        return raw.view(dtype).reshape(rec.shape, order=order)

    def verify_member(self, rec: ArrayRecord) -> None:
        """Queue a check of a member's header and hash without keeping its data."""
        h, _dtype, offset = self._start(rec)
        fut = self._tasks.submit(rec.nbytes < INLINE_BELOW, self._fill, rec, h, offset, None)
        self._queued.append((rec, h, fut))
