"""Journal records: the line format and hash chaining, encoding records and decoding headers.

One record per line::

    <hash: 64 hex> <header>\\t<payload JSON>\\n
    header  = "<seq> <type> <time> <fingerprint or -> <key as a JSON string, or null>"
    hash    = SHA-256(previous record's hash + "\\n" + header + "\\t" + payload)

`seq` counts 1, 2, 3, ... across all segments and every hash covers the one before it, so in
the active segment an edited, removed, reordered or re-hashed record is detected, not only a
damaged byte. A sealed segment is vouched for as a whole by its SHA-256 in the manifest (its
lines are not re-hashed on load); someone who rewrites a segment *and* the manifest's entries
can forge a consistent checkpoint: that is authenticity, which signing (_signing.py) provides.
The small header is parsed at load; the payload (a result's value, for instance) is verified by
the hash then but only decoded when it is used, which keeps resuming a large sweep fast.
Parsing whole segments (and the torn tails forgiven there) is _journal.py's business.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

from . import _limits as limits
from ._codec import compact_json, loads
from .errors import IntegrityError

HASH_LEN = 64
MAX_TIME = 1e10  # seconds since the epoch (year 2286): later record times are damage
RECORD_TYPES = frozenset(
    {"launch", "items", "itemspart", "result", "failure", "retry", "invalidate", "meta"}
)


dumps = compact_json  # a payload's bytes: compact JSON, UTF-8, no NaN


class Record:
    """One verified journal record; `body()` decodes its payload on demand."""

    __slots__ = ("fp", "key", "payload", "seq", "source", "t", "type")

    def __init__(
        self,
        seq: int,
        type: str,
        key: str | None,
        t: float,
        fp: str | None,
        payload: bytes,
        source: str,
    ) -> None:
        self.seq = seq
        self.type = type
        self.key = key
        self.t = t
        self.fp = fp
        self.payload = payload
        self.source = source

    def body(self) -> dict[str, Any]:
        try:
            body = loads(self.payload)
        except (ValueError, RecursionError) as exc:
            raise IntegrityError(
                f"{self.source}: record {self.seq} payload is not valid JSON ({exc})"
            ) from None
        if type(body) is not dict:
            raise IntegrityError(f"{self.source}: record {self.seq} payload is not an object")
        return body

    def __repr__(self) -> str:
        return f"Record(seq={self.seq}, type={self.type!r}, key={self.key!r})"


_KIND_BYTES = {k: k.encode("ascii") for k in RECORD_TYPES}
_json_string = json.encoder.encode_basestring  # the C escaper when available; as dumps(str)


class LineSource(Protocol):
    """Gives back a record line of a sealed segment, its bytes checked again (see
    checkpoint.SealedParts)."""

    def line(self, segment: int, offset: int) -> bytes: ...


_UNSET: Any = object()


class LazyRecord(Record):
    """A record of a sealed segment kept as where it lies, not as its bytes: its payload (and,
    unless given, its fingerprint) are read back from the segment, checked against the
    manifest's SHA-256 again, when first asked for. A reopened sweep of a million results
    keeps a million of these only while they are looked at (see _resultmap.ResultMap)."""

    __slots__ = ("_fp", "_off", "_seg", "_src")

    def __init__(
        self,
        seq: int,
        type: str,
        key: str | None,
        t: float,
        source: str,
        src: LineSource,
        segment: int,
        offset: int,
        fp: str | None = _UNSET,
    ) -> None:
        self.seq = seq
        self.type = type
        self.key = key
        self.t = t
        self.source = source
        self._src = src
        self._seg = segment
        self._off = offset
        self._fp = fp

    def _line(self) -> bytes:
        return self._src.line(self._seg, self._off)

    @property
    def payload(self) -> bytes:  # type: ignore[override]  # Record's field, read lazily here
        line = self._line()
        return line[line.index(b"\t") + 1 :]

    @property
    def fp(self) -> str | None:  # type: ignore[override]  # Record's field, read lazily here
        if self._fp is _UNSET:
            line = self._line()
            fp = line[HASH_LEN + 1 : line.index(b"\t")].split(b" ", 4)[3]
            self._fp = None if fp == b"-" else fp.decode("ascii")
        return self._fp


def encode_record(
    prev_hash: str,
    seq: int,
    kind: str,
    key: str | None,
    t: float,
    fp: str | None,
    payload: dict[str, Any] | bytes,
) -> tuple[bytes, str, bytes]:
    """(line bytes, record hash, payload bytes) of a new record.

    `payload` is the record's JSON object, or its bytes already encoded (compact, UTF-8, no
    NaN: what `dumps` makes; the sweep's hot path builds a result's payload from the value's
    JSON and a per-sweep suffix)."""
    body = payload if type(payload) is bytes else dumps(payload)
    line, digest = encode_line(prev_hash, seq, kind, key, b"%r" % t, fp, body)
    return line, digest, body


def encode_line(
    prev_hash: str, seq: int, kind: str, key: str | None, t: bytes, fp: str | None, body: bytes
) -> tuple[bytes, str]:
    """(line bytes, record hash) of a record whose time (`t`: repr of the float, as bytes,
    made once for a group) and payload are already encoded. Refuses what the loader would:
    an unknown type, a key or a line past the limits (LimitExceededError)."""
    line, digest = chain_line(prev_hash.encode("ascii"), seq, kind, key, t, fp, body)
    return line, digest.decode("ascii")


_sha256 = hashlib.sha256
_LARGE_BODY = 1 << 16  # payloads from this size on are not copied to be hashed


def chain_line(
    prev: bytes, seq: int, kind: str, key: str | None, t: bytes, fp: str | None, body: bytes
) -> tuple[bytes, bytes]:
    """`encode_line` with the hashes as ASCII bytes: the previous record's hash (`prev`) in,
    (line, this record's hash) out, as the writer keeps them: one SHA-256 per line and no
    conversions (the recording hot path; see checkpoint.CheckpointWriter.append)."""
    kind_b = _KIND_BYTES.get(kind)
    if kind_b is None:
        raise ValueError(f"unknown record type {kind!r}")
    if key is None:
        key_b = b"null"
    else:
        if len(key) > limits.MAX_KEY_CHARS:
            limits.check_key(key, _what(kind, key))
        key_b = _json_string(key).encode("utf-8")
    fp_b = fp.encode() if fp else b"-"
    if len(body) < _LARGE_BODY:
        rest = b"%d %s %s %s %s\t%s" % (seq, kind_b, t, fp_b, key_b, body)
        if HASH_LEN + 1 + len(rest) > limits.MAX_RECORD_BYTES:
            limits.check_record(HASH_LEN + 1 + len(rest), _what(kind, key), kind)
        digest = _sha256(prev + b"\n" + rest).hexdigest().encode()
        return b"%s %s\n" % (digest, rest), digest
    # a large payload (an items record): hashed where it lies, copied once, into the line
    head = b"%d %s %s %s %s\t" % (seq, kind_b, t, fp_b, key_b)
    if HASH_LEN + 1 + len(head) + len(body) > limits.MAX_RECORD_BYTES:
        limits.check_record(HASH_LEN + 1 + len(head) + len(body), _what(kind, key), kind)
    hasher = _sha256(prev + b"\n" + head)
    hasher.update(body)
    digest = hasher.hexdigest().encode()
    return b"".join((digest, b" ", head, body, b"\n")), digest


def _what(kind: str, key: str | None) -> str:
    if kind in ("items", "itemspart"):  # (their key field numbers parts: not an item's)
        return "the item listing" if kind == "items" else f"part {key} of the item listing"
    return f"the {kind} record" + (f" of item {key!r:.100}" if key is not None else "")


def check_time(t: float) -> float:
    """A record time: finite and within [0, MAX_TIME] (ValueError otherwise)."""
    if not 0.0 <= t <= MAX_TIME:  # also false for NaN
        raise ValueError(f"record time {t!r} is not a plausible time")
    return t


def header_record(header: bytes, payload: bytes, *, seq: int, source: str, offset: int) -> Record:
    """The Record of a line whose header (between hash and tab) is `header`, its hash already
    vouched for; IntegrityError naming `source`, `seq` and `offset` if the header is bad."""
    parts = header.split(b" ", 4)
    try:
        if len(parts) != 5:
            raise ValueError("expected 5 fields")
        hseq, kind, t, fp, key = parts
        if int(hseq) != seq:
            raise IntegrityError(
                f"{source}: record {seq} at byte {offset}: expected sequence number {seq}, "
                f"found {hseq[:20]!r} (a record is missing, duplicated or out of order)"
            )
        kind_s = kind.decode("ascii")
        if kind_s not in RECORD_TYPES:
            raise ValueError(f"unknown record type {kind_s!r:.40}")
        if key == b"null":
            key_s = None
        elif len(key) >= 2 and key[:1] == b'"' and key[-1:] == b'"' and b"\\" not in key:
            key_s = key[1:-1].decode("utf-8")
        else:
            key_s = loads(key)
            if type(key_s) is not str:
                raise ValueError("key is not a string")
        if len(key_s or "") > limits.MAX_KEY_CHARS:
            raise ValueError("key too long")
        tval = check_time(float(t))
        fp_s = None if fp == b"-" else fp.decode("ascii")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise IntegrityError(
            f"{source}: record {seq} at byte {offset}: malformed header {header[:120]!r} ({exc})"
        ) from None
    return Record(seq, kind_s, key_s, tval, fp_s, payload, source)
