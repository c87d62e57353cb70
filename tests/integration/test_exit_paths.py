"""Exits that used to leave the mirror behind, run as real processes with default logging.

- a finished sweep that is never closed (no `with`, no close()) is closed at interpreter exit:
  its mirror gets every record;
- with an unreachable mirror, leaving a finished sweep waits at most the documented default
  flush timeout (60 s, not 300), logs one line per retry phase (not one per attempt), and
  says what happens to the records;
- a SIGTERM during that wait logs one clear line, no traceback.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:  # tests/ is on sys.path (see conftest.py)
    from fixtures.servers import refused_url
except ImportError:  # pragma: no cover
    from tests.fixtures.servers import refused_url

from resumable._mirror import DEFAULT_FLUSH_TIMEOUT_S, MirrorOptions
from resumable.view import open_view

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = Path(__file__).parent / "progs" / "exit_worker.py"
README = Path(__file__).resolve().parents[2] / "README.md"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWEEP_", "AWS_"))}
    env.update(extra)
    return env


def _unreachable_s3() -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": refused_url(),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_a_sweep_left_open_is_closed_at_interpreter_exit(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path / "a" / "out.h5"), str(mirror), "19",
         "no-close"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = {key: value for key, _p, value in open_view(str(mirror)).results()}
    assert len(got) == 19  # every record reached the mirror, though nothing closed the sweep
    assert "WARNING" not in proc.stderr, proc.stderr


def test_the_default_close_wait_is_bounded_and_documented() -> None:
    assert DEFAULT_FLUSH_TIMEOUT_S <= 60
    assert MirrorOptions().flush_timeout_s == DEFAULT_FLUSH_TIMEOUT_S
    text = README.read_text()
    assert f"{DEFAULT_FLUSH_TIMEOUT_S:g} s" in text and "flush_timeout_s" in text


def test_an_unreachable_mirror_logs_one_line_per_retry_phase(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path / "a" / "out.h5"), "s3://bucket/m", "5",
         "with", "8"],
        env=_env(**_unreachable_s3()),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stdout + proc.stderr  # close() raises: the mirror is behind
    assert "recorded 5" in proc.stdout
    assert took < 8 + 30, took  # bounded by the flush timeout (plus start-up and one request)
    retry_lines = [ln for ln in proc.stderr.splitlines() if re.search(r"retr(y|ies|ying)", ln)]
    # one at the start (the mirror unreachable when opening) and one when the close starts
    # retrying: not one per attempt
    assert len(retry_lines) <= 3, proc.stderr
    assert "SourceUnreachableError" in proc.stderr
    assert "behind" in proc.stderr and "local checkpoint has everything" in proc.stderr


def test_sigterm_while_waiting_for_the_mirror_logs_one_line(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(tmp_path / "a" / "out.h5"), "s3://bucket/m", "5",
         "with", "40"],
        env=_env(RESUMABLE_GRACE_S="4", **_unreachable_s3()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("recorded")
    assert proc.stdout.readline().startswith("leaving")
    time.sleep(1.5)  # inside the close's wait for the mirror
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err  # preempted: the relaunch finds everything done locally
    assert "Traceback" not in err, err
    flush_lines = [ln for ln in err.splitlines() if "preemption" in ln and "mirror" in ln]
    assert len(flush_lines) == 1, err


TWO_LEFT_OPEN = """
import sys
from resumable import ResumableSweep
from resumable import MirrorOptions
opts = MirrorOptions(interval_s=3600.0, max_backoff_s=0.5, flush_timeout_s=15.0)
for name in ("one", "two"):
    s = ResumableSweep(range(3), key=str, checkpoint_path=f"{sys.argv[1]}/{name}.h5",
                       snapshot_dir=f"s3://bucket/{name}", mirror_options=opts)
    for item in s.pending:
        s.record(item, item)
print("leaving", flush=True)
"""


def test_sweeps_left_open_with_an_unreachable_mirror_share_one_wait_and_warn(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", TWO_LEFT_OPEN, str(tmp_path)],
        env=_env(**_unreachable_s3()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("leaving")
    t0 = time.monotonic()
    _out, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 0, err
    # one flush timeout (15 s) for both, plus at most 5 s each to stop a mirror thread that is
    # inside a request; not one flush timeout each (30 s and more)
    assert took < 2 * 15, took
    warned = [ln for ln in err.splitlines() if "could not be closed at exit" in ln]
    assert len(warned) == 2, err
    assert all("every record is in its local checkpoint" in ln for ln in warned)
