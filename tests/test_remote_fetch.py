"""Downloading a mirrored checkpoint fetches its parts concurrently (resumable._remote): a few
at a time, within a window of bytes ahead of the replay, each verified once, and the first bad
part in manifest order is the one reported, with nothing left behind."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from resumable import MirrorOptions, ResumableSweep
from resumable import _remote as remote
from resumable._checkpoint import load
from resumable._manifest import MANIFEST_NAME
from resumable._remote import download, read_manifest
from resumable._storage import Store
from resumable.errors import IntegrityError

ITEMS = [{"i": i} for i in range(60)]
OPTS = MirrorOptions(interval_s=0.0, gc_delay_s=60.0, max_backoff_s=0.2, flush_timeout_s=20.0)


class _Watched(Store):
    """A local mirror directory whose part reads take a while and are counted: how many run
    at once, and in which order they start."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started: list[str] = []

    def read_bytes(self, name: str, *, max_bytes: int) -> bytes:
        if not name.startswith("segments/"):
            return super().read_bytes(name, max_bytes=max_bytes)
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.started.append(name)
        try:
            time.sleep(0.02)
            return super().read_bytes(name, max_bytes=max_bytes)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sweep mirrored in many small parts."""
    root = tmp_path_factory.mktemp("fetch")
    url = str(root / "mirror")
    with ResumableSweep(
        ITEMS,
        checkpoint_path=root / "a" / "exp.h5",
        snapshot_dir=url,
        segment_bytes=1200,
        mirror_options=OPTS,
    ) as sweep:
        for item in sweep.pending:
            sweep.record(item, {"i": item["i"], "pad": "x" * 200})
        sweep.flush()
    return Path(url)


def _parts(mirror: Path) -> list[str]:
    return [s["name"] for s in json.loads((mirror / MANIFEST_NAME).read_bytes())["segments"]]


def _journal(checkpoint: Path) -> list[str]:
    """The parts in a downloaded checkpoint (not the row indexes installed beside them)."""
    return [n for n in os.listdir(checkpoint / "segments") if not n.endswith(".idx")]


def _copy(mirror: Path, to: Path) -> Path:
    (to / "segments").mkdir(parents=True)
    for p in [mirror / MANIFEST_NAME, *sorted((mirror / "segments").iterdir())]:
        (to / p.relative_to(mirror)).write_bytes(p.read_bytes())
    return to


def test_parts_are_fetched_a_few_at_once_and_replayed_in_order(mirror: Path, tmp_path: Path):
    parts = _parts(mirror)
    assert len(parts) > 3 * remote.FETCH_WORKERS, len(parts)
    store = _Watched(str(mirror))
    found = read_manifest(store)
    assert found is not None
    tmp, loaded = download(store, found[0], tmp_path / "dl" / "exp.h5.resumable")
    assert 2 <= store.most <= remote.FETCH_WORKERS, store.most
    # each once, in manifest order (with its row index after it, where the mirror has one)
    assert [n for n in store.started if not n.endswith(".idx")] == [f"segments/{n}" for n in parts]
    copy = load(tmp)  # what landed is the checkpoint, verified again from disk
    assert copy is not None
    sealed = json.loads(found[0])["segments"][-1]
    for got in (loaded, copy):
        assert got.state.last_seq == sealed["last_seq"] == len(ITEMS) + 2  # launch, items
        assert got.state.last_hash == sealed["last_hash"]
        assert len(got.state.results) == len(ITEMS)
    assert list(loaded.state.results) == list(copy.state.results)
    assert sorted(_journal(tmp)) == sorted(parts)


def test_the_window_bounds_the_bytes_fetched_ahead(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no room ahead, only the part the replay needs next is fetched at any time."""
    monkeypatch.setattr(remote, "FETCH_AHEAD_BYTES", 0)
    store = _Watched(str(mirror))
    found = read_manifest(store)
    assert found is not None
    tmp, loaded = download(store, found[0], tmp_path / "dl" / "exp.h5.resumable")
    assert store.most == 1
    assert len(loaded.state.results) == len(ITEMS)
    assert sorted(_journal(tmp)) == sorted(_parts(mirror))


@pytest.mark.parametrize("first", ["flip", "delete"])
def test_the_first_bad_part_in_order_is_reported(mirror: Path, tmp_path: Path, first: str):
    """A later part failing first (it is fetched alongside) never hides an earlier one's fault;
    nothing is left beside the target, though parts were in flight."""
    src = _copy(mirror, tmp_path / "src")
    parts = _parts(src)
    early, late = src / "segments" / parts[2], src / "segments" / parts[-2]
    late.unlink() if first == "flip" else late.write_bytes(late.read_bytes() + b"\n")
    if first == "flip":
        data = early.read_bytes()
        early.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])
    else:
        early.unlink()
    store = Store(str(src))
    found = read_manifest(store)
    assert found is not None
    with pytest.raises(IntegrityError) as info:
        download(store, found[0], tmp_path / "dl" / "exp.h5.resumable")
    text = str(info.value)
    assert parts[2] in text and parts[-2] not in text, text
    assert ("SHA-256 mismatch" if first == "flip" else "is missing") in text, text
    assert os.listdir(tmp_path / "dl") == []
