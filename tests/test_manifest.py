"""The checkpoint manifest: self-hashed, versioned, strictly and boundedly parsed."""

from __future__ import annotations

import json

import pytest

from resumable import _limits as limits
from resumable import _manifest as manifest_mod
from resumable._codec import canonical_json, sha256_hex
from resumable._manifest import (
    FORMAT,
    SCHEMA_VERSION,
    Manifest,
    SegmentInfo,
    check_name,
    parse_manifest,
)
from resumable.errors import IntegrityError

H1 = "a" * 64
H2 = "b" * 64
H3 = "c" * 64


def _segments() -> tuple[SegmentInfo, ...]:
    return (
        SegmentInfo("seg-00000001.jsonl", 400, H1, 3, 1, 3, H2),
        SegmentInfo("seg-00000002.jsonl", 350, H2, 2, 4, 5, H3),
    )


def _manifest(**kw) -> Manifest:
    base = {
        "sweep": "exp",
        "sweep_id": "0123456789abcdef",
        "created": 1700000000.25,
        "segments": _segments(),
        "active": "seg-00000003.jsonl",
        "extra": {"note": "ünï"},
    }
    base.update(kw)
    return Manifest(**base)


def _body(m: Manifest | None = None) -> dict:
    return json.loads((m or _manifest()).to_bytes())


def _rehash(body: dict) -> bytes:
    """Serialise `body` with a correct manifest_sha256, as a writer would."""
    body = dict(body)
    body.pop("manifest_sha256", None)
    body["manifest_sha256"] = sha256_hex(canonical_json(body))
    return json.dumps(body, indent=1, sort_keys=True).encode()


def _parse(data: bytes) -> Manifest:
    return parse_manifest(data, source="/ckpt/manifest.json")


def test_round_trip():
    m = _manifest()
    data = m.to_bytes()
    got = _parse(data)
    assert got == m
    assert got.sealed_records == 5
    assert got.last_hash == H3
    body = json.loads(data)
    assert body["format"] == FORMAT
    assert body["schema"] == SCHEMA_VERSION
    assert len(body["manifest_sha256"]) == 64


def test_empty_manifest_round_trip():
    m = _manifest(segments=(), active="seg-00000001.jsonl")
    got = _parse(m.to_bytes())
    assert got == m
    assert got.sealed_records == 0
    assert got.last_hash == ""


def test_with_segments_bumps_generation_and_keeps_identity():
    m = _manifest()
    seg = SegmentInfo("seg-00000003.jsonl", 10, H1, 1, 6, 6, H1)
    m2 = m.with_segments((*m.segments, seg), "seg-00000004.jsonl")
    assert m2.generation == m.generation + 1
    assert (m2.sweep, m2.sweep_id, m2.created) == (m.sweep, m.sweep_id, m.created)
    assert m2.active == "seg-00000004.jsonl"
    assert m2.sealed_records == 6
    assert _parse(m2.to_bytes()) == m2


def test_whitespace_and_key_order_do_not_matter():
    m = _manifest()
    body = _body(m)
    compact = json.dumps(body, separators=(",", ":")).encode()
    reordered = json.dumps(dict(reversed(list(body.items())))).encode()
    assert _parse(compact) == m
    assert _parse(reordered) == m


def test_hash_mismatch():
    body = _body()
    body["sweep"] = "other"  # hash not updated
    with pytest.raises(IntegrityError) as info:
        _parse(json.dumps(body).encode())
    assert "/ckpt/manifest.json" in str(info.value)
    assert "SHA-256" in str(info.value)


def test_missing_hash():
    body = _body()
    del body["manifest_sha256"]
    with pytest.raises(IntegrityError, match="SHA-256"):
        _parse(json.dumps(body).encode())


@pytest.mark.parametrize("schema", [SCHEMA_VERSION + 1, 99, 0, -1, "1", 1.0, None, True])
def test_unknown_schema_version_is_refused_even_when_rehashed(schema):
    body = _body()
    body["schema"] = schema
    with pytest.raises(IntegrityError) as info:
        _parse(_rehash(body))
    msg = str(info.value)
    assert "/ckpt/manifest.json" in msg
    assert "schema" in msg and repr(schema) in msg


@pytest.mark.parametrize("fmt", ["resumable-checkpoint-v2", "", None, 1])
def test_wrong_format(fmt):
    body = _body()
    body["format"] = fmt
    with pytest.raises(IntegrityError, match="format"):
        _parse(_rehash(body))


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[1, 2]", b"null", b'"str"', b"\xff\xfe", b"{" * 100000, b'{"a": 1}'],
)
def test_garbage_is_integrity_error(data):
    with pytest.raises(IntegrityError):
        _parse(data)


def test_oversized_manifest_is_refused_before_parsing(monkeypatch):
    data = _manifest().to_bytes()
    monkeypatch.setattr(limits, "MAX_MANIFEST_BYTES", len(data) - 1)
    with pytest.raises(IntegrityError, match="bytes"):
        _parse(data)


def test_too_many_segments(monkeypatch):
    monkeypatch.setattr(limits, "MAX_SEGMENTS", 1)
    with pytest.raises(IntegrityError, match="segments"):
        _parse(_manifest().to_bytes())


def _with_segment_field(index: int, field: str, value) -> bytes:
    body = _body()
    body["segments"][index][field] = value
    return _rehash(body)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "../seg-00000001.jsonl"),
        ("name", "/etc/passwd"),
        ("name", "a/b"),
        ("name", ".hidden"),
        ("name", ""),
        ("name", "x" * 200),
        ("name", "seg\x00.jsonl"),
        ("name", "seg-00000001.jsonl\n"),
        ("name", 5),
        ("size", -1),
        ("size", manifest_mod.MAX_SEGMENT_BYTES + 1),
        ("size", "400"),
        ("size", 400.0),
        ("size", True),
        ("sha256", "A" * 64),
        ("sha256", "a" * 63),
        ("sha256", ""),
        ("records", -1),
        ("records", 4),  # 1..3 holds 3 records
        ("first_seq", 0),
        ("first_seq", 2),
        ("last_seq", 4),
        ("last_hash", "xyz"),
    ],
)
def test_bad_segment_fields(field, value):
    with pytest.raises(IntegrityError) as info:
        _parse(_with_segment_field(0, field, value))
    assert "/ckpt/manifest.json" in str(info.value)


def test_sequence_gap_between_segments():
    body = _body()
    body["segments"][1]["first_seq"] = 5
    body["segments"][1]["last_seq"] = 6
    with pytest.raises(IntegrityError, match="start at 4"):
        _parse(_rehash(body))


def test_segment_listed_twice():
    body = _body()
    body["segments"][1]["name"] = body["segments"][0]["name"]
    with pytest.raises(IntegrityError, match="twice"):
        _parse(_rehash(body))


@pytest.mark.parametrize("active", ["seg-00000001.jsonl", "../x", "/abs", "", 3])
def test_bad_active_segment(active):
    body = _body()
    body["active"] = active
    with pytest.raises(IntegrityError):
        _parse(_rehash(body))


def test_missing_required_fields():
    for field in ("segments", "sweep", "sweep_id", "created", "generation", "updated"):
        body = _body()
        del body[field]
        with pytest.raises(IntegrityError):
            _parse(_rehash(body))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("segments", {}),
        ("segments", [{}]),
        ("segments", ["seg"]),
        ("extra", []),
        ("sweep", ""),
        ("sweep", 3),
        ("generation", 0),
        ("generation", "1"),
        ("created", "yesterday"),
    ],
)
def test_malformed_top_level_fields(field, value):
    body = _body()
    body[field] = value
    with pytest.raises(IntegrityError):
        _parse(_rehash(body))


@pytest.mark.parametrize("name", ["seg-00000001.jsonl", "a", "A.b-c_d", "0" * 128, "x" + "y" * 127])
def test_check_name_accepts_safe_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../x", "x/y", "x\\y", "-x", "_x", "x\n", "a" * 129, None, "é"]
)
def test_check_name_rejects_unsafe_names(name):
    with pytest.raises(IntegrityError):
        check_name(name)
