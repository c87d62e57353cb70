"""SIGKILL at random moments while `record_many` commits groups: every group acknowledged
before the kill is in the checkpoint, every item at most once, and relaunches finish the sweep
with each item's result recorded exactly once."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from resumable.view import open_view

PROG = Path(__file__).parent / "progs" / "group_commit_worker.py"
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_acknowledged_groups_survive_sigkill(tmp_path: Path) -> None:
    ckpt = tmp_path / "exp.h5"
    n = 20_000
    rng = random.Random(14)
    acked: set[int] = set()
    kills = 0
    for launch in range(13):  # 12 launches killed at random moments, then one left to finish
        proc = subprocess.Popen(
            [sys.executable, PROG, ckpt, str(n), str(launch), "30000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        lines: list[str] = []
        reader = threading.Thread(target=lines.extend, args=(proc.stdout,))
        reader.start()
        time.sleep(rng.uniform(0.0, 0.25))
        if launch < 12 and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        reader.join()
        for line in lines:
            if line.startswith("acked "):
                acked.update(int(x) for x in line.split()[1].split(","))
        state = open_view(str(ckpt)).loaded.state  # replay: a key recorded twice is an error
        recorded = {int(k) for k in state.results}
        assert acked <= recorded, f"lost acknowledged records: {sorted(acked - recorded)[:10]}"
        if any(line.strip() == "finished" for line in lines):
            break
    assert kills >= 3
    view = open_view(str(ckpt))
    got = {k: v for k, _, v in view.results()}
    assert len(got) == n and all(got[str(c)]["v"] == c * 3 for c in range(n))
