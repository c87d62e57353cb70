"""Saving a graph: walk it, check everything, then stream every array into one archive.

`save_state_with_manifest` checks the graph (names, dtypes, `extra`) before anything is written,
then streams each array (see `_npz`: each slice hashed exactly as written). With
``background=True`` it takes a consistent in-memory copy of every array first, returns a
`concurrent.futures.Future`, and writes, hashes and makes the copy durable on a helper thread
(`_background`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from .. import _codec as codec
from .. import _signing as signing
from ..errors import ConfigurationError, UnsupportedValueError
from . import _background, _leaves
from ._location import Location, locate, write
from ._manifest import (
    FORMAT,
    MANIFEST_MEMBER,
    MAX_ARRAYS,
    MEMBER_FMT,
    SCHEMA_VERSION,
    SIGNATURE_MEMBER,
    SnapshotReport,
    manifest_bytes,
    now_iso,
)
from ._npz import NpzStreamWriter


@dataclass
class _Planned:
    """One array to write: where it sits in the graph and how to get its numpy view."""

    leaf: _leaves.Leaf
    copy: np.ndarray | None = None  # a private copy (background saves)

    def array(self) -> tuple[np.ndarray, str | None]:
        arr = self.copy if self.copy is not None else _leaves.as_numpy(self.leaf)
        return _leaves.storage(arr)


def check_extra(extra: Mapping[str, Any] | None) -> tuple[dict[str, Any], Any]:
    """(`extra` as it will load back, its encoded form): the lossless codec of results."""
    if extra is None:
        return {}, {}
    if not isinstance(extra, Mapping):
        raise UnsupportedValueError(f"extra must be a dict, found {type(extra).__name__}")
    for key in extra:
        if not isinstance(key, str):
            raise UnsupportedValueError(f"extra keys must be strings, found {key!r}")
    encoded = codec.encode(dict(extra), what="extra")
    return codec.decode(encoded, where="extra"), encoded


def _write_snapshot(
    out: BinaryIO,
    seekable: bool,
    planned: list[_Planned],
    extra: tuple[dict[str, Any], Any],
    where: str,
    key: bytes | None,
) -> SnapshotReport:
    from .. import __version__

    writer = NpzStreamWriter(out, seekable=seekable)
    try:
        pending = []
        for index, item in enumerate(planned):
            arr, dname = item.array()
            leaf = item.leaf
            member = MEMBER_FMT.format(index)
            kind = _leaves.saved_kind(leaf)
            pending.append(writer.add_array(member, leaf.name, arr, leaf.path, dname, kind))
            del arr  # a converted copy (e.g. of a device tensor) lives on only until written
        records = [record() for record in pending]
        created = now_iso()
        mbytes = manifest_bytes(records, extra[1], created)
        writer.add_bytes(MANIFEST_MEMBER, mbytes)
        if key is not None:
            writer.add_bytes(SIGNATURE_MEMBER, signing.sign(key, mbytes).encode("ascii"))
        size = writer.close()
    except BaseException:
        writer.abort()
        raise
    return SnapshotReport(
        url=where,
        format=FORMAT,
        schema_version=SCHEMA_VERSION,
        library_version=__version__,
        created=created,
        arrays=tuple(records),
        extra=extra[0],
        file_bytes=size,
        signature="valid" if key is not None else "unsigned",
    )


def _plan(graph: Any) -> list[_Planned]:
    planned = [_Planned(leaf) for leaf in _leaves.walk(graph, MAX_ARRAYS)]
    for item in planned:  # every conversion is checked before the first byte is written
        _leaves.describe(item.leaf)
    return planned


def _copy_all(planned: list[_Planned]) -> None:
    """Private copies of every array (the consistent state of a background save)."""
    for item in planned:
        arr = _leaves.as_numpy(item.leaf)
        item.copy = np.array(arr, copy=True, order="K")


def save_state_with_manifest(
    graph: Any,
    url: str | os.PathLike[str],
    extra: Mapping[str, Any] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    keep: int | None = None,
    signing_key: str | bytes | None = None,
    background: bool = False,
) -> Any:
    """Save every array of `graph` plus the dict `extra` to `url`, atomically.

    `graph` is a mapping (nested mappings, lists and tuples of arrays allowed) or an object with
    ``state_dict()``; arrays may be numpy, PyTorch or JAX arrays, or anything with
    ``__dlpack__`` / ``__array__`` (see `resumable.snapshot`). `extra` holds JSON-like values
    with numpy arrays and scalars anywhere (the codec of results: they load back equal).

    With a signing key (`signing_key`, else env RESUMABLE_SIGNING_KEY) the manifest is signed
    with HMAC-SHA256, which authenticates every array through its hash. `url` is a local path
    or any fsspec URL. `keep=N` keeps the N newest snapshots. Unsupported arrays or extras
    raise `UnsupportedValueError` with nothing written; any failure leaves the previous snapshot
    intact.

    Returns the `SnapshotReport`; with ``background=True`` returns at once after copying the
    state in memory, as a `concurrent.futures.Future` of the report (one save per target at a
    time: the call first waits for a previous background save to the same target).
    """
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ConfigurationError(f"keep must be None or an int >= 1, found {keep!r}")
    clean_extra = check_extra(extra)
    planned = _plan(graph)
    loc = locate(url, storage_options)
    key = signing.resolve_key(signing_key)
    if not background:
        with _background.target_lock(loc.key):
            return _save(loc, planned, clean_extra, key, keep or 1)
    return _background.submit(
        loc.key,
        prepare=lambda: _copy_all(planned),
        work=lambda: _save(loc, planned, clean_extra, key, keep or 1),
        what=loc.display,
    )


def _save(
    loc: Location,
    planned: list[_Planned],
    extra: tuple[dict[str, Any], Any],
    key: bytes | None,
    keep: int,
) -> SnapshotReport:
    return write(
        loc,
        lambda out, seekable: _write_snapshot(out, seekable, planned, extra, loc.display, key),
        keep,
    )


__all__ = ["Future", "save_state_with_manifest"]
