"""Per-item snapshots inside a sweep: a long item resumes mid-run after preemption.

A sweep resumes between items; a simulation resumes mid-run. An item longer than the instances
live needs both: ``snap = sweep.item_snapshot(item)`` gives a handle for the item in flight.

    for item in sweep.pending:
        snap = sweep.item_snapshot(item)
        state = {"u": np.zeros(n)}
        extra = snap.restore(state)          # None: no earlier launch saved this item
        step = extra["step"] if extra else 0
        snap.bind(state, extra=lambda: {"step": step})   # saved by the guard on SIGTERM
        while step < n_steps:
            advance(state); step += 1
            if step % 100 == 0:
                snap.save()                  # a periodic save at your own safe point
            snap.checkpoint_if_preempted()   # SIGTERM: save this item's state, flush, exit 75
        sweep.record(item, result(state))    # deletes the item's snapshot

Where they live
    ``<progress dir>/items/<id>.npz`` beside the checkpoint, where ``<id>`` is the first 32 hex
    digits of the SHA-256 of the item's key, and ``<mirror>/items/<id>.npz`` in the mirror
    (uploaded right after each local save, so a fresh machine resumes the item mid-run; while
    the mirror cannot be reached the save is local only, logged, and the next save uploads).
    `restore` reads the local one, else the resume source's, else the mirror's; each is a
    regular snapshot (`resumable.snapshot`), verified completely before the state is touched.
    A missing snapshot is a fresh start for the item; an unreachable or damaged one raises.

Interruptions
    Each item snapshot lists the launches (``sweep.launch_id``) that worked on the item. A
    launch that saved at preemption, or that a later launch finds in the list (it was killed),
    was interrupted; ``items/interrupted.json`` (local and mirror) keeps, per key, the launches
    that were interrupted while running the item, also after the item finished. `interruptions`
    reads it; `status` and the report show the items interrupted more than once, the sign of an
    item longer than the instances live.

After `record()`, the local snapshot is deleted at once and the mirror's at the next
`flush()`/`close()` (after the result itself reached the mirror), so a fresh machine never
finds neither the result nor the snapshot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import durable
from .errors import (
    ConfigurationError,
    IntegrityError,
    ObjectNotFoundError,
    ResumableError,
    StorageError,
)

if TYPE_CHECKING:
    from .storage import Store
    from .sweep import ResumableSweep

log = logging.getLogger("resumable.sweep")

ITEMS_DIR = "items"
INDEX_NAME = "interrupted.json"
_MAX_INDEX_BYTES = 64 << 20
Extra = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None


def item_id(key: str) -> str:
    """The file stem of an item's snapshot: never the key itself (keys are data, not names)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def interruptions(progress_dir: str | Path) -> dict[str, int]:
    """Per item key, how many launches were interrupted while running it (from the index)."""
    path = Path(progress_dir) / ITEMS_DIR / INDEX_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    return {k: len(v) for k, v in _parse_index(data, str(path)).items()}


def repeatedly_interrupted(view: Any) -> dict[str, int]:
    """Items interrupted more than once (key -> count), for a checkpoint view (local or URL,
    sharded or not): the sign of an item longer than the instances live."""
    shards = getattr(view, "shards", None)
    views = [v for v in shards if v is not None] if shards is not None else [view]
    out: dict[str, int] = {}
    for v in views:
        location = str(v.location)
        store = getattr(v, "store", None)  # the real URL: `location` is redacted for display
        if store is not None:
            name = f"{ITEMS_DIR}/{INDEX_NAME}"
            try:
                data: bytes | None = store.read_bytes(name, max_bytes=_MAX_INDEX_BYTES)
            except ObjectNotFoundError:
                data = None
            where = f"{location.rstrip('/')}/{name}"
            counts = {} if data is None else {
                k: len(x) for k, x in _parse_index(data, where).items()
            }  # fmt: skip
        else:
            counts = interruptions(location)
        out.update({k: n for k, n in counts.items() if n > 1})
    return out


def _parse_index(data: bytes, where: str) -> dict[str, list[str]]:
    try:
        raw = json.loads(data)
        items = raw["items"]
        if raw.get("version") != 1 or not isinstance(items, dict):
            raise ValueError("unknown layout")
        return {
            str(k): [str(x) for x in v][:10_000] for k, v in items.items() if isinstance(v, list)
        }
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise IntegrityError(f"{where}: not an item interruption index ({exc!s:.200})") from None


class ItemSnapshots:
    """The item snapshots of one sweep (created by the sweep; see the module docstring)."""

    def __init__(self, sweep: ResumableSweep) -> None:
        self._sweep = sweep
        self.local_dir = Path(sweep.progress_dir) / ITEMS_DIR
        self._lock = threading.RLock()
        self._bound: dict[str, ItemSnapshot] = {}
        self._hooked: Any = None
        self._to_delete: list[str] = []
        self._index: dict[str, list[str]] | None = None

    # --- places ---------------------------------------------------------------------------
    def _remote(self, base: str | None, name: str) -> str | None:
        if not base:
            return None
        from .remote import source_store

        return source_store(base, self._sweep.storage_options).url(f"{ITEMS_DIR}/{name}")

    def mirror_url(self, name: str) -> str | None:
        return self._remote(self._sweep.snapshot_dir, name)

    def sources(self, name: str) -> list[str]:
        urls = [self._remote(self._sweep.resume_from, name), self.mirror_url(name)]
        return list(dict.fromkeys(u for u in urls if u))

    # --- the interruption index -----------------------------------------------------------
    def _load_index(self) -> dict[str, list[str]]:
        if self._index is None:
            index: dict[str, list[str]] = {}
            path = self.local_dir / INDEX_NAME
            if path.exists():
                index = _parse_index(path.read_bytes(), str(path))
            else:
                for url in self.sources(INDEX_NAME):  # a fresh machine: carry the count on
                    data = _read_remote(url, self._sweep.storage_options)
                    if data is not None:
                        index = _parse_index(data, url)
                        break
            self._index = index
        return self._index

    def note_interrupted(self, key: str, launches: list[str]) -> None:
        """Add `launches` to the item's interrupted launches (durably, local and mirror)."""
        self.note_many({key: launches})

    def note_preempted(self, keys: list[str]) -> None:
        """This launch is preempted while `keys` are in flight (snapshots or not)."""
        self.note_many({k: [self._sweep.launch_id] for k in keys})

    def note_many(self, launches_by_key: Mapping[str, list[str]]) -> None:
        with self._lock:
            index = self._load_index()
            changed = False
            for key, launches in launches_by_key.items():
                seen = index.setdefault(key, [])
                new = [x for x in launches if x not in seen]
                seen.extend(new)
                changed = changed or bool(new)
            if not changed:
                return
            data = json.dumps({"version": 1, "items": index}, sort_keys=True).encode()
            durable.make_dirs(self.local_dir)
            durable.atomic_write_bytes(self.local_dir / INDEX_NAME, data)
            url = self.mirror_url(INDEX_NAME)
            if url is not None:
                _write_remote(url, data, self._sweep.storage_options)

    def interrupted(self, key: str) -> int:
        with self._lock:
            return len(self._load_index().get(key, []))

    # --- lifecycle ------------------------------------------------------------------------
    def bind(self, snap: ItemSnapshot) -> None:
        with self._lock:
            self._bound[snap.key] = snap
            guard = self._sweep.guard
            if guard is not None and self._hooked is not guard:
                guard.add_hook(self._on_preempt)
                self._hooked = guard

    def _on_preempt(self) -> None:
        """The guard's hook at the safe point: save every bound item in flight."""
        with self._lock:
            bound = list(self._bound.values())
        for snap in bound:
            snap.save(preempted=True)

    def recorded(self, key: str) -> None:
        """The item's result is durable: drop its snapshot (the mirror's after a flush)."""
        with self._lock:
            snap = self._bound.pop(key, None)
            name = f"{item_id(key)}.npz"
            path = self.local_dir / name
            if snap is not None or path.exists():
                durable_unlink(path)
                if self.mirror_url(name) is not None:
                    self._to_delete.append(name)

    def flushed(self) -> None:
        """The mirror holds every result recorded so far: delete their item snapshots there."""
        with self._lock:
            names, self._to_delete = self._to_delete, []
        for name in names:
            url = self.mirror_url(name)
            if url is None:
                continue
            try:
                _delete_remote(url, self._sweep.storage_options)
            except StorageError as exc:  # harmless: a done item's snapshot is never used
                log.warning("could not delete the item snapshot %s: %s", name, exc)


class ItemSnapshot:
    """The snapshot handle of one item in flight (see the module docstring)."""

    def __init__(self, owner: ItemSnapshots, key: str) -> None:
        self._owner = owner
        self.key = key
        self.name = f"{item_id(key)}.npz"
        self.path = owner.local_dir / self.name
        self._graph: Any = None
        self._extra: Extra = None
        self._launches: list[str] = []
        self.restored_from: str | None = None

    @property
    def interrupted(self) -> int:
        """How many launches were interrupted while running this item."""
        return self._owner.interrupted(self.key)

    def restore(self, graph: Any) -> dict[str, Any] | None:
        """Load the item's last snapshot into `graph` (in place); its `extra`, or None."""
        from .snapshot import download_and_load_state

        sweep = self._owner._sweep
        for where in [str(self.path), *self._owner.sources(self.name)]:
            try:
                extra = download_and_load_state(
                    graph, where, storage_options=None if where == str(self.path) else
                    sweep.storage_options, signing_key=sweep.signing_key,
                )  # fmt: skip
            except ObjectNotFoundError:
                continue
            meta = extra.get("item")
            if not isinstance(meta, dict) or meta.get("key") != self.key:
                raise IntegrityError(
                    f"item snapshot {where} belongs to another item than {self.key!r}"
                )
            self._launches = [str(x) for x in meta.get("launches", [])]
            earlier = [x for x in self._launches if x != sweep.launch_id]
            if earlier:
                self._owner.note_interrupted(self.key, earlier)
            self.restored_from = where
            log.info("item %r resumes from its snapshot %s", self.key, where)
            user = extra.get("user")
            return dict(user) if isinstance(user, dict) else {}
        return None

    def bind(self, graph: Any, extra: Extra = None) -> ItemSnapshot:
        """Set the graph (and extra, or a callable giving it) that `save()` and the guard's
        preemption hook save; returns self."""
        if extra is not None and not callable(extra) and not isinstance(extra, Mapping):
            raise ConfigurationError("extra must be None, a mapping, or a callable returning one")
        self._graph, self._extra = graph, extra
        self._owner.bind(self)
        return self

    def save(
        self, graph: Any = None, extra: Mapping[str, Any] | None = None, *, preempted: bool = False
    ) -> None:
        """Save the item's state now (at a safe point): locally, then to the mirror."""
        from .snapshot import save_state_with_manifest

        sweep = self._owner._sweep
        graph = self._graph if graph is None else graph
        if graph is None:
            raise ConfigurationError(f"item {self.key!r}: save() needs a graph (or bind() one)")
        if extra is None:
            extra = self._extra() if callable(self._extra) else self._extra
        if sweep.launch_id not in self._launches:
            self._launches.append(sweep.launch_id)
        meta = {"key": self.key, "launches": list(self._launches), "preempted": preempted}
        durable.make_dirs(self.path.parent)
        save_state_with_manifest(
            graph,
            self.path,
            extra={"user": dict(extra or {}), "item": meta},
            signing_key=sweep.signing_key,
        )
        url = self._owner.mirror_url(self.name)
        if url is not None:
            try:
                _upload(self.path, url, sweep.storage_options)
            except ResumableError as exc:  # like records: the sweep goes on while the mirror
                log.warning(  # is down; the next save uploads the newer state
                    "item %r: saved locally, but not to the mirror (%s)", self.key, exc
                )
        if preempted:
            self._owner.note_interrupted(self.key, [sweep.launch_id])

    def checkpoint_if_preempted(self) -> None:
        """A safe point inside the item: on preemption, save this item and exit 75."""
        self._owner._sweep.checkpoint_if_preempted()


# --- store helpers -----------------------------------------------------------------------------


def _split(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Store, str]:
    from .snapshot._location import locate

    loc = locate(url, storage_options)
    return loc.store, loc.name


def _upload(path: Path, url: str, storage_options: Mapping[str, Any] | None) -> None:
    import shutil

    store, name = _split(url, storage_options)
    with open(path, "rb") as src, store.open_write(name) as dst:
        shutil.copyfileobj(src, dst, 8 << 20)


def _read_remote(url: str, storage_options: Mapping[str, Any] | None) -> bytes | None:
    store, name = _split(url, storage_options)
    try:
        return store.read_bytes(name, max_bytes=_MAX_INDEX_BYTES)
    except ObjectNotFoundError:
        return None


def _write_remote(url: str, data: bytes, storage_options: Mapping[str, Any] | None) -> None:
    store, name = _split(url, storage_options)
    store.write_bytes(name, data)


def _delete_remote(url: str, storage_options: Mapping[str, Any] | None) -> None:
    store, name = _split(url, storage_options)
    store.delete(name)


def durable_unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    durable.fsync_dir(path.parent)
