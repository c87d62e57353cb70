"""Dask workers that are themselves preempted: jobs/dask-slurm/ on the real local SLURM.

The owner (the example script, run here, outside SLURM) records every result; its Dask workers
are dask-jobqueue SLURMCluster jobs in the preemptible `low` partition. Mid-run a `high` job
takes the whole node: the workers are preempted (GraceTime, then killed, requeued), the Dask
scheduler reschedules their tasks, the workers come back, and the sweep finishes with every
item recorded exactly once and results identical to a serial run. About 3 minutes (a requeued
job waits about 2 minutes for its begin time).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from fixtures.compare import assert_bitwise_equal
    from fixtures.slurm import Watcher, sbatch, slurm_missing
except ImportError:  # pragma: no cover
    from tests.fixtures.compare import assert_bitwise_equal
    from tests.fixtures.slurm import Watcher, sbatch, slurm_missing

from resumable import ResumableSweep
from resumable.view import open_view

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "jobs" / "dask-slurm" / "sweep_with_slurm_workers.py"
N_ITEMS = 100
ITEM_S = 1.0


def _example() -> object:
    spec = importlib.util.spec_from_file_location("sweep_with_slurm_workers", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _done(out: Path) -> int:
    try:
        return open_view(str(out)).status().done
    except Exception:  # not created yet, or a record being appended right now
        return -1


def _worker_jobs() -> list[str]:
    proc = subprocess.run(
        ["squeue", "-h", "-n", "resumable-worker", "-o", "%i"], capture_output=True, text=True
    )
    return proc.stdout.split()


def test_preempted_dask_workers_lose_nothing_and_match_a_serial_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    why = slurm_missing()
    if why is not None:
        pytest.skip(why)
    # not imported here: importing dask_jobqueue replaces this process's SIGINT handler
    if importlib.util.find_spec("dask_jobqueue") is None:
        pytest.skip("dask-jobqueue is not installed (it is in the test extra)")
    out = tmp_path / "owner" / "sweep.h5"
    logs = tmp_path / "worker-logs"
    owner = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--out", str(out), "--items", str(N_ITEMS),
         "--item-seconds", str(ITEM_S), "--queue", "low", "--workers", "2",
         "--interface", "lo", "--memory", "500MB", "--walltime", "00:20:00",
         "--log-directory", str(logs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    w = Watcher().start()
    seen: set[str] = set()
    high = None
    try:
        end = time.monotonic() + 240
        while _done(out) < 8:  # the workers are up and mid-sweep
            assert owner.poll() is None, owner.communicate()[0]
            assert time.monotonic() < end, f"no progress: {_done(out)}\n{w}"
            for job in _worker_jobs():
                if job not in seen:
                    seen.add(job)
                    w.watch(job, "dask worker")
            time.sleep(0.5)
        at_preemption = _done(out)
        assert at_preemption < N_ITEMS
        cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True)
        high = sbatch(
            ["--partition=high", f"--cpus-per-task={int(cpus.stdout.split()[0])}",
             "--job-name=high-dask", f"--output={tmp_path}/high-%j.out", "--wrap", "sleep 5"],
            {},
            tmp_path,
        )  # fmt: skip
        w.watch(high, "high")
        w.note("owner", f"{at_preemption} items recorded; high job {high} submitted")
        first = set(seen)
        w.wait(lambda: w.state(high).get("JobState") == "COMPLETED", 180, "the high job")
        running = [j for j in first if w.state(j).get("JobState") == "RUNNING"]
        assert not running, f"worker jobs not preempted: {running}\n{w}"
        end = time.monotonic() + 420
        while owner.poll() is None:  # watch the requeued and replacement worker jobs
            assert time.monotonic() < end, f"the owner did not finish\n{w}"
            for job in _worker_jobs():
                if job not in seen:
                    seen.add(job)
                    w.watch(job, "dask worker (replacement)")
            time.sleep(0.5)
        output, _ = owner.communicate(timeout=60)
        w.note("owner", f"exited {owner.returncode}")
        w.poll()
    finally:
        w.stop()
        if owner.poll() is None:
            owner.kill()
        for job in [*seen, *([high] if high else [])]:
            subprocess.run(["scancel", job], capture_output=True)
    assert owner.returncode == 0, output

    # the preempted worker jobs were requeued by SLURM, or replaced by adapt(): either way
    # their tasks ran again elsewhere
    restarts = {j: w.state(j).get("Restarts") for j in first}
    assert all(r == "1" for r in restarts.values()) or len(seen) > len(first), (restarts, str(w))
    view = open_view(str(out))
    status = view.status()
    assert (status.done, status.failed, status.pending) == (N_ITEMS, 0, 0)
    # exactly once: loading refuses a key recorded twice; count the result records anyway
    assert len(view.loaded.state.results) == N_ITEMS
    got = {key: result for key, _p, result in view.results()}

    serial = tmp_path / "serial" / "sweep.h5"
    ex = _example()
    with ResumableSweep(ex.make_items(N_ITEMS, 0.0), key=lambda it: f"item-{it['i']:05d}",
                        checkpoint_path=serial) as sweep:  # fmt: skip
        sweep.run(ex.simulate)
    want = {key: result for key, _p, result in open_view(str(serial)).results()}
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert_bitwise_equal(got[key], value, key)
    with capsys.disabled():
        print("\n-- Dask-on-SLURM timeline (scontrol, polled every second) --")
        print(w)
