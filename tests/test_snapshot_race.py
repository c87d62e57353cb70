"""Saves racing the simulation: a save hashes exactly the bytes it writes (issue 13, defect 2)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from resumable.errors import IntegrityError
from resumable.snapshot import read_snapshot, save_state_with_manifest, verify_snapshot


def _mutate_until(stop: threading.Event, arrays: list[np.ndarray]) -> None:
    while not stop.is_set():
        for arr in arrays:
            arr += 1  # a ufunc releases the GIL: it runs while the save writes and hashes


def test_save_racing_a_mutating_thread_never_leaves_a_bad_snapshot(tmp_path: Path) -> None:
    url = tmp_path / "snap.npz"
    graph = {f"u{i}": np.zeros(4 << 20 >> 3) for i in range(4)}  # 4 x 4 MiB
    save_state_with_manifest(graph, url, extra={"step": 0})
    stop = threading.Event()
    mutator = threading.Thread(target=_mutate_until, args=(stop, list(graph.values())))
    mutator.start()
    try:
        for step in range(1, 9):
            save_state_with_manifest(graph, url, extra={"step": step})
            try:
                report = verify_snapshot(url)
            except IntegrityError as exc:  # the save claimed success over a damaged file
                msg = f"save {step} replaced a good snapshot by a bad one: {exc}"
                raise AssertionError(msg) from None
            assert report.extra == {"step": step}
    finally:
        stop.set()
        mutator.join()
    arrays, _ = read_snapshot(url)  # and it loads: every array is one the save really wrote
    assert set(arrays) == set(graph)
