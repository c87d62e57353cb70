"""A relaunch onto a node whose local checkpoint is stale: another machine went on from the mirror.

Machine A is SIGKILLed with 16 results on its local disk, 13 of them mirrored. Machine B
resumes from the mirror and goes on to 43 (not redoing A's last three, which it never saw: it
records other items). The task is then requeued onto A's node, where A's local directory
still is (the SLURM spec keys it by job id, which a requeue keeps). Neither history is wrong:
the relaunch adopts the mirror's history, re-records the results only A's disk held, keeps
A's directory aside (renamed, never deleted), logs one warning naming both, and finishes with
every result of both machines. Only what cannot be merged (another sweep under the same name,
another item under the same key) is refused. Real subprocesses, SIGKILL, a real directory
mirror.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

try:  # tests/ is on sys.path (see conftest.py)
    from fixtures.compare import assert_bitwise_equal
except ImportError:  # pragma: no cover
    from tests.fixtures.compare import assert_bitwise_equal

from resumable._checkpoint import load
from resumable.view import open_view

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = Path(__file__).parent / "progs" / "stale_worker.py"
sys.path.insert(0, str(WORKER.parent))
from stale_worker import N_ITEMS, compute  # noqa: E402


def launch(ckpt: Path, mirror: Path, keys: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(WORKER), str(ckpt), str(mirror), keys, *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def recorded(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("recorded ")]


def results_of(where: Path) -> dict[str, object]:
    return {key: result for key, _p, result in open_view(str(where)).results()}


def machine_a_then_b(tmp_path: Path, b_param: str | None = None) -> tuple[Path, Path]:
    """A: 16 local results, 13 mirrored, SIGKILL. B (fresh disk): from the mirror to 43."""
    mirror = tmp_path / "mirror"
    ckpt_a = tmp_path / "node-a" / "out.h5"
    ckpt_b = tmp_path / "node-b" / "out.h5"
    a = launch(ckpt_a, mirror, "0:16", "--flush-after", "13", "--kill")
    assert a.returncode == -9, a.stdout + a.stderr
    assert recorded(a) == [f"k{i:02d}" for i in range(16)]
    assert len(results_of(mirror)) == 13  # the last three never reached the mirror
    extra = ("--param-of", b_param) if b_param else ()
    b = launch(ckpt_b, mirror, "13:46" if b_param else "16:46", *extra)
    assert b.returncode == 0, b.stdout + b.stderr
    assert "opened 13 remote" in b.stdout
    assert len(results_of(mirror)) == (46 if b_param else 43)
    return ckpt_a, mirror


def test_relaunch_on_a_stale_node_adopts_the_mirror_and_loses_nothing(tmp_path: Path) -> None:
    ckpt_a, mirror = machine_a_then_b(tmp_path)
    progress_a = ckpt_a.parent / "out.h5.resumable"

    again = launch(ckpt_a, mirror, "all")  # requeued onto A's node
    assert again.returncode == 0, again.stdout + again.stderr
    # adopted 43 from the mirror, plus A's 3 local-only results re-recorded into it
    assert "opened 46 remote" in again.stdout, again.stdout
    assert recorded(again) == [f"k{i:02d}" for i in range(46, N_ITEMS)]
    warnings = [ln for ln in again.stderr.splitlines() if ln.startswith("WARNING")]
    assert len(warnings) == 1, again.stderr
    (aside,) = [p for p in progress_a.parent.iterdir() if ".stale-" in p.name]
    assert str(progress_a) in warnings[0] and str(mirror) in warnings[0]
    assert str(aside) in warnings[0] and "3 result(s)" in warnings[0]

    # A's directory is kept, intact: its 16 results still verify there
    kept = load(aside)
    assert kept is not None and len(kept.state.results) == 16

    # every result of both machines is in the mirror, equal to what the item computes
    got = results_of(mirror)
    assert sorted(got) == [f"k{i:02d}" for i in range(N_ITEMS)]
    for key, value in got.items():
        assert_bitwise_equal(value, compute({"i": int(key[1:]), "p": 0}), key)
    # and each key exactly once in the adopted history (no item recorded twice)
    local = load(progress_a)
    assert local is not None and len(local.state.results) == N_ITEMS

    # the next relaunch is an ordinary one: nothing to adopt, no warning
    last = launch(ckpt_a, mirror, "all")
    assert last.returncode == 0 and "opened 60" in last.stdout, last.stdout + last.stderr
    assert "WARNING" not in last.stderr
    assert len([p for p in progress_a.parent.iterdir() if ".stale-" in p.name]) == 1


def test_a_different_item_under_the_same_key_is_refused(tmp_path: Path) -> None:
    """B ran k13 with other parameters: A's k13 cannot be merged; nothing is moved."""
    ckpt_a, mirror = machine_a_then_b(tmp_path, b_param="k13=5")
    progress_a = ckpt_a.parent / "out.h5.resumable"
    before = results_of(mirror)

    again = launch(ckpt_a, mirror, "all")
    assert again.returncode == 78, again.stdout + again.stderr
    assert "refused HistoryConflictError" in again.stdout
    assert "'k13'" in again.stdout
    assert not [p for p in progress_a.parent.iterdir() if ".stale-" in p.name]
    kept = load(progress_a)
    assert kept is not None and len(kept.state.results) == 16
    assert sorted(results_of(mirror)) == sorted(before)


def test_another_sweep_under_the_same_name_is_refused(tmp_path: Path) -> None:
    """The mirror now holds a new sweep (started afresh elsewhere): not a history to adopt."""
    mirror = tmp_path / "mirror"
    ckpt_a = tmp_path / "node-a" / "out.h5"
    a = launch(ckpt_a, mirror, "0:16", "--flush-after", "13", "--kill")
    assert a.returncode == -9
    other = tmp_path / "mirror-other"
    b = launch(tmp_path / "node-b" / "out.h5", other, "20:30")  # a new sweep, same name
    assert b.returncode == 0, b.stdout + b.stderr
    again = launch(ckpt_a, other, "all")
    assert again.returncode == 78, again.stdout + again.stderr
    assert "refused HistoryConflictError" in again.stdout
    assert not [p for p in ckpt_a.parent.iterdir() if ".stale-" in p.name]
    kept = results_of(ckpt_a.parent / "out.h5.resumable")
    assert sorted(kept) == [f"k{i:02d}" for i in range(16)]
