"""Reopening a checkpoint: bounded read buffers, one segment in memory at a time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from resumable import ResumableSweep


def test_reopen_reads_with_buffers_no_larger_than_the_data(tmp_path: Path) -> None:
    """Under `ulimit -v` a 1 GiB read buffer for a small active segment fails the open: the
    buffers must be as large as the files, not as the limit they are checked against."""
    path = tmp_path / "exp.h5"
    with ResumableSweep(list(range(100)), key=str, checkpoint_path=path) as sweep:
        for i in range(50):
            sweep.record(i, i)
    code = textwrap.dedent(
        f"""
        import resource
        from resumable import ResumableSweep
        from resumable.view import open_view
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (600 << 20), hard))
        with ResumableSweep(list(range(100)), key=str, checkpoint_path={str(path)!r}) as s:
            assert s.status().done == 50
        assert open_view({str(path)!r}).status().done == 50
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
