"""Graph-state snapshots: a set of named numpy arrays in one self-verifying ``.npz``.

A *graph* is a mutable mapping of names to arrays (anything with ``__array__``: numpy, JAX or
torch CPU tensors), or an object with ``state_dict()`` / ``load_state_dict(mapping)``.

File layout (a valid .npz: ``np.load(path)`` reads it)
    ``a00000.npy``, ``a00001.npy``, ... one uncompressed (ZIP_STORED, zip64) member per array,
    named by position so that no array name (which may contain ``/``, ``..`` or anything else)
    ever becomes a path in the archive; then ``__resumable_manifest__.json`` as the *last*
    member, because the hashes are known only after streaming. Readers find it first anyway,
    through the zip central directory.

Manifest (JSON)
    ``format`` ("resumable.snapshot"), ``schema_version`` (1), ``library_version``,
    ``numpy_version``, ``created`` (UTC ISO 8601), ``extra`` (the caller's JSON dict, e.g. the
    step), and ``arrays``: for each, ``name``, ``member``, ``dtype`` (numpy descr from
    `numpy.lib.format.dtype_to_descr`), ``shape``, ``fortran_order``, ``nbytes`` (data),
    ``size`` (whole member) and ``sha256`` (of the whole ``.npy`` member, header included, so
    ``unzip -p snap.npz a00000.npy | sha256sum`` agrees).

Saving streams every array straight into the archive (no extra copy of the state) and is atomic
and durable: locally a temp file in the same directory, fsync, rename, fsync of the directory;
remotely (any fsspec URL through `storage.Store`) the object appears complete or not at all.
The previous snapshot stays valid until the new one is complete.

History (``keep=N``)
    ``snapshot.npz`` is always the newest; ``snapshot.1.npz`` ... ``snapshot.<N-1>.npz`` are the
    previous ones, 1 the most recent. Locally the rotation renames and hard-links (no data is
    copied; a copy is made only where hard links are unsupported) and happens only after the
    new snapshot is complete on disk. On object stores there is no rename: each save with
    ``keep=N`` first copies up to N-1 objects (download + upload), so keep N small there.

Loading verifies everything before the graph is touched (all or nothing): bounded zip
structure, manifest format and schema version, every ``.npy`` header against the manifest,
every SHA-256, and every name, shape and dtype against the graph's current entries
(`SnapshotMismatchError` lists all differences; damage is `IntegrityError`). Nothing is ever
unpickled and no buffer is allocated from a declared size before that size was checked against
the bytes actually present. Remote snapshots are first streamed to a temporary local file.

Signing: a later HMAC over the manifest bytes would live in a ``__resumable_signature__``
member, checked in `_snapshot_manifest._check_signature`; a reader of this schema refuses any
member it does not know, so a signed snapshot is never accepted unverified.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

import numpy as np
from numpy.lib import format as npformat

from . import durable, signing
from ._npz import COPY_CHUNK, ArrayRecord, NpzReader, NpzStreamWriter, descr_from_json
from ._snapshot_manifest import (
    FORMAT,
    MANIFEST_MEMBER,
    MAX_ARRAYS,
    MAX_DIR_BYTES,
    MEMBER_FMT,
    SCHEMA_VERSION,
    SIGNATURE_MEMBER,
    SnapshotReport,
    manifest_bytes,
    now_iso,
    parse_manifest,
)
from .errors import (
    ConfigurationError,
    ObjectNotFoundError,
    SnapshotMismatchError,
    StorageError,
    UnsupportedValueError,
)

__all__ = [
    "FORMAT",
    "MANIFEST_MEMBER",
    "SCHEMA_VERSION",
    "ArrayRecord",
    "SnapshotReport",
    "display_url",
    "download_and_load_state",
    "read_snapshot",
    "save_state_with_manifest",
    "verify_snapshot",
]

logger = logging.getLogger("resumable.snapshot")


class StateDictLike(Protocol):
    def state_dict(self) -> Mapping[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> Any: ...


Graph = MutableMapping[str, Any] | StateDictLike


def display_url(url: str | os.PathLike[str]) -> str:
    """`url` with credentials removed, for messages."""
    from .storage import redact

    return redact(os.fspath(url))


# --- locations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Location:
    store: Any  # storage.Store rooted at the parent
    name: str
    local_path: Path | None
    display: str


def _store(root: str, storage_options: Mapping[str, Any] | None) -> Any:
    """A Store for `root` (cheap: storage shares filesystem clients between Stores)."""
    from .storage import Store

    return Store(root, storage_options=dict(storage_options or {}))


def _locate(url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None) -> _Location:
    """Split a snapshot path/URL into (Store of its parent, object name)."""
    from .storage import is_url

    raw = os.fspath(url)
    if not isinstance(raw, str) or not raw:
        raise ConfigurationError(f"snapshot location must be a non-empty path or URL: {url!r}")
    display = display_url(raw)
    if not is_url(raw):
        path = Path(raw).expanduser()
        if not path.name or raw.endswith(("/", os.sep)):
            raise ConfigurationError(f"snapshot path must name a file: {display}")
        store = _store(str(path.parent), storage_options)
        return _Location(store, path.name, store.local_path / path.name, display)
    scheme = raw.split("://", 1)[0]
    try:
        parts = urlsplit(raw)
    except ValueError as exc:
        raise ConfigurationError(f"invalid snapshot URL {display}: {exc}") from None
    parent, _, name = parts.path.rpartition("/")
    if scheme.lower() in ("http", "https", "file"):
        name = unquote(name)
    if not name:
        raise ConfigurationError(f"snapshot URL must name an object: {display}")
    root = f"{scheme}://{parts.netloc}{parent}"
    root += (f"?{parts.query}" if parts.query else "") + (
        f"#{parts.fragment}" if parts.fragment else ""
    )
    store = _store(root, storage_options)
    local = store.local_path / name if store.is_local else None
    return _Location(store, name, local, display)


def _history_name(name: str, k: int) -> str:
    return f"{name[:-4]}.{k}.npz" if name.endswith(".npz") else f"{name}.{k}"


# --- saving ------------------------------------------------------------------------------------


def _state_of(graph: Graph) -> Mapping[str, Any]:
    state_dict = getattr(graph, "state_dict", None)
    if callable(state_dict):
        state = state_dict()
    elif isinstance(graph, Mapping):
        state = graph
    else:
        raise UnsupportedValueError(
            f"graph must be a mapping of names to arrays or have state_dict()/load_state_dict(); "
            f"found {type(graph).__name__}"
        )
    if not isinstance(state, Mapping):
        raise UnsupportedValueError(f"state_dict() returned {type(state).__name__}, not a mapping")
    return state


def _check_names(state: Mapping[str, Any]) -> list[tuple[str, Any]]:
    items = list(state.items())
    if len(items) > MAX_ARRAYS:
        raise UnsupportedValueError(f"a snapshot holds at most {MAX_ARRAYS} arrays")
    for name, value in items:
        if not isinstance(name, str):
            raise UnsupportedValueError(f"array names must be strings, found {name!r}")
        if isinstance(value, np.ndarray) and value.dtype.hasobject:
            raise _object_error(name, value.dtype)
    return items


def _object_error(name: str, dtype: np.dtype) -> UnsupportedValueError:
    return UnsupportedValueError(
        f"array {name!r} has dtype {dtype} holding Python objects; snapshots never pickle, "
        "convert it to a numeric, string or structured dtype"
    )


def _as_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ma.MaskedArray):  # np.asarray would silently drop the mask
        raise UnsupportedValueError(
            f"array {name!r} is a masked array; save its data and mask as two arrays"
        )
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise _object_error(name, arr.dtype)
    return arr


def _check_extra(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of `extra`, refusing anything that does not survive JSON unchanged."""
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise UnsupportedValueError(f"extra must be a dict, found {type(extra).__name__}")
    out: dict[str, Any] = {}
    for key, value in extra.items():
        if not isinstance(key, str):
            raise UnsupportedValueError(f"extra keys must be strings, found {key!r}")
        try:
            back = json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise UnsupportedValueError(
                f"extra[{key!r}] = {value!r:.80} is not JSON ({exc}); use plain int, float, str, "
                "bool, None, lists and string-keyed dicts"
            ) from None
        if back != value or type(back) is not type(value):
            raise UnsupportedValueError(
                f"extra[{key!r}] = {value!r:.80} does not survive JSON unchanged (it would come "
                f"back as {back!r:.80}); use lists instead of tuples and string keys"
            )
        out[key] = back
    return out


def _write_snapshot(
    out: BinaryIO,
    seekable: bool,
    items: list[tuple[str, Any]],
    extra: dict[str, Any],
    where: str,
    key: bytes | None = None,
) -> SnapshotReport:
    from . import __version__

    writer = NpzStreamWriter(out, seekable=seekable)
    try:
        pending = []
        for index, (name, value) in enumerate(items):
            arr = _as_array(name, value)
            pending.append(writer.add_array(MEMBER_FMT.format(index), name, arr))
            del arr  # a converted copy (e.g. of a tensor) lives on only until it is hashed
        records = [record() for record in pending]
        created = now_iso()
        mbytes = manifest_bytes(records, extra, created)
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
        extra=extra,
        file_bytes=size,
        signature="valid" if key is not None else "unsigned",
    )


def save_state_with_manifest(
    graph: Graph,
    url: str | os.PathLike[str],
    extra: Mapping[str, Any] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    keep: int | None = None,
    signing_key: str | bytes | None = None,
) -> SnapshotReport:
    """Save every array of `graph` plus the JSON dict `extra` to `url`, atomically.

    With a signing key (`signing_key`, else env RESUMABLE_SIGNING_KEY) the manifest is signed
    with HMAC-SHA256, which authenticates every array through its hash.

    `url` is a local path or any fsspec URL. `keep=N` keeps the N newest snapshots (see the
    module docstring). Object arrays and non-JSON extras raise `UnsupportedValueError` with
    nothing written; any failure leaves the previous snapshot intact.
    """
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ConfigurationError(f"keep must be None or an int >= 1, found {keep!r}")
    clean_extra = _check_extra(extra)
    items = _check_names(_state_of(graph))
    loc = _locate(url, storage_options)

    key = signing.resolve_key(signing_key)

    def write(out: BinaryIO, seekable: bool) -> SnapshotReport:
        return _write_snapshot(out, seekable, items, clean_extra, loc.display, key)

    if loc.local_path is not None:
        return _save_local(loc.local_path, write, keep or 1)
    return _save_remote(loc, write, keep or 1)


def _save_local(
    path: Path, write: Callable[[BinaryIO, bool], SnapshotReport], keep: int
) -> SnapshotReport:
    durable.make_dirs(path.parent)
    if keep == 1:
        with durable.atomic_writer(path) as fh:
            return write(fh, True)
    staged = path.with_name(f".{path.name}.staged")
    with durable.atomic_writer(staged) as fh:
        report = write(fh, True)
    try:
        _rotate_local(path, keep)
        os.replace(staged, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        raise StorageError(f"cannot rotate snapshot history of {path}: {exc}") from exc
    durable.fsync_dir(path.parent)
    return report


def _rotate_local(path: Path, keep: int) -> None:
    """Shift snapshot.k.npz -> k+1 (dropping the oldest), then link the current one to .1."""
    hist = [path.with_name(_history_name(path.name, k)) for k in range(keep)]
    for k in range(keep - 1, 1, -1):
        with contextlib.suppress(FileNotFoundError):
            os.replace(hist[k - 1], hist[k])
    if not path.exists():
        return
    tmp = path.with_name(f".{hist[1].name}.link")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links here (some FUSE/SMB mounts): copy durably instead
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, COPY_CHUNK)
            dst.flush()
            durable.fsync_file(dst.fileno(), str(tmp), data_only=False)
    os.replace(tmp, hist[1])


def _save_remote(
    loc: _Location, write: Callable[[BinaryIO, bool], SnapshotReport], keep: int
) -> SnapshotReport:
    store = loc.store
    names = [loc.name] + [_history_name(loc.name, k) for k in range(1, keep)]
    for k in range(keep - 1, 0, -1):
        _copy_remote(store, names[k - 1], names[k])
    with store.open_write(loc.name) as fh:
        return write(fh, False)


def _copy_remote(store: Any, src: str, dst: str) -> None:
    try:
        with store.open_read(src) as fin, store.open_write(dst) as fout:
            shutil.copyfileobj(fin, fout, COPY_CHUNK)
    except ObjectNotFoundError:
        return


# --- loading -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _opened(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None,
    tmp_dir: str | os.PathLike[str] | None,
) -> Iterator[tuple[BinaryIO, str]]:
    """The snapshot as a seekable local file (remote ones are downloaded to a temp file)."""
    loc = _locate(url, storage_options)
    if loc.local_path is not None:
        try:
            fh = open(loc.local_path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"snapshot {loc.display} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"cannot read snapshot {loc.display}: {exc.strerror}") from exc
        with fh:
            yield fh, loc.display  # type: ignore[misc]
        return
    with tempfile.TemporaryFile(dir=tmp_dir, prefix=".resumable-snapshot-") as tmp:
        with loc.store.open_read(loc.name) as src:
            shutil.copyfileobj(src, tmp, COPY_CHUNK)
        tmp.flush()
        yield tmp, loc.display  # type: ignore[misc]


def _describe_dtype(descr: Any) -> str:
    try:
        return str(descr_from_json(descr))
    except Exception:
        return repr(descr)


def _check_against(report: SnapshotReport, state: Mapping[str, Any]) -> None:
    """SnapshotMismatchError listing every name/shape/dtype difference from the live state."""
    current: dict[str, np.ndarray] = {}
    for name, value in _check_names(state):
        current[name] = value if isinstance(value, np.ndarray) else np.asarray(value)
    saved = {r.name: r for r in report.arrays}
    diffs = [f"missing from the snapshot: {n!r}" for n in current if n not in saved]
    diffs += [f"not in the current state: {n!r}" for n in saved if n not in current]
    for name, rec in saved.items():
        if name not in current:
            continue
        arr = current[name]
        if tuple(arr.shape) != rec.shape:
            diffs.append(f"{name!r}: shape {rec.shape} in the snapshot, {arr.shape} now")
        now_descr = json.loads(json.dumps(npformat.dtype_to_descr(arr.dtype)))
        if now_descr != rec.dtype:
            diffs.append(
                f"{name!r}: dtype {_describe_dtype(rec.dtype)} in the snapshot, {arr.dtype} now"
            )
    if diffs:
        err = SnapshotMismatchError(
            f"snapshot {report.url} does not match the state it is loaded into "
            f"({len(diffs)} difference(s)):\n  " + "\n  ".join(diffs)
        )
        err.differences = diffs  # type: ignore[attr-defined]
        raise err


def _check_loadable(graph: Graph) -> None:
    if callable(getattr(graph, "load_state_dict", None)):
        return
    if not isinstance(graph, MutableMapping):
        raise UnsupportedValueError(
            f"cannot load into {type(graph).__name__}: need a mutable mapping or load_state_dict()"
        )


def _apply(graph: Graph, arrays: dict[str, np.ndarray]) -> None:
    load = getattr(graph, "load_state_dict", None)
    if callable(load):
        load(arrays)
    else:
        for name, arr in arrays.items():
            graph[name] = arr  # type: ignore[index]


def _read_all(reader: NpzReader, report: SnapshotReport) -> dict[str, np.ndarray]:
    with reader:
        arrays = {rec.name: reader.read_array(rec) for rec in report.arrays}
        reader.check_hashes()
    return arrays


def _reader(fh: BinaryIO, where: str) -> NpzReader:
    return NpzReader(fh, where, max_members=MAX_ARRAYS + 1, max_dir_bytes=MAX_DIR_BYTES)


def download_and_load_state(
    graph: Graph,
    url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
    signing_key: str | bytes | None = None,
) -> dict[str, Any]:
    """Verify the snapshot at `url` completely, then replace `graph`'s arrays; returns `extra`.

    Raises `ObjectNotFoundError` if it does not exist, `SourceUnreachableError` if it cannot be
    reached, `IntegrityError` if it is damaged and `SnapshotMismatchError` if its names, shapes
    or dtypes differ from the graph's; in every error case the graph is untouched. On success a
    mapping's entries are *replaced* by new arrays (re-read them from the graph; references
    taken before are stale); `load_state_dict` receives a dict of numpy arrays.
    """
    _check_loadable(graph)
    with _opened(url, storage_options, tmp_dir) as (fh, where):
        reader = _reader(fh, where)
        report = parse_manifest(reader, signing.resolve_key(signing_key))
        _check_against(report, _state_of(graph))
        arrays = _read_all(reader, report)
    _apply(graph, arrays)
    logger.debug("loaded %d arrays from %s", len(arrays), report.url)
    return dict(report.extra)


def read_snapshot(
    url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
    signing_key: str | bytes | None = None,
) -> tuple[dict[str, np.ndarray], SnapshotReport]:
    """The verified arrays (by name) and report of a snapshot, without a graph."""
    with _opened(url, storage_options, tmp_dir) as (fh, where):
        reader = _reader(fh, where)
        report = parse_manifest(reader, signing.resolve_key(signing_key))
        return _read_all(reader, report), report


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
    with _opened(url, storage_options, tmp_dir) as (fh, where):
        reader = _reader(fh, where)
        report = parse_manifest(reader, signing.resolve_key(signing_key))
        with reader:
            for rec in report.arrays:
                reader.verify_member(rec)
            reader.check_hashes()
    return report
