"""SIGKILL, then a relaunch on a new machine that has only the mirror: on S3, GCS and Azure.

A worker (progs/mirror_worker.py) runs a sweep mirroring to a real object store on loopback
(a moto S3 server, gcp-storage-emulator through gcsfs, Azurite through adlfs), with
snapshot_dir and resume_from both set to the mirror. It is SIGKILLed at random moments, a
few times during start-up (while it downloads and installs the mirror); every relaunch gets a
fresh, empty local directory. Between launches the test reads the mirror the way a relaunch
does (verified in full). Records acknowledged locally but not yet mirrored may be redone after
a kill (the machine is gone); what must hold:

- every mirror observation verifies, and the next launch resumes with exactly what it held;
- whatever `flush()` confirmed is in the mirror; whatever the mirror ever held is kept;
- no key is recorded twice within the history (counted in the raw journal);
- the final results equal, bitwise, those of an uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:  # tests/ is on sys.path (see conftest.py)
    from fixtures.compare import assert_bitwise_equal
except ImportError:  # pragma: no cover
    from tests.fixtures.compare import assert_bitwise_equal

from resumable import ResumableSweep
from resumable._checkpoint import Loaded
from resumable._codec import decode
from resumable._journal import parse_segment
from resumable._remote import download, read_manifest, source_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = Path(__file__).parent / "progs" / "mirror_worker.py"
N_ITEMS = 200
SEGMENT_BYTES = 3000  # a result is ~700 bytes: sealed segments and chunks both occur
KILLS = 6
SEED = 20250211


class Worker:
    def __init__(self, ckpt: Path, url: str, log: Path) -> None:
        self.lines: list[str] = []
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), str(ckpt), url, str(N_ITEMS), str(SEGMENT_BYTES)],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    def read(self, timeout: float) -> str | None:
        """The next line of output within `timeout` s; None at EOF or on timeout."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline().decode()
        if line:
            self.lines.append(line.strip())
            return line
        return None

    def wait_ready(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.read(0.2)
            if line and line.startswith("ready"):
                return int(line.split()[1])
            if line is None and self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"worker exited with {self.proc.returncode}: {tail}")
        raise AssertionError("worker did not get ready")

    def wait_for(self, prefix: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(x.startswith(prefix) for x in self.lines):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no {prefix!r} from the worker: {self.lines}")
            self.read(0.2)

    def drain_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and self.proc.poll() is None:
            self.read(left)

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(timeout=30)
        while self.read(0) is not None:
            pass
        self.proc.stdout.close()
        return rc

    def flushed(self) -> int:
        counts = [int(x.split()[1]) for x in self.lines if x.startswith("flushed")]
        return max(counts, default=0)


def _fetch(url: str, tmp: Path) -> tuple[Loaded, Path] | None:
    store = source_store(url)
    found = read_manifest(store)
    if found is None:
        return None
    fetched, loaded = download(store, found[0], tmp / f"observed-{time.monotonic_ns()}" / "x")
    return loaded, fetched


def _raw_result_keys(fetched: Path) -> list[str]:
    """Result keys in the downloaded journal, segment by segment, chain checked, not replayed
    (so that a doubled key would show)."""
    manifest = json.loads((fetched / "manifest.json").read_bytes())
    keys: list[str] = []
    seq, prev = 1, ""
    for seg in manifest["segments"]:
        data = (fetched / "segments" / seg["name"]).read_bytes()
        parsed = parse_segment(
            data, source=seg["name"], first_seq=seq, prev_hash=prev, allow_torn_tail=False
        )
        keys += [r.key for r in parsed.records if r.type == "result"]
        seq += len(parsed.records)
        prev = parsed.last_hash
    return keys


def _values(loaded: Loaded) -> dict[str, object]:
    return {k: decode(r.body()["value"], where=k) for k, r in loaded.state.results.items()}


def _run_to_completion(ckpt: Path, url: str, log: Path) -> Worker:
    worker = Worker(ckpt, url, log)
    worker.wait_ready()
    worker.drain_for(120)
    assert worker.proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    worker.proc.stdout.close()
    assert worker.lines[-1] == f"finished {N_ITEMS}"
    return worker


CLOUDS = {"s3": "s3_bucket", "gcs": "gcs_bucket", "azure": "az_container"}


@pytest.mark.parametrize("cloud", list(CLOUDS))
def test_sigkill_and_relaunch_from_the_mirror_only(
    cloud: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(SEED)
    url = f"{request.getfixturevalue(CLOUDS[cloud])}/sweeps/exp"
    log = tmp_path / "stderr.log"
    ever_mirrored: set[str] = set()
    startup: list[float] = []
    progress: list[int] = []
    expect_at_open = 0
    for n in range(KILLS):
        started = time.monotonic()
        worker = Worker(tmp_path / f"launch-{n}" / "exp.h5", url, log)  # a new machine
        if n in (2, 4) and startup:  # during start-up: the download, install, launch record
            time.sleep(rng.uniform(0.5, 1.0) * min(startup))
        else:
            done_at_open = worker.wait_ready()
            startup.append(time.monotonic() - started)
            assert done_at_open == expect_at_open, (n, done_at_open, expect_at_open)
            # some progress (a flush every 20 records), then a random moment: mid-record,
            # mid-upload, mid-flush (about 5-10 records more at most)
            worker.wait_for("flushed")
            worker.drain_for(rng.uniform(0.0, 0.12))
        rc = worker.kill()
        assert rc == -signal.SIGKILL, f"worker ended on its own ({rc}): {log.read_text()[-3000:]}"
        shutil.rmtree(tmp_path / f"launch-{n}", ignore_errors=True)  # that machine is gone

        observed = _fetch(url, tmp_path)
        keys = []
        if observed is not None:
            loaded, fetched = observed
            keys = _raw_result_keys(fetched)
            assert len(keys) == len(set(keys)), "a key recorded twice within one history"
            assert keys == list(loaded.state.results)
            shutil.rmtree(fetched)
        assert len(keys) >= worker.flushed()  # what flush() confirmed is there
        assert ever_mirrored <= set(keys)  # and what the mirror held is kept
        ever_mirrored |= set(keys)
        expect_at_open = len(keys)
        progress.append(len(keys))

    assert 0 < progress[-1] < N_ITEMS, progress
    assert len(set(progress)) >= 4, progress  # kills interrupted real progress

    final_worker = _run_to_completion(tmp_path / "final" / "exp.h5", url, log)
    assert final_worker.lines[0] == f"ready {expect_at_open}"
    observed = _fetch(url, tmp_path)
    assert observed is not None
    final, fetched = observed
    keys = _raw_result_keys(fetched)
    assert len(keys) == len(set(keys)) == N_ITEMS
    assert ever_mirrored <= set(keys)

    # an uninterrupted run (in this process, no mirror), with the worker's own computation
    spec = importlib.util.spec_from_file_location("mirror_worker", WORKER)
    assert spec is not None and spec.loader is not None
    worker_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker_module)
    items = [{"i": i} for i in range(N_ITEMS)]
    with ResumableSweep(items, checkpoint_path=tmp_path / "reference" / "exp.h5") as ref:
        for item in ref.pending:
            ref.record(item, worker_module.compute(ref.seed(item), item["i"]))
        want = {ref.key(item): ref.result(item) for item in items}
    got = _values(final)
    assert sorted(got) == sorted(want)
    for key in want:
        assert_bitwise_equal(got[key], want[key], key)
    shutil.rmtree(fetched)
