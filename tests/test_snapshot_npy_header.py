"""The .npy header of each snapshot array: parsed by numpy's own reader, hostile headers refused.

Each case rewrites the real header of a saved snapshot's array in place (same length, so the
zip stays consistent) and checks the load fails with `IntegrityError` naming the array, never
a numpy exception; a 3.0 header (non-Latin-1 field names) round-trips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from resumable.errors import IntegrityError
from resumable.snapshot import download_and_load_state, save_state_with_manifest, verify_snapshot


def _saved(tmp_path: Path) -> tuple[Path, bytes, int, bytes]:
    """(file, its bytes, offset of the array's .npy magic, the header dict text)."""
    url = tmp_path / "s.npz"
    save_state_with_manifest({"x": np.arange(3, dtype=np.int64)}, url)
    data = url.read_bytes()
    at = data.index(b"\x93NUMPY")
    hlen = int.from_bytes(data[at + 8 : at + 10], "little")
    return url, data, at, data[at + 10 : at + 10 + hlen]


def _with_header(url: Path, data: bytes, at: int, text: bytes, text_new: bytes) -> None:
    assert len(text_new) <= len(text)
    padded = text_new.rstrip(b"\n").ljust(len(text) - 1) + b"\n"
    url.write_bytes(data[: at + 10] + padded + data[at + 10 + len(text) :])


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"{'descr': '|O', 'fortran_order': False, 'shape': (3,), }", "manifest"),
        (b"{'descr': '<i8', 'fortran_order': True, 'shape': (3,), }", "manifest"),
        (b"{'descr': '<i8', 'fortran_order': 1, 'shape': (3,), }", "unreadable .npy header"),
        (b"{'descr': '<i8', 'fortran_order': False, 'shape': (-3,), }", "unreadable .npy header"),
        (b"{'descr': '<i8', 'fortran_order': False, 'shape': (3.0,), }", "unreadable"),
        (b"{'descr': '<i8', 'fortran_order': False, 'shape': (3,), 'x': 1}", "unreadable"),
        (b"{'descr': __import__('os'), 'fortran_order': False, 'shape': (3,)}", "unreadable"),
        (b"{'descr': 'not a dtype', 'fortran_order': False, 'shape': (3,), }", "unreadable"),
        (b"[1, 2, 3]", "unreadable .npy header"),
        (b"{'descr': '<i8', 'fortran_order': False, 'shape': (3,), ", "unreadable .npy header"),
    ],
)
def test_hostile_header_is_refused_naming_the_array(
    tmp_path: Path, header: bytes, message: str
) -> None:
    url, data, at, text = _saved(tmp_path)
    _with_header(url, data, at, text, header)
    with pytest.raises(IntegrityError, match=message) as info:
        download_and_load_state({"x": np.zeros(3, dtype=np.int64)}, url)
    assert "'x'" in str(info.value) and str(url) in str(info.value)
    with pytest.raises(IntegrityError, match="'x'"):
        verify_snapshot(url)


@pytest.mark.parametrize("version", [b"\x04\x00", b"\x01\x01", b"\x00\x00"])
def test_unknown_npy_version_is_refused(tmp_path: Path, version: bytes) -> None:
    url, data, at, _ = _saved(tmp_path)
    url.write_bytes(data[: at + 6] + version + data[at + 8 :])
    with pytest.raises(IntegrityError, match=r"'x'.*unsupported .npy version"):
        download_and_load_state({"x": np.zeros(3, dtype=np.int64)}, url)


def test_header_length_beyond_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    url, data, at, _ = _saved(tmp_path)
    # version 2.0 takes a 4-byte length: claim 4 GiB - 1 of header
    url.write_bytes(data[: at + 6] + b"\x02\x00\xff\xff" + data[at + 10 :])
    with pytest.raises(IntegrityError, match=r"'x'.*header of \d+ bytes refused"):
        download_and_load_state({"x": np.zeros(3, dtype=np.int64)}, url)


def test_version_3_header_with_non_latin1_field_names_round_trips(tmp_path: Path) -> None:
    dtype = np.dtype([("値", "<f8"), ("名前", "<i4", (2,))])
    arr = np.zeros(4, dtype=dtype)
    arr["値"] = [1.5, 2.5, 3.5, 4.5]
    arr["名前"] = [[1, 2], [3, 4], [5, 6], [7, 8]]
    url = tmp_path / "u.npz"
    save_state_with_manifest({"rec": arr}, url)
    data = url.read_bytes()
    at = data.index(b"\x93NUMPY")
    assert data[at + 6 : at + 8] == b"\x03\x00"  # numpy wrote a UTF-8 (3.0) header
    target = {"rec": np.zeros(4, dtype=dtype)}
    download_and_load_state(target, url)
    assert target["rec"].tobytes() == arr.tobytes()
    verify_snapshot(url)
