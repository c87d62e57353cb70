"""Long items resume mid-item: SIGTERM and SIGKILL inside an item, then fresh machines that
resume from the mirror; every result equals an uninterrupted run bit for bit (issue 13)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resumable._item_snapshot import interruptions, item_id
from resumable._status_text import format_status, gather_status
from resumable.view import open_view, verify

try:
    from fixtures.compare import assert_bitwise_equal
except ImportError:  # pragma: no cover
    from tests.fixtures.compare import assert_bitwise_equal

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).parents[2] / "scripts" / "run_item_sweep.py"
ARGS = ["--items", "3", "--steps", "120", "--snap-every", "20", "--report-every", "5"]


def _launch(ckpt: Path, mirror: str | None, sleep: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RESUMABLE_GRACE_S": "20"}
    env.pop("SWEEP_RESUME_FROM", None)
    env.pop("SWEEP_SNAPSHOT_DIR", None)
    if mirror:
        env["SWEEP_RESUME_FROM"] = env["SWEEP_SNAPSHOT_DIR"] = mirror
    cmd = [sys.executable, str(SCRIPT), "--checkpoint", str(ckpt), *ARGS, "--sleep", str(sleep)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _until(proc: subprocess.Popen[str], want: str, seen: list[str], timeout: float = 60) -> None:
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.monotonic()))
        line = proc.stdout.readline() if ready else ""
        if not line:
            break
        seen.append(line.strip())
        if line.strip() == want:
            return
    proc.kill()
    raise AssertionError(f"never saw {want!r}; output: {seen[-5:]}; stderr: {proc.stderr.read()}")


def _results(ckpt: Path) -> dict[str, object]:
    return {key: result for key, _params, result in open_view(str(ckpt)).results()}


def _objects(mirror: str, under: str) -> list[str]:
    """Names of the objects under `mirror`/`under` (a local directory or an s3:// prefix)."""
    if not mirror.startswith("s3://"):
        return sorted(p.name for p in (Path(mirror) / under).glob("*"))
    import boto3

    bucket, _, prefix = mirror[5:].partition("/")
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{under}/")
    return sorted(o["Key"].rsplit("/", 1)[-1] for o in listing.get("Contents", []))


@pytest.fixture(params=["local", "s3"])
def mirror(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "bucket" / "sweep")
    return f"{request.getfixturevalue('s3_bucket')}/sweeps/sweep"


def test_item_resumes_mid_item_on_fresh_machines_from_the_mirror(
    tmp_path: Path, mirror: str
) -> None:
    ref = tmp_path / "ref" / "sweep.h5"
    proc = _launch(ref, None, 0.0)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    want = _results(ref)
    assert sorted(want) == ["0", "1", "2"]

    # machine 1: SIGTERM in the middle of item 1 -> the guard saves the item, exit 75
    m1 = tmp_path / "m1" / "sweep.h5"
    seen: list[str] = []
    proc = _launch(m1, mirror, 0.01)
    _until(proc, "item 1 step 55", seen)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert f"{item_id('1')}.npz" in _objects(mirror, "items")  # a fresh machine can continue it

    # machine 2 (fresh, from the mirror): resumes item 1 mid-item, SIGKILLed after a save
    m2 = tmp_path / "m2" / "sweep.h5"
    seen = []
    proc = _launch(m2, mirror, 0.01)
    _until(proc, "item 1 saved at 80", seen)
    resumed = [x for x in seen if x.startswith("item 1 resumed at ")]
    assert resumed and int(resumed[0].rsplit(" ", 1)[1]) >= 55  # not from zero
    assert not any(x.startswith("item 1 step 5 ") or x == "item 1 step 5" for x in seen)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)

    # machine 3 (fresh, from the mirror): finishes everything
    m3 = tmp_path / "m3" / "sweep.h5"
    seen = []
    proc = _launch(m3, mirror, 0.0)
    _until(proc, "finished", seen, timeout=120)
    assert proc.wait(30) == 0
    assert "item 1 resumed at 80" in seen
    got = _results(m3)
    assert sorted(got) == sorted(want)
    for key in want:
        assert_bitwise_equal(got[key], want[key], key)

    # interrupted twice (SIGTERM on m1, SIGKILL on m2); the done item's snapshots are gone
    assert interruptions(m3.parent / "sweep.h5.resumable") == {"1": 2}
    assert not list((m3.parent / "sweep.h5.resumable" / "items").glob("*.npz"))
    assert [n for n in _objects(mirror, "items") if n.endswith(".npz")] == []
    assert not verify(mirror)
    status = gather_status(str(m3))  # `resumable status` shows the long item
    assert status["interrupted_items"] == {"1": 2}
    assert "1 item(s) interrupted more than once" in format_status(status)
    assert gather_status(mirror)["interrupted_items"] == {"1": 2}  # and so does the mirror's
