"""Faults in the storage path, produced for real: a full disk (a small tmpfs), a read-only
checkpoint directory (the tmpfs remounted read-only), and a mirror whose uploads fail part-way.

The disk tests mount a tmpfs, which needs root (CI and developer machines here run as root);
elsewhere they skip, saying why. fsync failing with EIO cannot be produced without a faulty
block device; tests/test_durable.py covers it by making fsync raise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from resumable import MirrorOptions, ResumableSweep
from resumable._checkpoint import load, progress_dir_for
from resumable._remote import download, read_manifest
from resumable._storage import RetryPolicy, Store
from resumable.errors import CheckpointClosedError, CheckpointWriteError
from resumable.view import verify

pytestmark = pytest.mark.integration

ITEMS = [{"label": f"i{i:03d}", "n": i} for i in range(400)]


def key(c: dict) -> str:
    return c["label"]


def _mount(path: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 192 KiB tmpfs at tmp_path/disk, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        _mount(disk, "192k")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield disk
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", "-l", str(disk)], check=True, capture_output=True)


def _remount(disk: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(disk)], check=True, capture_output=True)


def test_disk_full_while_recording_then_resumable_once_space_is_back(small_disk: Path):
    ckpt = small_disk / "exp.h5"
    acknowledged: list[str] = []
    sweep = ResumableSweep(ITEMS, key=key, checkpoint_path=ckpt, segment_bytes=64 * 1024)
    with pytest.raises(CheckpointWriteError) as info:
        for item in sweep.pending:
            # ~2 KB per record: the 192 KiB disk fills after some dozens
            sweep.record(item, np.full(256, item["n"], dtype=np.float64))
            acknowledged.append(item["label"])
    message = str(info.value)
    assert "No space left" in message or "ENOSPC" in message or info.value.errno == 28
    assert str(progress_dir_for(ckpt).name) in message
    assert 10 < len(acknowledged) < len(ITEMS)
    # The sweep stops recording: no success can be reported after a failed write.
    with pytest.raises(CheckpointClosedError):
        sweep.record(ITEMS[-1], 0)
    sweep.close()

    # The checkpoint on the full disk is still valid: every acknowledged record is there.
    loaded = load(progress_dir_for(ckpt))
    assert loaded is not None
    assert sorted(loaded.state.results) == sorted(acknowledged)

    _remount(small_disk, "size=16m")  # space is back
    with ResumableSweep(ITEMS, key=key, checkpoint_path=ckpt) as again:
        assert again.status().done == len(acknowledged)
        for item in again.pending:
            again.record(item, np.full(256, item["n"], dtype=np.float64))
    assert verify(str(ckpt)) == []
    with ResumableSweep(ITEMS, key=key, checkpoint_path=ckpt) as final:
        values = {k: v for k, _, v in final.rows()}
    assert len(values) == len(ITEMS)
    assert all(float(values[c["label"]][0]) == c["n"] for c in ITEMS)


def test_read_only_checkpoint_directory(small_disk: Path):
    ckpt = small_disk / "exp.h5"
    with ResumableSweep(ITEMS[:20], key=key, checkpoint_path=ckpt) as sweep:
        for item in sweep.pending:
            sweep.record(item, item["n"])
    before = {p: p.read_bytes() for p in progress_dir_for(ckpt).rglob("*") if p.is_file()}
    _remount(small_disk, "ro")
    try:
        with pytest.raises(CheckpointWriteError) as info:
            ResumableSweep(ITEMS[:20], key=key, checkpoint_path=ckpt)
        assert "read-only" in str(info.value) or "Read-only" in str(info.value)
        # Reading needs no write access: verification and read-only views still work.
        assert verify(str(ckpt)) == []
        loaded = load(progress_dir_for(ckpt))
        assert loaded is not None and len(loaded.state.results) == 20
        # A fresh sweep in a read-only place fails clearly, before anything else.
        with pytest.raises(CheckpointWriteError):
            ResumableSweep(ITEMS[:5], key=key, checkpoint_path=small_disk / "new" / "x.h5")
    finally:
        _remount(small_disk, "rw")
    after = {p: p.read_bytes() for p in progress_dir_for(ckpt).rglob("*") if p.is_file()}
    assert after == before


def test_mirror_puts_failing_halfway_through_segment_uploads_keep_it_consistent(
    tmp_path: Path, fault_proxy, s3_server, monkeypatch
):
    """Half of the uploads fail (errors, dropped connections, bodies cut short by lost
    responses) while segments and chunks go up: the mirror is consistent at every moment, and
    complete once the faults stop."""
    bucket = s3_server.new_bucket("faults")
    url = f"s3://{bucket}/exp"
    monkeypatch.setenv("RESUMABLE_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("RESUMABLE_RETRY_TOTAL_S", "2")
    fault_proxy.set_rates(error_rate=0.3, drop_rate=0.2)
    opts = MirrorOptions(interval_s=0.02, max_chunks=3, gc_delay_s=30.0, max_backoff_s=0.2)
    snapshots = []
    sweep = ResumableSweep(
        ITEMS,
        key=key,
        checkpoint_path=tmp_path / "exp.h5",
        snapshot_dir=url,
        segment_bytes=8 * 1024,
        mirror_options=opts,
    )
    store = Store(url, retry=RetryPolicy(attempts=3, total_s=5.0, initial_s=0.01))
    try:
        for n, item in enumerate(sweep.pending):
            sweep.record(item, np.arange(8) * item["n"])
            if n % 50 == 49:
                fault_proxy.set_rates(0.0, 0.0)  # read the mirror as a client would
                found = read_manifest(store)
                if found is not None:
                    tmp, loaded = download(store, found[0], tmp_path / f"read-{n}")
                    snapshots.append(loaded.state.last_seq)
                    shutil.rmtree(tmp)
                fault_proxy.set_rates(error_rate=0.3, drop_rate=0.2)
        fault_proxy.set_rates(0.0, 0.0)
        sweep.flush(timeout=60)
        assert fault_proxy.stats["error"] + fault_proxy.stats["drop"] > 0, fault_proxy.stats
    finally:
        fault_proxy.set_rates(0.0, 0.0)
        sweep.close(timeout=60)
    assert snapshots == sorted(snapshots)  # every read verified, and never went backwards
    found = read_manifest(store)
    assert found is not None
    tmp, loaded = download(store, found[0], tmp_path / "final")
    assert len(loaded.state.results) == len(ITEMS)
