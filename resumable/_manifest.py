"""The checkpoint manifest: a small, versioned, self-hashed description of a checkpoint.

It names the sweep and lists the sealed journal segments with their sizes, SHA-256s, record
counts and sequence ranges, plus (locally) the one active segment still being appended to. It is
always replaced atomically, and it is the last thing written: whatever it names exists in full.
Reading is bounded and strict: unknown schema versions, bad hashes, absurd sizes or counts and
unsafe names all raise `IntegrityError` before anything large is read.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from . import _limits as limits
from . import _signing as signing
from ._codec import canonical_json, loads, sha256_hex
from ._version import __version__
from .errors import IntegrityError

FORMAT = "resumable-checkpoint"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

# Aliases for readers elsewhere; the limits themselves live in _limits.py (read there at use).
MAX_MANIFEST_BYTES = limits.MAX_MANIFEST_BYTES
MAX_SEGMENTS = limits.MAX_SEGMENTS
MAX_SEGMENT_BYTES = limits.MAX_SEGMENT_BYTES
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SegmentInfo:
    """One sealed, immutable journal segment."""

    name: str
    size: int
    sha256: str
    records: int
    first_seq: int
    last_seq: int
    last_hash: str

    def mismatch(self, data: bytes, when: str = "") -> str | None:
        """How `data` differs from this part's recorded size and SHA-256 (None: it matches).

        The one check of a part's bytes against the manifest, for every reader (local load,
        download, verify, mirror); the SHA-256 is only computed when the size matches. `when`
        (e.g. " since the checkpoint was opened") follows the kind of mismatch."""
        if len(data) != self.size:
            return f"expected {self.size} bytes, found {len(data)}{when}"
        digest = sha256_hex(data)
        if digest != self.sha256:
            return f"SHA-256 mismatch{when}: expected {self.sha256}, found {digest}"
        return None

    def check(self, data: bytes, where: str, when: str = "") -> None:
        """Raise `IntegrityError` naming `where` unless `data` is exactly this part."""
        problem = self.mismatch(data, when)
        if problem is not None:
            raise IntegrityError(f"{where}: {problem}")


@dataclass(frozen=True)
class Manifest:
    """What a checkpoint holds; see the module docstring."""

    sweep: str
    sweep_id: str
    created: float
    segments: tuple[SegmentInfo, ...] = ()
    active: str | None = None
    generation: int = 1
    updated: float = field(default_factory=time.time)
    library_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sealed_records(self) -> int:
        return self.segments[-1].last_seq if self.segments else 0

    @property
    def last_hash(self) -> str:
        return self.segments[-1].last_hash if self.segments else ""

    def with_segments(
        self, segments: tuple[SegmentInfo, ...], active: str | None, **extra_fields: Any
    ) -> Manifest:
        return replace(
            self,
            segments=segments,
            active=active,
            generation=self.generation + 1,
            updated=time.time(),
            library_version=__version__,
            **extra_fields,
        )

    def to_bytes(self, signing_key: bytes | None = None) -> bytes:
        """The manifest file: self-hashed, and HMAC-signed when a key is given."""
        body = _body(self)
        body["manifest_sha256"] = sha256_hex(canonical_json(body))
        if signing_key is not None:
            body["signature"] = signing.sign(signing_key, canonical_json(body))
        return json.dumps(body, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def _body(m: Manifest) -> dict[str, Any]:
    body = asdict(m)
    body["segments"] = [asdict(s) for s in m.segments]
    body["format"] = FORMAT
    body["schema"] = SCHEMA_VERSION
    # Times as exact decimal strings: the hash covers the parsed form, and a float's last
    # digits can change without changing the parsed value; a string's cannot.
    body["created"] = repr(float(m.created))
    body["updated"] = repr(float(m.updated))
    return body


def signature_state(data: bytes, signing_key: bytes | None) -> str:
    """'valid', 'invalid', 'unsigned' or 'unchecked' for manifest bytes (already verified)."""
    body = loads(data)
    sig = body.pop("signature", None)
    return signing.state(signing_key, canonical_json(body), sig)


def parse_manifest(data: bytes, *, source: str, signing_key: bytes | None = None) -> Manifest:
    """Parse and verify manifest bytes read from `source` (a path or redacted URL).

    With `signing_key`, an unsigned or wrongly signed manifest is refused (IntegrityError).
    """
    if len(data) > limits.MAX_MANIFEST_BYTES:
        raise IntegrityError(
            f"manifest {source} is {len(data)} bytes; at most {limits.MAX_MANIFEST_BYTES} expected"
        )
    try:
        body = loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise IntegrityError(f"manifest {source} is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise IntegrityError(f"manifest {source}: expected a JSON object, found {type(body)}")
    if body.get("format") != FORMAT:
        raise IntegrityError(
            f"manifest {source}: expected format {FORMAT!r}, found {body.get('format')!r}"
        )
    schema = body.get("schema")
    if type(schema) is not int or schema > SCHEMA_VERSION or schema < 1:
        raise IntegrityError(
            f"manifest {source}: schema version {schema!r} is not one this library reads "
            f"(it reads 1..{SCHEMA_VERSION}; a newer resumable may have written it)"
        )
    signature = body.pop("signature", None)
    if signing_key is not None:
        signing.check(signing_key, canonical_json(body), signature, f"manifest {source}")
    claimed = body.pop("manifest_sha256", None)
    actual = sha256_hex(canonical_json(body))
    if claimed != actual:
        raise IntegrityError(
            f"manifest {source}: SHA-256 mismatch (recorded {claimed!r}, computed {actual!r})"
        )
    try:
        return _from_body(body)
    except IntegrityError as exc:
        raise IntegrityError(f"manifest {source}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise IntegrityError(f"manifest {source}: malformed field ({exc!r:.200})") from None


def _int(v: Any, what: str, lo: int = 0, hi: int = 1 << 62) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise IntegrityError(f"{what} must be an integer in [{lo}, {hi}], found {v!r}")
    return v


def check_name(name: Any, what: str = "segment name") -> str:
    if type(name) is not str or not _NAME_RE.fullmatch(name):
        raise IntegrityError(f"unsafe or malformed {what} {name!r}")
    return name


def _hex(v: Any, what: str, allow_empty: bool = False) -> str:
    if allow_empty and v == "":
        return ""
    if type(v) is not str or not _HEX64_RE.match(v):
        raise IntegrityError(f"{what} must be a SHA-256 hex digest, found {v!r}")
    return v


def _time(v: Any, what: str) -> float:
    if type(v) is not str or len(v) > 40:
        raise IntegrityError(f"{what} must be a time as a decimal string, found {v!r:.60}")
    t = float(v)
    if not math.isfinite(t):
        raise IntegrityError(f"{what} must be finite, found {v!r}")
    return t


def _from_body(body: dict[str, Any]) -> Manifest:
    raw = body["segments"]
    if type(raw) is not list:
        raise IntegrityError("segments must be a list")
    if len(raw) > limits.MAX_SEGMENTS:
        raise IntegrityError(
            f"lists {len(raw)} segments; at most {limits.MAX_SEGMENTS} are accepted"
        )
    segments: list[SegmentInfo] = []
    expected_first = 1
    prev_hash = ""
    names: set[str] = set()
    for i, s in enumerate(raw):
        seg = SegmentInfo(
            name=check_name(s["name"]),
            size=_int(s["size"], f"segment {i} size", 0, limits.MAX_SEGMENT_BYTES),
            sha256=_hex(s["sha256"], f"segment {i} sha256"),
            records=_int(s["records"], f"segment {i} records"),
            first_seq=_int(s["first_seq"], f"segment {i} first_seq"),
            last_seq=_int(s["last_seq"], f"segment {i} last_seq"),
            last_hash=_hex(s["last_hash"], f"segment {i} last_hash", allow_empty=True),
        )
        if seg.name in names:
            raise IntegrityError(f"segment {seg.name!r} is listed twice")
        names.add(seg.name)
        if seg.first_seq != expected_first or seg.last_seq - seg.first_seq + 1 != seg.records:
            raise IntegrityError(
                f"segment {seg.name!r} covers records {seg.first_seq}..{seg.last_seq} "
                f"({seg.records} records); expected it to start at {expected_first}"
            )
        if seg.records == 0 and seg.last_hash != prev_hash:
            raise IntegrityError(f"empty segment {seg.name!r} has a last_hash")
        expected_first = seg.last_seq + 1
        prev_hash = seg.last_hash
        segments.append(seg)
    active = body.get("active")
    if active is not None:
        check_name(active, "active segment name")
        if active in names:
            raise IntegrityError(f"active segment {active!r} is also listed as sealed")
    extra = body.get("extra", {})
    if type(extra) is not dict:
        raise IntegrityError("extra must be an object")
    sweep = body["sweep"]
    if type(sweep) is not str or not sweep:
        raise IntegrityError(f"sweep name must be a non-empty string, found {sweep!r}")
    return Manifest(
        sweep=sweep,
        sweep_id=str(body["sweep_id"]),
        created=_time(body["created"], "created"),
        segments=tuple(segments),
        active=active,
        generation=_int(body["generation"], "generation", 1),
        updated=_time(body["updated"], "updated"),
        library_version=str(body["library_version"]),
        extra=extra,
    )
