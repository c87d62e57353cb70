"""jobs/slurm/sweep-array.sbatch on a real SLURM (the one scripts/install_slurm.sh starts).

One combined scenario (a session fixture, about four minutes: a requeued job waits two minutes
for its begin time, so every path shares that one wait), submitted with `sbatch` on the spec
itself, unedited: the environment gives it its mirror root (SWEEP_ROOT, a local directory) and
its python (PYTHON, a wrapper that makes the example sweep small and slow enough to interrupt).

- priority preemption: a 4-task array in `low` is mid-sweep when a `high` job needs the node:
  each task's step is signalled, exits 75, the task requeues itself, waits, resumes from the
  mirror on "another node" (a fresh local directory per launch) and finishes; the mirror and
  every exported HDF5 file equal an uninterrupted run bit for bit;
- siblings: before that, the task whose job id IS the array's id is signalled alone: it
  requeues itself only, and every other task keeps running;
- the time-limit path: a job in `high` (never preempted) with a 2-minute --time and
  --signal=TERM@60 gets SIGTERM from SLURM, exits 75, requeues itself, resumes and finishes;
- the requeue cap: a job with MAX_REQUEUES=1 is requeued after its first preemption and not
  after its second (it ends FAILED, exit 75).

The timeline (state changes seen by polling scontrol, with the scripts' own log lines) is
printed by test_print_slurm_timeline (run pytest with -s to see it).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

try:
    from fixtures.compare import assert_bitwise_equal
    from fixtures.slurm import Watcher, jobs, sbatch, scancel_signal, slurm_missing, task_name
except ImportError:  # pragma: no cover
    from tests.fixtures.compare import assert_bitwise_equal
    from tests.fixtures.slurm import (
        Watcher,
        jobs,
        sbatch,
        scancel_signal,
        slurm_missing,
        task_name,
    )

from resumable.export import read_h5
from resumable.preempt import PREEMPTED_EXIT_CODE
from resumable.shards import shard_of
from resumable.view import open_view

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "jobs" / "slurm" / "sweep-array.sbatch"
EXAMPLE = ROOT / "scripts" / "run_example_sweep.py"
SWEEP_ARGS = ["--sizes", "8", "--temps", "24", "--sweeps", "150"]  # 24 small items
N_TASKS = 4  # the spec's --array=0-3
SCENARIO_TIMEOUT_S = 480.0

WRAPPER = """#!/bin/bash
# PYTHON for the spec: the example sweep, small, one progress line per item, ITEM_DELAY seconds
# between items on a first launch and RELAUNCH_ITEM_DELAY after a requeue. With FRESH_NODE set,
# every launch gets its own local directory, as a requeued task landing on another node does.
args=("$@")
if [[ -n "${FRESH_NODE:-}" ]]; then
  for i in "${!args[@]}"; do
    if [[ ${args[$i]} == --out ]]; then
      j=$((i + 1))
      args[j]="${args[j]%/*}/launch-${SLURM_RESTART_COUNT:-0}/${args[j]##*/}"
    fi
  done
fi
delay=${ITEM_DELAY:-1}
if [[ ${SLURM_RESTART_COUNT:-0} -gt 0 ]]; then delay=${RELAUNCH_ITEM_DELAY:-0.1}; fi
exec @PYTHON@ "${args[@]}" @SWEEP_ARGS@ --progress-every 1 --item-delay "$delay"
"""


@dataclass
class Scenario:
    tmp: Path
    watcher: Watcher
    ids: dict[str, str] = field(default_factory=dict)  # role -> job id
    mirrors: dict[str, Path] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    siblings: dict[str, Any] = field(default_factory=dict)  # what the sibling check saw
    finals: dict[str, dict[str, str]] = field(default_factory=dict)  # task -> last scontrol

    def log(self, task: str) -> str:
        path = self.log_path(task)
        return path.read_text(errors="replace") if path.exists() else ""

    def log_path(self, task: str) -> Path:
        role = next(r for r, i in self.ids.items() if task.startswith(i + "_") or task == i)
        array, _, index = task.partition("_")
        return self.tmp / "logs" / f"{role}-{array}_{index}.out"

    def tasks(self, role: str) -> list[str]:
        return sorted(
            task_name(r) for r in jobs(self.ids[role]) if r.get("ArrayTaskId", "").isdigit()
        )

    def launches(self, task: str) -> list[str]:
        """The task's log, split per launch (the spec prints a header line per launch)."""
        return re.split(r"(?m)^(?=\[[^\]]+\] task )", self.log(task))[1:]


def _items_this_launch(text: str) -> int:
    return len(re.findall(r"(?m)^  \d+ items this launch", text))


def _reference(tmp: Path) -> dict[str, Any]:
    """Results of one uninterrupted, unsharded, mirrorless run of the same sweep."""
    out = tmp / "reference" / "ising.h5"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWEEP_", "SLURM_"))}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(out), *SWEEP_ARGS, "--quiet"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {key: result for key, _p, result in open_view(str(out)).results()}


def _submit(sc: Scenario, role: str, opts: list[str], **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SWEEP_", "SLURM_"))}
    mirror = sc.tmp / f"mirror-{role}"
    sc.mirrors[role] = mirror
    base.update(
        SWEEP_ROOT=str(mirror),
        PYTHON=str(sc.tmp / "python-wrapper"),
        TMPDIR=str(sc.tmp / "node"),
        **env,
    )
    args = [
        f"--job-name={role}",
        f"--output={sc.tmp}/logs/%x-%A_%a.out",
        "--cpus-per-task=1",
        *opts,
        str(SBATCH),
    ]
    job = sbatch(args, base, ROOT)
    sc.ids[role] = job
    sc.watcher.watch(job, role)
    return job


def _run_scenario(sc: Scenario) -> None:
    w = sc.watcher
    # first launches are slow (seconds per item) so that every signal lands mid-sweep
    _submit(sc, "preempt", [], FRESH_NODE="1", ITEM_DELAY="6")
    _submit(sc, "cap", ["--array=0"], MAX_REQUEUES="1", ITEM_DELAY="6", RELAUNCH_ITEM_DELAY="6")
    _submit(sc, "timelimit", ["--array=0", "--partition=high", "--time=2", "--signal=TERM@60"],
            ITEM_DELAY="4")  # fmt: skip
    sc.reference = _reference(sc.tmp)  # runs while the jobs start

    # a cluster whose daemons have just started may take a while to start the array's tasks
    w.wait(lambda: len(sc.tasks("preempt")) == N_TASKS, 120, "every array task to start")
    preempt = sc.tasks("preempt")
    assert len(preempt) == N_TASKS, preempt
    w.wait(
        lambda: all(_items_this_launch(sc.log(t)) >= 1 for t in [*preempt, *sc.tasks("cap")]),
        120,
        "every first launch to record an item",
    )

    # -- siblings: signal the task whose job id is the array's (the one the old spec got wrong)
    array_id = sc.ids["preempt"]
    recs = {task_name(r): r for r in jobs(array_id) if r.get("ArrayTaskId", "").isdigit()}
    first = next(t for t, r in recs.items() if r["JobId"] == r["ArrayJobId"])
    others = [t for t in preempt if t != first]
    w.note(first, "scancel --signal=TERM (the task whose job id is the array id)")
    scancel_signal(first)
    w.wait(lambda: w.state(first).get("Restarts") == "1", 60, f"{first} to requeue itself")
    time.sleep(3)  # anything the requeue did to the siblings would show by now
    w.poll()
    sc.siblings = {
        "signalled": first,
        "others": {t: (w.state(t)["JobState"], w.state(t)["Restarts"]) for t in others},
        "items_before_preemption": {t: _items_this_launch(sc.log(t)) for t in others},
    }

    # -- priority preemption: a high job needs 7 of the 8 CPUs (the time-limit job keeps one)
    high = sbatch(
        ["--partition=high", "--cpus-per-task=7", "--job-name=high",
         f"--output={sc.tmp}/logs/high-%j.out", "--wrap", "sleep 5"],
        {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
        ROOT,
    )  # fmt: skip
    sc.ids["high"] = high
    w.watch(high, "high")
    w.wait(lambda: w.state(high).get("JobState") == "COMPLETED", 120, "the high job to run")

    # -- the requeue cap: the relaunched cap job is signalled again; MAX_REQUEUES=1 stops it
    (cap,) = sc.tasks("cap")
    w.wait(
        lambda: len(sc.launches(cap)) >= 2 and _items_this_launch(sc.launches(cap)[-1]) >= 1,
        SCENARIO_TIMEOUT_S,
        "the cap job's second launch to record an item",
    )
    w.note(cap, "scancel --signal=TERM (second time)")
    scancel_signal(cap)

    def done() -> bool:
        states = [w.state(t).get("JobState") for roles in ("preempt", "cap", "timelimit")
                  for t in sc.tasks(roles)]  # fmt: skip
        return all(s in ("COMPLETED", "FAILED", "CANCELLED") for s in states)

    w.wait(done, SCENARIO_TIMEOUT_S, "every job to end")
    for role in ("preempt", "cap", "timelimit"):
        for t in sc.tasks(role):
            sc.finals[t] = w.state(t)


@pytest.fixture(scope="session")
def slurm_scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    why = slurm_missing()
    if why is not None:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("slurm")
    (tmp / "logs").mkdir()
    (tmp / "node").mkdir()
    wrapper = tmp / "python-wrapper"
    wrapper.write_text(
        WRAPPER.replace("@PYTHON@", shlex.quote(sys.executable)).replace(
            "@SWEEP_ARGS@", shlex.join(SWEEP_ARGS)
        )
    )
    wrapper.chmod(0o755)
    sc = Scenario(tmp=tmp, watcher=Watcher().start())
    try:
        _run_scenario(sc)
        sc.watcher.stop()  # everything is recorded: no polling thread for the rest of the session
        yield sc
    finally:
        sc.watcher.stop()
        for job in sc.ids.values():
            subprocess.run(["scancel", job], capture_output=True)
        timeline = tmp / "timeline.txt"
        timeline.write_text(str(sc.watcher) + "\n")


def _assert_requeued_itself(sc: Scenario, task: str, launch: str) -> None:
    assert f"sweep exited with {PREEMPTED_EXIT_CODE}" in launch, launch
    assert f"preempted: requeueing {task} " in launch, launch


def test_priority_preemption_requeues_resumes_and_matches_an_uninterrupted_run(
    slurm_scenario: Scenario,
) -> None:
    sc = slurm_scenario
    for task in sc.tasks("preempt"):
        launches = sc.launches(task)
        assert len(launches) == 2, sc.log(task)  # preempted (or signalled) once, then done
        _assert_requeued_itself(sc, task, launches[0])
        assert _items_this_launch(launches[0]) >= 1
        assert "resumed from: remote" in launches[1], launches[1]  # a fresh node: the mirror
        assert "shard done" in launches[1] and "sweep exited with 0" in launches[1]
        final = sc.finals[task]
        assert (final["JobState"], final["Restarts"]) == ("COMPLETED", "1"), final
        assert final["ExitCode"] == "0:0", final
    # the mirror holds every item, equal bit for bit to an uninterrupted run
    got = {key: result for key, _p, result in open_view(str(sc.mirrors["preempt"])).results()}
    assert sorted(got) == sorted(sc.reference)
    for key, want in sc.reference.items():
        assert_bitwise_equal(got[key], want, key)
    # and so does each task's exported HDF5 (written by its last launch)
    node = sc.tmp / "node"
    for task in sc.tasks("preempt"):
        index = int(task.rsplit("_", 1)[1])
        job_id = sc.finals[task]["JobId"]
        _info, rows = read_h5(node / f"resumable-{job_id}" / "launch-1" / "ising.h5")
        want = {k: v for k, v in sc.reference.items() if shard_of(k, N_TASKS) == index}
        assert sorted(k for k, _p, _r in rows) == sorted(want)
        for key, _params, result in rows:
            assert_bitwise_equal(result, want[key], key)


def test_signalling_one_task_leaves_every_sibling_running(slurm_scenario: Scenario) -> None:
    sc = slurm_scenario
    seen = sc.siblings
    assert len(seen["others"]) == N_TASKS - 1
    for task, (state, restarts) in seen["others"].items():
        assert (state, restarts) == ("RUNNING", "0"), (task, seen)
        # and the high job later found each sibling still in its first launch, mid-sweep
        first_launch = sc.launches(task)[0]
        assert "preempted: requeueing" in first_launch  # its own decision, not SLURM's
        assert "leaving the requeue to SLURM" not in first_launch
    assert f"preempted: requeueing {seen['signalled']} " in sc.launches(seen["signalled"])[0]


def test_time_limit_signal_exits_75_and_the_task_requeues_itself(slurm_scenario: Scenario) -> None:
    sc = slurm_scenario
    (task,) = sc.tasks("timelimit")
    launches = sc.launches(task)
    assert len(launches) == 2, sc.log(task)
    _assert_requeued_itself(sc, task, launches[0])
    assert _items_this_launch(launches[0]) >= 1  # SIGTERM came mid-sweep, not at start-up
    assert "shard done" in launches[1] and "sweep exited with 0" in launches[1]
    final = sc.finals[task]
    assert (final["JobState"], final["Restarts"], final["Partition"]) == ("COMPLETED", "1", "high")
    got = {key: result for key, _p, result in open_view(str(sc.mirrors["timelimit"])).results()}
    assert sorted(got) == sorted(sc.reference)
    for key, want in sc.reference.items():
        assert_bitwise_equal(got[key], want, key)


def test_requeue_cap_holds(slurm_scenario: Scenario) -> None:
    sc = slurm_scenario
    (task,) = sc.tasks("cap")
    launches = sc.launches(task)
    assert len(launches) == 2, sc.log(task)
    _assert_requeued_itself(sc, task, launches[0])  # restart 0 < MAX_REQUEUES=1: requeued
    assert f"sweep exited with {PREEMPTED_EXIT_CODE}" in launches[1]
    assert "already requeued 1 times: giving up" in launches[1], launches[1]
    final = sc.finals[task]
    assert (final["JobState"], final["Restarts"]) == ("FAILED", "1"), final
    assert final["ExitCode"] == f"{PREEMPTED_EXIT_CODE}:0"


def test_print_slurm_timeline(slurm_scenario: Scenario, capsys: pytest.CaptureFixture) -> None:
    sc = slurm_scenario
    text = str(sc.watcher)
    assert "PENDING reason=BeginTime restarts=1" in text
    with capsys.disabled():
        print("\n-- SLURM scenario timeline (scontrol, polled every second) --")
        print(text)
        for role in ("preempt", "timelimit", "cap"):
            for task in sc.tasks(role):
                lines = [
                    ln
                    for ln in sc.log(task).splitlines()
                    if ln.startswith("[") or "requeue" in ln or "resumed from" in ln
                ]
                print(f"-- {task} ({role}) log --")
                print("\n".join(lines))
