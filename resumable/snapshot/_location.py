"""Where a snapshot lives: a local path or any fsspec URL, written atomically, with history.

Locally a save is a temp file in the same directory, fsync, rename, fsync of the directory;
remotely (through `storage.Store`) the object appears complete or not at all. ``keep=N``
history: ``snapshot.npz`` is the newest, ``snapshot.1.npz`` ... ``snapshot.<N-1>.npz`` the
previous ones (1 the most recent). Locally the rotation renames and hard-links (no data is
copied; a copy is made only where hard links are unsupported) after the new snapshot is complete
on disk. On object stores there is no rename: each save with ``keep=N`` first shifts up to N-1
objects by server-side copies (S3 CopyObject, GCS rewrite: no data passes through this process,
so a save uploads one snapshot's bytes), then uploads the new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar
from urllib.parse import unquote, urlsplit

from .. import _durable as durable
from ..errors import ConfigurationError, ObjectNotFoundError, StorageError
from ._npz import COPY_CHUNK

if TYPE_CHECKING:
    from .._storage import Store

T = TypeVar("T")


def display_url(url: str | os.PathLike[str]) -> str:
    """`url` with credentials removed, for messages."""
    from .._urls import redact

    return redact(os.fspath(url))


@dataclass(frozen=True)
class Location:
    store: Store  # rooted at the parent
    name: str
    local_path: Path | None
    display: str

    @property
    def key(self) -> str:
        """Identifies the target across calls (for one-save-at-a-time per target)."""
        if self.local_path is not None:
            return str(self.local_path.resolve())
        return self.store.url(self.name)


def _store(root: str, storage_options: Mapping[str, Any] | None) -> Store:
    """A Store for `root` (cheap: storage shares filesystem clients between Stores)."""
    from .._storage import Store

    return Store(root, storage_options=dict(storage_options or {}))


def locate(url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None) -> Location:
    """Split a snapshot path/URL into (Store of its parent, object name)."""
    from .._urls import is_url

    raw = os.fspath(url)
    if not isinstance(raw, str) or not raw:
        raise ConfigurationError(f"snapshot location must be a non-empty path or URL: {url!r}")
    display = display_url(raw)
    if not is_url(raw):
        path = Path(raw).expanduser()
        if not path.name or raw.endswith(("/", os.sep)):
            raise ConfigurationError(f"snapshot path must name a file: {display}")
        store = _store(str(path.parent), storage_options)
        assert store.local_path is not None  # the Store of a local directory
        return Location(store, path.name, store.local_path / path.name, display)
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
    local = store.local_path / name if store.local_path is not None else None
    return Location(store, name, local, display)


def history_name(name: str, k: int) -> str:
    return f"{name[:-4]}.{k}.npz" if name.endswith(".npz") else f"{name}.{k}"


# --- writing ----------------------------------------------------------------------------------


def write(loc: Location, body: Callable[[BinaryIO, bool], T], keep: int) -> T:
    """Run `body(out, seekable)` into a new snapshot at `loc`, atomically, keeping history."""
    if loc.local_path is not None:
        return _save_local(loc.local_path, body, keep)
    return _save_remote(loc, body, keep)


def _save_local(path: Path, body: Callable[[BinaryIO, bool], T], keep: int) -> T:
    durable.make_dirs(path.parent)
    if keep == 1:
        with durable.atomic_writer(path) as fh:
            return body(fh, True)
    staged = path.with_name(f".{path.name}.staged")
    with durable.atomic_writer(staged) as fh:
        result = body(fh, True)
    try:
        _rotate_local(path, keep)
        os.replace(staged, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        raise StorageError(f"cannot rotate snapshot history of {path}: {exc}") from exc
    durable.fsync_dir(path.parent)
    return result


def _rotate_local(path: Path, keep: int) -> None:
    """Shift snapshot.k.npz -> k+1 (dropping the oldest), then link the current one to .1."""
    hist = [path.with_name(history_name(path.name, k)) for k in range(keep)]
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


def _save_remote(loc: Location, body: Callable[[BinaryIO, bool], T], keep: int) -> T:
    store = loc.store
    names = [loc.name] + [history_name(loc.name, k) for k in range(1, keep)]
    for k in range(keep - 1, 0, -1):
        _copy_remote(store, names[k - 1], names[k])
    with store.open_write(loc.name) as fh:
        return body(fh, False)


def _copy_remote(store: Any, src: str, dst: str) -> None:
    try:
        store.copy(src, dst)  # server-side: nothing is downloaded or uploaded
    except ObjectNotFoundError:
        return


# --- reading ----------------------------------------------------------------------------------


@contextlib.contextmanager
def opened(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None,
    tmp_dir: str | os.PathLike[str] | None,
) -> Iterator[tuple[BinaryIO, str]]:
    """The snapshot as a seekable local file (remote ones are downloaded to a temp file)."""
    loc = locate(url, storage_options)
    if loc.local_path is not None:
        try:
            fh = open(loc.local_path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"snapshot {loc.display} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"cannot read snapshot {loc.display}: {exc.strerror}") from exc
        with fh:
            yield fh, loc.display
        return
    with tempfile.TemporaryFile(dir=tmp_dir, prefix=".resumable-snapshot-") as tmp:
        with loc.store.open_read(loc.name) as src:
            shutil.copyfileobj(src, tmp, COPY_CHUNK)
        tmp.flush()
        yield tmp, loc.display
