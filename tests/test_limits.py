"""Every limit of the checkpoint format: the writer refuses (before writing) whatever the loader
would refuse, at the limit's value it accepts, one past it it refuses with a clear error.

The real limits are huge (256 MiB records, 1 GiB segments, 64 MiB manifests); tests lower them
through the limits module, which the writer and the loader both read at use.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resumable import ResumableSweep
from resumable import _checkpoint as checkpoint_mod
from resumable import _limits as limits
from resumable import _manifest as manifest_mod
from resumable._checkpoint import DEFAULT_SEGMENT_BYTES, load, progress_dir_for
from resumable._journal import encode_record, parse_segment
from resumable._manifest import Manifest, SegmentInfo, parse_manifest
from resumable.errors import ConfigurationError, IntegrityError, LimitExceededError

ITEMS = [{"i": i} for i in range(30)]


def _files(pdir: Path) -> dict[str, bytes]:
    """The checkpoint's files (not the row indexes: a cache, written in the background)."""
    return {
        str(p.relative_to(pdir)): p.read_bytes()
        for p in pdir.rglob("*")
        if p.is_file() and ".idx" not in p.name
    }


def test_default_limits_are_consistent_between_writer_and_loader():
    assert limits.MAX_RECORD_BYTES < limits.MAX_SEGMENT_BYTES
    assert DEFAULT_SEGMENT_BYTES <= limits.MAX_SEGMENT_BYTES
    # a key, JSON-escaped at worst 6 bytes a character, fits in a record with a header
    assert 6 * limits.MAX_KEY_CHARS + 4096 < limits.MAX_RECORD_BYTES
    # the readers elsewhere (views, chaos, remote) read with the same bounds
    assert manifest_mod.MAX_SEGMENT_BYTES == limits.MAX_SEGMENT_BYTES
    assert manifest_mod.MAX_SEGMENTS == limits.MAX_SEGMENTS
    assert manifest_mod.MAX_MANIFEST_BYTES == limits.MAX_MANIFEST_BYTES
    assert checkpoint_mod.MAX_MANIFEST_READ == limits.MAX_MANIFEST_BYTES


# -- keys -----------------------------------------------------------------------------------------


def test_key_at_the_limit_is_kept_and_one_past_is_refused_before_writing(tmp_path):
    """The real limit (1 Mi characters): the reviewer's 1 Mi + 1 key bricked the checkpoint."""
    n = limits.MAX_KEY_CHARS
    ok = tmp_path / "ok.h5"
    with ResumableSweep([n], key=lambda m: "k" * m, checkpoint_path=ok) as sweep:
        sweep.record(n, "done")
    loaded = load(progress_dir_for(ok))
    assert loaded is not None and list(loaded.state.results) == ["k" * n]
    bad = tmp_path / "bad.h5"
    with pytest.raises(LimitExceededError) as info:
        ResumableSweep([n + 1], key=lambda m: "k" * m, checkpoint_path=bad)
    assert str(n + 1) in str(info.value) and str(n) in str(info.value)
    assert not progress_dir_for(bad).exists()


def test_the_loader_refuses_a_key_one_past_the_limit(monkeypatch):
    monkeypatch.setattr(limits, "MAX_KEY_CHARS", 10)
    line, _, _ = encode_record("", 1, "result", "k" * 10, 1.0, None, {})
    assert (
        len(
            parse_segment(
                line, source="s", first_seq=1, prev_hash="", allow_torn_tail=False
            ).records
        )
        == 1
    )
    with pytest.raises(LimitExceededError, match="11 characters"):
        encode_record("", 1, "result", "k" * 11, 1.0, None, {})
    monkeypatch.setattr(limits, "MAX_KEY_CHARS", 11)
    line, _, _ = encode_record("", 1, "result", "k" * 11, 1.0, None, {})
    monkeypatch.setattr(limits, "MAX_KEY_CHARS", 10)
    with pytest.raises(IntegrityError, match="key too long"):
        parse_segment(line, source="s", first_seq=1, prev_hash="", allow_torn_tail=False)


# -- records --------------------------------------------------------------------------------------


def _line(pad: int) -> bytes:
    return encode_record("", 1, "result", "k", 1.0, None, {"v": "x" * pad})[0]


def test_record_at_the_limit_is_written_and_read_one_past_is_refused_by_both(monkeypatch):
    base = len(_line(0)) - 1  # a record's size: its line without the newline
    monkeypatch.setattr(limits, "MAX_RECORD_BYTES", base + 10)
    at = _line(10)
    assert len(at) - 1 == limits.MAX_RECORD_BYTES
    assert (
        len(parse_segment(at, source="s", first_seq=1, prev_hash="", allow_torn_tail=False).records)
        == 1
    )
    with pytest.raises(LimitExceededError) as info:
        _line(11)
    assert f"{base + 11} bytes" in str(info.value) and str(base + 10) in str(info.value)
    monkeypatch.setattr(limits, "MAX_RECORD_BYTES", base + 11)
    past = _line(11)
    monkeypatch.setattr(limits, "MAX_RECORD_BYTES", base + 10)
    with pytest.raises(IntegrityError, match="at most"):
        parse_segment(past + at, source="s", first_seq=1, prev_hash="", allow_torn_tail=False)


def test_an_oversized_result_is_refused_before_writing_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_RECORD_BYTES", 4096)
    import numpy as np

    ckpt = tmp_path / "exp.h5"
    pdir = progress_dir_for(ckpt)
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, handle_signals=False) as sweep:
        sweep.record(ITEMS[0], np.zeros(100))
        before = _files(pdir)
        with pytest.raises(LimitExceededError) as info:
            sweep.record(ITEMS[1], np.zeros(1000))  # 8,000 bytes, ~10,700 encoded
        msg = str(info.value)
        assert sweep.key(ITEMS[1]) in msg and "4096" in msg and "snapshot" in msg
        assert _files(pdir) == before  # nothing written
        assert not sweep.is_done(ITEMS[1])
        sweep.record(ITEMS[1], "a path to where the large data went")  # not broken
    loaded = load(pdir)
    assert loaded is not None and len(loaded.state.results) == 2


# -- segments -------------------------------------------------------------------------------------


def test_segment_bytes_is_bounded_by_the_loaders_segment_limit(tmp_path):
    ResumableSweep(
        ITEMS, checkpoint_path=tmp_path / "a.h5", segment_bytes=limits.MAX_SEGMENT_BYTES
    ).close()
    with pytest.raises(ConfigurationError, match="segment_bytes"):
        ResumableSweep(
            ITEMS, checkpoint_path=tmp_path / "b.h5", segment_bytes=limits.MAX_SEGMENT_BYTES + 1
        )


def test_no_segment_grows_past_the_limit(tmp_path, monkeypatch):
    """A record that would push the active segment past MAX_SEGMENT_BYTES starts a new one
    (a 203 MiB result with segment_bytes=300 MiB used to make an unreadable segment)."""
    monkeypatch.setattr(limits, "MAX_SEGMENT_BYTES", 8000)
    monkeypatch.setattr(limits, "MAX_RECORD_BYTES", 4000)
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(
        ITEMS, checkpoint_path=ckpt, segment_bytes=8000, handle_signals=False
    ) as sweep:
        for item in ITEMS:
            sweep.record(item, "x" * (937 * item["i"] % 3500))
    pdir = progress_dir_for(ckpt)
    sizes = [p.stat().st_size for p in (pdir / "segments").glob("*.jsonl")]
    assert max(sizes) <= 8000 and len(sizes) > 5
    loaded = load(pdir)
    assert loaded is not None and len(loaded.state.results) == len(ITEMS)


def test_loader_takes_a_segment_of_the_limit_and_refuses_one_past(monkeypatch):
    monkeypatch.setattr(limits, "MAX_SEGMENT_BYTES", 5000)

    def manifest(size: int) -> bytes:
        seg = SegmentInfo("seg-00000001.jsonl", size, "0" * 64, 1, 1, 1, "1" * 64)
        return Manifest("s", "id", 1.0, segments=(seg,), active="seg-00000002.jsonl").to_bytes()

    assert parse_manifest(manifest(5000), source="m").segments[0].size == 5000
    with pytest.raises(IntegrityError, match="size"):
        parse_manifest(manifest(5001), source="m")


def test_segment_count_at_the_limit_is_kept_one_past_is_refused_before_writing(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(limits, "MAX_SEGMENTS", 4)
    ckpt = tmp_path / "exp.h5"
    pdir = progress_dir_for(ckpt)
    recorded = 0
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=1, handle_signals=False) as s:
        with pytest.raises(LimitExceededError, match="5 segments; at most 4"):
            for item in ITEMS:
                before = _files(pdir)
                s.record(item, item["i"])
                recorded += 1
        assert _files(pdir) == before
    manifest = json.loads((pdir / "manifest.json").read_bytes())
    assert len(manifest["segments"]) == 4
    loaded = load(pdir)  # the checkpoint at the limit reads back, every acknowledged record in it
    assert loaded is not None and len(loaded.state.results) == recorded > 0


# -- manifests ------------------------------------------------------------------------------------


def test_manifest_size_check_at_the_limit_and_one_past():
    limits.check_manifest(limits.MAX_MANIFEST_BYTES, limits.MAX_SEGMENTS, "x")
    with pytest.raises(LimitExceededError, match="manifest would be"):
        limits.check_manifest(limits.MAX_MANIFEST_BYTES + 1, 0, "x")
    with pytest.raises(LimitExceededError, match="segments"):
        limits.check_manifest(0, limits.MAX_SEGMENTS + 1, "x")


def test_manifest_of_the_limit_is_read_and_one_past_refused(monkeypatch):
    data = Manifest("s", "id", 1.0, active="seg-00000001.jsonl").to_bytes()
    monkeypatch.setattr(limits, "MAX_MANIFEST_BYTES", len(data))
    parse_manifest(data, source="m")
    monkeypatch.setattr(limits, "MAX_MANIFEST_BYTES", len(data) - 1)
    with pytest.raises(IntegrityError, match="bytes"):
        parse_manifest(data, source="m")


def test_a_manifest_that_would_pass_its_limit_is_refused_before_writing(tmp_path, monkeypatch):
    ckpt = tmp_path / "exp.h5"
    pdir = progress_dir_for(ckpt)
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=1, handle_signals=False):
        pass
    size = (pdir / "manifest.json").stat().st_size
    monkeypatch.setattr(limits, "MAX_MANIFEST_BYTES", size + 800)  # room for about two seals
    recorded = 0
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=1, handle_signals=False) as s:
        with pytest.raises(LimitExceededError, match="manifest would be"):
            for item in ITEMS:
                before = _files(pdir)
                s.record(item, item["i"])
                recorded += 1
        assert _files(pdir) == before
    assert (pdir / "manifest.json").stat().st_size <= limits.MAX_MANIFEST_BYTES
    loaded = load(pdir)
    assert loaded is not None and len(loaded.state.results) == recorded
