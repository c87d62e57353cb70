"""The CLI on hash-consistent hostile checkpoints (issue 11, item 7): a record time of NaN or
1e300, a duration of 1e308, attempt=Infinity. Every command gives one clear line naming the
file and what is wrong, exit status 1, and never a traceback. The real CLI, in a subprocess."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from fixtures import fuzz
except ImportError:  # pragma: no cover
    from tests.fixtures import fuzz

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASES = {
    "time-nan": ("result", "time", "nan", "malformed header"),
    "time-1e300": ("result", "time", "1e300", "not a plausible time"),
    "attempt-inf": ("failure", "field:attempt", math.inf, "Infinity"),
    "meta-nan": ("meta", "field:meta", {"x": math.nan}, "NaN"),
}
COMMANDS = {
    "status": ["status", "{d}"],
    "status-json": ["status", "{d}", "--json"],
    "report": ["report", "{d}", "-o", "{tmp}/r.html"],
    "export": ["export", "{d}", "--jsonl", "{tmp}/o.jsonl"],
    "retry-failed": ["retry-failed", "{d}", "--dry-run"],
}


def _cli(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resumable", *argv], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "active"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_command_on_a_hostile_record(case: str, sealed: bool, tmp_path: Path) -> None:
    kind, part, value, words = CASES[case]
    d = fuzz.write_checkpoint(tmp_path / "p", fuzz.journal(kind, part, value), sealed)
    for name, argv in COMMANDS.items():
        proc = _cli([a.format(d=d, tmp=tmp_path) for a in argv])
        assert "Traceback" not in proc.stderr + proc.stdout, (name, proc.stderr)
        assert proc.returncode == 1, (name, proc.returncode, proc.stdout, proc.stderr)
        line = proc.stderr.strip()
        assert line.startswith("resumable: error: IntegrityError:"), (name, line)
        assert "seg-00000001.jsonl" in line and words in line, (name, line)
    verify = _cli(["verify", str(d)])
    assert verify.returncode == 1 and "Traceback" not in verify.stderr + verify.stdout
    assert words in verify.stdout, verify.stdout


def test_report_on_a_duration_of_1e308(tmp_path: Path) -> None:
    d = fuzz.write_checkpoint(tmp_path / "p", fuzz.journal("result", "field:duration", 1e308), True)
    proc = _cli(["report", str(d), "-o", str(tmp_path / "r.html")])
    assert "Traceback" not in proc.stderr and proc.returncode == 1, proc.stderr
    assert "duration of 1e+308 s" in proc.stderr and "record 3" in proc.stderr, proc.stderr
    assert not (tmp_path / "r.html").exists()
    ok = fuzz.write_checkpoint(tmp_path / "q", fuzz.journal("result", "field:duration", 2.5), True)
    good = _cli(["report", str(ok), "-o", str(tmp_path / "ok.html")])
    assert good.returncode == 0 and (tmp_path / "ok.html").exists(), good.stderr


def test_an_unexpected_error_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    """The last line of defence: even a bug gives a clear message and exit 1 (--debug shows
    the traceback)."""
    code = (
        "import sys, resumable.cli as c\n"
        "def boom(args): raise OverflowError('int too large to convert to float')\n"
        "c.cmd_status = boom\n"
        "p = c.build_parser\n"
        "def bp():\n"
        "    parser = p()\n"
        "    parser._subparsers._group_actions[0].choices['status'].set_defaults(func=boom)\n"
        "    return parser\n"
        "c.build_parser = bp\n"
        "sys.exit(c.main(sys.argv[1:]))\n"
    )
    for debug in ([], ["--debug"]):
        proc = subprocess.run(
            [sys.executable, "-c", code, "status", str(tmp_path), *debug],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1, proc.stderr
        assert "unexpected OverflowError: int too large" in proc.stderr
        assert ("Traceback" in proc.stderr) == bool(debug), proc.stderr
