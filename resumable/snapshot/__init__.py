"""Graph-state snapshots: every array of a simulation's state in one self-verifying ``.npz``.

A *graph* is a mapping of names to arrays, with nested mappings, lists and tuples inside (a
graph of nodes, each with its own state dict), or an object with ``state_dict()`` /
``load_state_dict()``. Arrays may be numpy arrays, PyTorch tensors, JAX arrays, anything with
``__dlpack__`` or ``__array__``, and numpy or Python scalars; dtypes numpy lacks (``bfloat16``)
go through `ml_dtypes`. Each array has a stable name: its key for a top-level entry, else its
path joined by ``/`` (`_leaves` has the rules; `_graph`, how each kind is restored).

    save_state_with_manifest(graph, url, extra={"step": 7}, keep=None, background=False)
    download_and_load_state(graph, url)   # verify all, then fill the graph in place -> extra
    read_snapshot(url) / verify_snapshot(url)
    make_preempt_snapshot_hook(graph, url, extra=...)  # a PreemptionGuard hook, or periodic saves
    resume_from_url(graph, url)           # at start-up: extra, or None for a fresh start

File layout (a valid .npz: ``np.load(path)`` reads it)
    ``a00000.npy``, ``a00001.npy``, ... one uncompressed (ZIP_STORED, zip64) member per array,
    named by position so that no array name (which may contain ``/``, ``..`` or anything else)
    ever becomes a path in the archive; then ``__resumable_manifest__.json`` as the *last*
    member, because the hashes are known only after streaming. Readers find it first anyway,
    through the zip central directory.

Manifest (JSON, schema 2)
    ``format`` ("resumable.snapshot"), ``schema_version``, ``library_version``,
    ``numpy_version``, ``created`` (UTC ISO 8601), ``extra`` (the caller's dict, encoded by the
    lossless codec of results, so numpy scalars and arrays come back as they were), and
    ``arrays``: for each, ``name``, ``path`` (keys and indices from the root; an int key of a
    mapping, as in optimizer state, is ``{"int": n}``), ``kind`` (what the leaf was: ``numpy``,
    ``torch``, ``int``, ``none``...; how a leaf a ``state_dict()`` lacks is rebuilt), ``member``,
    ``dtype`` (numpy descr from `numpy.lib.format.dtype_to_descr`; ``V<n>`` plus ``dtype_name``
    for ml_dtypes types), ``shape``, ``fortran_order``, ``nbytes`` (data), ``size`` (whole
    member) and ``sha256`` (of the whole ``.npy`` member, header included, so
    ``unzip -p snap.npz a00000.npy | sha256sum`` agrees). Schema 1 files (flat graphs, plain
    JSON extra) still load.

Saving (`_save`) streams every array straight into the archive, each slice copied once into a
private buffer that is hashed, CRC'd and written, so the file always verifies even if another
thread changes the arrays meanwhile; atomic and durable (`_location`); the previous snapshot
stays valid until the new one is complete. Locally the disk starts writing each completed 32
MiB while the save goes on (``sync_file_range``), so the final fsync has little left to wait
for. ``background=True`` returns a Future once a
consistent in-memory copy is taken (`_background`); `PreemptionGuard` waits for it.

Loading (`_load`) verifies everything before the graph is touched (all or nothing), then writes
into writable numpy arrays and tensors in place and replaces immutable leaves by new ones of the
same kind. A ``state_dict()`` object gets the saved leaves its current state lacks too (a fresh
optimizer loads the state of a trained one).

Signing: an HMAC over the manifest bytes lives in a ``__resumable_signature__`` member, checked
in `_manifest._check_signature`; a reader refuses any member it does not know, so a
signed snapshot is never accepted unverified.
"""

from __future__ import annotations

from ._hooks import make_preempt_snapshot_hook, resume_from_url
from ._leaves import name_of
from ._load import download_and_load_state, nest_arrays, read_snapshot, verify_snapshot
from ._location import display_url
from ._manifest import FORMAT, MANIFEST_MEMBER, MAX_ARRAYS, SCHEMA_VERSION, SnapshotReport
from ._record import ArrayRecord
from ._save import save_state_with_manifest


def pending_saves() -> list[str]:
    """Background saves still in flight in this process (their redacted targets)."""
    from .. import _inflight

    return _inflight.pending()


def wait_for_saves(timeout: float | None = None) -> list[str]:
    """Wait for the background saves in flight (at most `timeout` s); returns those left."""
    import math
    import time

    from .. import _inflight

    limit = math.inf if timeout is None else timeout
    return _inflight.wait_all(time.monotonic() + min(limit, 1e9))


__all__ = [
    "FORMAT",
    "MANIFEST_MEMBER",
    "MAX_ARRAYS",
    "SCHEMA_VERSION",
    "ArrayRecord",
    "SnapshotReport",
    "display_url",
    "download_and_load_state",
    "make_preempt_snapshot_hook",
    "name_of",
    "nest_arrays",
    "pending_saves",
    "read_snapshot",
    "resume_from_url",
    "save_state_with_manifest",
    "verify_snapshot",
    "wait_for_saves",
]
