"""`sweep.run` on a real two-node Ray cluster on this machine, one node killed mid-run.

Both nodes are started with `ray start --block` in their own process groups, on loopback
addresses (127.0.0.2 and 127.0.0.3: Ray turns 127.0.0.1 into the machine's outward address),
with their temp dirs under the test's tmp. Killing the second node's process group mid-run
loses the tasks it was running; Ray reruns them on the head node, and the sweep must finish
with every item recorded exactly once and results identical to a serial run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from resumable import ResumableSweep  # noqa: E402
from resumable._checkpoint import progress_dir_for  # noqa: E402
from resumable.view import open_view  # noqa: E402

try:
    from fixtures.servers import free_port
except ImportError:  # pragma: no cover
    from tests.fixtures.servers import free_port

PROGS = Path(__file__).parent / "progs"
RAY = str(Path(sys.executable).parent / "ray")
HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _env() -> dict[str, str]:
    # a loopback-only test cluster: no token (a ~/.ray/auth_token left by a local ray.init
    # would otherwise switch the head to token mode and lock the second node out)
    return {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": str(PROGS),
    }


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,  # its own process group: raylet, workers and all
        )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _wait_started(proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    """`ray start --block` says "Ray runtime started." once its node is up."""
    while "Ray runtime started" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"Ray did not start: {log}"
        time.sleep(0.5)


def _alive_nodes(address: str) -> int:
    code = (
        "import ray,sys;"
        f"ray.init(address={address!r}, _node_ip_address={HEAD_IP!r}, log_to_driver=False);"
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0


@pytest.fixture
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("ray")  # short: Ray's unix sockets live below it
    port = free_port()
    address = f"{HEAD_IP}:{port}"
    head = _start(
        [
            "--head",
            f"--node-ip-address={HEAD_IP}",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            f"--temp-dir={tmp}",
        ],
        tmp / "head.log",
    )
    procs = [head]
    try:
        deadline = time.monotonic() + 300  # a loaded machine starts Ray slowly
        _wait_started(head, tmp / "head.log", deadline)
        node = _start(
            [f"--address={address}", f"--node-ip-address={NODE_IP}", "--num-cpus=1"],
            tmp / "node.log",
        )
        procs.append(node)
        _wait_started(node, tmp / "node.log", deadline)
        while _alive_nodes(address) < 2:
            assert node.poll() is None, (tmp / "node.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the second Ray node did not join"
            time.sleep(2)
        yield {"address": address, "node": node, "tmp": tmp}
    finally:
        for proc in reversed(procs):
            _kill(proc)


def _recorded_bytes(segdir: Path) -> int:
    return sum(f.stat().st_size for f in segdir.glob("*")) if segdir.is_dir() else 0


def _serial(n: int, tmp: Path) -> dict:
    sys.path.insert(0, str(PROGS))
    try:
        from ray_sweep import work
    finally:
        sys.path.remove(str(PROGS))
    items = [{"i": i, "s": 0.0} for i in range(n)]
    path = tmp / "serial" / "exp.h5"
    with ResumableSweep(items, key=lambda c: str(c["i"]), checkpoint_path=path) as sweep:
        sweep.run(work, progress=False)
        return {k: sweep.result(c) for k, c in ((str(c["i"]), c) for c in items)}


def test_ray_node_killed_mid_run_every_item_once_results_as_serial(
    ray_cluster: dict, tmp_path: Path
) -> None:
    n = 160
    ckpt = tmp_path / "ray" / "exp.h5"
    args = [ckpt, ray_cluster["address"], HEAD_IP, str(n), "0.05"]
    driver = subprocess.Popen(
        [sys.executable, PROGS / "ray_sweep.py", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert driver.stdout is not None
        assert driver.stdout.readline().strip() == "ready"
        segdir = progress_dir_for(ckpt) / "segments"
        deadline = time.monotonic() + 120
        # kill the second node once a good part (not all) of the items is recorded
        while _recorded_bytes(segdir) < 40 * 200:  # about 40 results
            assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.05)
        assert driver.poll() is None  # mid-run
        _kill(ray_cluster["node"])
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, err[-3000:]
    finished = json.loads(out.strip().splitlines()[-1].split(" ", 1)[1])
    view = open_view(str(ckpt))  # a key recorded twice would fail to replay (IntegrityError)
    state = view.loaded.state
    assert len(state.results) == n and not state.failures
    assert finished == {"done": n, "failed": 0}
    expected = _serial(n, tmp_path)
    got = {key: value for key, _params, value in view.results()}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key]["i"] == value["i"] and got[key]["n"] == value["n"]
        assert (got[key]["x"] == value["x"]).all() and got[key]["x"].dtype == value["x"].dtype
