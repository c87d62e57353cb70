"""Sharding: which shard owns a key, the job-array environment, the shard-count descriptor,
and read-only merged views of every shard (local, file://, s3:// and http://)."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import pytest

from resumable import ResumableSweep
from resumable._storage import Store
from resumable.errors import ConfigurationError, ObjectExistsError
from resumable.shards import (
    DESCRIPTOR_NAME,
    descriptor_bytes,
    ensure_remote_descriptor,
    read_descriptor,
    shard_dir_name,
    shard_from_env,
    shard_of,
)
from resumable.view import CheckpointView, MergedView, open_view, verify


def items(n: int) -> list[dict]:
    return [{"i": i} for i in range(n)]


# -- shard_of --------------------------------------------------------------------------------------


def test_shard_of_is_pinned_and_deterministic():
    # Pinned: a change here would move every item of every sharded sweep in flight.
    assert [shard_of(k, 3) for k in ["a", "b", "c", "item-0"]] == [1, 1, 1, 1]
    assert [shard_of("x" * i, 1000) for i in range(1, 5)] == [889, 818, 103, 6]
    keys = [f"k{i}" for i in range(1000)]
    assert [shard_of(k, 7) for k in keys] == [shard_of(k, 7) for k in keys]
    assert all(shard_of(k, 1) == 0 for k in keys)


@pytest.mark.parametrize("count", [2, 7, 64])
def test_shard_of_is_balanced(count):
    n = 50_000
    sizes = Counter(shard_of(f"item-{i}", count) for i in range(n))
    assert sorted(sizes) == list(range(count))
    mean = n / count
    # binomial sd is sqrt(mean); 5 sd is a bound no fair hash exceeds in practice
    assert max(abs(s - mean) for s in sizes.values()) < 5 * mean**0.5 + 1
    assert statistics.pstdev(sizes.values()) < 2 * mean**0.5


def test_appending_items_does_not_move_existing_ones(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(items(40), checkpoint_path=ckpt, shard=(1, 3)) as sweep:
        first = [sweep.key(it) for it in sweep.pending]
        for it in sweep.pending:
            sweep.record(it, it["i"])
    with ResumableSweep(items(80), checkpoint_path=ckpt, shard=(1, 3)) as sweep:
        assert sweep.status().done == len(first)
        new = [sweep.key(it) for it in sweep.pending]
        assert all(it["i"] >= 40 for it in sweep.pending)
    assert all(shard_of(k, 3) == 1 for k in first + new) and not set(first) & set(new)


# -- the job-array environment ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"SWEEP_SHARD_INDEX": "2", "SWEEP_SHARD_COUNT": "5"}, (2, 5)),
        ({"JOB_COMPLETION_INDEX": "3", "SWEEP_SHARD_COUNT": "4"}, (3, 4)),  # Kubernetes
        ({"JOB_COMPLETION_INDEX": " 0 ", "SWEEP_SHARD_COUNT": "1"}, (0, 1)),
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}, (2, 3)),
        (
            {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_MAX": "7"},
            (1, 3),
        ),
        (
            {
                "SLURM_ARRAY_TASK_ID": "11",
                "SLURM_ARRAY_TASK_MIN": "10",
                "SLURM_ARRAY_TASK_MAX": "13",
                "SLURM_ARRAY_TASK_COUNT": "4",
            },
            (1, 4),
        ),
        ({"SLURM_ARRAY_TASK_ID": "4", "SWEEP_SHARD_COUNT": "8"}, (4, 8)),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "0", "SWEEP_SHARD_COUNT": "2"}, (0, 2)),  # AWS Batch
        ({"SWEEP_SHARD_INDEX": "", "SWEEP_SHARD_COUNT": ""}, None),  # blank: unsharded
    ],
)
def test_shard_from_env(env, expected):
    assert shard_from_env(env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOB_COMPLETION_INDEX": "1"}, "SWEEP_SHARD_COUNT to the number of shards"),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "1"}, "AWS_BATCH_JOB_ARRAY_INDEX=1 is set but"),
        ({"JOB_COMPLETION_INDEX": "x", "SWEEP_SHARD_COUNT": "2"}, "'x' is not an integer"),
        ({"SWEEP_SHARD_INDEX": "3", "SWEEP_SHARD_COUNT": "3"}, "0 <= index < count"),
        ({"SWEEP_SHARD_INDEX": "0", "SWEEP_SHARD_COUNT": "0"}, "0 <= index < count"),
        ({"SLURM_ARRAY_TASK_ID": "1"}, "neither SLURM_ARRAY_TASK_COUNT"),
        (
            {
                "SLURM_ARRAY_TASK_ID": "3",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_MAX": "5",
                "SLURM_ARRAY_TASK_COUNT": "3",
            },
            "not contiguous",
        ),
        ({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"}, "outside the array 0..3"),
        ({"SWEEP_SHARD_COUNT": "4"}, "no shard index is"),
    ],
)
def test_shard_from_env_errors_say_what_to_set(env, message):
    with pytest.raises(ConfigurationError, match=message.replace(".", r"\.")):
        shard_from_env(env)


def test_shard_from_env_reads_os_environ(monkeypatch):
    for var in ("SWEEP_SHARD_INDEX", "SWEEP_SHARD_COUNT", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    monkeypatch.setenv("SWEEP_SHARD_COUNT", "3")
    assert shard_from_env() == (2, 3)


# -- the descriptor ---------------------------------------------------------------------------


def test_local_descriptor_is_written_once_and_a_count_change_is_refused(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(items(10), checkpoint_path=ckpt, shard=(0, 3)):
        pass
    desc = tmp_path / "exp.h5.resumable" / DESCRIPTOR_NAME
    data = desc.read_bytes()
    with ResumableSweep(items(10), checkpoint_path=ckpt, shard=(2, 3)):
        pass
    with pytest.raises(ConfigurationError, match=r"started with 3 shard\(s\); this launch asks"):
        ResumableSweep(items(10), checkpoint_path=ckpt, shard=(0, 4))
    assert desc.read_bytes() == data
    assert not (tmp_path / "exp.h5.resumable" / shard_dir_name(0, 4)).exists()
    with pytest.raises(ConfigurationError, match="unsharded checkpoint"):
        ResumableSweep(items(10), checkpoint_path=tmp_path / "plain.h5").close()
        ResumableSweep(items(10), checkpoint_path=tmp_path / "plain.h5", shard=(0, 2))


def test_remote_descriptor_is_create_only_and_a_count_change_is_refused(tmp_path, s3_bucket):
    root = f"{s3_bucket}/sweeps/exp"
    with ResumableSweep(
        items(10), checkpoint_path=tmp_path / "a" / "exp.h5", snapshot_dir=root, shard=(0, 3)
    ):
        pass
    store = Store(root)
    body = read_descriptor(store)
    assert body["shards"] == 3 and body["sweep"] == "exp"
    with pytest.raises(ObjectExistsError):
        store.write_bytes(DESCRIPTOR_NAME, descriptor_bytes("exp", 5), create_only=True)
    with pytest.raises(ConfigurationError, match=r"started with 3 shard\(s\)"):
        ensure_remote_descriptor(store, "exp", 5)
    with pytest.raises(ConfigurationError, match=r"started with 3 shard\(s\)"):  # fresh machine
        ResumableSweep(
            items(10), checkpoint_path=tmp_path / "b" / "exp.h5", snapshot_dir=root, shard=(1, 4)
        )
    with pytest.raises(ConfigurationError, match="describes sweep 'exp', not 'other'"):
        ensure_remote_descriptor(store, "other", 3)
    assert read_descriptor(store) == body


def test_two_shards_on_one_machine_do_not_collide(tmp_path):
    ckpt, mirror = tmp_path / "exp.h5", tmp_path / "mirror"
    kw = {"checkpoint_path": ckpt, "snapshot_dir": str(mirror)}
    with (
        ResumableSweep(items(30), shard=(0, 2), **kw) as a,
        ResumableSweep(items(30), shard=(1, 2), **kw) as b,
    ):
        assert a.progress_dir != b.progress_dir
        pending = list(a.pending), list(b.pending)
        for pair in zip(*pending, strict=False):
            for sweep, it in zip((a, b), pair, strict=True):
                sweep.record(it, it["i"])
        for sweep, rest in zip((a, b), pending, strict=True):
            for it in rest[min(map(len, pending)) :]:
                sweep.record(it, it["i"])
    assert len(pending[0]) + len(pending[1]) == 30
    for where in (ckpt, mirror):
        view = open_view(str(where))
        assert isinstance(view, MergedView)
        assert sorted(r for _, _, r in view.results()) == list(range(30))


# -- merged views ------------------------------------------------------------------------------


def _build(root: str, local: Path, n: int = 30, count: int = 3, **kw) -> dict[int, int]:
    """Shards 0 and 1 finish (item 5 fails), shard 2 records only 3 items. Returns results."""
    want = {}
    for index in range(count):
        with ResumableSweep(
            items(n),
            checkpoint_path=local / f"m{index}" / "exp.h5",
            snapshot_dir=root,
            shard=(index, count),
            **kw,
        ) as sweep:
            for k, it in enumerate(sweep.pending):
                if index == 2 and k == 3:
                    break
                if it["i"] == 5:
                    sweep.record_failure(it, ValueError("five"))
                else:
                    sweep.record(it, it["i"] * 2)
                    want[it["i"]] = it["i"] * 2
    return want


@pytest.fixture(params=["local", "file", "s3", "http"])
def sharded_root(request, tmp_path):
    """(url to open, url the shards mirrored to) for each kind of location."""
    if request.param == "s3":
        url = f"{request.getfixturevalue('s3_bucket')}/exp"
        return url, url
    if request.param == "http":
        root, base = request.getfixturevalue("http_server")
        return f"{base}/exp", str(root / "exp")
    path = tmp_path / "mirror"
    return (path.as_uri() if request.param == "file" else str(path)), str(path)


def test_open_view_of_a_sharded_root_merges_every_shard(tmp_path, sharded_root):
    url, mirror = sharded_root
    want = _build(mirror, tmp_path)
    view = open_view(url)
    assert isinstance(view, MergedView)
    assert (view.name, view.count, len(view.shards)) == ("exp", 3, 3)
    assert all(isinstance(s, CheckpointView) for s in view.shards)
    assert [s.shard for s in view.shards] == [(0, 3), (1, 3), (2, 3)]
    assert {k: r for _, k, r in ((None, p["i"], r) for _, p, r in view.results())} == want
    status = view.status()
    per = {s["shard"]: s for s in status.shards}
    sizes = [sum(1 for i in range(30) if shard_of(_key(i), 3) == s) for s in range(3)]
    assert [per[s]["total"] for s in range(3)] == sizes
    assert per[2]["done"] + per[2]["failed"] == 3 and per[2]["pending"] == sizes[2] - 3
    assert [per[s]["pending"] for s in (0, 1)] == [0, 0]
    assert (status.total, status.done, status.failed) == (30, len(want), 1)
    assert status.pending == sizes[2] - 3
    assert status.failures[0].error_type == "ValueError"


def _key(i: int) -> str:
    from resumable._items import default_key

    return default_key({"i": i})


def test_merged_view_of_a_root_where_a_shard_has_not_started(tmp_path):
    mirror = tmp_path / "mirror"
    with ResumableSweep(
        items(12), checkpoint_path=tmp_path / "exp.h5", snapshot_dir=str(mirror), shard=(1, 3)
    ) as sweep:
        for it in sweep.pending:
            sweep.record(it, 0)
    view = open_view(str(mirror))
    assert view.shards[0] is None and view.shards[2] is None
    status = view.status()
    assert [s["started"] for s in status.shards] == [False, True, False]
    assert status.done == status.total == view.shards[1].status().total
    assert verify(str(mirror)) == []


@pytest.mark.parametrize("where", ["local", "s3"])
def test_verify_reports_problems_per_shard(tmp_path, where, request):
    if where == "s3":
        root = f"{request.getfixturevalue('s3_bucket')}/exp"
    else:
        root = str(tmp_path / "mirror")
    _build(root, tmp_path, n=60, segment_bytes=700)
    assert verify(root) == []
    store = Store(root)

    def first_segment(shard: int) -> str:
        sub = shard_dir_name(shard, 3)
        manifest = json.loads(store.read_bytes(f"{sub}/manifest.json", max_bytes=1 << 20))
        return f"{sub}/segments/{manifest['segments'][0]['name']}"

    seg1 = first_segment(1)
    data = bytearray(store.read_bytes(seg1, max_bytes=1 << 20))
    data[len(data) // 2] ^= 1
    store.write_bytes(seg1, bytes(data))
    store.delete(first_segment(2))
    problems = verify(root)
    by_shard = Counter(shard_dir_name(s, 3) in p.where for p in problems for s in range(3))
    assert by_shard[True] == len(problems) == 2
    assert any(shard_dir_name(1, 3) in p.where and "SHA-256 mismatch" in p.what for p in problems)
    assert any(shard_dir_name(2, 3) in p.where and "missing" in p.what for p in problems)
    assert not any(shard_dir_name(0, 3) in p.where for p in problems)


def test_an_unsharded_launch_on_a_sharded_root_is_refused(tmp_path):
    """A job array that lost its index variable must not write beside the shards."""
    from resumable import ResumableSweep
    from resumable.errors import ConfigurationError

    items = [{"i": i} for i in range(10)]
    mirror = str(tmp_path / "mirror")
    with ResumableSweep(
        items, checkpoint_path=tmp_path / "exp.h5", snapshot_dir=mirror, shard=(0, 2)
    ) as sweep:
        for item in sweep.pending:
            sweep.record(item, 1)
    with pytest.raises(ConfigurationError, match="sharded sweep"):
        ResumableSweep(items, checkpoint_path=tmp_path / "exp.h5")
    with pytest.raises(ConfigurationError, match="sharded sweep"):
        ResumableSweep(
            items,
            checkpoint_path=tmp_path / "b" / "exp.h5",
            snapshot_dir=mirror,
            resume_from=mirror,
        )
    assert not (tmp_path / "b").exists()
    assert not (tmp_path / "exp.h5.resumable" / "manifest.json").exists()
