"""The snapshot manifest (schema 1): build it, and parse and bound it before any array is read.

Private to `resumable.snapshot`, whose docstring describes the fields. The manifest is the
``__resumable_manifest__.json`` member of the .npz; `parse_manifest` checks it against the
archive's own directory (every member listed exactly once, sizes equal, names positional) so
that nothing after it trusts a size or dtype the archive does not back.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _codec as codec
from .. import _signing as signing
from .._codec import descr_from_json, loads
from ..errors import IntegrityError
from ._npzread import NpzReader
from ._record import ArrayRecord, IntKey

FORMAT = "resumable.snapshot"
SCHEMA_VERSION = 2  # 2: records carry "path" (and "dtype_name"); "extra" is codec-encoded
MANIFEST_MEMBER = "__resumable_manifest__.json"
SIGNATURE_MEMBER = "__resumable_signature__"  # HMAC-SHA256 of the manifest member's bytes
MAX_ARRAYS = 100_000
# what a leaf was when saved (records' optional "kind"): how a leaf the graph being loaded
# lacks is rebuilt inside a state_dict() object (a fresh optimizer has no state yet)
LEAF_KINDS = frozenset(
    {"numpy", "npscalar", "torch", "jax", "other", "none", "bool", "int", "float", "complex", "str"}
)
MAX_MANIFEST_BYTES = 64 << 20
MAX_DIR_BYTES = 64 << 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MEMBER_FMT = "a{:05d}.npy"  # members are named by position, never by array name


@dataclass(frozen=True)
class SnapshotReport:
    """What a snapshot holds, as its (verified) manifest says."""

    url: str  # redacted
    format: str
    schema_version: int
    library_version: str
    created: str
    arrays: tuple[ArrayRecord, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    file_bytes: int = 0
    signature: str = "unsigned"  # "valid", "unchecked" (signed, no key given) or "unsigned"

    @property
    def array_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "format": self.format,
            "schema_version": self.schema_version,
            "library_version": self.library_version,
            "created": self.created,
            "file_bytes": self.file_bytes,
            "array_bytes": self.array_bytes,
            "extra": codec.encode(self.extra, what="extra"),
            "signature": self.signature,
            "arrays": [a.to_json() for a in self.arrays],
        }


def now_iso() -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def manifest_bytes(records: list[ArrayRecord], extra: Any, created: str) -> bytes:
    """The manifest member's bytes (compact ASCII JSON); `extra` as `codec.encode` made it."""
    from .. import __version__

    manifest = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "library_version": __version__,
        "numpy_version": np.__version__,
        "created": created,
        "extra": extra,
        "arrays": [r.to_json() for r in records],
    }
    text = json.dumps(manifest, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.encode("ascii")


def _bad(where: str, what: str) -> IntegrityError:
    return IntegrityError(f"{where}: {what}")


def parse_manifest(reader: NpzReader, signing_key: bytes | None = None) -> SnapshotReport:
    """The manifest, validated in full against the archive before any array is read.

    With `signing_key`, an unsigned or wrongly signed snapshot is refused (IntegrityError).
    """
    where = reader.where
    if MANIFEST_MEMBER not in reader.infos:
        raise _bad(where, f"no {MANIFEST_MEMBER} member: not a resumable snapshot (or truncated)")
    raw = reader.read_small(MANIFEST_MEMBER, MAX_MANIFEST_BYTES)
    try:
        m = loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _bad(where, f"manifest is not valid JSON ({exc})") from exc
    if not isinstance(m, dict):
        raise _bad(where, "manifest is not a JSON object")
    if m.get("format") != FORMAT:
        raise _bad(where, f"manifest format is {m.get('format')!r}, expected {FORMAT!r}")
    version = m.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _bad(where, f"manifest schema_version {version!r} is invalid")
    if version > SCHEMA_VERSION:
        raise _bad(
            where,
            f"snapshot schema version {version} was written by a newer resumable "
            f"({m.get('library_version')!r}); this version reads up to {SCHEMA_VERSION}",
        )
    signature = _check_signature(reader, raw, signing_key)
    arrays, extra = m.get("arrays"), m.get("extra", {})
    if not isinstance(arrays, list) or len(arrays) > MAX_ARRAYS:
        raise _bad(where, f"manifest 'arrays' is not a list of at most {MAX_ARRAYS} entries")
    if not isinstance(extra, dict):
        raise _bad(where, "manifest 'extra' is not an object")
    if version >= 2:
        extra = codec.decode(extra, where=f"{where}: manifest 'extra'")
        if not isinstance(extra, dict):
            raise _bad(where, "manifest 'extra' is not an object")
    records = [_parse_record(where, i, entry, version) for i, entry in enumerate(arrays)]
    names = [r.name for r in records]
    members = [r.member for r in records]
    paths = [r.path for r in records]
    if len(set(names)) != len(names) or len(set(members)) != len(members):
        raise _bad(where, "manifest lists an array name or member twice")
    if len(set(paths)) != len(paths):
        raise _bad(where, "manifest lists an array path twice")
    known = set(paths)
    for path in paths:  # an array cannot also be a container of others
        for cut in range(1, len(path)):
            if path[:cut] in known:
                raise _bad(where, f"array path {list(path)!r:.200} lies inside another array")
    unknown = set(reader.infos) - set(members) - {MANIFEST_MEMBER, SIGNATURE_MEMBER}
    if unknown:
        raise _bad(where, f"archive holds members the manifest does not list: {sorted(unknown)}")
    missing = [m_ for m_ in members if m_ not in reader.infos]
    if missing:
        raise _bad(where, f"members listed in the manifest are missing: {missing}")
    for rec in records:
        if reader.infos[rec.member].file_size != rec.size:
            raise _bad(
                where,
                f"array {rec.name!r} (member {rec.member}): manifest says {rec.size} bytes, "
                f"archive holds {reader.infos[rec.member].file_size}",
            )
    return SnapshotReport(
        url=where,
        format=FORMAT,
        schema_version=version,
        library_version=str(m.get("library_version", "")),
        created=str(m.get("created", "")),
        arrays=tuple(records),
        extra=extra,
        file_bytes=reader.file_size,
        signature=signature,
    )


def _check_signature(reader: NpzReader, manifest_bytes: bytes, key: bytes | None) -> str:
    """Verify the HMAC member against `key` (refusing unsigned snapshots when a key is set)."""
    sig = None
    if SIGNATURE_MEMBER in reader.infos:
        raw = reader.read_small(SIGNATURE_MEMBER, 256)
        sig = raw.decode("ascii", "replace")
    signing.check(key, manifest_bytes, sig, f"snapshot {reader.where}")
    return signing.state(key, manifest_bytes, sig)


def _parse_path(where: str, name: str, entry: dict[str, Any], version: int) -> tuple[Any, ...]:
    if version < 2:
        return (name,)
    path = entry.get("path")
    ok = isinstance(path, list) and 0 < len(path) <= 64
    parts: list[Any] = []
    for p in path if isinstance(path, list) and ok else ():
        if isinstance(p, str) or (isinstance(p, int) and not isinstance(p, bool) and p >= 0):
            parts.append(p)  # a mapping key, or a list/tuple index
        elif isinstance(p, dict) and set(p) == {"int"} and _is_int_key(p["int"]):
            parts.append(IntKey(p["int"]))  # an int key of a mapping
        else:
            ok = False
    if not ok:
        raise _bad(where, f"array {name!r}: malformed path {json.dumps(path)[:200]}")
    return tuple(parts)


def _is_int_key(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 63


def _parse_record(where: str, index: int, entry: Any, version: int = SCHEMA_VERSION) -> ArrayRecord:
    if not isinstance(entry, dict):
        raise _bad(where, f"manifest array #{index} is not an object")
    try:
        name, member = entry["name"], entry["member"]
        shape, fortran = entry["shape"], entry["fortran_order"]
        nbytes, size, digest, descr = (
            entry["nbytes"],
            entry["size"],
            entry["sha256"],
            entry["dtype"],
        )
    except KeyError as exc:
        raise _bad(where, f"manifest array #{index} lacks {exc}") from None
    ok = (
        isinstance(name, str)
        and member == MEMBER_FMT.format(index)
        and isinstance(shape, list)
        and len(shape) <= 64
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        and isinstance(fortran, bool)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (nbytes, size))
        and isinstance(digest, str)
        and _SHA256_HEX.fullmatch(digest) is not None
    )
    if not ok:
        raise _bad(where, f"manifest array #{index} is malformed: {json.dumps(entry)[:300]}")
    try:
        dtype = descr_from_json(descr)
    except Exception as exc:
        raise _bad(where, f"array {name!r}: unreadable dtype {descr!r:.100} ({exc})") from None
    if dtype.hasobject:
        raise _bad(where, f"array {name!r} declares a Python-object dtype: refused")
    count = 1
    for n in shape:
        count *= n
    if count * dtype.itemsize != nbytes or nbytes > size:
        raise _bad(
            where,
            f"array {name!r}: shape {tuple(shape)} x {dtype.itemsize} bytes != nbytes {nbytes}",
        )
    path = _parse_path(where, name, entry, version)
    dtype_name = entry.get("dtype_name")
    if dtype_name is not None and not (
        isinstance(dtype_name, str)
        and re.fullmatch(r"[a-z][a-z0-9_]{0,31}", dtype_name)
        and dtype.kind == "V"
        and dtype.names is None
    ):
        raise _bad(where, f"array {name!r}: malformed dtype_name {dtype_name!r:.60}")
    kind = entry.get("kind")
    if kind is not None and kind not in LEAF_KINDS:
        raise _bad(where, f"array {name!r}: unknown kind {kind!r:.60}")
    return ArrayRecord(
        name, member, descr, tuple(shape), fortran, nbytes, size, digest, path, dtype_name, kind
    )
