"""The project's own shell scripts (setup, test, emulator and SLURM installers, CI's entry point)
pass shellcheck, which CI installs with the SLURM tools (scripts/install_slurm.sh): these scripts
are the README's two commands, so a quoting slip in them breaks a fresh machine first."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), ROOT / ".ci" / "run"])


def test_the_scripts_are_found() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"setup_env.sh", "test.sh", "install_slurm.sh", "run"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_script_passes_shellcheck(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (scripts/install_slurm.sh installs it)")
    proc = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
