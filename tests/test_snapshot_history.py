"""Snapshot history on object stores costs one upload per save (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest

from resumable.snapshot import save_state_with_manifest, verify_snapshot


@pytest.mark.integration
def test_keep_on_s3_uploads_one_snapshot_per_save(s3_bucket: str) -> None:
    """History on an object store is kept by server-side copies: each save sends its own bytes
    once, however long the history (counted at the client's write and read streams)."""
    from resumable import _storage as storage

    moved = {"up": 0, "down": 0}
    real_write, real_read = storage.Store.open_write, storage.Store.open_read

    class Counting:
        def __init__(self, f: object, key: str) -> None:
            self._f, self._key = f, key

        def write(self, data: bytes) -> int:
            moved[self._key] += memoryview(data).nbytes
            return self._f.write(data)  # type: ignore[attr-defined]

        def read(self, *args: object) -> bytes:
            data = self._f.read(*args)  # type: ignore[attr-defined]
            moved[self._key] += len(data)
            return data

        def __getattr__(self, name: str) -> object:
            return getattr(self._f, name)

    def open_write(self: object, name: str) -> object:
        import contextlib

        @contextlib.contextmanager
        def cm():  # type: ignore[no-untyped-def]
            with real_write(self, name) as f:  # type: ignore[arg-type]
                yield Counting(f, "up")

        return cm()

    def open_read(self: object, name: str) -> object:
        import contextlib

        @contextlib.contextmanager
        def cm():  # type: ignore[no-untyped-def]
            with real_read(self, name) as f:  # type: ignore[arg-type]
                yield Counting(f, "down")

        return cm()

    url = f"{s3_bucket}/hist/snapshot.npz"
    sizes = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage.Store, "open_write", open_write)
        mp.setattr(storage.Store, "open_read", open_read)
        for step in range(5):
            before = dict(moved)
            report = save_state_with_manifest(
                {"u": np.full(1 << 17, float(step))}, url, extra={"step": step}, keep=3
            )
            sizes.append((moved["up"] - before["up"], moved["down"] - before["down"]))
            assert moved["up"] - before["up"] == report.file_bytes
    assert all(down == 0 for _up, down in sizes)
    steps = [verify_snapshot(f"{s3_bucket}/hist/{n}").extra["step"] for n in
             ("snapshot.npz", "snapshot.1.npz", "snapshot.2.npz")]  # fmt: skip
    assert steps == [4, 3, 2]
