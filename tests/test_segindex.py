"""Row indexes of sealed segments (seg-N.idx): used at a reopen when sound, never trusted
otherwise (missing, damaged, truncated, stale, one byte flipped: the segment is scanned and the
state is the same), reported by `verify` when they do not match their segment, written by the
writer only (in the background, under its lock), never by a read-only open."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from resumable import ResumableSweep
from resumable import _segindex as segindex
from resumable._checkpoint import SEGMENTS_DIR, CheckpointWriter, DirLock, load, progress_dir_for
from resumable._manifest import MANIFEST_NAME, Manifest, parse_manifest
from resumable._state import State
from resumable.view import open_view, verify

try:
    from fixtures.scans import ScanCounter
except ImportError:  # pragma: no cover - run from the repository root
    from tests.fixtures.scans import ScanCounter

FP = "0123456789abcdef" * 2


def _write(pdir: Path, n: int, *, wait: bool = True, segment_bytes: int = 4096) -> None:
    """A checkpoint of a launch, an items record, n results, failures, a retry and meta."""
    manifest = Manifest(sweep="s", sweep_id="id", created=time.time())
    writer = CheckpointWriter.create(pdir, manifest, segment_bytes=segment_bytes)
    try:
        writer.append("launch", {"launch": 1, "host": "h", "pid": 1, "n_items": n})
        writer.append("items", {"items": [[str(i), FP, i] for i in range(n)]}, fp="i" * 64)
        for i in range(n):
            if i % 97 == 5:
                writer.append(
                    "failure",
                    {"error_type": "E", "message": "m", "traceback": "", "attempt": 1},
                    key=str(i),
                    fp=FP,
                )
            else:
                writer.append("result", {"value": i * 2, "duration": 0.1}, key=f"k{i}é", fp=FP)
            if i % 400 == 7:
                writer.append("meta", {"meta": {"at": i}})
        writer.append("retry", {"keys": ["5"]})
        if wait:
            assert writer.indexer.wait(60)
    finally:
        writer.close()


def _summary(state: State) -> dict[str, Any]:
    """Everything a replay produces, comparable between two loads."""
    return {
        "results": [(k, r.seq, r.t, r.fp, r.payload) for k, r in state.results.items()],
        "failures": state.failures,
        "failure_records": [(k, r.seq, r.payload) for k, r in state.failure_records.items()],
        "attempts": state.attempts,
        "launches": state.launches,
        "meta": state.meta,
        "events": [(r.seq, r.type, r.key, r.fp) for r in state.events],
        "superseded": [(r.seq, r.type, r.key) for r in state.superseded],
        "items": (state.items_sha256, state.items_count, state.items_listing()),
        "last": (state.last_seq, state.last_hash, state.last_finished),
    }


def _indexes(pdir: Path) -> list[Path]:
    return sorted((pdir / SEGMENTS_DIR).glob("*" + segindex.SUFFIX))


def _sealed(pdir: Path) -> list[Any]:
    return list(parse_manifest((pdir / MANIFEST_NAME).read_bytes(), source="m").segments)


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "exp.h5.resumable"
    _write(d, 600)
    return d


def test_every_sealed_segment_gets_an_index_that_the_reopen_uses(pdir, monkeypatch):
    sealed = _sealed(pdir)
    assert len(sealed) >= 10
    assert [p.name for p in _indexes(pdir)] == [segindex.index_name(s.name) for s in sealed]
    scans = ScanCounter(monkeypatch)
    with_index = load(pdir)
    assert scans.count <= 1  # the active segment only
    assert with_index is not None and with_index.unindexed == []
    for p in _indexes(pdir):
        p.unlink()
    without = load(pdir)
    assert without is not None and len(without.unindexed) == len(sealed)
    assert scans.count >= len(sealed)
    assert _summary(with_index.state) == _summary(without.state)
    assert verify(str(pdir)[: -len(".resumable")]) == []


def _damaged(raw: bytes) -> list[tuple[str, bytes]]:
    """The same index truncated, cut to nothing, and with one byte flipped at many places."""
    out = [("truncated", raw[:-1]), ("empty", b""), ("half", raw[: len(raw) // 2])]
    for at in sorted({0, 8, 12, 40, 48, 80, 100, len(raw) // 3, len(raw) // 2, len(raw) - 40}):
        flipped = bytearray(raw)
        flipped[at] ^= 0x01
        out.append((f"byte {at} flipped", bytes(flipped)))
    out.append(("trailer flipped", raw[:-1] + bytes([raw[-1] ^ 0x80])))
    return out


def test_a_damaged_index_is_ignored_and_reported_by_verify(pdir, monkeypatch):
    reference = _summary(load(pdir).state)
    target = _indexes(pdir)[3]
    raw = target.read_bytes()
    for what, bad in _damaged(raw):
        target.write_bytes(bad)
        scans = ScanCounter(monkeypatch)
        loaded = load(pdir)
        assert loaded is not None and loaded.unindexed == [3], what
        assert scans.count >= 1, what
        assert _summary(loaded.state) == reference, what
        problems = verify(str(pdir)[: -len(".resumable")])
        assert [p.where for p in problems] == [f"{pdir}/{SEGMENTS_DIR}/{target.name}"], what
        assert "row index" in problems[0].what
        monkeypatch.undo()
    target.write_bytes(raw)
    assert verify(str(pdir)[: -len(".resumable")]) == []


def test_a_stale_or_foreign_index_is_never_used(pdir, monkeypatch):
    reference = _summary(load(pdir).state)
    idx = _indexes(pdir)
    # another segment's index under this name (self-consistent, bound to other bytes)
    idx[4].write_bytes(idx[5].read_bytes())
    loaded = load(pdir)
    assert loaded is not None and loaded.unindexed == [4]
    assert _summary(loaded.state) == reference
    assert [p.where for p in verify(str(pdir)[: -len(".resumable")])] == [
        f"{pdir}/{SEGMENTS_DIR}/{idx[4].name}"
    ]


def test_verify_reports_a_self_consistent_index_with_other_rows(pdir):
    """An index re-hashed after an edit passes the load's checks (it is a cache, trusted as
    far as the local manifest is); verify rebuilds it and tells the difference."""
    target = _indexes(pdir)[2]
    raw = target.read_bytes()
    body = bytearray(raw[:-32])
    at = body.rindex(b'"', 0, len(body) - 1) + 1  # the last key: change one character of it
    body[at] ^= 0x02
    target.write_bytes(bytes(body) + hashlib.sha256(bytes(body)).digest())
    problems = verify(str(pdir)[: -len(".resumable")])
    assert [p.where for p in problems] == [f"{pdir}/{SEGMENTS_DIR}/{target.name}"]
    assert "differ" in problems[0].what


def test_crash_before_the_index_the_writer_rebuilds_it_and_reads_never_write(tmp_path):
    pdir = tmp_path / "exp.h5.resumable"
    _write(pdir, 400)
    for p in _indexes(pdir):
        p.unlink()
    # a writer killed while writing one leaves a temporary file: not an index, tidied later
    leftover = pdir / SEGMENTS_DIR / ".seg-00000002.idx.tmp-999999999-1"
    leftover.write_bytes(b"partial")
    # read-only opens never write
    view = open_view(str(tmp_path / "exp.h5"))
    assert view.status().done > 0
    assert load(pdir) is not None
    assert _indexes(pdir) == []
    # a writer (holding the lock) rebuilds what the load found missing
    loaded = load(pdir)
    assert loaded is not None and loaded.unindexed
    writer = CheckpointWriter(pdir, loaded, DirLock(pdir))
    try:
        assert writer.indexer.wait(60)
    finally:
        writer.close()
    assert len(_indexes(pdir)) == len(_sealed(pdir))
    assert not leftover.exists()
    again = load(pdir)
    assert again is not None and again.unindexed == []
    assert _summary(again.state) == _summary(loaded.state)


def test_an_index_is_bound_to_its_segment_bytes(pdir):
    """The segment replaced (same name, other bytes, manifest updated accordingly): the old
    index names the old SHA-256 and is not used."""
    seg = _sealed(pdir)[1]
    raw = (pdir / SEGMENTS_DIR / segindex.index_name(seg.name)).read_bytes()
    assert segindex.decode(raw, seg) is not None
    other = type(seg)(**{**seg.__dict__, "sha256": hashlib.sha256(b"other").hexdigest()})
    assert segindex.decode(raw, other) is None
    longer = type(seg)(**{**seg.__dict__, "size": seg.size + 1})
    assert segindex.decode(raw, longer) is None


def test_a_sweep_reopens_from_indexes_with_the_same_results(tmp_path, monkeypatch):
    items = list(range(3000))
    path = tmp_path / "exp.h5"
    with ResumableSweep(items, key=str, checkpoint_path=path, segment_bytes=8192) as sweep:
        for i in items[:2000]:
            sweep.record(i, {"v": i})
    pdir = progress_dir_for(path)
    deadline = time.monotonic() + 30
    while len(_indexes(pdir)) < len(_sealed(pdir)) - 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # (closing drops what was still queued: at most the last one)
    assert len(_indexes(pdir)) >= len(_sealed(pdir)) - 1
    scans = ScanCounter(monkeypatch)
    with ResumableSweep(items, key=str, checkpoint_path=path, segment_bytes=8192) as sweep:
        assert scans.count <= 2
        assert sweep.status().done == 2000
        assert sweep.result(1234) == {"v": 1234}
        assert [str(i) for i in sweep.pending] == [str(i) for i in items[2000:]]


def test_fixture_checkpoints_without_indexes_still_load(tmp_path):
    fixtures = Path(__file__).parent / "fixtures" / "format"
    found = [p for p in fixtures.rglob(MANIFEST_NAME)]
    assert found
    for manifest in found:
        assert load(manifest.parent) is not None
        assert not list(manifest.parent.glob(f"{SEGMENTS_DIR}/*{segindex.SUFFIX}"))


def test_reopened_results_share_the_item_key_objects(tmp_path):
    """One copy of each key: results replayed in bulk use the sweep's own key objects (in
    item order, out of order, and for keys no longer among the items)."""
    from resumable._loading import key_sharer

    pdir = tmp_path / "exp.h5.resumable"
    _write(pdir, 600)
    plain = load(pdir)
    assert plain is not None
    recorded = list(plain.state.results)
    for keys in (
        [f"k{i}é" for i in range(600)],  # as recorded (some are failures, not results)
        [f"k{i}é" for i in reversed(range(600))],  # another order
        [f"k{i}é" for i in range(0, 600, 2)],  # only half of them still items
    ):
        index = {k: i for i, k in enumerate(keys)}
        loaded = load(pdir, share_keys=key_sharer(index, keys))
        assert loaded is not None
        assert list(loaded.state.results) == recorded
        assert _summary(loaded.state) == _summary(plain.state)
        sealed = loaded.manifest.sealed_records
        bulk = [k for k, r in loaded.state.results.items() if r.seq <= sealed]
        assert len(bulk) > 300
        for key in bulk:
            if key in index:
                assert key is keys[index[key]]


def test_a_sweep_with_a_signing_key_neither_writes_nor_uses_indexes(tmp_path, monkeypatch):
    items = list(range(1500))
    path = tmp_path / "exp.h5"
    kw: dict[str, Any] = {"key": str, "checkpoint_path": path, "segment_bytes": 4096}
    with ResumableSweep(items, signing_key="k", **kw) as sweep:
        for i in items[:1000]:
            sweep.record(i, i)
    pdir = progress_dir_for(path)
    assert len(_sealed(pdir)) > 5 and _indexes(pdir) == []
    _write(tmp_path / "other.resumable", 300)  # a sound index, copied in: still not used
    for seg in _sealed(pdir)[:2]:
        src = tmp_path / "other.resumable" / SEGMENTS_DIR / segindex.index_name(seg.name)
        (pdir / SEGMENTS_DIR / src.name).write_bytes(src.read_bytes())
    scans = ScanCounter(monkeypatch)
    with ResumableSweep(items, signing_key="k", **kw) as sweep:
        assert scans.count >= len(_sealed(pdir))
        assert sweep.status().done == 1000


def test_a_closing_writer_lets_its_indexer_finish_what_is_queued(tmp_path, monkeypatch):
    """Segments sealed faster than the indexer keeps up get their indexes at close (so the
    next open reads indexes, not scans), and the wait is bounded."""
    slow = segindex.build_and_write

    def build_slowly(segdir, seg):
        time.sleep(0.01)
        return slow(segdir, seg)

    monkeypatch.setattr(segindex, "build_and_write", build_slowly)
    pdir = tmp_path / "exp.h5.resumable"
    _write(pdir, 600, wait=False)  # (closes at once: about 0.01 s per queued segment left)
    assert len(_indexes(pdir)) == len(_sealed(pdir)) > 5
    loaded = load(pdir)
    assert loaded is not None and loaded.unindexed == []

    def build_forever(segdir, seg):
        time.sleep(0.5)
        return slow(segdir, seg)

    monkeypatch.setattr(segindex, "build_and_write", build_forever)
    other = tmp_path / "other.h5.resumable"
    t0 = time.monotonic()
    _write(other, 600, wait=False)
    took = time.monotonic() - t0
    assert 0 < len(_indexes(other)) < len(_sealed(other))  # the rest dropped, scanned later
    # bounded by the grace and the segment being built, not by the queue (about 12 s here)
    assert took < 6
    again = load(other)
    assert again is not None and again.unindexed
