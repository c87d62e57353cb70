"""Relaunches: where a sweep resumes from (the local checkpoint, a mirror, or nothing), over a
real moto S3 server, python's http.server and local/file:// mirrors.

The job spec of these tests sets both `snapshot_dir` and `resume_from` to the same place,
unconditionally, as a cluster job would; a "new machine" is a new, empty checkpoint directory.
Results are compared bitwise with an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

try:  # tests/ is on sys.path (see conftest.py)
    from fixtures.compare import assert_bitwise_equal
except ImportError:  # pragma: no cover
    from tests.fixtures.compare import assert_bitwise_equal

from resumable import MirrorOptions, ResumableSweep
from resumable._checkpoint import progress_dir_for
from resumable._manifest import MANIFEST_NAME
from resumable._remote import download, read_manifest, source_store
from resumable.errors import (
    ConfigurationError,
    HistoryConflictError,
    SourceUnreachableError,
    StorageError,
)

N = 30
ITEMS = [{"i": i, "scale": 0.5 + i / 7} for i in range(N)]
OPTS = MirrorOptions(interval_s=0.0, gc_delay_s=60.0, max_backoff_s=0.2, flush_timeout_s=20.0)
SEGMENT_BYTES = 2500  # a result is ~600 bytes: sealed segments and chunks both occur


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESUMABLE_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("RESUMABLE_RETRY_TOTAL_S", "2")
    monkeypatch.delenv("SWEEP_RESUME_FROM", raising=False)
    monkeypatch.delenv("SWEEP_SNAPSHOT_DIR", raising=False)


def compute(seed: int, item: dict) -> dict:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((4, 4))
    return {
        "i": item["i"],
        "w": np.linalg.solve(m + 4 * np.eye(4), rng.standard_normal(4) * item["scale"]),
        "v": rng.standard_normal(3).astype(np.float32),
        "s": float(np.sum(np.sin(m))),
        "t": (item["i"], float(m[0, 0])),
    }


def _open(ckpt: Path, url: str | None, **kw) -> ResumableSweep:
    kw.setdefault("resume_from", url)
    kw.setdefault("snapshot_dir", url)
    return ResumableSweep(
        ITEMS, checkpoint_path=ckpt, segment_bytes=SEGMENT_BYTES, mirror_options=OPTS, **kw
    )


def _work(sweep: ResumableSweep, count: int | None = None, *, reverse: bool = False) -> int:
    pending = list(sweep.pending)
    if reverse:
        pending.reverse()
    for item in pending[:count]:
        sweep.record(item, compute(sweep.seed(item), item))
    return len(pending[:count])


def _run(ckpt: Path, url: str | None, count: int | None = None, **kw) -> tuple[str, int]:
    """Open, record `count` items (all if None), close (which flushes the mirror)."""
    sweep = _open(ckpt, url, **kw)
    at_open = sweep.status().done
    _work(sweep, count)
    sweep.close()
    return sweep.resumed_from, at_open


def _results(ckpt: Path) -> dict[str, object]:
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, resume="must") as sweep:
        assert sweep.status().done == N
        return {sweep.key(item): sweep.result(item) for item in ITEMS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    ckpt = tmp_path_factory.mktemp("reference") / "exp.h5"
    _run(ckpt, None)
    return _results(ckpt)


def _mirror_records(url: str, tmp: Path) -> tuple[int, list[str]]:
    """(last seq, result keys) of the verified mirror at `url`."""
    store = source_store(url)
    found = read_manifest(store)
    assert found is not None
    fetched, loaded = download(store, found[0], tmp / "probe" / "x.resumable")
    shutil.rmtree(fetched)
    return loaded.state.last_seq, list(loaded.state.results)


def _local_tree(d: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != "LOCK"  # each open rewrites LOCK with its pid
    }


def _assert_nothing_written(ckpt: Path) -> None:
    assert not progress_dir_for(ckpt).exists()
    assert not ckpt.parent.exists() or os.listdir(ckpt.parent) == []


def _relaunch_on_new_machines(tmp_path: Path, url: str, resume_url: str | None = None) -> Path:
    """Three launches, each on a new machine (empty local dir), each resuming from `url`."""
    resume_url = resume_url or url
    how, done = _run(tmp_path / "m1" / "exp.h5", url, 8, resume_from=resume_url)
    assert (how, done) == ("fresh", 0)
    how, done = _run(tmp_path / "m2" / "exp.h5", url, 9, resume_from=resume_url)
    assert (how, done) == ("remote", 8)
    shutil.rmtree(tmp_path / "m1")
    how, done = _run(tmp_path / "m3" / "exp.h5", url, None, resume_from=resume_url)
    assert (how, done) == ("remote", 17)
    return tmp_path / "m3" / "exp.h5"


# -- a new machine ---------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("via_manifest", [False, True], ids=["dir", "manifest.json"])
def test_relaunch_on_new_machines_from_s3(
    s3_bucket: str, tmp_path: Path, reference, via_manifest: bool
) -> None:
    url = f"{s3_bucket}/sweeps/exp"
    resume_url = f"{url}/{MANIFEST_NAME}" if via_manifest else url
    final = _relaunch_on_new_machines(tmp_path, url, resume_url)
    got = _results(final)
    assert sorted(got) == sorted(reference)
    for key in reference:
        assert_bitwise_equal(got[key], reference[key], key)
    _, keys = _mirror_records(url, tmp_path)
    assert sorted(keys) == sorted(reference)  # the mirror caught up with the end, too


@pytest.mark.parametrize("kind", ["path", "file-url", "manifest-path"])
def test_relaunch_on_new_machines_from_local_mirror(tmp_path: Path, reference, kind) -> None:
    mirror = tmp_path / "shared" / "exp-mirror"
    url = mirror.as_uri() if kind == "file-url" else str(mirror)
    resume_url = str(mirror / MANIFEST_NAME) if kind == "manifest-path" else url
    final = _relaunch_on_new_machines(tmp_path, url, resume_url)
    got = _results(final)
    for key in reference:
        assert_bitwise_equal(got[key], reference[key], key)


@pytest.mark.integration
@pytest.mark.parametrize("via_manifest", [False, True], ids=["dir", "manifest.json"])
def test_relaunch_over_http_from_the_served_mirror(
    http_server, tmp_path: Path, reference, via_manifest: bool
) -> None:
    """Each machine mirrors to a directory that an HTTP server serves; relaunches read it
    over HTTP (read-only) and keep mirroring to the directory."""
    root, base = http_server
    mirror = str(root / "sweeps" / "exp")
    resume_url = f"{base}/sweeps/exp" + (f"/{MANIFEST_NAME}" if via_manifest else "")
    final = _relaunch_on_new_machines(tmp_path, mirror, resume_url)
    got = _results(final)
    for key in reference:
        assert_bitwise_equal(got[key], reference[key], key)
    assert http_server.requests["/sweeps/exp/manifest.json"] >= 2
    assert any(p.startswith("/sweeps/exp/segments/") for p in http_server.requests)


def test_http_snapshot_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="read-only"):
        _open(tmp_path / "a" / "exp.h5", None, snapshot_dir="http://127.0.0.1:9/m")
    _assert_nothing_written(tmp_path / "a" / "exp.h5")


# -- the same machine ------------------------------------------------------------------------


def test_local_ahead_of_the_mirror_wins_and_the_mirror_catches_up(tmp_path: Path, reference):
    ckpt, mirror = tmp_path / "a" / "exp.h5", str(tmp_path / "mirror")
    _run(ckpt, mirror, 10)
    _run(ckpt, None, 7)  # a launch without the mirror: the local checkpoint gets ahead
    assert len(_mirror_records(mirror, tmp_path)[1]) == 10
    sweep = _open(ckpt, mirror)
    assert (sweep.resumed_from, sweep.status().done) == ("local", 17)
    sweep.flush(timeout=20)
    last_seq, keys = _mirror_records(mirror, tmp_path)
    assert keys == [sweep.key(item) for item, _ in sweep.completed_items()]
    assert last_seq >= 17 + 2  # results and launch records: everything local is there
    _work(sweep)
    sweep.close()
    got = _results(ckpt)
    for key in reference:
        assert_bitwise_equal(got[key], reference[key], key)


def test_mirror_ahead_of_local_wins_and_replaces_it(tmp_path: Path, reference) -> None:
    ckpt, mirror = tmp_path / "a" / "exp.h5", str(tmp_path / "mirror")
    _run(ckpt, mirror, 6)
    old = tmp_path / "old-copy"
    shutil.copytree(progress_dir_for(ckpt), old)  # this machine's checkpoint at 6 results
    _run(tmp_path / "elsewhere" / "exp.h5", mirror, 12)  # another machine went on
    shutil.rmtree(progress_dir_for(ckpt))
    shutil.copytree(old, progress_dir_for(ckpt))
    sweep = _open(ckpt, mirror)
    assert (sweep.resumed_from, sweep.status().done) == ("remote", 18)
    _work(sweep)
    sweep.close()
    assert [p.name for p in ckpt.parent.iterdir()] == ["exp.h5.resumable"]  # no leftovers
    got = _results(ckpt)
    for key in reference:
        assert_bitwise_equal(got[key], reference[key], key)


def _mirror_objects(mirror: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(mirror)): p.read_bytes() for p in sorted(mirror.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("how", ["same-sweep-id", "two-fresh-starts"])
def test_diverged_histories_are_refused_and_nothing_changes(tmp_path: Path, how: str) -> None:
    ckpt, mirror = tmp_path / "a" / "exp.h5", tmp_path / "mirror"
    if how == "same-sweep-id":
        _run(ckpt, str(mirror), 6)
        old = tmp_path / "old-copy"
        shutil.copytree(progress_dir_for(ckpt), old)
        _run(ckpt, str(mirror), 5)  # the mirror goes on with items 6..10
        shutil.rmtree(progress_dir_for(ckpt))
        shutil.copytree(old, progress_dir_for(ckpt))
        local = _open(ckpt, None)
        _work(local, 3, reverse=True)  # ... this copy with items 29, 28, 27
        local.close()
    else:
        _run(tmp_path / "other" / "exp.h5", str(mirror), 6)
        _run(ckpt, None, 4)
    local_before, mirror_before = _local_tree(progress_dir_for(ckpt)), _mirror_objects(mirror)
    for url in (str(mirror), mirror.as_uri(), str(mirror / MANIFEST_NAME)):
        if how == "two-fresh-starts":  # another sweep: refused (one sweep's history is adopted)
            with pytest.raises(HistoryConflictError):
                _open(ckpt, str(mirror), resume_from=url)
        with pytest.raises(HistoryConflictError):  # a mirror that is no resume source refuses
            _open(ckpt, None, snapshot_dir=url.removesuffix("/" + MANIFEST_NAME))
    assert _local_tree(progress_dir_for(ckpt)) == local_before
    assert _mirror_objects(mirror) == mirror_before
    assert sorted(os.listdir(ckpt.parent)) == ["exp.h5.resumable"]
    # and the local checkpoint still opens and works on its own
    with _open(ckpt, None) as sweep:
        assert sweep.resumed_from == "local"


def test_a_diverged_history_of_the_same_sweep_adopts_the_source(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, reference: dict[str, object]
) -> None:
    """The source went on from a common point; the local copy did too: adopt the source's
    history, re-record the local-only results into it, keep the local copy aside."""
    ckpt, mirror = tmp_path / "a" / "exp.h5", tmp_path / "mirror"
    _run(ckpt, str(mirror), 6)
    old = tmp_path / "old-copy"
    shutil.copytree(progress_dir_for(ckpt), old)
    _run(ckpt, str(mirror), 5)  # the mirror goes on with items 6..10
    shutil.rmtree(progress_dir_for(ckpt))
    shutil.copytree(old, progress_dir_for(ckpt))
    local = _open(ckpt, None)
    _work(local, 3, reverse=True)  # ... this copy with the last three items
    local.close()
    local_before = _local_tree(progress_dir_for(ckpt))
    with caplog.at_level(logging.WARNING, logger="resumable"), _open(ckpt, str(mirror)) as sweep:
        assert (sweep.resumed_from, sweep.status().done) == ("remote", 6 + 5 + 3)
        _work(sweep)
    (aside,) = [p for p in ckpt.parent.iterdir() if ".stale-" in p.name]
    assert _local_tree(aside) == local_before  # kept, byte for byte
    (warning,) = [r.getMessage() for r in caplog.records if "different histories" in r.getMessage()]
    assert str(progress_dir_for(ckpt)) in warning and str(aside) in warning
    assert str(mirror) in warning and "3 result(s)" in warning
    got = _results(ckpt)
    assert sorted(_mirror_records(str(mirror), tmp_path / "check")[1]) == sorted(got)
    for key in reference:
        assert_bitwise_equal(got[key], reference[key], key)


def test_equal_histories_resume_locally_without_a_download(tmp_path: Path, http_server) -> None:
    root, base = http_server
    ckpt, mirror = tmp_path / "a" / "exp.h5", root / "m"
    _run(ckpt, str(mirror), 9)
    before = dict(http_server.requests)
    how, done = _run(ckpt, str(mirror), 0, resume_from=f"{base}/m")
    assert (how, done) == ("local", 9)
    fetched = {p for p, n in http_server.requests.items() if n != before.get(p, 0)}
    assert fetched == {"/m/manifest.json"}  # the manifest said enough


# -- a fresh start over an existing history --------------------------------------------------


@pytest.mark.parametrize("kind", ["path", "file-url"])
def test_fresh_start_with_history_in_snapshot_dir_is_refused(tmp_path: Path, kind) -> None:
    mirror = tmp_path / "mirror"
    url = mirror.as_uri() if kind == "file-url" else str(mirror)
    _run(tmp_path / "m1" / "exp.h5", url, 7)
    before = _mirror_objects(mirror)
    fresh = tmp_path / "m2" / "exp.h5"
    with pytest.raises(HistoryConflictError, match="resume_from"):
        _open(fresh, None, snapshot_dir=url)  # forgot resume_from
    _assert_nothing_written(fresh)
    assert _mirror_objects(mirror) == before


def test_resume_from_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = str(tmp_path / "mirror")
    _run(tmp_path / "m1" / "exp.h5", mirror, 7)
    monkeypatch.setenv("SWEEP_RESUME_FROM", mirror)
    monkeypatch.setenv("SWEEP_SNAPSHOT_DIR", mirror)
    sweep = ResumableSweep(ITEMS, checkpoint_path=tmp_path / "m2" / "exp.h5")
    assert (sweep.resumed_from, sweep.status().done) == ("remote", 7)
    sweep.close()


@pytest.mark.integration
def test_fresh_start_with_history_in_s3_snapshot_dir_is_refused(s3_bucket, tmp_path: Path):
    url = f"{s3_bucket}/sweeps/exp"
    _run(tmp_path / "m1" / "exp.h5", url, 5)
    fresh = tmp_path / "m2" / "exp.h5"
    with pytest.raises(HistoryConflictError):
        _open(fresh, None, snapshot_dir=url)
    _assert_nothing_written(fresh)
    assert len(_mirror_records(url, tmp_path)[1]) == 5


# -- missing: a fresh start; unreachable: an error, and nothing written ----------------------


def test_missing_local_sources_start_fresh(tmp_path: Path) -> None:
    for n, url in enumerate(
        [str(tmp_path / "nowhere"), (tmp_path / "nowhere2").as_uri(), "memory://nothing/here"]
    ):
        ckpt = tmp_path / f"m{n}" / "exp.h5"
        how, _ = _run(ckpt, None, 2, resume_from=url)
        assert how == "fresh"
        with ResumableSweep(ITEMS, checkpoint_path=ckpt) as sweep:
            assert sweep.status().done == 2


@pytest.mark.integration
def test_missing_remote_sources_start_fresh(s3_bucket: str, http_server, tmp_path: Path):
    _root, base = http_server
    for n, url in enumerate(
        [f"{s3_bucket}/sweeps/none", f"{s3_bucket}/sweeps/none/manifest.json", f"{base}/none"]
    ):
        how, _ = _run(tmp_path / f"m{n}" / "exp.h5", None, 1, resume_from=url)
        assert how == "fresh", url
    # the usual job spec: both set to a fresh S3 prefix
    how, _ = _run(tmp_path / "both" / "exp.h5", f"{s3_bucket}/sweeps/new", 3)
    assert how == "fresh"
    assert len(_mirror_records(f"{s3_bucket}/sweeps/new", tmp_path)[1]) == 3


def _assert_unreachable_writes_nothing(tmp_path: Path, url: str, error: type, **kw) -> str:
    ckpt = tmp_path / "new" / "exp.h5"
    with pytest.raises(error) as info:
        _open(ckpt, url, **kw)
    _assert_nothing_written(ckpt)
    # a machine that has a local checkpoint: left exactly as it was
    mine = tmp_path / "mine" / "exp.h5"
    if not progress_dir_for(mine).exists():
        _run(mine, None, 3)
    before = _local_tree(progress_dir_for(mine))
    with pytest.raises(error):
        _open(mine, url, **kw)
    assert _local_tree(progress_dir_for(mine)) == before
    return str(info.value)


@pytest.mark.integration
def test_unreachable_sources_raise_and_write_nothing(
    http_server, refused_url: str, tmp_path: Path
) -> None:
    root, base = http_server
    _run(tmp_path / "served" / "exp.h5", str(root / "m"), 4)

    _assert_unreachable_writes_nothing(
        tmp_path, f"{refused_url}/m", SourceUnreachableError, snapshot_dir=None
    )
    http_server.set_status("/m/manifest.json", 503)
    msg = _assert_unreachable_writes_nothing(
        tmp_path, f"{base}/m", SourceUnreachableError, snapshot_dir=None
    )
    assert "after 2 attempts" in msg
    http_server.set_status("/m/manifest.json", 403)
    msg = _assert_unreachable_writes_nothing(tmp_path, f"{base}/m", StorageError, snapshot_dir=None)
    assert "access denied" in msg


@pytest.mark.integration
def test_s3_missing_bucket_raises_and_writes_nothing(s3_server, tmp_path: Path) -> None:
    msg = _assert_unreachable_writes_nothing(
        tmp_path, "s3://no-such-bucket-for-resumable/sweeps/exp", StorageError
    )
    assert "bucket does not exist" in msg


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["drop", "refuse"])
def test_s3_behind_a_dead_proxy_raises_and_writes_nothing(
    s3_bucket: str, fault_proxy, tmp_path: Path, mode: str
) -> None:
    url = f"{s3_bucket}/sweeps/exp"
    _run(tmp_path / "m1" / "exp.h5", url, 4)
    fault_proxy.down(mode)
    _assert_unreachable_writes_nothing(tmp_path, url, SourceUnreachableError)
    fault_proxy.up()
    how, done = _run(tmp_path / "m2" / "exp.h5", url, 0)
    assert (how, done) == ("remote", 4)


@pytest.mark.integration
def test_unreachable_snapshot_dir_alone_does_not_stop_a_local_resume(
    s3_bucket: str, fault_proxy, tmp_path: Path, caplog
) -> None:
    """The mirror is not the resume source: unreachable at open is a warning, then catch-up."""
    ckpt, url = tmp_path / "a" / "exp.h5", f"{s3_bucket}/sweeps/exp"
    _run(ckpt, None, 5)
    fault_proxy.down("refuse")
    with caplog.at_level("WARNING", logger="resumable"):
        sweep = _open(ckpt, None, snapshot_dir=url)
    assert sweep.resumed_from == "local"
    assert any("unreachable at start" in r.getMessage() for r in caplog.records)
    _work(sweep, 3)
    fault_proxy.up()
    sweep.flush(timeout=20)
    assert len(_mirror_records(url, tmp_path)[1]) == 8
    sweep.close()
