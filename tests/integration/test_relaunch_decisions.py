"""Relaunch decisions a user can see: a fresh start despite a configured resume source is a
warning on stderr (default logging, as in a job's log), naming the source with its secrets
redacted; a resume says where it came from."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from resumable import ResumableSweep

pytestmark = [pytest.mark.integration]

PROGRAM = """
import sys
from resumable import ResumableSweep
sweep = ResumableSweep(range(3), key=str, checkpoint_path=sys.argv[1])
for item in sweep.pending:
    sweep.record(item, item)
sweep.close()
print("resumed_from", sweep.resumed_from, sweep.resumed_from_location)
"""


def _launch(ckpt: Path, resume_from: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEP_")}
    env["SWEEP_RESUME_FROM"] = resume_from
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, str(ckpt)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_missing_local_source_is_a_fresh_start_announced_on_stderr(tmp_path: Path) -> None:
    typo = tmp_path / "sweeps" / "isnig"  # a typo: nothing there
    proc = _launch(tmp_path / "a" / "exp.h5", str(typo))
    assert proc.returncode == 0, proc.stderr
    assert "resumed_from fresh None" in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if "fresh start" in ln]
    assert len(lines) == 1, proc.stderr
    assert str(typo) in lines[0] and "exp" in lines[0]


def test_a_missing_url_source_is_announced_with_its_secrets_redacted(
    tmp_path: Path, http_server
) -> None:
    _root, base = http_server
    url = f"{base}/missing/sweep?sig=TOPSECRET123&X-Amz-Credential=AKIAEXAMPLE"
    proc = _launch(tmp_path / "a" / "exp.h5", url)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "fresh start" in ln]
    assert len(lines) == 1, proc.stderr
    assert f"{base}/missing/sweep" in lines[0]
    assert "TOPSECRET123" not in proc.stderr and "AKIAEXAMPLE" not in proc.stderr


def test_a_resume_says_where_it_came_from(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mirror = tmp_path / "mirror"
    first = ResumableSweep(range(4), key=str, checkpoint_path=tmp_path / "a" / "exp.h5",
                           snapshot_dir=str(mirror), resume_from=str(mirror))  # fmt: skip
    assert (first.resumed_from, first.resumed_from_location) == ("fresh", None)
    for item in list(first.pending)[:2]:
        first.record(item, item)
    first.close()
    with caplog.at_level(logging.INFO, logger="resumable"):
        elsewhere = ResumableSweep(range(4), key=str, checkpoint_path=tmp_path / "b" / "exp.h5",
                                   resume_from=str(mirror))  # fmt: skip
        elsewhere.close()
        here = ResumableSweep(range(4), key=str, checkpoint_path=tmp_path / "a" / "exp.h5",
                              resume_from=str(mirror))  # fmt: skip
        here.close()
    assert (elsewhere.resumed_from, elsewhere.resumed_from_location) == ("remote", str(mirror))
    assert (here.resumed_from, here.resumed_from_location) == ("local", str(here.progress_dir))
    said = [
        re.sub(r"\(\d+ records\)", "(N records)", r.getMessage())
        for r in caplog.records
        if "continues from" in r.getMessage()
    ]
    assert said == [
        f"sweep 'exp' continues from the resume source: {mirror} (N records)",
        f"sweep 'exp' continues from the local checkpoint: {here.progress_dir} (N records)",
    ]
