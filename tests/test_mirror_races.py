"""Two writers on one mirror, made deterministic: a zombie launch (its node presumed dead) and
the launch that resumed from the mirror. The manifest is replaced by compare-and-swap, so the
zombie's write fails whatever the interleaving, and the other launch's history is untouched.

The worst interleaving is forced by pausing the zombie's mirror thread at its manifest write
(the Store methods are wrapped, nothing else: the mirror, the sweeps and the servers are real):
the other launch resumes, records, flushes and closes in that pause.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from test_mirror import (
    MANUAL,
    _assert_mirror_is,
    _assert_same,
    _fast_retries,
    _fetch,
    _open,
    _record,
    mirror_url,
)

from resumable import MirrorOptions
from resumable._checkpoint import load
from resumable._manifest import MANIFEST_NAME
from resumable._storage import Store
from resumable.errors import ConfigurationError, HistoryConflictError

__all__ = ["_fast_retries", "mirror_url"]  # fixtures, used by name


def _pause_manifest_write(monkeypatch: pytest.MonkeyPatch, during: Callable[[], None]) -> list:
    """Run `during` (once) just before the next manifest write through any Store, whichever
    method writes it: the moment between a writer's last look and its write."""
    ran: list[bool] = []
    real = {m: getattr(Store, m) for m in ("write_bytes", "write_if") if hasattr(Store, m)}

    def wrap(method: str) -> Callable:
        def call(self: Store, name: str, data: bytes, **kw):
            if name == MANIFEST_NAME and not ran:
                ran.append(True)
                during()
            return real[method](self, name, data, **kw)

        return call

    for method in real:
        monkeypatch.setattr(Store, method, wrap(method))
    return ran


def _zombie_race(url: str, tmp_path: Path) -> None:
    kw = {"resume_from": url, "mirror_options": MANUAL}
    zombie = _open(tmp_path / "zombie" / "exp.h5", url, **kw)
    _record(zombie, 5)
    zombie.flush(timeout=20)
    _record(zombie, 5)  # not mirrored yet: its next flush writes the manifest
    other: dict = {}

    def resume_record_close() -> None:
        new = _open(tmp_path / "new" / "exp.h5", url, **kw)
        assert new.resumed_from == "remote" and new.status().done == 5
        _record(new, 7)
        new.flush(timeout=20)
        new.close()
        other["loaded"] = load(new.progress_dir)

    with pytest.MonkeyPatch.context() as mp:
        ran = _pause_manifest_write(mp, resume_record_close)
        with pytest.raises(HistoryConflictError, match="another writer"):
            zombie.flush(timeout=20)
    assert ran and "loaded" in other
    assert zombie.status().mirror["state"] == "failed"
    with pytest.raises(HistoryConflictError):
        zombie.close()
    remote = _fetch(url, tmp_path)  # the other launch's history, whole
    _assert_same(remote, other["loaded"])
    assert len(remote.state.results) == 12


def test_a_zombie_writer_cannot_overwrite_another_launchs_history(
    mirror_url: str, tmp_path: Path
) -> None:
    if mirror_url.startswith("gs://"):
        pytest.skip("gcp-storage-emulator ignores ifGenerationMatch: the swap cannot fail there")
    _zombie_race(mirror_url, tmp_path)


def test_a_zombie_cannot_claim_an_empty_place_taken_meanwhile(tmp_path: Path) -> None:
    """Two fresh launches: the one that finds no manifest creates it only if still absent."""
    url = str(tmp_path / "mirror")
    other: dict = {}

    def second_launch() -> None:
        second = _open(tmp_path / "b" / "exp.h5", url, mirror_options=MANUAL)
        _record(second, 3)
        second.close()
        other["loaded"] = load(second.progress_dir)

    with pytest.MonkeyPatch.context() as mp:
        _pause_manifest_write(mp, second_launch)  # at the first launch's claim
        first = _open(tmp_path / "a" / "exp.h5", url, mirror_options=MANUAL)
        _record(first, 2)
        with pytest.raises(HistoryConflictError):
            first.flush(timeout=10)
    with pytest.raises(HistoryConflictError):
        first.close()
    _assert_same(_fetch(url, tmp_path), other["loaded"])


# -- places without conditional writes: an explicit opt-in ----------------------------------------


class _NoCasMemory(MemoryFileSystem):
    """An in-memory file system that resumable does not know how to write conditionally."""

    protocol = "nocasmem"
    store: dict = {}  # noqa: RUF012 - fsspec's own convention: class-level storage
    pseudo_dirs = [""]  # noqa: RUF012


@pytest.fixture
def nocas_url(tmp_path: Path) -> str:
    fsspec.register_implementation("nocasmem", _NoCasMemory, clobber=True)
    return f"nocasmem://{tmp_path.name}/exp"


def test_mirroring_without_conditional_writes_needs_an_opt_in(
    nocas_url: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="allow_unconditional"):
        _open(tmp_path / "a" / "exp.h5", nocas_url)
    assert not (tmp_path / "a").exists()  # refused before anything was written
    assert not Store(nocas_url).supports_cas
    opts = MirrorOptions(interval_s=0.0, gc_delay_s=60.0, allow_unconditional=True)
    sweep = _open(tmp_path / "b" / "exp.h5", nocas_url, mirror_options=opts)
    _record(sweep, 4)
    sweep.close()
    _assert_mirror_is(nocas_url, sweep, tmp_path)
