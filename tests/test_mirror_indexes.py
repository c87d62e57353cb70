"""Row indexes in a mirror (see resumable._segindex): each sealed part of a mirrored sweep goes
up with its index beside it (``segments/<part>.idx``), a resume from the bucket replays the
parts from those indexes instead of scanning them and installs them locally; an index object
that is missing, damaged or another part's is ignored (the part is scanned, the state is the
same, and the writer builds the local index itself); a relaunch never collects indexes of
parts its manifest names."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import pytest

from resumable import MirrorOptions, ResumableSweep
from resumable import _segindex as segindex
from resumable._checkpoint import SEGMENTS_DIR, load
from resumable._manifest import MANIFEST_NAME, parse_manifest
from resumable._storage import Store

try:
    from fixtures.scans import ScanCounter
except ImportError:  # pragma: no cover - run from the repository root
    from tests.fixtures.scans import ScanCounter

N = 1500
SEGMENT_BYTES = 48_000  # a few hundred records per segment: parts worth indexing
OPTS = MirrorOptions(interval_s=0.0, gc_delay_s=60.0, max_backoff_s=0.2, flush_timeout_s=30.0)
ITEMS = [{"i": i} for i in range(N)]


def _key(c: dict[str, Any]) -> str:
    return str(c["i"])


def _mirrored(url: str, root: Path, *, signing_key: str | None = None) -> None:
    """A finished sweep of N items mirrored to `url`, recorded in several batches (so that
    some segments reach the mirror as chunks before they are sealed)."""
    with ResumableSweep(
        ITEMS,
        key=_key,
        checkpoint_path=root / "src" / "exp.h5",
        snapshot_dir=url,
        segment_bytes=SEGMENT_BYTES,
        mirror_options=OPTS,
        handle_signals=False,
        signing_key=signing_key,
    ) as sweep:
        for n, item in enumerate(sweep.pending):
            sweep.record(item, {"y": item["i"] * 2, "pad": "p" * 40})
            if n % 500 == 499:
                sweep.flush()
        sweep.flush()


def _parts(store: Store) -> list[Any]:
    data = store.read_bytes(MANIFEST_NAME, max_bytes=1 << 20)
    return list(parse_manifest(data, source="m").segments)


def _sealed_parts(store: Store, root: Path) -> list[Any]:
    """The mirror's parts of sealed segments (not chunks of the source's active segment,
    which are indexed only once it is sealed)."""
    pdir = root / "src" / "exp.h5.resumable"
    active = parse_manifest((pdir / MANIFEST_NAME).read_bytes(), source="m").active
    assert active is not None
    return [p for p in _parts(store) if not p.name.startswith(active + ".")]


def _resume(url: str, where: Path, **kw: Any) -> ResumableSweep:
    return ResumableSweep(
        ITEMS,
        key=_key,
        checkpoint_path=where / "exp.h5",
        resume_from=url,
        handle_signals=False,
        **kw,
    )


def _results(sweep: ResumableSweep) -> dict[str, Any]:
    return {k: sweep.result(c) for k, c in ((_key(c), c) for c in ITEMS)}


@pytest.fixture
def mirrored(s3_bucket: str, tmp_path: Path) -> tuple[str, Store]:
    url = f"{s3_bucket}/sweeps/exp"
    _mirrored(url, tmp_path)
    return url, Store(url)


def test_a_resume_from_a_bucket_uses_the_mirrored_indexes(mirrored, tmp_path, monkeypatch):
    url, store = mirrored
    parts = _parts(store)
    indexed = _sealed_parts(store, tmp_path)
    assert len(indexed) >= 4 and len(parts) > len(indexed)
    listing = store.list_dir(SEGMENTS_DIR)
    for p in indexed:  # each beside its part, a sound index of exactly it
        packed = store.read_bytes(f"{SEGMENTS_DIR}/{p.name}.idx", max_bytes=1 << 22)
        assert segindex.unpack(packed, p) is not None
    assert {n for n in listing if n.endswith(".idx")} == {f"{p.name}.idx" for p in indexed}

    scans = ScanCounter(monkeypatch)
    sweep = _resume(url, tmp_path / "new")
    try:
        assert sweep.resumed_from == "remote"
        assert scans.count == len(parts) - len(indexed)  # the indexed parts: none scanned
        assert sweep.status().done == N
        got = _results(sweep)
    finally:
        sweep.close()
    assert got == {str(i): {"y": i * 2, "pad": "p" * 40} for i in range(N)}
    # installed with the parts: the next local open scans none of them either
    pdir = tmp_path / "new" / "exp.h5.resumable"
    local = sorted(p.name for p in (pdir / SEGMENTS_DIR).glob("*.idx"))
    assert {segindex.index_name(p.name) for p in indexed} <= set(local)
    scans.count = 0
    loaded = load(pdir)
    assert loaded is not None and loaded.state.last_seq > N
    assert [loaded.manifest.segments[i].name for i in loaded.unindexed] == []
    assert scans.count <= 1  # the active segment only


def _bad_objects(store: Store, part: Any, other: Any) -> list[tuple[str, bytes]]:
    packed = store.read_bytes(f"{SEGMENTS_DIR}/{part.name}.idx", max_bytes=1 << 22)
    raw = segindex.unpack(packed, part)
    assert raw is not None
    theirs = store.read_bytes(f"{SEGMENTS_DIR}/{other.name}.idx", max_bytes=1 << 22)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x01
    packed = segindex.pack(raw)
    return [
        ("another part's index", theirs),
        ("one byte flipped inside", segindex.pack(bytes(flipped))),
        ("truncated", packed[: len(packed) // 2]),
        ("not compressed", raw),
        ("garbage", b"\x00" * 100),
        ("trailing bytes", packed + b"x"),
        ("a bomb", zlib.compress(b"\x00" * (segindex.max_index_bytes(part) + 10))),
    ]


def test_an_unsound_index_in_the_bucket_is_ignored(mirrored, tmp_path):
    url, store = mirrored
    parts = _sealed_parts(store, tmp_path)
    part, other = parts[1], parts[2]
    name = f"{SEGMENTS_DIR}/{part.name}.idx"
    bad = _bad_objects(store, part, other)
    expected = {str(i): {"y": i * 2, "pad": "p" * 40} for i in range(N)}
    for n, (what, data) in enumerate(bad):
        store.delete(name)
        store.write_bytes(name, data)
        with pytest.MonkeyPatch.context() as mp:
            scans = ScanCounter(mp)
            sweep = _resume(url, tmp_path / f"new{n}")
            try:
                assert scans.count >= 1, what  # that part scanned
                assert sweep.status().done == N, what
                assert _results(sweep) == expected, what
                writer = sweep._journal.writer
                assert writer is not None and writer.indexer.wait(30)
            finally:
                sweep.close()
        # the writer built the local index of that part itself, from the part's bytes
        segdir = tmp_path / f"new{n}" / "exp.h5.resumable" / SEGMENTS_DIR
        local = (segdir / segindex.index_name(part.name)).read_bytes()
        assert local == segindex.build((segdir / part.name).read_bytes(), part), what


def test_an_old_mirror_without_indexes_still_resumes(mirrored, tmp_path, monkeypatch):
    url, store = mirrored
    for name in store.list_dir(SEGMENTS_DIR):
        if name.endswith(".idx"):
            store.delete(f"{SEGMENTS_DIR}/{name}")
    parts = _parts(store)
    scans = ScanCounter(monkeypatch)
    sweep = _resume(url, tmp_path / "new")
    try:
        assert scans.count == len(parts)
        assert sweep.status().done == N
        assert _results(sweep) == {str(i): {"y": i * 2, "pad": "p" * 40} for i in range(N)}
        writer = sweep._journal.writer
        assert writer is not None and writer.indexer.wait(30)
    finally:
        sweep.close()
    segdir = tmp_path / "new" / "exp.h5.resumable" / SEGMENTS_DIR
    for p in parts:
        assert (segdir / segindex.index_name(p.name)).is_file()


def test_a_relaunch_keeps_the_indexes_of_named_parts(mirrored, tmp_path):
    """The orphan sweep of a relaunch resumed from the mirror (gc_delay_s=0: everything
    unnamed is due at once) deletes no index of a part its manifest names."""
    url, store = mirrored
    before = {n for n in store.list_dir(SEGMENTS_DIR) if n.endswith(".idx")}
    assert before
    more = ITEMS + [{"i": i} for i in range(N, N + 400)]
    with ResumableSweep(
        more,
        key=_key,
        checkpoint_path=tmp_path / "elsewhere" / "exp.h5",
        resume_from=url,
        snapshot_dir=url,
        segment_bytes=SEGMENT_BYTES,
        mirror_options=MirrorOptions(interval_s=0.0, gc_delay_s=0.0, flush_timeout_s=30.0),
        handle_signals=False,
    ) as sweep:
        for item in sweep.pending:
            sweep.record(item, {"y": item["i"] * 2, "pad": "p" * 40})
        sweep.flush()
    after = {n for n in store.list_dir(SEGMENTS_DIR) if n.endswith(".idx")}
    assert before <= after
    named = {p.name for p in _parts(store)}
    assert {n[: -len(".idx")] for n in after} <= named


def test_a_signed_mirror_holds_no_indexes(s3_bucket, tmp_path):
    url = f"{s3_bucket}/sweeps/signed"
    _mirrored(url, tmp_path, signing_key="k" * 32)
    store = Store(url)
    assert not [n for n in store.list_dir(SEGMENTS_DIR) if n.endswith(".idx")]


def test_a_resume_with_a_signing_key_never_uses_indexes(s3_bucket, tmp_path, monkeypatch):
    """No signature covers an index: with a signing key, parts are scanned even where sound
    indexes lie beside them."""
    url = f"{s3_bucket}/sweeps/signed"
    key = "k" * 32
    _mirrored(url, tmp_path, signing_key=key)
    store = Store(url)
    parts = _parts(store)
    for p in parts:  # sound indexes, placed by hand
        data = store.read_bytes(f"{SEGMENTS_DIR}/{p.name}", max_bytes=p.size)
        index = segindex.build(data, p)
        assert index is not None
        store.write_bytes(f"{SEGMENTS_DIR}/{p.name}.idx", segindex.pack(index))
    scans = ScanCounter(monkeypatch)
    sweep = _resume(url, tmp_path / "new", signing_key=key)
    try:
        assert scans.count == len(parts)
        assert sweep.status().done == N
    finally:
        sweep.close()
    assert not list((tmp_path / "new" / "exp.h5.resumable" / SEGMENTS_DIR).glob("*.idx"))
