"""One check of a sealed part's size and SHA-256: every reader reports damage the same way.

A real sweep writes a local checkpoint and a mirror; one sealed segment is then altered (a
flipped byte) or truncated, and the local load, the download from the mirror and `verify` all
name the part and give the same "expected ..., found ..." description.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from resumable import MirrorOptions, ResumableSweep, verify
from resumable._checkpoint import load, progress_dir_for
from resumable._manifest import SegmentInfo
from resumable._remote import download
from resumable._storage import Store
from resumable.errors import IntegrityError

ITEMS = [{"i": i} for i in range(60)]


def _sweep(ckpt: Path, mirror: Path) -> None:
    opts = MirrorOptions(flush_timeout_s=30)
    with ResumableSweep(
        ITEMS,
        key=lambda c: f"i{c['i']}",
        checkpoint_path=ckpt,
        snapshot_dir=str(mirror),
        segment_bytes=1500,
        mirror_options=opts,
    ) as sweep:
        for item in sweep.pending:
            sweep.record(item, {"v": item["i"] * 2, "pad": "x" * 40})


def _first_sealed(root: Path) -> tuple[SegmentInfo, Path]:
    seg = json.loads((root / "manifest.json").read_bytes())["segments"][0]
    info = SegmentInfo(**seg)
    return info, root / "segments" / info.name


def test_mismatch_descriptions() -> None:
    data, other = b"abc\n", b"abd\n"
    good = SegmentInfo("s", 4, hashlib.sha256(data).hexdigest(), 1, 1, 1, "h")
    assert good.mismatch(data) is None
    good.check(data, "somewhere")
    assert good.mismatch(b"abc") == "expected 4 bytes, found 3"
    assert good.mismatch(other) == (
        f"SHA-256 mismatch: expected {good.sha256}, found {hashlib.sha256(other).hexdigest()}"
    )
    with pytest.raises(IntegrityError, match=r"^somewhere: expected 4 bytes, found 3$"):
        good.check(b"abc", "somewhere")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_local_load_download_and_verify_agree(tmp_path: Path, damage: str) -> None:
    ckpt, mirror = tmp_path / "exp.h5", tmp_path / "mirror"
    _sweep(ckpt, mirror)
    for root in (progress_dir_for(ckpt), mirror):
        seg, path = _first_sealed(root)
        data = path.read_bytes()
        assert seg.mismatch(data) is None
        damaged = (
            data[:-7] if damage == "truncate" else data[:50] + bytes([data[50] ^ 1]) + data[51:]
        )
        path.write_bytes(damaged)
        expected = seg.mismatch(damaged)
        assert expected is not None
        assert expected.startswith("expected" if damage == "truncate" else "SHA-256 mismatch")
    seg, path = _first_sealed(progress_dir_for(ckpt))
    local_message = seg.mismatch(path.read_bytes())
    assert local_message is not None
    with pytest.raises(IntegrityError) as local:
        load(progress_dir_for(ckpt))
    assert str(local.value) == f"{path}: {local_message}"
    mseg, mpath = _first_sealed(mirror)
    message = mseg.mismatch(mpath.read_bytes())
    assert message is not None
    with pytest.raises(IntegrityError) as remote:
        download(Store(str(mirror)), (mirror / "manifest.json").read_bytes(), tmp_path / "dl")
    assert mseg.name in str(remote.value) and message in str(remote.value)
    problems = verify(str(mirror))
    assert any(mseg.name in p.where and p.what == message for p in problems)
