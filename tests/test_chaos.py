"""The chaos harness reads checkpoints through the reader `verify` and the views use.

`observe` (what the harness reads after every launch) is checked on real checkpoints (plain,
sharded, mirrored to a directory and read through its ``file://`` URL) against `open_view`; damage
that `verify` finds makes it fail with the same error; and a short `run_chaos` kills a real sweep
worker subprocess and finds nothing lost.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from resumable import MirrorOptions, ResumableSweep, open_view, verify
from resumable._checkpoint import SEGMENTS_DIR, progress_dir_for
from resumable.chaos import ChaosConfig, Identity, observe, run_chaos
from resumable.errors import IntegrityError

PROGS = Path(__file__).parent / "integration" / "progs"
ITEMS = list(range(12))


def make(ckpt: Path, **kw: object) -> None:
    with ResumableSweep(ITEMS, key=str, checkpoint_path=ckpt, segment_bytes=600, **kw) as sweep:  # type: ignore[arg-type]
        for item in sweep.pending:
            sweep.record(item, item * 10)


def expected(target: str) -> set[Identity]:
    view = open_view(target)
    shards = view.shards if hasattr(view, "shards") else [view]
    return {
        Identity(key, str(rec.body()["launch"]), rec.seq)
        for shard in shards
        if shard is not None
        for key, rec in shard.loaded.state.results.items()
    }


def test_observe_reads_what_the_views_read(tmp_path: Path) -> None:
    assert observe(str(tmp_path / "none.h5")).identities == set()  # nothing yet: no records
    plain, mirror = tmp_path / "plain.h5", tmp_path / "mirror"
    opts = MirrorOptions(interval_s=0.0, flush_timeout_s=20.0)
    make(plain, snapshot_dir=str(mirror), mirror_options=opts)
    obs = observe(str(plain))
    assert len(obs.identities) == 12 and obs.identities == expected(str(plain))
    assert sum(len(ts) for ts in obs.by_launch.values()) == 12
    assert observe(mirror.as_uri()).identities == obs.identities  # the mirror, via a URL

    sharded = tmp_path / "sharded.h5"
    for index in (0, 1):
        make(sharded, shard=(index, 2))
    obs = observe(str(sharded))
    assert {i.key for i in obs.identities} == {str(i) for i in ITEMS}
    assert obs.identities == expected(str(sharded))


def test_observe_keeps_results_a_rerun_voided(tmp_path: Path) -> None:
    ckpt = tmp_path / "exp.h5"
    make(ckpt)
    before = observe(str(ckpt)).identities
    changed = [*ITEMS[:-1], 111]  # keyed "11" as before, with other parameters
    with ResumableSweep(
        changed, key=lambda i: "11" if i == 111 else str(i), checkpoint_path=ckpt, on_change="rerun"
    ) as sweep:
        for item in sweep.pending:
            sweep.record(item, -1)
        assert sweep.status().done == 12
    after = observe(str(ckpt)).identities
    assert before <= after and {i.key for i in after - before} == {"11"}  # nothing lost


def test_damage_fails_observe_as_it_fails_verify(tmp_path: Path) -> None:
    ckpt = tmp_path / "exp.h5"
    make(ckpt)
    segdir = progress_dir_for(ckpt) / SEGMENTS_DIR
    seg = sorted(p for p in segdir.iterdir() if p.suffix == ".jsonl")[0]  # (not its .idx)
    data = bytearray(seg.read_bytes())
    data[-10] ^= 1
    seg.write_bytes(bytes(data))
    problems = verify(str(ckpt))
    assert problems and "SHA-256" in problems[0].what
    with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
        observe(str(ckpt))


@pytest.mark.integration
def test_run_chaos_kills_a_real_sweep_and_loses_nothing(tmp_path: Path) -> None:
    ckpt = tmp_path / "exp.h5"
    ack = tmp_path / "ack"
    command = [sys.executable, str(PROGS / "sweep_worker.py"), str(ckpt), str(ack), "300", "4000"]
    report = run_chaos(
        ChaosConfig(command=command, checkpoint=str(ckpt), kills=3, max_s=0.3, seed=1)
    )
    assert report.ok, report.text()
    assert report.records == 300 and report.lost == 0 and sum(report.kills.values()) >= 1
    acknowledged = set(ack.read_text().splitlines())
    assert acknowledged and acknowledged <= {i.key for i in observe(str(ckpt)).identities}
