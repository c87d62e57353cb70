"""Item snapshots: restore, verify, delete after record, interruption index (issue 13)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from resumable import ResumableSweep
from resumable._item_snapshot import interruptions, item_id
from resumable.errors import IntegrityError


def _sweep(tmp: Path, mirror: Path | None = None) -> ResumableSweep:
    items = [{"id": i} for i in range(3)]
    return ResumableSweep(
        items,
        checkpoint_path=tmp / "m" / "s.h5",
        key=lambda c: str(c["id"]),
        snapshot_dir=str(mirror) if mirror else "",
        resume_from="",
        handle_signals=False,
    )


def test_save_restore_and_delete_after_record(tmp_path: Path) -> None:
    mirror = tmp_path / "bucket"
    sw = _sweep(tmp_path, mirror)
    item = {"id": 1}
    snap = sw.item_snapshot(item)
    state = {"u": np.zeros(4)}
    assert snap.restore(state) is None
    state["u"][:] = 7
    snap.bind(state, extra=lambda: {"step": np.int64(3)})
    snap.save()
    local = sw.progress_dir / "items" / f"{item_id('1')}.npz"
    remote = mirror / "items" / f"{item_id('1')}.npz"
    assert local.exists() and remote.exists()

    other = {"u": np.zeros(4)}
    held = other["u"]
    extra = sw.item_snapshot(item).restore(other)
    assert extra == {"step": 3} and type(extra["step"]) is np.int64
    assert (held == 7).all()  # in place
    local.unlink()  # gone locally: the mirror's copy serves
    assert sw.item_snapshot(item).restore({"u": np.zeros(4)}) == {"step": 3}

    sw.record(item, 1.0)
    assert not local.exists() and remote.exists()  # the mirror's goes after the flush
    sw.flush()
    assert not remote.exists()
    sw.close()


def test_damaged_or_foreign_item_snapshots_refused(tmp_path: Path) -> None:
    sw = _sweep(tmp_path)
    snap = sw.item_snapshot({"id": 0})
    snap.save({"u": np.arange(4.0)}, {"step": 1})
    data = bytearray(snap.path.read_bytes())
    data[120] ^= 0x01
    snap.path.write_bytes(bytes(data))
    target = {"u": np.zeros(4)}
    with pytest.raises(IntegrityError):
        sw.item_snapshot({"id": 0}).restore(target)
    assert not target["u"].any()
    other = sw.item_snapshot({"id": 2})  # item 2's file holding item 0's snapshot
    sw.item_snapshot({"id": 0}).save({"u": np.arange(4.0)}, {"step": 1})
    other.path.write_bytes(snap.path.read_bytes())
    with pytest.raises(IntegrityError, match="another item"):
        other.restore({"u": np.zeros(4)})
    sw.close()


def test_interruption_index(tmp_path: Path) -> None:
    sw = _sweep(tmp_path)
    snap = sw.item_snapshot({"id": 0})
    snap.save({"u": np.zeros(2)}, {"step": 1}, preempted=True)
    assert snap.interrupted == 1
    assert interruptions(sw.progress_dir) == {"0": 1}
    sw.close()
    again = _sweep(tmp_path)  # the next launch finds the snapshot of the interrupted one
    assert again.item_snapshot({"id": 0}).restore({"u": np.zeros(2)}) == {"step": 1}
    again.item_snapshot({"id": 0}).save({"u": np.zeros(2)}, {"step": 2})
    again.close()
    third = _sweep(tmp_path)  # ...and this one finds a launch that was killed after saving
    third.item_snapshot({"id": 0}).restore({"u": np.zeros(2)})
    assert interruptions(third.progress_dir) == {"0": 2}
    third.close()


def test_items_in_flight_at_preemption_are_noted(tmp_path: Path) -> None:
    from resumable.preempt import Preempted

    items = [{"id": i} for i in range(3)]
    kw = {"checkpoint_path": tmp_path / "s.h5", "key": lambda c: str(c["id"]), "resume_from": ""}
    for launch in range(2):  # item 1 is in flight (no item snapshot) at both preemptions
        with pytest.raises(Preempted), ResumableSweep(items, **kw) as sw:  # type: ignore[arg-type]
            for item in sw.pending:
                if item["id"] == 1:
                    assert sw.guard is not None
                    sw.guard.request(f"test {launch}")
                    sw.checkpoint_if_preempted()
                sw.record(item, item["id"])
    assert interruptions(tmp_path / "s.h5.resumable") == {"1": 2}


def test_mirror_failing_keeps_the_local_save(tmp_path: Path) -> None:
    mirror = tmp_path / "bucket"
    mirror.mkdir()
    (mirror / "items").write_text("not a directory")  # every item upload fails
    sw = _sweep(tmp_path, mirror)
    snap = sw.item_snapshot({"id": 0})
    snap.save({"u": np.ones(2)}, {"step": 5})  # logged, not raised
    assert snap.path.exists()
    target = {"u": np.zeros(2)}
    assert sw.item_snapshot({"id": 0}).restore(target) == {"step": 5} and target["u"].all()
    sw.close()


def test_verify_checks_item_snapshots_and_names_a_damaged_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from resumable.cli import main
    from resumable.view import verify

    mirror = tmp_path / "bucket"
    sw = _sweep(tmp_path, mirror)
    sw.record({"id": 2}, 2.0)
    for i in (0, 1):
        sw.item_snapshot({"id": i}).save({"u": np.arange(1000.0) * i}, {"step": i})
    sw.close()
    ckpt = str(tmp_path / "m" / "s.h5")
    assert verify(ckpt) == [] and verify(str(mirror)) == []

    damaged = sw.progress_dir / "items" / f"{item_id('1')}.npz"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 3] ^= 0x01  # inside the array's data: only its SHA-256 can tell
    damaged.write_bytes(bytes(data))
    problems = verify(ckpt)
    assert [p.where for p in problems] == [str(damaged)]
    assert "damaged" in problems[0].what and "sha256" in problems[0].what
    assert verify(str(mirror)) == []  # the mirror's copy is intact

    assert main(["verify", ckpt]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and damaged.name in out

    # a snapshot filed under another item's name is a problem too
    intact = sw.progress_dir / "items" / f"{item_id('0')}.npz"
    (mirror / "items" / f"{item_id('1')}.npz").write_bytes(intact.read_bytes())
    (found,) = verify(str(mirror))
    assert found.where.endswith(f"items/{item_id('1')}.npz") and "another item" in found.what
