"""SIGKILL at random moments, dozens of times: nothing acknowledged is lost or doubled.

A worker (progs/sweep_worker.py) runs a sweep of a few hundred items with real numpy work per
item, deterministic from `sweep.seed(item)`, and a small segment size so segments are sealed
every couple of records. After each `record()` returns it appends the key to an acknowledgement
file (fsync'd). The test SIGKILLs it at random moments (seeded), some right after it reports
ready, some during start-up (import, verification, torn-tail truncation, the launch record),
relaunching each time, then lets it finish. Then:

- every acknowledged key is in the final checkpoint, and every item exactly once (counted in
  the raw journal, not just in the replayed dict);
- no key was acknowledged twice (no finished item was handed out again);
- the results equal, bitwise, those of an uninterrupted run in another directory.
"""

from __future__ import annotations

import json
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

try:  # tests/ is on sys.path (see conftest.py)
    from fixtures.compare import assert_bitwise_equal
except ImportError:  # pragma: no cover
    from tests.fixtures.compare import assert_bitwise_equal

from resumable import ResumableSweep
from resumable._checkpoint import load, progress_dir_for
from resumable._journal import parse_segment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = Path(__file__).parent / "progs" / "sweep_worker.py"
N_ITEMS = 300
SEGMENT_BYTES = 1500  # a result is ~900 bytes: a seal every other record
KILLS = 36
SEED = 20240917


KEY_LINE = 33  # a default key is 32 hex characters, plus the newline


def _spawn(ckpt: Path, ack: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, str(WORKER), str(ckpt), str(ack), str(N_ITEMS), str(SEGMENT_BYTES)],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )


def _acks_on_disk(ack: Path) -> int:
    try:
        return ack.stat().st_size // KEY_LINE
    except FileNotFoundError:
        return 0


def _wait_for_acks(proc: subprocess.Popen, ack: Path, target: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _acks_on_disk(ack) < target and proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError("worker made no progress")
        time.sleep(0.0005)


def _wait_ready(proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    """True once the worker printed "ready"; False if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line.startswith(b"ready"):
                return True
            if line == b"":
                return False
        elif proc.poll() is not None:
            return False
    raise AssertionError("worker did not get ready in time")


def _finish(proc: subprocess.Popen) -> int:
    rc = proc.wait(timeout=60)
    proc.stdout.close()
    return rc


def _run_to_completion(ckpt: Path, ack: Path, log: Path) -> None:
    proc = _spawn(ckpt, ack, log)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}): {log.read_text()[-3000:]}"
    assert f"finished {N_ITEMS}".encode() in out


def _acknowledged(ack: Path) -> list[str]:
    if not ack.exists():
        return []
    data = ack.read_bytes()
    # A kill between write() and fsync() can only leave complete or missing lines (one write()
    # of a short line); a final piece without newline would not have been acknowledged.
    return [line.decode() for line in data.split(b"\n")[:-1]]


def _raw_result_keys(pdir: Path) -> list[str]:
    """Keys of all result records in the journal files, in order, without replaying them.

    Each segment is parsed on its own (hashes and chain checked); doubles would show here even
    though replaying them into a state refuses them.
    """
    manifest = json.loads((pdir / "manifest.json").read_bytes())
    names = [s["name"] for s in manifest["segments"]] + [manifest["active"]]
    keys: list[str] = []
    seq, prev = 1, ""
    for name in names:
        data = (pdir / "segments" / name).read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{name} ends in a torn tail after finishing"
        parsed = parse_segment(
            data, source=name, first_seq=seq, prev_hash=prev, allow_torn_tail=False
        )
        keys += [r.key for r in parsed.records if r.type == "result"]
        seq += len(parsed.records)
        prev = parsed.last_hash
    return keys


def _values(ckpt: Path) -> dict[str, object]:
    items = [{"i": i} for i in range(N_ITEMS)]
    with ResumableSweep(items, checkpoint_path=ckpt, resume="must") as sweep:
        assert sweep.status().done == N_ITEMS
        return {sweep.key(item): sweep.result(item) for item in items}


def test_sigkill_at_random_moments_loses_and_doubles_nothing(tmp_path):
    rng = random.Random(SEED)
    ckpt = tmp_path / "killed" / "exp.h5"
    ack = tmp_path / "killed" / "ack.txt"
    log = tmp_path / "killed" / "stderr.log"
    ckpt.parent.mkdir()

    kills = 0
    ready_runs = 0
    finished_early = False
    progress = []
    startup_times: list[float] = []
    for n in range(KILLS):
        started = time.monotonic()
        proc = _spawn(ckpt, ack, log)
        if n % 6 == 5 and startup_times:
            # During start-up: import, verification, torn-tail truncation, launch record.
            time.sleep(rng.uniform(0.3, 1.1) * min(startup_times))
        else:
            if not _wait_ready(proc):
                rc = _finish(proc)
                raise AssertionError(f"worker exited with {rc}: {log.read_text()[-3000:]}")
            ready_runs += 1
            startup_times.append(time.monotonic() - started)
            # Let it acknowledge a few items, then kill at a random point of the next
            # record (write, fdatasync, seal: new segment, manifest replace, ack).
            _wait_for_acks(proc, ack, _acks_on_disk(ack) + rng.randint(0, 4))
            time.sleep(rng.uniform(0.0, 0.005))
        proc.send_signal(signal.SIGKILL)
        rc = _finish(proc)
        if rc == 0:
            finished_early = True  # it was faster than the kill; fine, but rare
            break
        assert rc == -signal.SIGKILL, f"worker failed on its own ({rc}): {log.read_text()[-3000:]}"
        kills += 1
        progress.append(len(_acknowledged(ack)))

    assert not finished_early, "the sweep finished before all kills landed"
    assert kills == KILLS
    # The kills interrupted real work: progress was made in many small steps.
    assert len(set(progress)) >= 10, progress
    acked_before_final = _acknowledged(ack)
    assert 0 < len(acked_before_final) < N_ITEMS

    _run_to_completion(ckpt, ack, log)

    pdir = progress_dir_for(ckpt)
    loaded = load(pdir)
    assert loaded is not None and loaded.torn_bytes == 0
    assert len(json.loads((pdir / "manifest.json").read_bytes())["segments"]) > 20

    # Exactly once, in the raw journal.
    raw = Counter(_raw_result_keys(pdir))
    doubles = {k: c for k, c in raw.items() if c != 1}
    assert doubles == {}
    assert len(raw) == N_ITEMS

    # Every acknowledged key is recorded; nothing was acknowledged twice.
    acked = _acknowledged(ack)
    assert Counter(acked).most_common(1)[0][1] == 1
    assert set(acked) <= set(raw)
    assert set(acked_before_final) <= set(raw)

    # Same results as an uninterrupted run, bitwise.
    ref_ckpt = tmp_path / "reference" / "exp.h5"
    ref_ckpt.parent.mkdir()
    _run_to_completion(ref_ckpt, tmp_path / "reference" / "ack.txt", tmp_path / "reference" / "e")
    got, want = _values(ckpt), _values(ref_ckpt)
    assert list(sorted(got)) == list(sorted(want))
    for key in want:
        assert_bitwise_equal(got[key], want[key], key)

    # Every run that reported ready had written its launch record (plus the final run).
    assert len(loaded.state.launches) >= ready_runs + 1
