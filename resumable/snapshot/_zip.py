"""The zip64 container of a snapshot .npz: written as a stream, its end records read bounded.

Snapshots are uncompressed (ZIP_STORED) zip64 archives in the layout `zipfile` writes to a
non-seekable stream. `ZipOut` writes that layout itself, not through `zipfile`, so the CRC is
computed once, by the caller, on the very buffers it writes, with ISA-L's crc32 (`crc32`) where
`isal` is installed (several times faster than zlib's). On the reading side `zip_bounds` reads
the end-of-central-directory records, bounded, before `zipfile` parses the directory, and
`LOCAL_HEADER` is the local file header a reader checks against the central directory.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

from ..errors import IntegrityError

LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def _load_crc32() -> Callable[..., int]:
    """zlib.crc32, or the same CRC from ISA-L (`isal`, several times faster) where installed."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib.crc32
    probe = b"resumable" * 1000
    return isal_zlib.crc32 if isal_zlib.crc32(probe) == zlib.crc32(probe) else zlib.crc32


crc32 = _load_crc32()
_ZIP_VERSION = 45  # zip64
_ZIP_FLAGS = 0x08  # sizes and CRC in a data descriptor after the data
_DOS_DATE = (1 << 5) | 1  # 1980-01-01 (_FIXED_DATE), time 00:00:00
_DATA_DESCRIPTOR = struct.Struct("<4sLQQ")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_ZIP64_LOCAL_EXTRA = struct.Struct("<HHQQ")
_ZIP64_CENTRAL_EXTRA = struct.Struct("<HH3Q")
_U32 = 0xFFFFFFFF


class ZipOut:
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
        local = LOCAL_HEADER.pack(
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


def zip_bounds(fh: Any, file_size: int, where: str) -> tuple[int, int]:
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
