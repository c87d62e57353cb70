"""Garbage in the mirror and beside the checkpoint: superseded parts outlive the manifest that
dropped them by `gc_delay_s`, close() included; parts no manifest names (left by killed
launches) and unfinished downloads are collected by a later launch once older than the delay;
nothing a published manifest could still name within the delay is deleted."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from test_mirror import (
    MANUAL,
    _assert_mirror_is,
    _fast_retries,
    _named,
    _objects,
    _open,
    _record,
    _record_until_sealed,
    mirror_url,
)

from resumable import MirrorOptions
from resumable._checkpoint import progress_dir_for
from resumable._manifest import MANIFEST_NAME
from resumable._remote import download, read_manifest, source_store

__all__ = ["_fast_retries", "mirror_url"]  # fixtures, used by name


def _wait_until(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_close_keeps_superseded_parts_for_readers_of_the_previous_manifest(
    mirror_url: str, tmp_path: Path
) -> None:
    """A replacement that read the previous manifest during the old writer's shutdown still
    finds every part it names."""
    opts = MirrorOptions(interval_s=3600.0, max_chunks=2, gc_delay_s=60.0)
    sweep = _open(tmp_path / "a" / "exp.h5", mirror_url, mirror_options=opts)
    _record(sweep, 2)
    sweep.flush(timeout=20)
    _record(sweep, 2)
    sweep.flush(timeout=20)
    store = source_store(mirror_url)
    previous = read_manifest(store)  # a replacement reads this ...
    assert previous is not None
    for _ in range(3):  # ... while the old writer compacts those chunks away and closes
        _record(sweep, 2)
        sweep.flush(timeout=20)
    sweep.close()
    assert {s.name for s in previous[1].segments} - _named(mirror_url), "nothing superseded"
    fetched, loaded = download(store, previous[0], tmp_path / "replacement" / "x")
    assert loaded.state.last_seq == previous[1].sealed_records
    shutil.rmtree(fetched)


def test_a_later_launch_collects_orphans_once_older_than_the_delay(tmp_path: Path) -> None:
    url = str(tmp_path / "mirror")
    delay = 1.0
    kw = {"resume_from": url, "segment_bytes": 1500}
    first = _open(tmp_path / "m1" / "exp.h5", url, mirror_options=MANUAL, **kw)
    _record_until_sealed(first)
    first.flush(timeout=10)
    older = (tmp_path / "mirror" / MANIFEST_NAME).read_bytes()
    _record_until_sealed(first)
    _record(first, 3)
    first.close()
    (tmp_path / "mirror" / MANIFEST_NAME).write_bytes(older)  # killed before naming them
    named = _named(url)
    # (the row index beside a named part is no orphan: it lives as long as its part)
    orphans = {o for o in _objects(url) - named if o.removesuffix(".idx") not in named}
    assert len(orphans) >= 2
    time.sleep(delay + 0.1)  # the orphans are older than the delay now
    fresh = tmp_path / "mirror" / "segments" / "seg-99999999.jsonl.0123456789abcdef"
    fresh.write_bytes(b"an upload of another launch, in flight\n")  # younger than the delay

    opts = MirrorOptions(interval_s=0.0, gc_delay_s=delay, max_backoff_s=0.1)
    second = _open(tmp_path / "m2" / "exp.h5", url, mirror_options=opts, **kw)
    assert second.resumed_from == "remote"
    _record(second, 2)
    second.flush(timeout=10)
    # unnamed since at least now: a reader of the manifest second replaced gets the delay
    assert orphans <= _objects(url)
    assert _wait_until(lambda: not orphans & _objects(url)), orphans & _objects(url)
    assert fresh.exists()  # too young to be anyone's garbage yet
    _assert_mirror_is(url, second, tmp_path)
    second.close()
    _assert_mirror_is(url, second, tmp_path)


def test_unfinished_downloads_are_removed_by_a_later_launch_once_old(tmp_path: Path) -> None:
    url = str(tmp_path / "mirror")
    first = _open(tmp_path / "m1" / "exp.h5", url, mirror_options=MANUAL)
    _record(first, 3)
    first.close()
    target = tmp_path / "m2" / "exp.h5"
    pdir = progress_dir_for(target)
    pdir.parent.mkdir(parents=True)
    old = pdir.parent / f".{pdir.name}.incoming-dead0001"
    replaced = pdir.parent / f".{pdir.name}.replaced-dead0002"
    young = pdir.parent / f".{pdir.name}.incoming-live0003"
    for d in (old, replaced, young):
        (d / "segments").mkdir(parents=True)
        (d / "segments" / "seg-00000001.jsonl").write_bytes(b"x" * 100)
    hour_ago = time.time() - 3600
    for d in (old, replaced):
        os.utime(d, (hour_ago, hour_ago))
    second = _open(target, url, resume_from=url, mirror_options=MANUAL)
    assert second.resumed_from == "remote"
    assert not old.exists() and not replaced.exists()
    assert young.exists()  # as young as a download in progress
    second.close()
