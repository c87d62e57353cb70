"""Journal records: line format, hash chain, strict parsing, torn tails, the sealed fast path."""

from __future__ import annotations

import hashlib
import math

import pytest

from resumable import _limits as limits
from resumable._journal import encode_record, parse_sealed_segment, parse_segment
from resumable.errors import IntegrityError

FP = "0123456789abcdef0123456789abcdef"

# (kind, key, fp, payload)
SPECS = [
    ("launch", None, None, {"launch": "abc", "pid": 1}),
    ("items", None, None, {"items": [["k", FP, {"a": 1}]], "items_sha256": "0" * 64}),
    ("result", "k", FP, {"value": {"x": [1, 2.5, None]}, "duration": 0.5, "launch": "abc"}),
    ("result", 'with space and "quotes" and \\', None, {"value": "v"}),
    ("result", "new\nline\ttab\x00nul\r", FP, {"value": "line\nbreak\ttab"}),
    ("result", "ünïcødé ✓ 日本 \u2028 \u0085 🎉", FP, {"value": "\u2028"}),
    ("result", "", None, {"value": ""}),
    ("result", "null", None, {"value": None}),
    ("result", "k" * 10240, FP, {"value": 1}),
    ("failure", "f", FP, {"error_type": "E", "message": "m\n", "traceback": "", "attempt": 1}),
    ("retry", None, None, {"keys": ["f"], "reason": "asked"}),
    ("invalidate", None, None, {"keys": ["k"], "reason": "item changed"}),
    ("meta", None, None, {"meta": {"lr": 0.1}}),
]


def _build(specs=SPECS, *, first_seq: int = 1, prev: str = "", t0: float = 1700000000.125):
    """Encode records; returns (bytes, [line], [digest])."""
    lines, digests = [], []
    for i, (kind, key, fp, payload) in enumerate(specs):
        line, digest, body = encode_record(prev, first_seq + i, kind, key, t0 + i, fp, payload)
        assert body in line
        lines.append(line)
        digests.append(digest)
        prev = digest
    return b"".join(lines), lines, digests


def _hash(prev: str, rest: bytes) -> str:
    return hashlib.sha256(prev.encode() + b"\n" + rest).hexdigest()


def _raw_line(prev: str, header: bytes, payload: bytes) -> bytes:
    """A hash-valid line with an arbitrary header and payload (per the documented format)."""
    rest = header + b"\t" + payload
    return _hash(prev, rest).encode() + b" " + rest + b"\n"


def test_line_shape_and_hash_chain():
    _, lines, digests = _build()
    prev = ""
    for line, digest in zip(lines, digests, strict=True):
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1  # newlines inside keys and values are escaped
        assert line[:64].decode() == digest
        assert line[64:65] == b" "
        assert _hash(prev, line[65:-1]) == digest  # covers the previous hash
        prev = digest


def test_round_trip_through_parse_segment():
    data, _, digests = _build()
    parsed = parse_segment(data, source="seg", first_seq=1, prev_hash="", allow_torn_tail=False)
    assert parsed.good_size == len(data)
    assert parsed.torn_bytes == 0
    assert parsed.last_hash == digests[-1]
    assert len(parsed.records) == len(SPECS)
    for i, (rec, (kind, key, fp, payload)) in enumerate(zip(parsed.records, SPECS, strict=True)):
        assert rec.seq == i + 1
        assert rec.type == kind
        assert rec.key == key
        assert rec.fp == fp
        assert rec.t == 1700000000.125 + i
        assert rec.body() == payload


def test_sealed_fast_path_agrees_with_the_full_parser():
    data, _, _ = _build(first_seq=7, prev="f" * 64)
    full = parse_segment(data, source="s", first_seq=7, prev_hash="f" * 64, allow_torn_tail=False)
    fast = parse_sealed_segment(
        data, source="s", first_seq=7, records=len(SPECS), prev_hash="f" * 64
    )
    assert [(r.seq, r.type, r.key, r.t, r.fp, r.payload) for r in fast] == [
        (r.seq, r.type, r.key, r.t, r.fp, r.payload) for r in full.records
    ]


def test_chain_continues_across_segments():
    data1, _, d1 = _build(SPECS[:4])
    data2, _, _ = _build(SPECS[4:], first_seq=5, prev=d1[-1])
    p1 = parse_segment(data1, source="a", first_seq=1, prev_hash="", allow_torn_tail=False)
    p2 = parse_segment(
        data2, source="b", first_seq=5, prev_hash=p1.last_hash, allow_torn_tail=False
    )
    assert [r.seq for r in p2.records] == list(range(5, len(SPECS) + 1))
    with pytest.raises(IntegrityError, match="SHA-256"):
        parse_segment(data2, source="b", first_seq=5, prev_hash="", allow_torn_tail=False)


def test_empty_segment():
    parsed = parse_segment(b"", source="s", first_seq=1, prev_hash="", allow_torn_tail=True)
    assert (parsed.records, parsed.good_size, parsed.torn_bytes, parsed.last_hash) == ([], 0, 0, "")


def test_wrong_first_seq_is_detected():
    data, _, _ = _build()
    with pytest.raises(IntegrityError) as info:
        parse_segment(data, source="segX", first_seq=2, prev_hash="", allow_torn_tail=False)
    assert "segX" in str(info.value)
    assert "expected sequence number 2" in str(info.value)


def test_wrong_prev_hash_is_detected():
    data, _, _ = _build()
    with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
        parse_segment(data, source="s", first_seq=1, prev_hash="a" * 64, allow_torn_tail=False)


@pytest.mark.parametrize("edit", ["drop", "swap", "duplicate"])
def test_removed_reordered_or_duplicated_records_are_detected(edit):
    _, lines, _ = _build()
    if edit == "drop":
        del lines[3]
    elif edit == "swap":
        lines[3], lines[4] = lines[4], lines[3]
    else:
        lines.insert(4, lines[3])
    with pytest.raises(IntegrityError):
        parse_segment(b"".join(lines), source="s", first_seq=1, prev_hash="", allow_torn_tail=True)


def test_every_prefix_of_the_last_record_is_a_torn_tail():
    data, lines, digests = _build(SPECS[:4])
    base = len(data) - len(lines[-1])
    for cut in range(1, len(lines[-1])):
        piece = data[: base + cut]
        parsed = parse_segment(piece, source="s", first_seq=1, prev_hash="", allow_torn_tail=True)
        assert len(parsed.records) == 3, cut
        assert parsed.good_size == base
        assert parsed.torn_bytes == cut
        assert parsed.last_hash == digests[2]
        with pytest.raises(IntegrityError, match="cut short"):
            parse_segment(piece, source="s", first_seq=1, prev_hash="", allow_torn_tail=False)


@pytest.mark.parametrize("replacement", [b"\x0b", b" ", b"\x00", b"\r"])
def test_complete_record_with_a_wrong_last_byte_is_a_torn_tail(replacement):
    """Its newline on a page of its own that never reached the disk (a power cut): torn."""
    data, lines, digests = _build(SPECS[:4])
    damaged = data[:-1] + replacement
    parsed = parse_segment(damaged, source="s", first_seq=1, prev_hash="", allow_torn_tail=True)
    assert len(parsed.records) == 3 and parsed.torn_bytes == len(lines[-1])
    assert parsed.last_hash == digests[2]
    with pytest.raises(IntegrityError):
        parse_segment(damaged, source="s", first_seq=1, prev_hash="", allow_torn_tail=False)


def test_every_single_byte_flip_is_detected_or_a_torn_tail():
    """A flip before the last record is damage; a flip in the last record of the active
    segment is indistinguishable from a torn append (the last record is dropped, not used)."""
    data, lines, _ = _build(SPECS[:6])
    last = len(data) - len(lines[-1])
    for off in range(len(data)):
        for mask in (0x01, 0x10, 0x80):
            damaged = bytearray(data)
            damaged[off] ^= mask
            if off < last:
                with pytest.raises(IntegrityError):
                    parse_segment(
                        bytes(damaged), source="s", first_seq=1, prev_hash="", allow_torn_tail=True
                    )
            else:
                parsed = parse_segment(
                    bytes(damaged), source="s", first_seq=1, prev_hash="", allow_torn_tail=True
                )
                assert (len(parsed.records), parsed.good_size) == (5, last), off
            with pytest.raises(IntegrityError):
                parse_segment(
                    bytes(damaged), source="s", first_seq=1, prev_hash="", allow_torn_tail=False
                )


def _next_record(prev: str = "") -> bytes:
    return _raw_line(prev, b'2 result 1.0 - "next"', b"{}")


@pytest.mark.parametrize("fill", [b"\x00", b"\xff", b"garbage\n", b"\n"])
@pytest.mark.parametrize("pages", [1, 3])
def test_a_power_cut_tail_of_zeros_or_garbage_is_torn(fill, pages):
    """ext4 data=ordered / XFS: the file's new size and the last page of a large append on
    disk, the pages before it zeroed (or stale). Dropped as torn, at any length."""
    data, _, _ = _build(SPECS[:3])
    big, _, _ = _build([("result", "big", None, {"v": "x" * (4096 * pages)})], first_seq=4)
    for keep_last in (0, 1, 100, 4096):
        tail = (fill * len(big))[: len(big) - keep_last] + big[len(big) - keep_last :]
        parsed = parse_segment(
            data + tail, source="s", first_seq=1, prev_hash="", allow_torn_tail=True
        )
        assert (len(parsed.records), parsed.good_size, parsed.torn_bytes) == (
            3,
            len(data),
            len(tail),
        )


@pytest.mark.parametrize("damage", [b"\x00" * 5000, b"zz", b"\xff" * 70 + b"\n"])
def test_damage_followed_by_a_record_is_integrity_error(damage):
    data, lines, digests = _build(SPECS[:3])
    for follower in (_next_record(digests[-1]), _next_record("f" * 64)):
        with pytest.raises(IntegrityError):
            parse_segment(
                data + damage + b"\n" + follower,
                source="s",
                first_seq=1,
                prev_hash="",
                allow_torn_tail=True,
            )
    # the follower need not start a line: the damaged byte may have been its newline
    with pytest.raises(IntegrityError):
        parse_segment(
            data[:-1] + b"\x00" + lines[0],
            source="s",
            first_seq=1,
            prev_hash="",
            allow_torn_tail=True,
        )


def _group(first_seq: int, prev: str, n: int = 12, t: float = 1700000100.5) -> bytes:
    """What one `append_many` writes: `n` records of one time, about 1 KiB each."""
    out = []
    for i in range(n):
        line, prev, _ = encode_record(
            prev, first_seq + i, "result", f"g{i}", t, FP, {"p": "x" * 1000}
        )
        out.append(line)
    return b"".join(out)


def _zero(data: bytes, a: int, b: int) -> bytes:
    return data[:a] + bytes(b - a) + data[b:]


@pytest.mark.parametrize("unit", [4096, 512])
def test_a_power_cut_during_a_group_append_is_a_torn_tail(unit):
    """The new size and later pages (or sectors) of one group write on disk, earlier ones
    zeroed, the group's first record among them: whole unacknowledged records follow zeros."""
    acked, _, digests = _build(SPECS[:3])
    group = _group(4, digests[-1])
    data = acked + group
    start = (len(acked) // unit + 1) * unit
    for zeros in [(len(acked), start), (len(acked), start + unit), (start, start + 2 * unit)]:
        for cut in (0, 1, 333):
            torn = _zero(data, *zeros)[: len(data) - cut]
            parsed = parse_segment(
                torn, source="s", first_seq=1, prev_hash="", allow_torn_tail=True
            )
            kept = parsed.good_size
            assert kept <= zeros[0] and len(parsed.records) >= 3, (zeros, cut)
            assert torn[:kept] == data[:kept] and parsed.torn_bytes == len(torn) - kept
            assert [r.seq for r in parsed.records] == list(range(1, len(parsed.records) + 1))
            with pytest.raises(IntegrityError):
                parse_segment(torn, source="s", first_seq=1, prev_hash="", allow_torn_tail=False)


def _tail_variant(how: str) -> bytes:
    acked, _, digests = _build(SPECS[:3])
    group = _group(4, digests[-1])
    data = acked + group
    start = (len(acked) // 4096 + 1) * 4096
    zeroed = _zero(data, len(acked), start)
    if how == "unaligned zeros":
        return _zero(data, len(acked), start - 1)
    if how == "garbage page":
        return data[:start] + b"\xa5" * 4096 + data[start + 4096 :]
    if how == "flipped byte":
        flipped = bytearray(data)
        flipped[start + 100] ^= 1
        return bytes(flipped)
    if how == "broken chain":  # a record after the zeros altered
        lines = zeroed[start:].split(b"\n")
        lines[2] = lines[2][:-3] + b"yyy"
        return zeroed[:start] + b"\n".join(lines)
    if how == "separate commits":  # records after the zeros written at different times
        return _zero(_build(SPECS[:12])[0], len(acked), start)
    if how == "older records after":  # sequence numbers that do not run on
        return acked + bytes(4096 - len(acked)) + _group(2, "0" * 64)
    if how == "whole bad line at the damage":
        lines = data[len(acked) :].split(b"\n")
        return _zero(
            acked + b"0" + lines[0][1:] + b"\n" + b"\n".join(lines[1:]), start, start + 512
        )
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "unaligned zeros",
        "garbage page",
        "flipped byte",
        "broken chain",
        "separate commits",
        "older records after",
        "whole bad line at the damage",
    ],
)
def test_damage_no_power_cut_leaves_before_records_is_integrity_error(how):
    data = _tail_variant(how)
    with pytest.raises(IntegrityError):
        parse_segment(data, source="s", first_seq=1, prev_hash="", allow_torn_tail=True)


@pytest.mark.parametrize(
    "line",
    [
        b"not a record\n",
        b"\n",
        b"a" * 64 + b"\n",
        b"a" * 64 + b'x1 result 1.0 - "k"\t{}\n',  # no space after the hash
        b"a" * 64 + b' 1 result 1.0 - "k" {}\n',  # no tab
    ],
)
def test_malformed_lines(line):
    with pytest.raises(IntegrityError):
        parse_segment(line, source="s", first_seq=1, prev_hash="", allow_torn_tail=False)
    with pytest.raises(IntegrityError):  # a record after it: damage, not a torn tail
        parse_segment(
            line + _next_record(), source="s", first_seq=1, prev_hash="", allow_torn_tail=True
        )
    torn = parse_segment(line, source="s", first_seq=1, prev_hash="", allow_torn_tail=True)
    assert (torn.records, torn.torn_bytes) == ([], len(line))


@pytest.mark.parametrize(
    "header",
    [
        b"1 result 1.0 -",  # 4 fields
        b'x result 1.0 - "k"',  # seq not a number
        b'2 result 1.0 - "k"',  # wrong seq
        b'1 bogus 1.0 - "k"',  # unknown type
        b'1 result yesterday - "k"',  # bad time
        b"1 result 1.0 - k",  # key not JSON
        b"1 result 1.0 - 5",  # key not a string
        b'1 result 1.0 - "k',  # unterminated key
        b'1 result 1.0 \xff\xfe "k"',  # non-ASCII fingerprint
        b'1 result 1.0 - "\xff"',  # key not UTF-8
    ],
)
def test_hash_valid_line_with_malformed_header(header):
    line = _raw_line("", header, b"{}")
    with pytest.raises(IntegrityError) as info:
        parse_segment(line, source="segY", first_seq=1, prev_hash="", allow_torn_tail=False)
    assert "segY" in str(info.value)
    with pytest.raises(IntegrityError):
        parse_segment(
            line + _next_record(), source="segY", first_seq=1, prev_hash="", allow_torn_tail=True
        )


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"s"', b"{" * 10000])
def test_payload_is_checked_when_decoded(payload):
    line = _raw_line("", b"1 meta 1.0 - null", payload)
    (rec,) = parse_segment(
        line, source="s", first_seq=1, prev_hash="", allow_torn_tail=True
    ).records
    with pytest.raises(IntegrityError):
        rec.body()


def test_oversized_record_is_refused(monkeypatch):
    data, _, _ = _build(SPECS[:3])
    monkeypatch.setattr(limits, "MAX_RECORD_BYTES", 100)
    with pytest.raises(IntegrityError, match="at most 100"):
        parse_segment(data, source="s", first_seq=1, prev_hash="", allow_torn_tail=True)


def test_encode_refuses_what_it_cannot_write():
    with pytest.raises(ValueError):
        encode_record("", 1, "bogus", None, 1.0, None, {})
    with pytest.raises(ValueError):
        encode_record("", 1, "meta", None, 1.0, None, {"meta": math.nan})


def test_fast_path_falls_back_and_reports_damage():
    data, _, _ = _build(SPECS[:5])
    with pytest.raises(IntegrityError):
        parse_sealed_segment(data, source="s", first_seq=2, records=5, prev_hash="")
    with pytest.raises(IntegrityError):
        parse_sealed_segment(data[:-1], source="s", first_seq=1, records=5, prev_hash="")
    with pytest.raises(IntegrityError):
        parse_sealed_segment(data + b"garbage\n", source="s", first_seq=1, records=6, prev_hash="")
