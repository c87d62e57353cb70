"""Durable local writes: atomic replace, create-only files, and fsync failures surfacing.

A real fsync fault (EIO from the block layer) cannot be produced without root and block-device
tricks (dm-flakey, a failing loop device), so these tests simulate it by monkeypatching the
fsync/fdatasync functions to raise ``OSError(EIO)``. That exercises exactly the code paths that
see the kernel's error; it cannot show what the kernel did with the dirty pages.
"""

from __future__ import annotations

import contextlib
import errno
import os

import pytest

from resumable import ResumableSweep
from resumable import _durable as durable_mod
from resumable._checkpoint import progress_dir_for
from resumable._durable import (
    atomic_write_bytes,
    atomic_writer,
    create_durable_file,
    fsync_dir,
    fsync_file,
    make_dirs,
    write_all,
)
from resumable.errors import (
    CheckpointClosedError,
    CheckpointWriteError,
    ResumableError,
)


def _eio(*_args, **_kwargs):
    raise OSError(errno.EIO, "Input/output error (simulated)")


def _fail_all_fsyncs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fsync and fdatasync the library can reach fails with EIO."""
    monkeypatch.setattr(os, "fsync", _eio)
    monkeypatch.setattr(os, "fdatasync", _eio, raising=False)
    # durable.py binds fdatasync at import time, so patch its alias too.
    monkeypatch.setattr(durable_mod, "_fdatasync", _eio)


def _listing(path) -> list[str]:
    return sorted(os.listdir(path))


# -- atomic_writer -----------------------------------------------------------------------------


def test_atomic_writer_replaces_content(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with atomic_writer(target) as fh:
        fh.write(b"new content")
    assert target.read_bytes() == b"new content"
    assert _listing(tmp_path) == ["f.bin"]


def test_atomic_writer_creates_missing_file(tmp_path):
    target = tmp_path / "fresh.json"
    atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert _listing(tmp_path) == ["fresh.json"]


def test_atomic_writer_body_raises_keeps_old_content_and_no_temp(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old content")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), atomic_writer(target) as fh:
        fh.write(b"half of the new")
        raise Boom
    assert target.read_bytes() == b"old content"
    assert _listing(tmp_path) == ["f.bin"]


def test_atomic_writer_body_raises_on_missing_target_leaves_nothing(tmp_path):
    target = tmp_path / "f.bin"
    with pytest.raises(KeyError), atomic_writer(target) as fh:
        fh.write(b"x")
        raise KeyError("boom")
    assert _listing(tmp_path) == []


def test_atomic_writer_keyboard_interrupt_cleans_up(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_writer(target) as fh:
        fh.write(b"new")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["f.bin"]


def test_atomic_writer_fsync_failure_keeps_old_content(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old content")
    _fail_all_fsyncs(monkeypatch)
    with pytest.raises(CheckpointWriteError) as info:
        atomic_write_bytes(target, b"new content")
    assert info.value.errno == errno.EIO
    assert isinstance(info.value, OSError)
    assert isinstance(info.value, ResumableError)
    assert "f.bin" in str(info.value)
    monkeypatch.undo()
    assert target.read_bytes() == b"old content"
    assert _listing(tmp_path) == ["f.bin"]


def test_atomic_writer_file_form_fsync_failure_keeps_old_content(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old content")
    _fail_all_fsyncs(monkeypatch)
    with pytest.raises(CheckpointWriteError) as info, atomic_writer(target) as fh:
        fh.write(b"new content")
    assert info.value.errno == errno.EIO
    assert "f.bin" in str(info.value)
    monkeypatch.undo()
    assert target.read_bytes() == b"old content"
    assert _listing(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("form", ["bytes", "file"])
def test_atomic_write_rename_failure_removes_temp_and_names_target(tmp_path, monkeypatch, form):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old content")

    def refuse(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(durable_mod.ops, "replace", refuse)
    with pytest.raises(CheckpointWriteError) as info:
        if form == "bytes":
            atomic_write_bytes(target, b"new content")
        else:
            with atomic_writer(target) as fh:
                fh.write(b"new content")
    assert info.value.errno == errno.EXDEV
    assert "f.bin" in str(info.value) and "failed" in str(info.value)
    monkeypatch.undo()
    assert target.read_bytes() == b"old content"
    assert _listing(tmp_path) == ["f.bin"]


def test_atomic_writer_in_missing_directory_is_checkpoint_write_error(tmp_path):
    with pytest.raises(CheckpointWriteError):
        atomic_write_bytes(tmp_path / "no" / "such" / "f.bin", b"x")


# -- create_durable_file -------------------------------------------------------------------------


def test_create_durable_file_writes_data(tmp_path):
    target = tmp_path / "seg"
    create_durable_file(target, b"abc\n")
    assert target.read_bytes() == b"abc\n"
    create_durable_file(tmp_path / "empty")
    assert (tmp_path / "empty").read_bytes() == b""


def test_create_durable_file_refuses_existing_file(tmp_path):
    target = tmp_path / "seg"
    target.write_bytes(b"precious")
    with pytest.raises(CheckpointWriteError) as info:
        create_durable_file(target, b"other")
    assert info.value.errno == errno.EEXIST
    assert "seg" in str(info.value)
    assert target.read_bytes() == b"precious"


def test_create_durable_file_fsync_failure_raises(tmp_path, monkeypatch):
    _fail_all_fsyncs(monkeypatch)
    with pytest.raises(CheckpointWriteError) as info:
        create_durable_file(tmp_path / "seg", b"data")
    assert info.value.errno == errno.EIO


# -- fsync helpers -------------------------------------------------------------------------------


def test_fsync_file_failure_is_checkpoint_write_error(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    _fail_all_fsyncs(monkeypatch)
    fd = os.open(path, os.O_RDWR)
    try:
        for data_only in (True, False):
            with pytest.raises(CheckpointWriteError) as info:
                fsync_file(fd, "the file", data_only=data_only)
            assert info.value.errno == errno.EIO
            assert "the file" in str(info.value)
    finally:
        os.close(fd)


def test_fsync_dir_failure_is_checkpoint_write_error(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", _eio)
    with pytest.raises(CheckpointWriteError) as info:
        fsync_dir(tmp_path)
    assert info.value.errno == errno.EIO
    assert str(tmp_path) in str(info.value)


def test_make_dirs_creates_all_parents(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    make_dirs(deep)
    assert deep.is_dir()
    make_dirs(deep)  # idempotent
    assert deep.is_dir()


def test_write_all_handles_short_writes(tmp_path, monkeypatch):
    real_write = os.write
    calls = []

    def one_byte_at_a_time(fd, data):
        calls.append(len(data))
        return real_write(fd, bytes(data[:1]))

    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        monkeypatch.setattr(os, "write", one_byte_at_a_time)
        write_all(fd, b"hello world", "f")
    finally:
        monkeypatch.undo()
        os.close(fd)
    assert path.read_bytes() == b"hello world"
    assert len(calls) == len(b"hello world")


def test_write_all_error_is_checkpoint_write_error(tmp_path, monkeypatch):
    def enospc(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")

    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        monkeypatch.setattr(os, "write", enospc)
        with pytest.raises(CheckpointWriteError) as info:
            write_all(fd, b"data", "f")
    finally:
        monkeypatch.undo()
        os.close(fd)
    assert info.value.errno == errno.ENOSPC


# -- the writer under fsync failure --------------------------------------------------------------

ITEMS = [{"i": i} for i in range(10)]


def _segment_bytes_snapshot(progress_dir) -> dict[str, bytes]:
    out = {}
    for path in sorted(progress_dir.rglob("*")):
        if path.is_file() and path.name != "LOCK":
            out[str(path.relative_to(progress_dir))] = path.read_bytes()
    return out


def test_fdatasync_failure_during_record(tmp_path, monkeypatch):
    ckpt = tmp_path / "exp.h5"
    sweep = ResumableSweep(ITEMS, checkpoint_path=ckpt)
    for item in ITEMS[:3]:
        sweep.record(item, {"v": item["i"]})

    _fail_all_fsyncs(monkeypatch)
    with pytest.raises(CheckpointWriteError) as info:
        sweep.record(ITEMS[3], {"v": 3})
    assert info.value.errno == errno.EIO
    # The sweep refuses to go on recording after a failed fsync (no silent retry).
    with pytest.raises(CheckpointClosedError):
        sweep.record(ITEMS[4], {"v": 4})
    with pytest.raises(CheckpointClosedError):
        sweep.record_failure(ITEMS[5], "boom")
    monkeypatch.undo()
    sweep.close()

    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as again:
        assert [again.result(i) for i in ITEMS[:3]] == [{"v": 0}, {"v": 1}, {"v": 2}]
        # The item whose record() failed was not acknowledged: it runs again.
        assert list(again.pending) == ITEMS[3:]
        again.record(ITEMS[3], {"v": 3})
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as third:
        assert third.result(ITEMS[3]) == {"v": 3}
        assert third.status().done == 4


def _active_segment_size(ckpt) -> int:
    segs = sorted((progress_dir_for(ckpt) / "segments").glob("*.jsonl"))
    return segs[-1].stat().st_size


def test_fsync_failure_during_seal_leaves_a_valid_checkpoint(tmp_path, monkeypatch):
    """The record is durable (fdatasync worked) but sealing failed: reopen must still work.

    Sealing first creates the next segment file, then fsyncs it; when that fsync fails the empty
    next segment stays behind. A relaunch must not trip over it.
    """
    ckpt = tmp_path / "exp.h5"
    big = 10**9
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=big) as sweep:
        for item in ITEMS[:3]:
            sweep.record(item, {"v": item["i"]})
    # Learn how many bytes one open (its launch record) adds, so that the next open does not
    # seal but the next (large) record does.
    size0 = _active_segment_size(ckpt)
    ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=big).close()
    launch_bytes = _active_segment_size(ckpt) - size0
    threshold = _active_segment_size(ckpt) + launch_bytes + 100

    sweep = ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=threshold)
    assert len(list((progress_dir_for(ckpt) / "segments").iterdir())) == 1  # not sealed yet
    # Only full fsyncs (used when creating files and replacing the manifest) fail; the
    # record's own fdatasync succeeds, so the record is durable and the seal fails.
    monkeypatch.setattr(os, "fsync", _eio)
    with pytest.raises(CheckpointWriteError):
        sweep.record(ITEMS[3], {"v": 3, "pad": "x" * 1000})
    with pytest.raises(CheckpointClosedError):
        sweep.record(ITEMS[4], {"v": 4})
    monkeypatch.undo()
    sweep.close()

    with ResumableSweep(ITEMS, checkpoint_path=ckpt, segment_bytes=threshold) as again:
        for item in ITEMS[:3]:
            assert again.result(item) == {"v": item["i"]}
        for item in list(again.pending):
            again.record(item, {"v": item["i"], "pad": "y" * 1000})
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as final:
        assert final.status().done == len(ITEMS)
        assert [final.result(i)["v"] for i in ITEMS] == [i["i"] for i in ITEMS]


def test_close_after_persistent_fsync_failure_releases_the_lock(tmp_path, monkeypatch):
    """A disk that keeps failing: close() may report the error but must not leak the lock."""
    ckpt = tmp_path / "exp.h5"
    sweep = ResumableSweep(ITEMS, checkpoint_path=ckpt)
    sweep.record(ITEMS[0], 0)
    _fail_all_fsyncs(monkeypatch)
    with pytest.raises(CheckpointWriteError):
        sweep.record(ITEMS[1], 1)
    with contextlib.suppress(CheckpointWriteError):
        sweep.close()  # reporting the still-failing disk at close is fine
    monkeypatch.undo()
    assert sweep.closed
    # Same process, same checkpoint: the lock must be free again.
    with ResumableSweep(ITEMS, checkpoint_path=ckpt) as again:
        assert again.result(ITEMS[0]) == 0
        assert not again.is_done(ITEMS[1])


def test_failed_record_leaves_no_partial_line(tmp_path, monkeypatch):
    ckpt = tmp_path / "exp.h5"
    sweep = ResumableSweep(ITEMS, checkpoint_path=ckpt)
    sweep.record(ITEMS[0], 0)
    before = _segment_bytes_snapshot(progress_dir_for(ckpt))
    monkeypatch.setattr(durable_mod, "_fdatasync", _eio)
    with pytest.raises(CheckpointWriteError):
        sweep.record(ITEMS[1], {"big": "x" * 5000})
    monkeypatch.undo()
    # The written-but-not-synced line was cut back off: the files are as before.
    assert _segment_bytes_snapshot(progress_dir_for(ckpt)) == before
    sweep.close()
