"""A sharded sweep as a job array would run it: N=3 processes, each with the index its
scheduler sets (Kubernetes Indexed Job or SLURM array variables), all mirroring to the same S3
root. One is SIGKILLed midway and relaunched on a fresh local disk, resuming from S3. The merged
view of the S3 root then equals an unsharded serial run exactly, every item recorded once."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resumable.errors import ResumableError
from resumable.shards import shard_dir_name
from resumable.view import MergedView, open_view

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROG = Path(__file__).parent / "progs" / "shard_worker.py"
N_ITEMS = 60
COUNT = 3
ITEM_S = 0.05
VICTIM = 1
VICTIM_ITEM_S = 0.3


def _env(kind: str, index: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWEEP_", "SLURM_"))}
    env.pop("JOB_COMPLETION_INDEX", None)
    env.pop("AWS_BATCH_JOB_ARRAY_INDEX", None)
    env["PYTHONUNBUFFERED"] = "1"
    if kind == "k8s":
        env.update(JOB_COMPLETION_INDEX=str(index), SWEEP_SHARD_COUNT=str(COUNT))
    elif kind == "slurm":  # sbatch --array=10-12
        env.update(
            SLURM_ARRAY_TASK_ID=str(10 + index),
            SLURM_ARRAY_TASK_MIN="10",
            SLURM_ARRAY_TASK_MAX=str(10 + COUNT - 1),
            SLURM_ARRAY_TASK_COUNT=str(COUNT),
        )
    return env


def _start(ckpt: Path, root: str, env: dict[str, str], seconds: float = ITEM_S):
    args = [sys.executable, str(PROG), str(ckpt), root, str(N_ITEMS), str(seconds)]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
    )


def _ready_line(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline().decode()
            if line.startswith("ready"):
                return line.strip()
            if not line:
                break
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"no ready line; rc={proc.returncode}\n{out}\n{err.decode()}")


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


def _mirrored_done(root: str, index: int) -> int:
    try:
        return open_view(f"{root}/{shard_dir_name(index, COUNT)}").status().done
    except ResumableError:  # not mirrored yet
        return 0


def _results(view) -> dict[str, object]:
    out = {}
    for key, _params, result in view.results():
        assert key not in out, f"{key} recorded twice"
        out[key] = result
    return out


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("serial")
    proc = _start(tmp / "ref.h5", "-", _env("none", 0), seconds=0.0)
    assert "ready 0 1 fresh" in _ready_line(proc)
    assert f"finished {N_ITEMS}" in _finish(proc)
    results = _results(open_view(str(tmp / "ref.h5")))
    assert len(results) == N_ITEMS
    return results


@pytest.mark.parametrize("kind", ["k8s", "slurm"])
def test_sharded_job_array_with_a_killed_task_equals_the_serial_run(
    tmp_path, s3_bucket, kind, serial
):
    root = f"{s3_bucket}/sweeps/exp"
    procs = {}
    for index in range(COUNT):
        # the victim is slower (6 s for its 20 items), so that polling its mirror on a loaded
        # machine cannot take longer than the victim needs to finish
        seconds = VICTIM_ITEM_S if index == VICTIM else ITEM_S
        procs[index] = _start(
            tmp_path / f"node{index}" / "exp.h5", root, _env(kind, index), seconds
        )
    for index, proc in procs.items():
        assert _ready_line(proc).startswith(f"ready {index} {COUNT} fresh")

    # SIGKILL the victim once the mirror holds a few of its results (and it is not finished)
    victim = procs[VICTIM]
    end = time.monotonic() + 30
    while _mirrored_done(root, VICTIM) < 3:
        assert victim.poll() is None, "the victim finished before it could be killed"
        assert time.monotonic() < end, "the victim's mirror made no progress"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    for index, proc in procs.items():
        if index != VICTIM:
            assert "finished" in _finish(proc)
    partial = open_view(root)
    assert isinstance(partial, MergedView)
    assert partial.status().pending > 0

    # relaunch the killed task on a fresh machine: it resumes from the S3 root
    fresh = _start(tmp_path / "fresh-node" / "exp.h5", root, _env(kind, VICTIM), seconds=0.0)
    assert _ready_line(fresh) == f"ready {VICTIM} {COUNT} remote"
    _finish(fresh)

    view = open_view(root)
    assert isinstance(view, MergedView) and view.count == COUNT
    status = view.status()
    assert (status.total, status.done, status.failed, status.pending) == (N_ITEMS, N_ITEMS, 0, 0)
    assert [len(s.loaded.state.launches) for s in view.shards] == [
        2 if i == VICTIM else 1 for i in range(COUNT)
    ]
    merged = _results(view)
    assert merged.keys() == serial.keys()
    for key, want in serial.items():
        got = merged[key]
        assert got["i"] == want["i"] and got["k"] == want["k"]
        assert got["v"].dtype == want["v"].dtype and got["v"].tobytes() == want["v"].tobytes()
