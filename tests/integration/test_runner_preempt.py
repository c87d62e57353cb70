"""`sweep.run` with a process pool under real signals (progs/runner_sweep.py).

- SIGTERM to the owning process mid-run: exit 75 well within the grace period; every item that
  had started (its worker was running it, or it sat in the pool's call queue) is recorded, the
  queued ones were cancelled before they started, nothing is recorded as failed; a relaunch
  completes, and the results equal a serial run's with every item recorded exactly once.
- SIGINT to the whole process group (what Ctrl-C in a terminal does): the pool's workers ignore
  it (`worker_initializer`) and finish their items. The parent gets KeyboardInterrupt, cancels
  queued items, records the running ones as they finish, and re-raises (the process ends by
  SIGINT, rc -2). With SIGINT among the sweep's `signals`, it is a preemption: exit 75.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from resumable._checkpoint import load, progress_dir_for
from resumable._journal import parse_segment
from resumable.preempt import PREEMPTED_EXIT_CODE
from resumable.view import open_view

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROG = Path(__file__).parent / "progs" / "runner_sweep.py"
N_ITEMS = 24
ITEM_S = 0.15


def _start(ckpt: Path, markers: Path, pool: str, seconds: float = ITEM_S, signals: str = ""):
    markers.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(PROG), str(ckpt), str(markers), str(N_ITEMS), str(seconds), pool]
    if signals:
        args.append(signals)
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group: a group SIGINT must not reach pytest
        # SIGINT as a terminal's job has it, even when pytest inherited it ignored (a `cmd &`
        # of a non-interactive shell): Python then keeps it ignored and Ctrl-C is never seen
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_ready(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("ready"):
                return
            if not line:
                break
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"not ready; rc={proc.returncode}\n{out}\n{err}")


def _started(markers: Path) -> set[int]:
    return {int(p.name) for p in markers.iterdir()}


def _wait_started(proc: subprocess.Popen, markers: Path, n: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while len(_started(markers)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no progress"
        time.sleep(0.01)


def _recorded(ckpt: Path) -> tuple[dict[int, dict], int]:
    """Results by item index, and the number of failures, from the verified checkpoint."""
    view = open_view(str(ckpt))
    state = view.loaded.state
    return {res["i"]: res for _, _, res in view.results()}, len(state.failures)


def _raw_result_keys(pdir: Path) -> list[str]:
    """Keys of every result record in the journal, unreplayed (a double would show here)."""
    import json

    manifest = json.loads((pdir / "manifest.json").read_bytes())
    names = [s["name"] for s in manifest["segments"]] + [manifest["active"]]
    keys: list[str] = []
    seq, prev = 1, ""
    for name in names:
        data = (pdir / "segments" / name).read_bytes()
        parsed = parse_segment(
            data, source=name, first_seq=seq, prev_hash=prev, allow_torn_tail=False
        )
        keys += [r.key for r in parsed.records if r.type == "result"]
        seq += len(parsed.records)
        prev = parsed.last_hash
    return keys


def _finish(proc: subprocess.Popen, timeout: float = 60.0) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def serial_results(tmp_path_factory) -> dict[int, dict]:
    tmp = tmp_path_factory.mktemp("serial")
    proc = _start(tmp / "ref.h5", tmp / "m", "serial", seconds=0.0)
    rc, _out, err = _finish(proc)
    assert rc == 0, err
    results, failures = _recorded(tmp / "ref.h5")
    assert len(results) == N_ITEMS and failures == 0
    return results


def _assert_same(got: dict[int, dict], want: dict[int, dict]) -> None:
    assert sorted(got) == sorted(want)
    for i, w in want.items():
        g = got[i]
        assert g["n"] == w["n"] and g["x"].tobytes() == w["x"].tobytes(), i
        assert isinstance(g["x"], np.ndarray)


@pytest.mark.parametrize("pool", ["own", "user"])
def test_sigterm_mid_run_exits_75_and_relaunch_completes_exactly_once(
    tmp_path, pool, serial_results
):
    ckpt, markers = tmp_path / "exp.h5", tmp_path / "markers"
    proc = _start(ckpt, markers, pool)
    _wait_ready(proc)
    _wait_started(proc, markers, 5)
    before = _started(markers)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc, out, err = _finish(proc)
    took = time.monotonic() - t0
    assert rc == PREEMPTED_EXIT_CODE, err
    assert took < 5.0, f"exit took {took:.1f} s"
    assert "finished" not in out

    results, failures = _recorded(ckpt)
    assert failures == 0
    started = _started(markers)
    assert before <= set(results), "an item running at SIGTERM was not recorded"
    assert set(results) == started, "queued items must be cancelled before they start"
    assert len(results) < N_ITEMS

    proc = _start(ckpt, markers, pool, seconds=0.0)
    rc, out, err = _finish(proc)
    assert rc == 0, err
    assert f"finished done={N_ITEMS} failed=0" in out
    results, failures = _recorded(ckpt)
    _assert_same(results, serial_results)
    raw = _raw_result_keys(progress_dir_for(ckpt))
    assert len(raw) == len(set(raw)) == N_ITEMS
    assert len(load(progress_dir_for(ckpt)).state.launches) == 2


@pytest.mark.parametrize(
    ("signals", "expected_rc"), [("", -signal.SIGINT), ("SIGTERM,SIGINT", PREEMPTED_EXIT_CODE)]
)
def test_sigint_to_process_group_does_not_kill_workers_mid_item(
    tmp_path, signals, expected_rc, serial_results
):
    ckpt, markers = tmp_path / "exp.h5", tmp_path / "markers"
    proc = _start(ckpt, markers, "own", signals=signals)
    _wait_ready(proc)
    _wait_started(proc, markers, 5)
    before = _started(markers)
    os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C: parent, forkserver and workers
    rc, _out, err = _finish(proc)
    assert rc == expected_rc, err
    assert "BrokenProcessPool" not in err and "terminated abruptly" not in err
    if expected_rc == -signal.SIGINT:
        assert "KeyboardInterrupt" in err and "interrupted" in err

    results, failures = _recorded(ckpt)
    assert failures == 0, "an interrupted item must stay pending, never count as failed"
    assert before <= set(results), "a worker died of SIGINT mid-item"
    assert len(results) < N_ITEMS
    _assert_same(results, {i: serial_results[i] for i in results})

    proc = _start(ckpt, markers, "own", seconds=0.0)
    rc, _out, err = _finish(proc)
    assert rc == 0, err
    _assert_same(_recorded(ckpt)[0], serial_results)
