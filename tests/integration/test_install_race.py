"""A second launch at the worst moment of an open: while the first installs a resumed source.

Launch A resumes from a source that is ahead of its local checkpoint, so it downloads the
source and installs it in place of the local progress directory. A test hook
(RESUMABLE_TEST_PAUSE=install:<flag>) holds A inside the install; launch B opens the same
checkpoint then. B must either be refused (CheckpointLockedError) or keep what it was told was
recorded: whatever B acknowledged must be in the checkpoint after both are done.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resumable import ResumableSweep
from resumable._checkpoint import load, progress_dir_for

PROG = Path(__file__).parent / "progs" / "install_racer.py"
ITEMS = [{"i": i} for i in range(20)]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _launch(ckpt: Path, source: str, index: int, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(PROG), str(ckpt), source, str(index)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _source_ahead_of_local(tmp_path: Path) -> tuple[Path, Path]:
    """A local checkpoint with items 0-1, and a copy of it (the source) extended with 2-4."""
    local = tmp_path / "a" / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=local, handle_signals=False) as sweep:
        for item in ITEMS[:2]:
            sweep.record(item, item["i"])
    remote = tmp_path / "b" / "exp.h5"
    remote.parent.mkdir()
    shutil.copytree(progress_dir_for(local), progress_dir_for(remote))
    with ResumableSweep(ITEMS, checkpoint_path=remote, handle_signals=False) as sweep:
        for item in ITEMS[2:5]:
            sweep.record(item, item["i"])
    return local, progress_dir_for(remote)


def test_second_launch_during_install_is_refused_or_kept(tmp_path):
    local, source = _source_ahead_of_local(tmp_path)
    flag = tmp_path / "paused"
    a = _launch(local, str(source), 5, {"RESUMABLE_TEST_PAUSE": f"install:{flag}"})
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert a.poll() is None, a.communicate()
        assert time.monotonic() < deadline, "launch A never reached the install"
        time.sleep(0.01)
    b = _launch(local, "-", 6)  # the second launch, inside A's install
    b_out, b_err = b.communicate(timeout=120)
    flag.unlink()
    a_out, a_err = a.communicate(timeout=120)
    assert a.returncode == 0 and b.returncode == 0, (a_err, b_err)
    acked = {int(line.split()[1]) for line in (a_out + b_out).splitlines() if line[:3] == "ACK"}
    assert 5 in acked  # A resumed and recorded
    loaded = load(progress_dir_for(local))
    assert loaded is not None
    with ResumableSweep(ITEMS, checkpoint_path=local, handle_signals=False) as sweep:
        have = {item["i"] for item in ITEMS if sweep.is_done(item)}
    assert acked <= have, f"acknowledged {sorted(acked)}, the checkpoint holds {sorted(have)}"
    assert {0, 1, 2, 3, 4} <= have
    assert b_out.strip() == "LOCKED"  # the lock covers the whole open, install included
