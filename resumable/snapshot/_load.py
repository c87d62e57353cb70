"""Loading and verifying: everything is checked before the graph is touched (all or nothing).

Bounded zip structure, manifest format and schema version, every ``.npy`` header against the
manifest, every SHA-256, and every path, shape and dtype against the graph's current leaves
(`SnapshotMismatchError` lists all differences; damage is `IntegrityError`). Only then are the
verified arrays restored into the graph as `_graph` describes (in place where possible).
Nothing is ever unpickled and no buffer is allocated from a declared size before that size was
checked against the bytes actually present. Remote snapshots are first streamed to a temporary
local file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _signing as signing
from .._codec import descr_from_json
from ..errors import IntegrityError, SnapshotMismatchError, UnsupportedValueError
from . import _graph, _leaves
from ._location import opened
from ._manifest import MAX_DIR_BYTES, SnapshotReport, parse_manifest
from ._npzread import NpzReader

logger = logging.getLogger(__name__)


def max_arrays() -> int:
    from . import MAX_ARRAYS  # read at call time: tests lower it

    return MAX_ARRAYS


def _describe_dtype(descr: Any, dname: str | None) -> str:
    if dname is not None:
        return dname
    try:
        return str(descr_from_json(descr))
    except Exception:
        return repr(descr)


def _check_against(
    report: SnapshotReport, leaves: list[_leaves.Leaf], stateful: list[Any] | None = None
) -> None:
    """SnapshotMismatchError listing every path/shape/dtype difference from the live graph.

    Saved leaves below a ``state_dict()`` object (paths in `stateful`) that its state lacks
    are no difference: they are added to the dict its ``load_state_dict`` gets."""
    current = {leaf.path: leaf for leaf in leaves}
    saved = {r.path: r for r in report.arrays}
    roots = stateful or []
    diffs = [f"missing from the snapshot: {leaf.name!r}" for p, leaf in current.items()
             if p not in saved]  # fmt: skip
    diffs += [
        f"not in the current state: {r.name!r}"
        for p, r in saved.items()
        if p not in current and not any(p[: len(root)] == root for root in roots)
    ]
    for path, rec in saved.items():
        leaf = current.get(path)
        if leaf is None:
            continue
        shape, descr, dname = _leaves.describe(leaf)
        if shape != rec.shape:
            diffs.append(f"{rec.name!r}: shape {rec.shape} in the snapshot, {shape} now")
        if (descr, dname) != (rec.dtype, rec.dtype_name):
            diffs.append(
                f"{rec.name!r}: dtype {_describe_dtype(rec.dtype, rec.dtype_name)} in the "
                f"snapshot, {_describe_dtype(descr, dname)} now"
            )
    if diffs:
        err = SnapshotMismatchError(
            f"snapshot {report.url} does not match the state it is loaded into "
            f"({len(diffs)} difference(s)):\n  " + "\n  ".join(diffs)
        )
        err.differences = diffs
        raise err


def _check_loadable(graph: Any) -> None:
    if callable(getattr(graph, "load_state_dict", None)):
        return
    if not isinstance(graph, Mapping) or not hasattr(graph, "__setitem__"):
        raise UnsupportedValueError(
            f"cannot load into {type(graph).__name__}: need a mutable mapping or load_state_dict()"
        )


def _reader(fh: Any, where: str) -> NpzReader:
    return NpzReader(fh, where, max_members=max_arrays() + 2, max_dir_bytes=MAX_DIR_BYTES)


def _read_all(reader: NpzReader, report: SnapshotReport) -> dict[Any, np.ndarray]:
    """Every array by path, verified (hashes checked before returning)."""
    with reader:
        raw = {rec.path: (rec, reader.read_array(rec)) for rec in report.arrays}
        reader.check_hashes()
    try:
        return {
            path: _leaves.logical(a, rec.dtype_name, rec.name) for path, (rec, a) in raw.items()
        }
    except UnsupportedValueError as exc:  # a dtype name this machine cannot give (or forged)
        raise IntegrityError(f"{reader.where}: {exc}") from None


def download_and_load_state(
    graph: Any,
    url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
    signing_key: str | bytes | None = None,
) -> dict[str, Any]:
    """Verify the snapshot at `url` completely, then restore it into `graph`; returns `extra`.

    Raises `ObjectNotFoundError` if it does not exist, `SourceUnreachableError` if it cannot be
    reached, `IntegrityError` if it is damaged and `SnapshotMismatchError` if its paths, shapes
    or dtypes differ from the graph's; in every error case the graph is untouched. On success
    writable numpy arrays and PyTorch tensors are filled in place (references the program holds
    see the loaded state); immutable leaves (JAX arrays, read-only numpy arrays, scalars) are
    replaced in their container by new values of the same kind; `load_state_dict` receives a
    dict shaped like `state_dict()`. The verified data is held in memory once before it is
    copied in.
    """
    _check_loadable(graph)
    leaves = _leaves.walk(graph, max_arrays())
    with opened(url, storage_options, tmp_dir) as (fh, where):
        reader = _reader(fh, where)
        report = parse_manifest(reader, signing.resolve_key(signing_key))
        _check_against(report, leaves, _graph.stateful_paths(graph))
        arrays = _read_all(reader, report)
    kinds = {rec.path: rec.kind for rec in report.arrays}
    writes = _graph.plan(graph, arrays, kinds)  # every conversion done: nothing below can fail
    for write in writes:
        write()
    logger.debug("loaded %d arrays from %s", len(arrays), report.url)
    return dict(report.extra)


def read_snapshot(
    url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
    signing_key: str | bytes | None = None,
) -> tuple[dict[str, np.ndarray], SnapshotReport]:
    """The verified arrays (numpy, by name) and report of a snapshot, without a graph.

    `nest_arrays(arrays, report)` turns them back into nested dicts and lists.
    """
    with opened(url, storage_options, tmp_dir) as (fh, where):
        reader = _reader(fh, where)
        report = parse_manifest(reader, signing.resolve_key(signing_key))
        by_path = _read_all(reader, report)
    return {rec.name: by_path[rec.path] for rec in report.arrays}, report


def nest_arrays(arrays: Mapping[str, np.ndarray], report: SnapshotReport) -> dict[str | int, Any]:
    """The arrays of `read_snapshot` in the structure they were saved in (dicts and lists)."""
    return _graph.nest({rec.path: arrays[rec.name] for rec in report.arrays})


def verify_snapshot(
    url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
    signing_key: str | bytes | None = None,
) -> SnapshotReport:
    """Check a snapshot completely (structure, manifest, headers, hashes) in bounded memory.

    Returns its report; raises `IntegrityError` on any damage (and the storage errors), and,
    with a signing key set, on an unsigned or wrongly signed snapshot.
    """
    with opened(url, storage_options, tmp_dir) as (fh, where):
        return verify_open(fh, where, signing_key=signing_key)


def verify_open(fh: Any, where: str, *, signing_key: str | bytes | None = None) -> SnapshotReport:
    """`verify_snapshot` of a snapshot already open as the seekable binary file `fh`
    (`where` names it in messages)."""
    reader = _reader(fh, where)
    report = parse_manifest(reader, signing.resolve_key(signing_key))
    with reader:
        for rec in report.arrays:
            reader.verify_member(rec)
        reader.check_hashes()
    return report
