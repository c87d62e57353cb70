"""Opening a sweep: a mirror may not overlap the progress directory; resume_from may name it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resumable import ResumableSweep
from resumable._checkpoint import load, progress_dir_for
from resumable.errors import ConfigurationError

ITEMS = [{"i": i} for i in range(6)]


def _snapshot(tmp_path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(tmp_path)): p.read_bytes()
        for p in sorted(tmp_path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def recorded(tmp_path):
    ckpt = tmp_path / "data" / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, handle_signals=False) as sweep:
        for item in ITEMS[:3]:
            sweep.record(item, item["i"])
    return ckpt


def _overlaps(tmp_path: Path, pdir: Path) -> dict[str, str]:
    (tmp_path / "link").symlink_to(pdir)
    (tmp_path / "linkparent").symlink_to(pdir.parent)
    return {
        "equal": str(pdir),
        "inside": str(pdir / "mirror"),
        "containing": str(pdir.parent),
        "root": "/",
        "symlink": str(tmp_path / "link"),
        "symlink-inside": str(tmp_path / "link" / "sub"),
        "symlinked-parent": str(tmp_path / "linkparent" / pdir.name),
        "dotdot": str(pdir / "segments" / ".."),
        "file-url": "file://" + str(pdir),
        "file-url-inside": "file://" + str(pdir / "x"),
        "trailing-slash": str(pdir) + "/",
    }


def test_snapshot_dir_overlapping_the_progress_dir_is_refused(tmp_path, recorded):
    pdir = progress_dir_for(recorded)
    for how, snapshot_dir in _overlaps(tmp_path, pdir).items():
        before = _snapshot(tmp_path / "data")
        with pytest.raises(ConfigurationError) as info:
            ResumableSweep(
                ITEMS, checkpoint_path=recorded, snapshot_dir=snapshot_dir, handle_signals=False
            )
        msg = str(info.value)
        assert str(pdir) in msg and "snapshot_dir" in msg, (how, msg)
        assert _snapshot(tmp_path / "data") == before, how  # refused before anything was written
    loaded = load(pdir)
    assert loaded is not None and len(loaded.state.results) == 3


def test_relative_snapshot_dir_overlapping_is_refused(tmp_path, recorded, monkeypatch):
    monkeypatch.chdir(recorded.parent)
    with pytest.raises(ConfigurationError, match="snapshot_dir"):
        ResumableSweep(
            ITEMS, checkpoint_path="exp.h5", snapshot_dir="exp.h5.resumable", handle_signals=False
        )
    with pytest.raises(ConfigurationError, match="snapshot_dir"):
        ResumableSweep(ITEMS, checkpoint_path="exp.h5", snapshot_dir=".", handle_signals=False)


def test_sharded_mirror_root_overlapping_the_local_root_is_refused(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with pytest.raises(ConfigurationError, match="snapshot_dir"):
        ResumableSweep(
            ITEMS,
            checkpoint_path=ckpt,
            snapshot_dir=str(progress_dir_for(ckpt)),
            shard=(0, 2),
            handle_signals=False,
        )


def test_a_sibling_that_only_shares_a_prefix_is_a_fine_mirror(tmp_path, recorded):
    pdir = progress_dir_for(recorded)
    mirror = str(pdir) + "-mirror"
    with ResumableSweep(
        ITEMS, checkpoint_path=recorded, snapshot_dir=mirror, handle_signals=False
    ) as sweep:
        sweep.record(ITEMS[3], 3)
        sweep.flush()
    assert (Path(mirror) / "manifest.json").is_file()


@pytest.mark.parametrize("suffix", ["", "/", "/manifest.json", "/segments/.."])
def test_resume_from_the_own_progress_dir_is_a_local_resume(tmp_path, recorded, suffix):
    """Documented: resume_from naming the sweep's own progress directory means "resume from the
    local checkpoint" (nothing is downloaded or replaced)."""
    pdir = progress_dir_for(recorded)
    for url in (str(pdir) + suffix, "file://" + str(pdir) + suffix):
        with ResumableSweep(
            ITEMS, checkpoint_path=recorded, resume_from=url, handle_signals=False
        ) as sweep:
            assert sweep.resumed_from == "local"
            assert sum(sweep.is_done(i) for i in ITEMS) == 3
            assert not any(p.name.startswith(".exp.h5.resumable.") for p in pdir.parent.iterdir())
    assert os.listdir(pdir.parent) == ["exp.h5.resumable"]
