#!/usr/bin/env python3
"""Crash-state harness: record the checkpoint's file operations, rebuild every state a power cut
could leave, and check that each opens to a prefix of the history holding every acknowledged
record.

How (after ALICE, OSDI 2014, and SQLite's power-loss VFS): a `Recorder` replaces
`resumable._durable.ops` while a scenario runs real sweeps (record, record_failure, retry, seal,
launch, meta, installing a resumed source, HDF5 export), so every open, write, fsync,
fdatasync, ftruncate, rename, unlink, mkdir, directory fsync and tree removal is noted, with
inode identities. For every prefix of the operations (a crash after each one) the persisted part
is what a later fsync covers (a file's writes and truncations by an fsync of that file, a
directory's entries by an fsync of that directory); everything else is pending and may or may
not have reached the disk: pending writes applied or not (reordered among themselves) and torn
at page granularity (a prefix of the pages; the new size with zeroed pages and only the last
one written; stale garbage instead of zeros unless whole records follow it; the new size with
the first pages, or any one page, of a write of several pages zeroed and the others written,
as a group commit leaves), pending creations, renames, unlinks and removals applied or not.
Each distinct state is materialised in a directory and opened: `load` must give exactly a
prefix of the final history (same hash chain) holding every record acknowledged before the
crash, and must not raise; a sample is also opened by a real sweep, which must then record and
reopen.

Run: python scripts/crash_states.py [--min-states 10000] [--seed 1] [--sweep-every 7]
Prints the states explored per scenario, losses and refusals; exit 1 if any.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resumable import ResumableSweep
from resumable import _durable as durable
from resumable import _limits as limits
from resumable._checkpoint import SEGMENTS_DIR, load, progress_dir_for
from resumable._durable import FileOps
from resumable._journal import record_follows
from resumable.errors import ResumableError

PAGE = 4096
SECTOR = 512
DIR = "dir"
ITEMS = [{"i": i} for i in range(200)]
BASIC_ITEMS = 60


def _key(item: dict) -> str:
    return f"k{item['i']:03d}"


# -- recording --------------------------------------------------------------------------------


class Recorder(FileOps):
    """Performs each operation and notes it (paths relative to `root`, files by inode id)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.ops: list[tuple[Any, ...]] = []
        self.fds: dict[int, tuple[str, Any]] = {}
        self.names: dict[str, Any] = {}  # rel path -> inode id or DIR (as things are now)
        self.base_names: dict[str, Any] = {}
        self.base_data: dict[int, bytes] = {}
        self._next = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            for d in dirnames:
                self.names[self._rel(Path(dirpath) / d)] = DIR
            for f in filenames:
                if f.endswith(".lock"):
                    continue
                ino = self._new()
                self.names[self._rel(Path(dirpath) / f)] = ino
                self.base_data[ino] = (Path(dirpath) / f).read_bytes()
        self.base_names = dict(self.names)

    def _new(self) -> int:
        self._next += 1
        return self._next

    def _rel(self, path: Any) -> str | None:
        full = os.path.realpath(os.fspath(path))
        rel = os.path.relpath(full, self.root)
        return None if rel == ".." or rel.startswith("../") or full.endswith(".lock") else rel

    def ack(self, acked: int) -> None:
        self.ops.append(("ack", acked))

    # FileOps ---------------------------------------------------------------------------------

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        fd = super().open(path, flags, mode)
        rel = self._rel(path)
        if rel is None:
            return fd
        if os.path.isdir(path):
            self.fds[fd] = ("dir", rel)
            return fd
        ino = self.names.get(rel)
        if ino is None or ino == DIR:
            ino = self._new()
            self.names[rel] = ino
            self.ops.append(("create", rel, ino))
        self.fds[fd] = ("file", ino)
        return fd

    def write(self, fd: int, data: Any) -> int:
        n = super().write(fd, data)
        entry = self.fds.get(fd)
        if entry is not None and entry[0] == "file":
            end = os.lseek(fd, 0, os.SEEK_CUR)
            self.ops.append(("write", entry[1], end - n, bytes(data[:n])))
        return n

    def _synced(self, fd: int) -> None:
        entry = self.fds.get(fd)
        if entry is None:  # written by another library or a file object: take its content
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return
            rel = self._rel(path)
            if rel is None or not os.path.isfile(path):
                return
            ino = self.names.get(rel)
            if ino is None or ino == DIR:
                ino = self._new()
                self.names[rel] = ino
                self.ops.append(("create", rel, ino))
            data = Path(path).read_bytes()
            self.ops.append(("truncate", ino, 0))
            self.ops.append(("write", ino, 0, data))
            entry = ("file", ino)
        if entry[0] == "dir":
            self.ops.append(("fsync_dir", entry[1]))
        else:
            self.ops.append(("fsync", entry[1]))

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self._synced(fd)

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        self._synced(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        super().ftruncate(fd, size)
        entry = self.fds.get(fd)
        if entry is not None and entry[0] == "file":
            self.ops.append(("truncate", entry[1], size))

    def close(self, fd: int) -> None:
        self.fds.pop(fd, None)
        super().close(fd)

    def _move(self, src: str, dst: str) -> None:
        moved = {k: v for k, v in self.names.items() if k == src or k.startswith(src + "/")}
        for k in list(self.names):
            if k == dst or k.startswith(dst + "/"):
                del self.names[k]
        for k, v in moved.items():
            del self.names[k]
            self.names[dst + k[len(src) :]] = v

    def replace(self, src: Any, dst: Any) -> None:
        rs, rd = self._rel(src), self._rel(dst)
        super().replace(src, dst)
        if rs is not None and rd is not None:
            self.ops.append(("rename", rs, rd))
            self._move(rs, rd)

    def rename(self, src: Any, dst: Any) -> None:
        rs, rd = self._rel(src), self._rel(dst)
        super().rename(src, dst)
        if rs is not None and rd is not None:
            self.ops.append(("rename", rs, rd))
            self._move(rs, rd)

    def unlink(self, path: Any) -> None:
        rel = self._rel(path)
        super().unlink(path)
        if rel is not None:
            self.ops.append(("unlink", rel))
            self.names.pop(rel, None)

    def mkdir(self, path: Any) -> None:
        super().mkdir(path)
        rel = self._rel(path)
        if rel is not None:
            self.ops.append(("mkdir", rel))
            self.names[rel] = DIR

    def rmtree(self, path: Any) -> None:
        rel = self._rel(path)
        super().rmtree(path)
        if rel is not None:
            self.ops.append(("rmtree", rel))
            for k in list(self.names):
                if k == rel or k.startswith(rel + "/"):
                    del self.names[k]


# -- crash states -----------------------------------------------------------------------------

_DATA = {"write", "truncate"}
_NAMES = {"create", "mkdir", "rename", "unlink", "rmtree"}


def _parent(rel: str) -> str:
    return os.path.dirname(rel) or "."


def _dirs(op: tuple[Any, ...]) -> tuple[str, ...]:
    if op[0] == "rename":
        return (_parent(op[1]), _parent(op[2]))
    return (_parent(op[1]),)


def _persisted(ops: list[tuple[Any, ...]], k: int) -> list[bool]:
    """For the crash after ops[:k]: which of them a later fsync made durable."""
    synced_inos: set[int] = set()
    synced_dirs: set[str] = set()
    out = [True] * k
    for i in range(k - 1, -1, -1):
        op = ops[i]
        kind = op[0]
        if kind == "fsync":
            synced_inos.add(op[1])
        elif kind == "fsync_dir":
            synced_dirs.add(op[1])
        elif kind in _DATA:
            out[i] = op[1] in synced_inos
        elif kind in _NAMES:
            out[i] = all(d in synced_dirs for d in _dirs(op))
    return out


@dataclass(frozen=True)
class Tear:
    """How one pending write reached the disk."""

    index: int
    how: str  # "prefix:<pages>", "sectors:<n>", "zeros", "garbage", "head:<n>", "hole:<n>"


def _pieces(offset: int, end: int, unit: int) -> list[tuple[int, int]]:
    bounds = sorted({offset, end, *range((offset // unit + 1) * unit, end, unit)})
    return list(itertools.pairwise(bounds))


def _torn(offset: int, data: bytes, how: str) -> list[tuple[int, bytes]]:
    """The pieces of a write that reached the disk, as (offset, bytes) with zero/garbage fills.

    how: "prefix:<n>" (the first n pages), "sectors:<n>" (the first n 512-byte sectors),
    "zeros" / "garbage" (the new size and the last page; the pages before it zeroed or stale),
    "head:<n>" (the new size, the first n pages zeroed, the later ones written), "hole:<n>"
    (the new size, page n zeroed, the others written): a group commit's write spans many
    pages, so whole records of it may survive after zeroed ones.
    """
    end = offset + len(data)
    kind, _, n = how.partition(":")
    if kind in ("prefix", "sectors"):
        parts = _pieces(offset, end, PAGE if kind == "prefix" else SECTOR)
        return [(a, data[a - offset : b - offset]) for a, b in parts[: int(n)]]
    pages = _pieces(offset, end, PAGE)
    if kind in ("head", "hole"):
        zero = range(int(n)) if kind == "head" else range(int(n), int(n) + 1)
        return [
            (a, bytes(b - a) if i in zero else data[a - offset : b - offset])
            for i, (a, b) in enumerate(pages)
        ]
    last_a = pages[-1][0]
    fill = b"\x00" if kind == "zeros" else b"\xa5"
    filled = [(a, fill * (b - a)) for a, b in pages[:-1]]
    return [*filled, (last_a, data[last_a - offset :])]


def _tear_modes(data: bytes, offset: int) -> list[str]:
    end = offset + len(data)
    pages = len(_pieces(offset, end, PAGE))
    sectors = len(_pieces(offset, end, SECTOR))
    modes = [f"prefix:{n}" for n in range(1, pages)]
    modes += [f"sectors:{n}" for n in range(1, sectors) if n % 8]  # the others are pages
    if data:
        modes.append("zeros")
        # Stale garbage before whole records that survive (a group's later pages) looks like
        # damage to acknowledged records: refused by design (journal.torn_group); only
        # filesystems that zero the unwritten pages of a write (ext4 data=ordered, XFS) are
        # modelled for that case.
        last = data[_pieces(offset, end, PAGE)[-1][0] - offset :]
        if pages == 1 or not record_follows(b"\xa5" + last, 0):
            modes.append("garbage")
    if pages >= 3 and data.count(b"\n") >= 2:  # a group over several pages: zeroed ones
        # with later ones written (one record's write torn so is what "zeros" shows)
        modes += [f"head:{n}" for n in range(1, pages - 1)]
        modes += [f"hole:{n}" for n in range(pages)]
    return modes


def _build(
    rec: Recorder, k: int, chosen: set[int], tear: Tear | None
) -> tuple[dict[str, Any], dict[int, bytearray]]:
    names = dict(rec.base_names)
    data = {ino: bytearray(b) for ino, b in rec.base_data.items()}
    for i in range(k):
        if i not in chosen:
            continue
        op = rec.ops[i]
        kind = op[0]
        if kind == "create":
            if _parent(op[1]) == "." or names.get(_parent(op[1])) == DIR:
                names[op[1]] = op[2]
            data.setdefault(op[2], bytearray())
        elif kind == "mkdir":
            if _parent(op[1]) == "." or names.get(_parent(op[1])) == DIR:
                names[op[1]] = DIR
        elif kind == "unlink":
            names.pop(op[1], None)
        elif kind == "rmtree":
            for key in [n for n in names if n == op[1] or n.startswith(op[1] + "/")]:
                del names[key]
        elif kind == "rename":
            src, dst = op[1], op[2]
            if src not in names:
                continue
            if names.get(dst) == DIR and any(n.startswith(dst + "/") for n in names):
                continue  # rename(2) refuses to replace a non-empty directory
            moved = {n: v for n, v in names.items() if n == src or n.startswith(src + "/")}
            for n in [n for n in names if n == dst or n.startswith(dst + "/")]:
                del names[n]
            for n, v in moved.items():
                del names[n]
                names[dst + n[len(src) :]] = v
        elif kind == "truncate":
            buf = data.setdefault(op[1], bytearray())
            del buf[op[2] :]
            buf.extend(bytes(max(0, op[2] - len(buf))))
        elif kind == "write":
            buf = data.setdefault(op[1], bytearray())
            pieces = _torn(op[2], op[3], tear.how) if tear and tear.index == i else [(op[2], op[3])]
            if tear and tear.index == i and tear.how in ("zeros", "garbage"):
                end = op[2] + len(op[3])
                buf.extend(bytes(max(0, end - len(buf))))
            for off, piece in pieces:
                if len(buf) < off:
                    buf.extend(bytes(off - len(buf)))
                buf[off : off + len(piece)] = piece
    return names, data


def crash_states(rec: Recorder, rng: random.Random) -> Iterator[tuple[int, set[int], Tear | None]]:
    """(k, chosen ops, tear) for every crash point k and the variants of its pending ops."""
    n = len(rec.ops)
    for k in range(n + 1):
        persisted = _persisted(rec.ops, k)
        base = {i for i in range(k) if persisted[i] and rec.ops[i][0] in _DATA | _NAMES}
        names = [i for i in range(k) if not persisted[i] and rec.ops[i][0] in _NAMES]
        writes = [i for i in range(k) if not persisted[i] and rec.ops[i][0] in _DATA]
        every = base | set(names) | set(writes)
        yield k, set(base), None
        yield k, every, None
        # pending name operations: each subset (few), else each one alone in or out
        if len(names) <= 4:
            subsets = [
                set(c) for r in range(len(names) + 1) for c in itertools.combinations(names, r)
            ]
        else:
            subsets = [{x} for x in names] + [set(names) - {x} for x in names]
        for sub in subsets:
            yield k, base | sub | set(writes), None
            yield k, base | sub, None
        # pending writes: each left out (reordered), and each torn
        for w in writes:
            yield k, every - {w}, None
            if rec.ops[w][0] == "write":
                for how in _tear_modes(rec.ops[w][3], rec.ops[w][2]):
                    yield k, every, Tear(w, how)
                    if names:
                        yield k, base | set(writes), Tear(w, how)
        if len(writes) > 2:  # a few random subsets of many pending writes
            for _ in range(4):
                yield k, base | set(names) | {w for w in writes if rng.random() < 0.5}, None


def _materialise(names: dict[str, Any], data: dict[int, bytearray], dest: Path) -> str:
    digest = hashlib.sha256()
    for rel in sorted(names, key=lambda r: (r.count("/"), r)):
        v = names[rel]
        if v == DIR:
            (dest / rel).mkdir(parents=True, exist_ok=True)
            digest.update(f"D {rel}\n".encode())
    for rel in sorted(names):
        v = names[rel]
        if v != DIR:
            if not (dest / rel).parent.is_dir():
                continue  # an entry in a directory whose own entry never reached the disk
            body = bytes(data.get(v, b""))
            (dest / rel).write_bytes(body)
            digest.update(f"F {rel} {hashlib.sha256(body).hexdigest()}\n".encode())
    return digest.hexdigest()


def _state_key(names: dict[str, Any], data: dict[int, bytearray]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(names):
        v = names[rel]
        body = b"D" if v == DIR else hashlib.sha256(bytes(data.get(v, b""))).digest()
        digest.update(rel.encode() + b"\0" + body)
    return digest.hexdigest()


# -- scenarios --------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    prepare: Callable[[Path, int], None]  # the durable starting point (not recorded)
    run: Callable[[Path, Recorder], None]  # recorded
    ckpt: str = "data/exp.h5"
    resume_from: str | None = None  # relative to the root, for the reopening sweep
    export: str | None = None  # an HDF5 export to check, relative to the root
    variant: int = 0  # varies sizes and seeds between runs of the same scenario
    part_bytes: tuple[int, ...] = ()  # limits.ITEMS_PART_BYTES per variant (default if empty)


def _open(root: Path, sc: Scenario, **kw: Any) -> ResumableSweep:
    resume = str(root / sc.resume_from) if sc.resume_from else None
    return ResumableSweep(
        ITEMS,
        key=_key,
        checkpoint_path=root / sc.ckpt,
        resume_from=resume,
        handle_signals=False,
        **kw,
    )


def _acked(root: Path, sc: Scenario) -> int:
    loaded = load(progress_dir_for(root / sc.ckpt))
    return loaded.state.last_seq if loaded is not None else 0


def _nothing(root: Path, variant: int = 0) -> None:
    (root / "data").mkdir()


def _run_basic(root: Path, rec: Recorder, sc: Scenario) -> None:
    sizes = random.Random(5 + sc.variant)
    segment_bytes = (6000, 2500, 20000, 9000)[sc.variant % 4]
    sweep = _open(root, sc, segment_bytes=segment_bytes)
    rec.ack(_acked(root, sc))
    failed = []
    for item in ITEMS[:BASIC_ITEMS]:
        if item["i"] % 7 == 3:
            sweep.record_failure(item, ValueError(f"bad {item['i']}"))
            failed.append(item)
        else:  # results from a few bytes to several pages
            pad = "x" * sizes.choice([0, 10, 300, 3000, 5000, 9000, 14000])
            sweep.record(item, {"i": item["i"], "pad": pad})
        rec.ack(_acked(root, sc))
        if item["i"] == BASIC_ITEMS // 2:
            sweep.meta["stage"] = "half"  # saved with the next record
    sweep.retry_failures()
    rec.ack(_acked(root, sc))
    sweep.meta["stage"] = "two"
    sweep.close()
    rec.ack(_acked(root, sc))
    sweep = _open(root, sc, segment_bytes=segment_bytes)  # relaunch: a launch record
    rec.ack(_acked(root, sc))
    for item in failed:
        sweep.record(item, item["i"])
        rec.ack(_acked(root, sc))
    sweep.close()
    rec.ack(_acked(root, sc))


def _prepare_torn(root: Path, variant: int = 0) -> None:
    _nothing(root)
    sc = Scenario("", _nothing, lambda r, c: None)
    with _open(root, sc) as sweep:
        for item in ITEMS[:3]:
            sweep.record(item, item["i"])
    pdir = progress_dir_for(root / sc.ckpt)
    active = json.loads((pdir / "manifest.json").read_bytes())["active"]
    junk = (b"\x00" * 5000 + b'"tail of a record"', b"\xa5" * 700, b"0123abc")[variant % 3]
    with open(pdir / SEGMENTS_DIR / active, "ab") as fh:  # a torn append left by a crash
        fh.write(junk * (1 + variant // 3))


def _run_torn(root: Path, rec: Recorder, sc: Scenario) -> None:
    sweep = _open(root, sc)  # drops the torn tail: keeps it in torn/, truncates
    rec.ack(_acked(root, sc))
    for item in ITEMS[3 : 6 + sc.variant]:
        sweep.record(item, {"i": item["i"], "pad": "p" * (2000 * (item["i"] % 4))})
        rec.ack(_acked(root, sc))
    sweep.close()
    rec.ack(_acked(root, sc))


def _prepare_install(root: Path, variant: int = 0) -> None:
    _nothing(root)
    sc = Scenario("", _nothing, lambda r, c: None)
    with _open(root, sc) as sweep:
        for item in ITEMS[:2]:
            sweep.record(item, item["i"])
    src = root / "source" / "exp.h5"
    src.parent.mkdir()
    shutil.copytree(progress_dir_for(root / sc.ckpt), progress_dir_for(src))
    with _open(root, Scenario("", _nothing, lambda r, c: None, ckpt="source/exp.h5")) as sweep:
        for item in ITEMS[2 : 6 + 3 * variant]:
            sweep.record(item, {"i": item["i"], "pad": "s" * (1500 * (item["i"] % 3))})


def _run_install(root: Path, rec: Recorder, sc: Scenario) -> None:
    sweep = _open(root, sc)  # downloads the source (ahead) and installs it in place
    rec.ack(_acked(root, sc))
    for item in ITEMS[40:43]:
        sweep.record(item, item["i"])
        rec.ack(_acked(root, sc))
    sweep.close()
    rec.ack(_acked(root, sc))


def _prepare_export(root: Path, variant: int = 0) -> None:
    _nothing(root)
    sc = Scenario("", _nothing, lambda r, c: None)
    with _open(root, sc) as sweep:
        for item in ITEMS[: 4 + variant]:
            sweep.record(item, {"v": item["i"]})


def _run_export(root: Path, rec: Recorder, sc: Scenario) -> None:
    sweep = _open(root, sc)
    rec.ack(_acked(root, sc))
    sweep.export_h5(root / "data" / "out.h5")
    sweep.record(ITEMS[100], {"v": 100})
    rec.ack(_acked(root, sc))
    sweep.export_h5(root / "data" / "out.h5")  # replaces the first export
    sweep.close()
    rec.ack(_acked(root, sc))


def _square(item: dict[str, Any]) -> dict[str, Any]:
    return {"i": item["i"], "sq": item["i"] ** 2}


def _run_group(root: Path, rec: Recorder, sc: Scenario) -> None:
    """Group commit: record_many groups crossing segment boundaries, then run() in-process."""
    sizes = random.Random(9 + sc.variant)
    segment_bytes = (5000, 12000, 30000)[sc.variant % 3]
    sweep = _open(root, sc, segment_bytes=segment_bytes)
    rec.ack(_acked(root, sc))
    start = 0
    while start < 30:
        size = sizes.choice([1, 2, 5, 9, 16])
        group = ITEMS[start : start + size]
        pad = "g" * sizes.choice([0, 200, 700, 1100, 2500, 6000])  # 700, 1100: pages of records
        sweep.record_many([(item, {"i": item["i"], "pad": pad}) for item in group])
        rec.ack(_acked(root, sc))
        start += size
    sweep.run(_square, progress=False)  # in groups: acknowledged when run() returns
    rec.ack(_acked(root, sc))
    sweep.close()
    rec.ack(_acked(root, sc))


PARTED_SEGMENTS = (3000, 100_000, 9000)


def _prepare_parted(root: Path, variant: int = 0) -> None:
    """Even variants: nothing yet (the run writes the whole list); odd ones: a sweep of the
    first 40 items with a few results (the run appends 160 entries)."""
    _nothing(root)
    if variant % 2:
        sc = Scenario("", _nothing, lambda r, c: None)
        with ResumableSweep(
            ITEMS[:40], key=_key, checkpoint_path=root / sc.ckpt, handle_signals=False
        ) as sweep:
            for item in ITEMS[:4]:
                sweep.record(item, item["i"])


def _run_parted(root: Path, rec: Recorder, sc: Scenario) -> None:
    """An open that writes a long item list as parts and a closing record (a small
    limits.ITEMS_PART_BYTES), then records: cut anywhere in the parts, the list is ignored
    and written again by the next open."""
    sweep = _open(root, sc, segment_bytes=PARTED_SEGMENTS[sc.variant % 3])
    rec.ack(_acked(root, sc))
    for item in ITEMS[50:53]:
        sweep.record(item, {"i": item["i"]})
        rec.ack(_acked(root, sc))
    sweep.close()
    rec.ack(_acked(root, sc))


SCENARIOS = [
    Scenario("record/fail/retry/seal/meta/launch", _nothing, _run_basic),
    Scenario("group commit (record_many, run)", _nothing, _run_group),
    Scenario("reopen over a torn tail", _prepare_torn, _run_torn),
    Scenario(
        "install a resumed source",
        _prepare_install,
        _run_install,
        resume_from="source/exp.h5.resumable",
    ),
    Scenario("HDF5 export", _prepare_export, _run_export, export="data/out.h5"),
    Scenario(
        "launch writing a parted item list",
        _prepare_parted,
        _run_parted,
        part_bytes=(250, 500, 150),
    ),
]


def plan() -> Iterator[Scenario]:
    """Every scenario, then again with other sizes and seeds, without end."""
    for variant in itertools.count():
        for sc in SCENARIOS:
            yield replace(sc, variant=variant)


# -- checking ---------------------------------------------------------------------------------


@dataclass
class Tally:
    name: str = ""
    states: int = 0
    recorded_ops: int = 0
    losses: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    sweep_opens: int = 0


def _history(pdir: Path) -> list[str]:
    """The record hashes of the final checkpoint, in order."""
    manifest = json.loads((pdir / "manifest.json").read_bytes())
    names = [s["name"] for s in manifest["segments"]] + [manifest["active"]]
    out = []
    for name in names:
        for line in (pdir / SEGMENTS_DIR / name).read_bytes().splitlines():
            out.append(line[:64].decode())
    return out


def _check(
    root: Path, sc: Scenario, acked: int, history: list[str], sweep_open: bool
) -> str | None:
    """None if the state is fine, else what is wrong ("loss: ..." or "refusal: ...")."""
    pdir = progress_dir_for(root / sc.ckpt)
    try:
        loaded = load(pdir)
    except ResumableError as exc:
        return f"refusal: load raised {type(exc).__name__}: {exc}"
    have = loaded.state.last_seq if loaded is not None else 0
    if have and (have > len(history) or history[have - 1] != loaded.state.last_hash):
        return f"loss: {have} records that are not a prefix of the history"
    if have < acked and not sc.resume_from:
        return f"loss: {have} records, {acked} were acknowledged"
    if sc.export is not None:
        problem = _check_export(root / sc.export)
        if problem:
            return problem
    if have < acked and sc.resume_from:  # an install cut short: the open must put it back
        alone = root.with_name(root.name + "-alone")  # a copy: this open starts a new history
        shutil.copytree(root, alone, symlinks=True)
        try:
            with _open(alone, replace(sc, resume_from=None)):
                pass
            back = load(progress_dir_for(alone / sc.ckpt))
        except ResumableError as exc:
            return f"refusal: reopening without the source raised {type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(alone, ignore_errors=True)
        if back is None or back.state.last_seq < acked:
            got = back.state.last_seq if back is not None else 0
            return f"loss: reopened without the source with {got} records, {acked} acknowledged"
    if sweep_open or (have < acked and sc.resume_from):
        try:
            with _open(root, sc) as sweep:
                pending = next(iter(sweep.pending), None)
                if pending is not None:
                    sweep.record(pending, "after the crash")
            again = load(pdir)
        except ResumableError as exc:
            return f"refusal: reopening raised {type(exc).__name__}: {exc}"
        assert again is not None
        if again.state.last_seq < acked:
            return f"loss: reopened with {again.state.last_seq} records, {acked} acknowledged"
        if [e[0] for e in again.state.items_listing()] != [_key(i) for i in ITEMS]:
            return "loss: reopened, the item list recorded is not the sweep's"
    return None


def _check_export(path: Path) -> str | None:
    """An export is absent (never completed) or whole."""
    if not path.exists():
        return None
    import h5py

    try:
        with h5py.File(path, "r") as f:
            n = int(f.attrs["n_items"])
            if len(f["items"]) != n:
                return f"loss: export {path.name} holds {len(f['items'])} items, says {n}"
    except (OSError, KeyError, ValueError) as exc:
        return f"refusal: export {path.name} is unreadable: {exc}"
    return None


def explore(sc: Scenario, *, budget: int, sweep_every: int, seed: int, workdir: Path) -> Tally:
    """Record one run of `sc` and check up to `budget` distinct crash states of it (under
    the scenario's limits.ITEMS_PART_BYTES, if it sets one)."""
    saved = limits.ITEMS_PART_BYTES
    if sc.part_bytes:
        limits.ITEMS_PART_BYTES = sc.part_bytes[sc.variant % len(sc.part_bytes)]
    try:
        return _explore(sc, budget=budget, sweep_every=sweep_every, seed=seed, workdir=workdir)
    finally:
        limits.ITEMS_PART_BYTES = saved


def _explore(sc: Scenario, *, budget: int, sweep_every: int, seed: int, workdir: Path) -> Tally:
    tally = Tally()
    rng = random.Random(seed)
    live = workdir / "live"
    live.mkdir()
    sc.prepare(live, sc.variant)
    baseline = _acked(live, sc)  # acknowledged before the recorded run began
    rec = Recorder(live)
    with durable.use_ops(rec):
        sc.run(live, rec, sc)
    tally.recorded_ops = len([op for op in rec.ops if op[0] != "ack"])
    history = _history(progress_dir_for(live / sc.ckpt))
    acks = [baseline] * (len(rec.ops) + 1)
    for i, op in enumerate(rec.ops):
        acks[i + 1] = op[1] if op[0] == "ack" else acks[i]
    seen: set[str] = set()
    candidates = list(crash_states(rec, rng))
    rng.shuffle(candidates)  # a budget smaller than the whole samples every crash point
    for k, chosen, tear in candidates:
        if tally.states >= budget:
            break
        names, data = _build(rec, k, chosen, tear)
        key = _state_key(names, data)
        if key in seen:
            continue
        seen.add(key)
        tally.states += 1
        dest = workdir / f"s{tally.states}"
        dest.mkdir()
        _materialise(names, data, dest)
        if sc.resume_from:  # the source is not part of what the run writes; keep it as it was
            src = dest / sc.resume_from
            if not src.exists():
                shutil.copytree(live / sc.resume_from, src)
        opened = sweep_every > 0 and tally.states % sweep_every == 0
        tally.sweep_opens += opened
        problem = _check(dest, sc, acks[k], history, opened)
        if problem is not None:
            where = f"{sc.name}: crash after op {k}/{len(rec.ops)} {tear or ''}: {problem}"
            (tally.losses if problem.startswith("loss") else tally.refusals).append(where)
        shutil.rmtree(dest, ignore_errors=True)
    return tally


def run(*, min_states: int, sweep_every: int, seed: int, quiet: bool = False) -> list[Tally]:
    """Explore scenarios (each kind once, then variants) until `min_states` distinct states
    were checked; returns one tally per recorded run."""
    import logging

    logger = logging.getLogger("resumable")
    level = logger.level
    logger.setLevel(logging.ERROR)  # torn-tail warnings, by design
    try:
        return _run(min_states=min_states, sweep_every=sweep_every, seed=seed, quiet=quiet)
    finally:
        logger.setLevel(level)


def _run(*, min_states: int, sweep_every: int, seed: int, quiet: bool) -> list[Tally]:
    results: list[Tally] = []
    total = 0
    first_share = max(1, min_states // len(SCENARIOS))
    for n, sc in enumerate(plan()):
        if total >= min_states:
            break
        budget = first_share if n < len(SCENARIOS) else min_states - total
        with tempfile.TemporaryDirectory(prefix="crash-states-") as tmp:
            t0 = time.perf_counter()
            tally = explore(
                sc, budget=budget, sweep_every=sweep_every, seed=seed + n, workdir=Path(tmp)
            )
        tally.name = f"{sc.name} #{sc.variant}"
        results.append(tally)
        total += tally.states
        if not quiet:
            print(
                f"{tally.name:<40} {tally.recorded_ops:>5} ops  {tally.states:>6} states  "
                f"{tally.sweep_opens:>5} sweep opens  {len(tally.losses):>3} losses  "
                f"{len(tally.refusals):>3} refusals  {time.perf_counter() - t0:6.1f} s",
                flush=True,
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-states", type=int, default=10_000, help="states to explore in all")
    parser.add_argument(
        "--sweep-every", type=int, default=7, help="open a real sweep every N states"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    t0 = time.perf_counter()
    results = run(min_states=args.min_states, sweep_every=args.sweep_every, seed=args.seed)
    states = sum(t.states for t in results)
    ops = sum(t.recorded_ops for t in results)
    losses = [x for t in results for x in t.losses]
    refusals = [x for t in results for x in t.refusals]
    print(
        f"total: {states} distinct crash states from {len(results)} recorded runs ({ops} file "
        f"operations), {len(losses)} acknowledged-record losses, "
        f"{len(refusals)} refusals of a reachable state, {time.perf_counter() - t0:.0f} s"
    )
    for line in (losses + refusals)[:20]:
        print("  " + line)
    return 1 if losses or refusals else 0


if __name__ == "__main__":
    sys.exit(main())
