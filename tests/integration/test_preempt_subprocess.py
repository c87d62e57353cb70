"""Real preemption of real processes: SIGTERM and SIGKILL at random moments, and the watchdog.

Each run of progs/preempt_sim.py resumes from the snapshot the previous one left; the chain's
final state must be bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from resumable.snapshot import read_snapshot, verify_snapshot

pytestmark = pytest.mark.integration

PROGS = Path(__file__).parent / "progs"
GRACE_S = 5.0
STEPS = 240


def _start(args: list[str], env_extra: dict[str, str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_extra}
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line.strip()
    proc.kill()
    _out, err = proc.communicate()
    raise AssertionError(f"no {prefix!r} line; rc={proc.returncode}; stderr:\n{err}")


def _sim(tmp: Path, snapshot: Path, out: Path, snap_every: int = 0) -> subprocess.Popen[str]:
    args = [str(PROGS / "preempt_sim.py"), "--snapshot", str(snapshot), "--out", str(out)]
    args += ["--steps", str(STEPS), "--snap-every", str(snap_every)]
    env = {"SNAPSHOT_RESUME_FROM": str(snapshot), "RESUMABLE_GRACE_S": str(GRACE_S)}
    return _start(args, env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The final arrays of one uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = _sim(tmp, tmp / "snap.npz", tmp / "final.npz")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    arrays, report = read_snapshot(tmp / "final.npz")
    assert report.extra == {"step": STEPS}
    return arrays


def _assert_identical(final: Path, reference: dict[str, np.ndarray]) -> None:
    arrays, report = read_snapshot(final)
    assert report.extra == {"step": STEPS}
    assert set(arrays) == set(reference)
    for name, ref in reference.items():
        got = arrays[name]
        assert got.dtype == ref.dtype and got.shape == ref.shape
        assert got.tobytes() == ref.tobytes(), f"{name} differs from the uninterrupted run"


@pytest.mark.slow
def test_sigterm_at_random_moments_resumes_bit_identical(
    tmp_path: Path, reference: dict[str, np.ndarray]
) -> None:
    rng = random.Random(20240607)
    snapshot, out = tmp_path / "snap.npz", tmp_path / "final.npz"
    steps_seen = []
    for _ in range(10):  # periodic snapshots too, so some signals land mid-save
        proc = _sim(tmp_path, snapshot, out, snap_every=10)
        start_step = int(_wait_line(proc, "READY").split()[1])
        time.sleep(rng.uniform(0.0, 0.12))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _stdout, err = proc.communicate(timeout=GRACE_S + 10)
        elapsed = time.monotonic() - t0
        if out.exists():
            # the work was done: the signal came after the last safe point (exit 0) or after
            # the guard had exited and restored the default disposition (killed: -15 = 143)
            assert proc.returncode in (0, -signal.SIGTERM), err
            break
        assert proc.returncode == 75, err
        assert elapsed < GRACE_S, f"took {elapsed:.2f} s to exit"
        report = verify_snapshot(snapshot)
        assert report.extra["step"] >= start_step
        steps_seen.append(report.extra["step"])
    assert len(steps_seen) >= 5, steps_seen  # most runs were really interrupted
    if not out.exists():
        proc = _sim(tmp_path, snapshot, out, snap_every=10)
        _stdout, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    _assert_identical(out, reference)


@pytest.mark.slow
def test_sigkill_at_random_moments_keeps_last_periodic_snapshot(
    tmp_path: Path, reference: dict[str, np.ndarray]
) -> None:
    rng = random.Random(777)
    snapshot, out = tmp_path / "snap.npz", tmp_path / "final.npz"
    every = 7
    kills = 0
    for _ in range(8):
        proc = _sim(tmp_path, snapshot, out, snap_every=every)
        _wait_line(proc, "READY")
        time.sleep(rng.uniform(0.02, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        if out.exists():
            break
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        if snapshot.exists():  # no hook ran: the last *completed* periodic snapshot is intact
            step = verify_snapshot(snapshot).extra["step"]
            assert step % every == 0
    assert kills >= 4
    if not out.exists():
        proc = _sim(tmp_path, snapshot, out, snap_every=every)
        _stdout, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    _assert_identical(out, reference)


@pytest.mark.parametrize("mode", ["python", "c", "hook"])
def test_watchdog_exits_when_no_safe_point_comes(tmp_path: Path, mode: str) -> None:
    """python/c: no safe point in time -> flushes run, exit 75 by the deadline.
    hook: the safe point came but a hook overran -> exit 75 at the deadline (no flushes then:
    the main thread is still inside its hooks)."""
    grace = 1.5
    snapshot, marker = tmp_path / "snap.npz", tmp_path / "flushed.txt"
    proc = _start(
        [str(PROGS / "preempt_stuck.py"), "--snapshot", str(snapshot), "--marker", str(marker),
         "--mode", mode],
        {"RESUMABLE_GRACE_S": str(grace)},
    )  # fmt: skip
    _wait_line(proc, "READY")
    before = snapshot.read_bytes()
    time.sleep(0.1)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _stdout, err = proc.communicate(timeout=grace + 10)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 75, err
    assert snapshot.read_bytes() == before  # the last good snapshot stands
    assert verify_snapshot(snapshot).extra == {"step": 1}
    if mode == "hook":
        assert grace - 0.2 < elapsed < grace + 0.5, elapsed
        assert not marker.exists()
        return
    assert grace * 0.7 < elapsed < grace + 0.5, elapsed
    assert "no safe point was reached" in err
    remaining = float(marker.read_text())  # the flush ran, with the time that was left
    assert 0 < remaining <= grace


def test_sigterm_snapshot_to_s3_then_resume(tmp_path: Path, s3_bucket: str) -> None:
    url = f"{s3_bucket}/runs/sim/snapshot.npz"  # the child inherits AWS_ENDPOINT_URL etc.
    out = tmp_path / "final.npz"
    args = [str(PROGS / "preempt_sim.py"), "--snapshot", url, "--out", str(out)]
    args += ["--steps", str(STEPS)]
    env = {"SNAPSHOT_RESUME_FROM": url, "RESUMABLE_GRACE_S": str(GRACE_S)}
    proc = _start(args, env)
    assert _wait_line(proc, "READY") == "READY 0"
    time.sleep(0.15)
    proc.send_signal(signal.SIGTERM)
    _stdout, err = proc.communicate(timeout=GRACE_S + 10)
    assert proc.returncode == 75, err
    step = verify_snapshot(url).extra["step"]
    assert 0 < step < STEPS
    proc = _start(args, env)
    assert _wait_line(proc, "READY") == f"READY {step}"
    _stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert read_snapshot(out)[1].extra == {"step": STEPS}
