"""The short torture CI runs: ~50 kills (SIGTERM and SIGKILL mixed) of the example sweep,
locally, mirrored to S3, on fresh machines, in four threads and through `sweep.run`'s group commit,
with `resumable chaos`; nothing acknowledged
may be lost or doubled and the results must be bit-identical to an uninterrupted run.
(`python scripts/torture.py --kills 1000` is the full version.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_short_torture_loses_nothing():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "torture.py"),
            "--kills",
            "48",
            "--per-round",
            "16",
            "--seed",
            "5",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["ok"] and summary["kills"] >= 40 and not summary["errors"]
    for name, scenario in summary["scenarios"].items():
        assert scenario["lost"] == 0 and scenario["doubled"] == 0, name
        assert scenario["verified"] and scenario["identical"], name
        assert scenario["unexpected"] == 0, (name, scenario["failures"])
        assert sum(scenario["kills"].values()) > 0, name
