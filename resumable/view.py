"""Read-only views of a sweep's progress, local or remote, sharded or not, without user code.

`open_view(path_or_url)` accepts a `checkpoint_path` (its progress beside it is found), a
progress directory, a mirror root or its `manifest.json`, on local disk or behind any URL that
resume accepts. A sharded sweep (a `sweep.json` descriptor beside `shard-*` directories) opens
as a `MergedView` over all its shards. Everything is verified before it is shown; `verify()`
goes further and reports every problem it finds instead of stopping at the first.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _segindex as segindex
from . import _signing as signing
from ._checkpoint import (
    MAX_MANIFEST_READ,
    PROGRESS_SUFFIX,
    SEGMENTS_DIR,
    Loaded,
    hash_at,
    load,
    load_from,
)
from ._codec import decode
from ._manifest import (
    MANIFEST_NAME,
    MAX_SEGMENT_BYTES,
    Manifest,
    parse_manifest,
    signature_state,
)
from ._remote import download, read_manifest, source_store
from ._storage import Store
from ._urls import is_url, join
from .errors import CheckpointNotFoundError, IntegrityError, ObjectNotFoundError, ResumableError
from .shards import (
    DESCRIPTOR_NAME,
    SHARD_DIR_RE,
    parse_descriptor,
    read_descriptor,
    shard_dir_name,
)
from .status import ResultColumns, SweepStatus, result_columns


@dataclass
class CheckpointView:
    """One verified checkpoint (one shard, or an unsharded sweep)."""

    location: str
    loaded: Loaded
    # A local directory holding the verified files (for a URL, the view's own downloaded
    # copy, kept as long as the view lives), so tools can read the whole journal (history).
    files: Path | None = None
    _keep: Any = field(default=None, repr=False, compare=False)
    # Where it was read (a Store; `location` is only its redacted name): for tools that read
    # more objects next to it. Never shown: it may hold credentials.
    store: Store | None = field(default=None, repr=False, compare=False)
    _columns: ResultColumns | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.loaded.manifest.sweep

    @property
    def shard(self) -> tuple[int, int] | None:
        raw = self.loaded.manifest.extra.get("shard")
        if isinstance(raw, list) and len(raw) == 2:
            return tuple(raw)
        # sweeps do not record it in the manifest: the shard directory's name says it
        match = SHARD_DIR_RE.match(self.location.rstrip("/").rsplit("/", 1)[-1])
        return (int(match[1]), int(match[2])) if match else None

    def items(self) -> list[list[Any]]:
        """[[key, fingerprint, params], ...] as recorded at the latest launch (fingerprints
        that the checkpoint does not store derived from the params: see _listing.py)."""
        return self.loaded.state.items_with_fingerprints()

    def keys(self) -> list[str]:
        listing = self.loaded.state.items_listing()
        if listing:
            return [entry[0] for entry in listing]
        state = self.loaded.state
        return list(dict.fromkeys([*state.results, *state.failures]))

    def results(self, *, include_stale: bool = False) -> Iterator[tuple[str, Any, Any]]:
        """(key, params, result) of finished items in record order (params None if unknown)."""
        params = {entry[0]: entry[-1] for entry in self.loaded.state.items_listing()}
        for key, rec in self.loaded.state.results.items():
            if key not in params and params and not include_stale:
                continue
            where = f"{rec.source}: result of item {key!r:.200} (record {rec.seq})"
            p = params.get(key)
            yield (
                key,
                (decode(p, where=where) if p is not None else None),
                decode(rec.body().get("value"), where=where),
            )

    def records(self) -> Iterator[Any]:
        """Every result and failure record (for reports): journal.Record objects."""
        state = self.loaded.state
        yield from state.results.values()
        yield from state.failure_records.values()

    def result_columns(self) -> ResultColumns:
        """The results' sequence numbers and times, computed once (a view is read-only) for
        its status and its timeline alike."""
        if self._columns is None:
            self._columns = result_columns(self.loaded.state)
        return self._columns

    def status(self) -> SweepStatus:
        state = self.loaded.state
        return SweepStatus.from_state(
            name=self.name,
            state=state,
            # counts suffice when every recorded key is current: no listing decoded
            keys=None if state.keys_all_current() else self.keys(),
            location=self.location,
            verified=True,
            columns=self.result_columns(),
        )


@dataclass
class MergedView:
    """All shards of a sharded sweep, read-only."""

    location: str
    name: str
    count: int
    shards: list[CheckpointView | None] = field(default_factory=list)  # None: not started

    def results(self, *, include_stale: bool = False) -> Iterator[tuple[str, Any, Any]]:
        for shard in self.shards:
            if shard is not None:
                yield from shard.results(include_stale=include_stale)

    def status(self) -> SweepStatus:
        per = [s.status() if s is not None else None for s in self.shards]
        started = [s for s in per if s is not None]
        if not started:
            raise CheckpointNotFoundError(f"no shard of sweep {self.name!r} at {self.location}")
        rates = [s.rate_per_s for s in started if s.rate_per_s]
        pending = sum(s.pending for s in started)
        rate = sum(rates) if rates else None
        finished = [s.last_finished for s in started if s.last_finished]
        first = [s.started for s in started if s.started]
        return SweepStatus(
            name=self.name,
            location=self.location,
            total=sum(s.total for s in started),
            done=sum(s.done for s in started),
            failed=sum(s.failed for s in started),
            pending=pending,
            stale=sum(s.stale for s in started),
            launches=sum(s.launches for s in started),
            launch_id=None,
            last_finished=max(finished) if finished else None,
            started=min(first) if first else None,
            rate_per_s=rate,
            eta_s=(pending / rate) if rate and pending else (0.0 if not pending else None),
            failures=tuple(g for s in started for g in s.failures),
            verified=True,
            shards=[
                # the shard's own "started" (its first launch's time) would clobber the flag
                {**(s.as_dict() if s else {}), "shard": i, "started": s is not None}
                | ({"first_launch": s.started} if s else {})
                for i, s in enumerate(per)
            ],
        )


def _local_candidates(path: Path) -> list[Path]:
    """Where the progress of `path` may be: itself, or beside it (a checkpoint_path)."""
    return [path, Path(str(path) + PROGRESS_SUFFIX)]


def open_view(
    path_or_url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> CheckpointView | MergedView:
    """Open and verify a sweep's progress for reading (see the module docstring); a path may
    be a `str` or an `os.PathLike`."""
    path_or_url = os.fspath(path_or_url)
    if not is_url(path_or_url):
        for cand in _local_candidates(Path(path_or_url).expanduser()):
            if (cand / MANIFEST_NAME).is_file():
                loaded = load(cand)
                assert loaded is not None
                return CheckpointView(str(cand), loaded, files=cand)
            if (cand / DESCRIPTOR_NAME).is_file():
                descriptor = parse_descriptor((cand / DESCRIPTOR_NAME).read_bytes(), str(cand))
                return _merged(Store(str(cand)), descriptor, storage_options)
            if (cand / SEGMENTS_DIR).is_dir():
                load(cand)  # records without a manifest are damage (IntegrityError), not absence
        raise CheckpointNotFoundError(
            f"no checkpoint at {path_or_url} (looked for {MANIFEST_NAME} or {DESCRIPTOR_NAME} "
            f"there and in {path_or_url}{PROGRESS_SUFFIX})"
        )
    store = source_store(path_or_url, storage_options)
    view = _remote_view(store)
    if view is not None:
        return view
    body = read_descriptor(store)
    if body is None:
        raise CheckpointNotFoundError(
            f"no checkpoint at {store.display} (neither {MANIFEST_NAME} nor {DESCRIPTOR_NAME})"
        )
    return _merged(store, body, storage_options)


def _remote_view(store: Store) -> CheckpointView | None:
    """Download and verify the checkpoint at `store` (None if it has no manifest)."""
    if store.is_local:
        assert store.local_path is not None
        loaded = load(store.local_path)
        if loaded is None:
            return None
        return CheckpointView(store.display, loaded, files=store.local_path, store=store)
    try:
        data = store.read_bytes(MANIFEST_NAME, max_bytes=MAX_MANIFEST_READ)
    except ObjectNotFoundError:
        return None
    # the verified copy stays for history readers and for payloads read back lazily (each
    # read checked against the manifest again), and is removed when the view is
    # garbage-collected (or at exit)
    tmp = tempfile.TemporaryDirectory(prefix="resumable-view-")
    try:
        path, loaded = download(store, data, Path(tmp.name) / "checkpoint")
    except BaseException:
        tmp.cleanup()
        raise
    return CheckpointView(store.display, loaded, files=path, _keep=tmp, store=store)


def shard_stores(
    root: Store, count: int, storage_options: dict[str, Any] | None = None
) -> list[Store]:
    """The Store of every shard of a sharded sweep whose root (descriptor place) is `root`."""
    names = [shard_dir_name(index, count) for index in range(count)]
    if root.is_local:
        assert root.local_path is not None
        return [Store(str(root.local_path / name)) for name in names]
    return [Store(f"{root.root.rstrip('/')}/{name}", storage_options) for name in names]


def _merged(
    root: Store, body: dict[str, Any], storage_options: dict[str, Any] | None
) -> MergedView:
    merged = MergedView(location=root.display, name=body["sweep"], count=body["shards"])
    for sub in shard_stores(root, body["shards"], storage_options):
        merged.shards.append(_remote_view(sub))
    return merged


@dataclass
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def verify(
    path_or_url: str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
    signing_key: str | bytes | None = None,
    mirror: str | None = None,
) -> list[Problem]:
    """Check every hash of a checkpoint (every shard of a sharded one); [] when intact.

    With a signing key (parameter, else env RESUMABLE_SIGNING_KEY), an unsigned or wrongly
    signed manifest is a problem too. With `mirror` (a URL or path), the checkpoint is also
    compared with it (see `compare_with_mirror`): alone, a checkpoint cannot tell its last
    records deleted from a torn tail; its mirror can.
    """
    path_or_url = os.fspath(path_or_url)
    problems = _verify(path_or_url, storage_options, signing_key)
    if mirror and not problems:
        problems = compare_with_mirror(open_view(path_or_url, storage_options), mirror)
    return problems


def compare_with_mirror(
    view: CheckpointView | MergedView,
    mirror_url: str,
    storage_options: dict[str, Any] | None = None,
) -> list[Problem]:
    """Problems of a checkpoint against its mirror: records the mirror holds that the
    checkpoint lacks (deleted, or dropped as a torn tail), another sweep's or a diverging
    history, an unreadable mirror. A mirror that does not exist yet, or lags, is no problem."""
    if isinstance(view, MergedView):
        pairs = [
            (shard, join(mirror_url, shard_dir_name(i, view.count)))
            for i, shard in enumerate(view.shards)
            if shard is not None
        ]
    else:
        pairs = [(view, mirror_url)]
    problems = []
    for local, url in pairs:
        store = source_store(url, storage_options)
        try:
            found = read_manifest(store)
        except ResumableError as exc:
            problems.append(Problem(store.display, f"cannot compare with the mirror: {exc}"))
            continue
        if found is None:
            continue
        remote, have = found[1], local.loaded.state.last_seq
        if remote.sweep_id != local.loaded.manifest.sweep_id:
            problems.append(
                Problem(store.display, f"the mirror holds another sweep than {local.location}")
            )
        elif remote.sealed_records > have:
            problems.append(Problem(local.location, _missing_text(store, remote, have)))
        elif local.files is not None and (
            hash_at(local.loaded.view(), local.files / SEGMENTS_DIR, remote.sealed_records)
            != remote.last_hash
        ):
            problems.append(
                Problem(
                    local.location,
                    f"diverges from the mirror {store.display} at or before record "
                    f"{remote.sealed_records}",
                )
            )
    return problems


def _missing_text(store: Store, remote: Any, have: int) -> str:
    """Which records (and items) the mirror holds beyond the local checkpoint's `have`."""
    text = (
        f"the mirror {store.display} holds records {have + 1}..{remote.sealed_records} that "
        "this checkpoint lacks (deleted, or dropped as a torn tail)"
    )
    try:
        mirrored = _remote_view(store)
    except ResumableError as exc:
        return f"{text}; the mirror's records cannot be read: {exc}"
    if mirrored is not None:
        state = mirrored.loaded.state
        keys = [
            k
            for recs in (state.results, state.failure_records)
            for k, rec in recs.items()
            if rec.seq > have
        ]
        if keys:
            shown = ", ".join(repr(k)[:80] for k in keys[:10])
            more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
            text += f"; items recorded there: {shown}{more}"
    return text + ". Resume from the mirror (resume_from=...) to get them back"


def _verify(
    path_or_url: str, storage_options: dict[str, Any] | None, signing_key: str | bytes | None
) -> list[Problem]:
    key = signing.resolve_key(signing_key)
    stores: list[Store]
    if not is_url(path_or_url):
        stores = []
        for cand in _local_candidates(Path(path_or_url).expanduser()):
            if (cand / MANIFEST_NAME).is_file():
                stores = [Store(str(cand))]
                break
            if (cand / DESCRIPTOR_NAME).is_file():
                try:
                    descriptor = parse_descriptor((cand / DESCRIPTOR_NAME).read_bytes(), str(cand))
                except IntegrityError as exc:
                    return [Problem(str(cand / DESCRIPTOR_NAME), str(exc))]
                stores = shard_stores(Store(str(cand)), descriptor["shards"])
                break
        if not stores:
            for cand in _local_candidates(Path(path_or_url).expanduser()):
                orphans = _orphaned_parts(Store(str(cand))) if cand.is_dir() else None
                if orphans is not None:
                    return [orphans]
            raise CheckpointNotFoundError(f"no checkpoint at {path_or_url}")
    else:
        root = source_store(path_or_url, storage_options)
        try:
            root.read_bytes(MANIFEST_NAME, max_bytes=MAX_MANIFEST_READ)
            stores = [root]
        except ObjectNotFoundError:
            body = read_descriptor(root)
            if body is None:
                orphans = _orphaned_parts(root)
                if orphans is not None:
                    return [orphans]
                raise CheckpointNotFoundError(f"no checkpoint at {root.display}") from None
            stores = shard_stores(root, body["shards"], storage_options)
    from ._item_snapshot import verify_items

    problems: list[Problem] = []
    for store in stores:
        problems.extend(_verify_one(store, shard_optional=len(stores) > 1, key=key))
        problems.extend(Problem(where, what) for where, what in verify_items(store, key))
    return problems


def _index_problems(
    local: Path, manifest: Manifest, parts: dict[str, bytes], where: str
) -> list[Problem]:
    """Each row index beside a sound sealed segment checked against the segment (rebuilt)."""
    problems = []
    for seg in manifest.segments:
        data = parts.get(f"{SEGMENTS_DIR}/{seg.name}")
        name = f"{SEGMENTS_DIR}/{segindex.index_name(seg.name)}"
        if data is None or not (local / name).exists():
            continue
        try:
            with open(local / name, "rb") as fh:
                found = fh.read(segindex.max_index_bytes(seg) + 1)
        except OSError as exc:
            problems.append(Problem(f"{where}/{name}", f"row index unreadable: {exc}"))
            continue
        problem = segindex.mismatch(found, data, seg)
        if problem is not None:
            problems.append(Problem(f"{where}/{name}", problem))
    return problems


def _orphaned_parts(store: Store) -> Problem | None:
    """A missing manifest beside stored parts is damage, not an absent checkpoint."""
    try:
        read_manifest(store)
    except IntegrityError as exc:
        return Problem(store.display, str(exc))
    return None


def _verify_one(store: Store, *, shard_optional: bool, key: bytes | None) -> list[Problem]:
    where = store.display
    try:
        mbytes = store.read_bytes(MANIFEST_NAME, max_bytes=MAX_MANIFEST_READ)
    except ObjectNotFoundError:
        return [] if shard_optional else [Problem(where, f"no {MANIFEST_NAME}")]
    except ResumableError as exc:
        return [Problem(where, str(exc))]
    try:
        manifest = parse_manifest(mbytes, source=f"{where}/{MANIFEST_NAME}")
    except IntegrityError as exc:
        return [Problem(f"{where}/{MANIFEST_NAME}", str(exc))]
    problems = []
    if key is not None:
        state = signature_state(mbytes, key)
        if state != "valid":
            what = "wrongly signed (altered, or another key)" if state == "invalid" else state
            problems.append(Problem(f"{where}/{MANIFEST_NAME}", f"signature: {what}"))
    parts: dict[str, bytes] = {}
    for seg in manifest.segments:
        name = f"{SEGMENTS_DIR}/{seg.name}"
        try:
            data = store.read_bytes(name, max_bytes=seg.size)
        except ObjectNotFoundError:
            problems.append(Problem(f"{where}/{name}", f"missing (expected {seg.size} bytes)"))
            continue
        except IntegrityError:
            problems.append(
                Problem(f"{where}/{name}", f"longer than the {seg.size} bytes recorded")
            )
            continue
        problem = seg.mismatch(data)
        if problem is not None:
            problems.append(Problem(f"{where}/{name}", problem))
        else:
            parts[name] = data
    if manifest.active is not None:
        name = f"{SEGMENTS_DIR}/{manifest.active}"
        try:
            parts[name] = store.read_bytes(name, max_bytes=MAX_SEGMENT_BYTES)
        except ResumableError as exc:
            problems.append(Problem(f"{where}/{name}", f"active segment unreadable: {exc}"))
    if store.local_path is not None:  # a progress directory's row indexes (never uploaded)
        problems.extend(_index_problems(store.local_path, manifest, parts, where))
    if problems:
        return problems

    def read(name: str, max_bytes: int) -> bytes:
        return parts[name]

    try:
        load_from(read, mbytes, location=where)
    except IntegrityError as exc:
        problems.append(Problem(where, str(exc)))
    return problems
