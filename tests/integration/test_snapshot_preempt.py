"""Preemption (a real SIGTERM) during a background snapshot save: the save completes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from resumable.snapshot import read_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROGS = Path(__file__).parent / "progs"


@pytest.mark.parametrize("stuck", [False, True], ids=["safe-point", "watchdog"])
def test_sigterm_during_a_background_save(tmp_path: Path, stuck: bool) -> None:
    url = tmp_path / "snap.npz"
    mb = 192 if stuck else 96
    args = [sys.executable, str(PROGS / "bg_save_sim.py"), str(url), str(mb)]
    args += ["--stuck"] if stuck else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 75, proc.stderr
    marker = "stuck " if stuck else "inflight "
    line = next(x for x in proc.stdout.splitlines() if x.startswith(marker))
    assert int(line.split()[1]) == 1  # the save really was in flight when it had to stop
    assert "flush sees snapshot True" in proc.stdout  # the guard waited before flushing
    assert "finished" not in proc.stdout
    arrays, report = read_snapshot(url)  # verified
    assert report.extra == {"step": 3}
    assert all(a.shape == ((mb << 20) // 32,) and (a == 3.0).all() for a in arrays.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.npz"]
