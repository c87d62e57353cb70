"""Hostile and bad input: a resume source may be a URL on someone else's server.

Loading one must never run code, never escape the checkpoint's own directory, and never
exhaust memory or disk. Each distinct kind of bad input has its own test; `test_fuzz_*` feed
random and mutated bytes to every loader: the only exceptions that may escape are
`ResumableError`s.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resumable import ResumableSweep
from resumable._checkpoint import load, progress_dir_for
from resumable._codec import canonical_json, decode, sha256_hex
from resumable._journal import encode_record, parse_segment
from resumable._manifest import MAX_SEGMENTS, Manifest, parse_manifest
from resumable._remote import download, read_manifest
from resumable._storage import Store
from resumable.errors import IntegrityError, ResumableError
from resumable.shards import descriptor_bytes, parse_descriptor

ITEMS = [{"label": f"i{i}", "x": i} for i in range(30)]
HEX = "ab" * 32


def key(c: dict) -> str:
    return c["label"]


def _signed_body(body: dict) -> bytes:
    """A manifest body made self-consistent again (hash recomputed), as an attacker would."""
    body = dict(body)
    body.pop("manifest_sha256", None)
    body["manifest_sha256"] = sha256_hex(canonical_json(body))
    return json.dumps(body).encode()


def _manifest_body(**over) -> dict:
    m = Manifest(sweep="exp", sweep_id="x" * 32, created=1.0, active=None)
    body = json.loads(m.to_bytes())
    body.update(over)
    return body


def _segment(**over) -> dict:
    seg = {
        "name": "seg-00000001.jsonl",
        "size": 10,
        "sha256": HEX,
        "records": 1,
        "first_seq": 1,
        "last_seq": 1,
        "last_hash": HEX,
    }
    seg.update(over)
    return seg


def _refused(data: bytes, *words: str) -> None:
    with pytest.raises(IntegrityError) as info:
        parse_manifest(data, source="evil/manifest.json")
    for word in words:
        assert word in str(info.value), str(info.value)


# -- the manifest ------------------------------------------------------------------------------


def test_manifest_not_json():
    _refused(b"<html>directory listing</html>", "not valid JSON")


def test_manifest_of_another_format():
    _refused(_signed_body(_manifest_body(format="something-else")), "format")


def test_manifest_from_the_future():
    _refused(_signed_body(_manifest_body(schema=99)), "schema version 99")


def test_manifest_hash_mismatch():
    body = _manifest_body()
    body["sweep"] = "other"
    _refused(json.dumps(body).encode(), "SHA-256 mismatch")


def test_manifest_claiming_a_100_gb_segment_is_refused_before_reading():
    body = _manifest_body(segments=[_segment(size=100 * 1024**3)])
    _refused(_signed_body(body), "segment 0 size")


def test_manifest_claiming_a_million_segments_is_refused():
    body = _manifest_body(segments=[{}] * (MAX_SEGMENTS + 1))  # refused before any entry
    _refused(_signed_body(body), "segments")


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "a/b", "seg\x00x", ".hidden", "a" * 300, ""]
)
def test_manifest_segment_names_that_could_escape(name):
    _refused(_signed_body(_manifest_body(segments=[_segment(name=name)])), "segment name")


def test_manifest_deeply_nested_json_is_refused_not_a_recursion_error():
    deep = b"[" * 100_000 + b"]" * 100_000
    _refused(deep, "not valid JSON")


def test_manifest_with_inconsistent_sequence_ranges():
    body = _manifest_body(segments=[_segment(first_seq=5, last_seq=5)])
    _refused(_signed_body(body), "expected it to start at 1")


def test_manifest_negative_sizes_and_non_integers():
    _refused(_signed_body(_manifest_body(segments=[_segment(size=-1)])), "size")
    _refused(_signed_body(_manifest_body(segments=[_segment(records="1")])), "records")


def test_huge_remote_manifest_is_not_read_past_the_bound(tmp_path: Path):
    store = Store(str(tmp_path))
    (tmp_path / "manifest.json").write_bytes(b" " * (64 * 1024 * 1024 + 10))
    with pytest.raises(IntegrityError):
        read_manifest(store)


# -- journal segments --------------------------------------------------------------------------


def _line(seq: int = 1, prev: str = "", kind: str = "result", key_: str = "k") -> bytes:
    line, _, _ = encode_record(prev, seq, kind, key_, 1.0, None, {"value": 1})
    return line


def test_journal_record_with_a_forged_hash():
    line = bytearray(_line())
    line[70] ^= 1
    with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
        parse_segment(bytes(line), source="s", first_seq=1, prev_hash="", allow_torn_tail=False)


def test_journal_header_with_a_non_integer_sequence():
    body = b'x 1e3 result 1.0 - "k"\t{}'
    import hashlib

    h = hashlib.sha256(b"\n" + body).hexdigest().encode()
    with pytest.raises(IntegrityError, match="malformed header"):
        parse_segment(
            h + b" " + body + b"\n", source="s", first_seq=1, prev_hash="", allow_torn_tail=False
        )


def test_journal_unknown_record_type_is_refused():
    import hashlib

    body = b'1 exec 1.0 - "k"\t{}'
    h = hashlib.sha256(b"\n" + body).hexdigest().encode()
    with pytest.raises(IntegrityError, match="unknown record type"):
        parse_segment(
            h + b" " + body + b"\n", source="s", first_seq=1, prev_hash="", allow_torn_tail=False
        )


def test_journal_payload_nested_too_deep_is_refused_on_use(tmp_path: Path):
    import hashlib

    from resumable._journal import Record

    rec = Record(1, "result", "k", 1.0, None, b"[" * 100_000 + b"]" * 100_000, "s")
    with pytest.raises(IntegrityError):
        rec.body()
    assert hashlib  # the record itself was built without parsing the payload


# -- encoded values ----------------------------------------------------------------------------


def test_stored_object_array_is_never_loaded():
    evil = {"__t": "nd", "d": "|O", "s": [1], "b": "AAAAAAAAAAA="}
    with pytest.raises(IntegrityError, match="object"):
        decode(evil)


def test_stored_array_whose_bytes_do_not_match_its_shape():
    evil = {"__t": "nd", "d": "<f8", "s": [1000], "b": "AAAAAAAAAAA="}
    with pytest.raises(IntegrityError, match="needs 8000 bytes"):
        decode(evil)


def test_stored_array_with_an_absurd_shape_does_not_allocate():
    evil = {"__t": "nd", "d": "<f8", "s": [2**40, 2**40], "b": ""}
    with pytest.raises(IntegrityError):
        decode(evil)


def test_stored_value_with_an_unknown_tag():
    with pytest.raises(IntegrityError, match="unknown value tag"):
        decode({"__t": "pickle", "v": "gASV..."})


def test_stored_value_nested_deeper_than_allowed():
    value: object = 1
    for _ in range(200):
        value = [value]
    with pytest.raises(IntegrityError, match="nested deeper"):
        decode(value)


# -- sources -----------------------------------------------------------------------------------


def _mirror(tmp_path: Path) -> Path:
    mirror = tmp_path / "mirror"
    with ResumableSweep(
        ITEMS, key=key, checkpoint_path=tmp_path / "m1" / "exp.h5", snapshot_dir=str(mirror)
    ) as sweep:
        for item in sweep.pending:
            sweep.record(item, item["x"])
    return mirror


def test_source_whose_manifest_names_a_missing_part_writes_nothing(tmp_path: Path):
    mirror = _mirror(tmp_path)
    victim = next((mirror / "segments").iterdir())
    victim.unlink()
    target = tmp_path / "m2" / "exp.h5"
    with pytest.raises(IntegrityError, match="missing"):
        ResumableSweep(ITEMS, key=key, checkpoint_path=target, resume_from=str(mirror))
    assert not progress_dir_for(target).exists()
    assert not target.parent.exists() or not any(
        p.name.startswith(".exp.h5.resumable") for p in target.parent.iterdir()
    )


def test_source_part_larger_than_declared_is_not_read_past_the_bound(tmp_path: Path):
    mirror = _mirror(tmp_path)
    victim = next((mirror / "segments").iterdir())
    victim.write_bytes(victim.read_bytes() + b"x" * 10_000_000)
    with pytest.raises(IntegrityError, match="larger than"):
        ResumableSweep(
            ITEMS, key=key, checkpoint_path=tmp_path / "m2" / "exp.h5", resume_from=str(mirror)
        )


def test_source_with_traversal_in_a_part_name_touches_nothing_outside(tmp_path: Path):
    mirror = _mirror(tmp_path)
    body = json.loads((mirror / "manifest.json").read_bytes())
    body["segments"][0]["name"] = "../../../outside.jsonl"
    (mirror / "manifest.json").write_bytes(_signed_body(body))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(IntegrityError, match="segment name"):
        ResumableSweep(
            ITEMS, key=key, checkpoint_path=tmp_path / "m2" / "exp.h5", resume_from=str(mirror)
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_sweep_descriptor_tampered():
    data = bytearray(descriptor_bytes("exp", 4))
    data[data.index(b'"shards": 4') + 10] = ord("5")
    with pytest.raises(IntegrityError, match="descriptor"):
        parse_descriptor(bytes(data), "evil/sweep.json")


def test_download_refuses_a_manifest_it_was_not_given_verbatim(tmp_path: Path):
    mirror = _mirror(tmp_path)
    with pytest.raises(IntegrityError):
        download(Store(str(mirror)), b"{}", tmp_path / "x")


# -- fuzzing -------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def real_files(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("fuzz")
    ckpt = tmp / "exp.h5"
    with ResumableSweep(ITEMS, key=key, checkpoint_path=ckpt, segment_bytes=2000) as sweep:
        for item in sweep.pending:
            sweep.record(item, {"a": np.arange(3) * item["x"], "t": (item["x"], "s")})
    pdir = progress_dir_for(ckpt)
    loaded = load(pdir)
    assert loaded is not None
    seg = loaded.manifest.segments[0]
    return {
        "manifest": (pdir / "manifest.json").read_bytes(),
        "segment": (pdir / "segments" / seg.name).read_bytes(),
        "first_seq": seg.first_seq,
    }


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, val in flips:
        if out:
            out[pos % len(out)] = val
    return bytes(out[:cut] if cut is not None else out)


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_manifest_random_bytes(data):
    with contextlib.suppress(ResumableError):
        parse_manifest(data, source="fuzz")


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    st.one_of(st.none(), st.integers(0, 5000)),
)
def test_fuzz_manifest_mutated(real_files, flips, cut):
    with contextlib.suppress(ResumableError):
        parse_manifest(_mutate(real_files["manifest"], flips, cut), source="fuzz")


@FUZZ
@given(st.binary(max_size=4096), st.booleans())
def test_fuzz_segment_random_bytes(data, torn):
    with contextlib.suppress(ResumableError):
        parse_segment(data, source="fuzz", first_seq=1, prev_hash="", allow_torn_tail=torn)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    st.one_of(st.none(), st.integers(0, 5000)),
)
def test_fuzz_segment_mutated(real_files, flips, cut):
    data = _mutate(real_files["segment"], flips, cut)
    try:
        parsed = parse_segment(
            data,
            source="fuzz",
            first_seq=real_files["first_seq"],
            prev_hash="",
            allow_torn_tail=True,
        )
        for rec in parsed.records:
            body = rec.body()
            if "value" in body:
                decode(body["value"])
    except ResumableError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["__t", "v", "d", "s", "b", "x"]), children, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(json_values)
def test_fuzz_decode_arbitrary_json(value):
    with contextlib.suppress(ResumableError):
        decode(value)


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_descriptor(data):
    with contextlib.suppress(ResumableError):
        parse_descriptor(data, "fuzz")


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    st.one_of(st.none(), st.integers(0, 3000)),
)
def test_fuzz_snapshot_npz_mutated(tmp_path_factory, flips, cut):
    from resumable.snapshot import save_state_with_manifest, verify_snapshot

    tmp = tmp_path_factory.mktemp("npz")
    path = tmp / "snap.npz"
    save_state_with_manifest(
        {"a": np.arange(20.0), "b/c": np.ones((3, 2), np.int8)}, str(path), extra={"step": 3}
    )
    path.write_bytes(_mutate(path.read_bytes(), flips, cut))
    with contextlib.suppress(ResumableError):
        verify_snapshot(str(path))


def test_a_zip_bomb_like_snapshot_member_is_refused(tmp_path: Path):
    """A compressed member declaring a small size but inflating to a lot is never inflated."""
    from resumable.snapshot import verify_snapshot

    path = tmp_path / "bomb.npz"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a00000.npy", b"\0" * 50_000_000)
    path.write_bytes(buf.getvalue())
    with pytest.raises(ResumableError):
        verify_snapshot(str(path))


# -- authenticity (HMAC-SHA256 signing) ----------------------------------------------------------


def test_snapshot_signed_with_a_key_loads_and_unsigned_or_other_key_is_refused(
    tmp_path: Path, monkeypatch
):
    from resumable.snapshot import download_and_load_state, save_state_with_manifest

    graph = {"a": np.arange(5.0)}
    signed, unsigned = tmp_path / "signed.npz", tmp_path / "unsigned.npz"
    save_state_with_manifest(graph, str(signed), extra={"step": 1}, signing_key="k1")
    save_state_with_manifest(graph, str(unsigned), extra={"step": 1})
    target = {"a": np.zeros(5)}
    assert download_and_load_state(target, str(signed), signing_key="k1") == {"step": 1}
    with pytest.raises(IntegrityError, match="not signed"):
        download_and_load_state(target, str(unsigned), signing_key="k1")
    with pytest.raises(IntegrityError, match="signature does not match"):
        download_and_load_state(target, str(signed), signing_key="another key")
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", "k1")  # the environment sets the key too
    with pytest.raises(IntegrityError, match="not signed"):
        download_and_load_state(target, str(unsigned))


def test_snapshot_whose_manifest_was_rewritten_after_signing_is_refused(tmp_path: Path):
    """An attacker who edits the manifest (and fixes every hash) cannot fix the HMAC."""
    from resumable.snapshot import save_state_with_manifest, verify_snapshot

    path = tmp_path / "s.npz"
    save_state_with_manifest({"a": np.arange(5.0)}, str(path), extra={"step": 1}, signing_key="k")
    data = path.read_bytes()
    forged = data.replace(b'"step":1', b'"step":9')
    assert forged != data
    path.write_bytes(forged)
    with pytest.raises(IntegrityError):
        verify_snapshot(str(path), signing_key="k")


def test_signed_mirror_resumes_and_an_unsigned_or_forged_source_is_refused(tmp_path: Path):
    from resumable.view import verify

    items = ITEMS[:10]
    mirror = tmp_path / "mirror"
    with ResumableSweep(
        items,
        key=key,
        checkpoint_path=tmp_path / "m1" / "exp.h5",
        snapshot_dir=str(mirror),
        signing_key="k",
    ) as sweep:
        for item in sweep.pending:
            sweep.record(item, item["x"])
    assert verify(str(mirror), signing_key="k") == []
    # The right key resumes on a new machine.
    with ResumableSweep(
        items,
        key=key,
        checkpoint_path=tmp_path / "m2" / "exp.h5",
        resume_from=str(mirror),
        signing_key="k",
    ) as again:
        assert again.status().done == 10
    # Another key is refused, and nothing is written.
    target = tmp_path / "m3" / "exp.h5"
    with pytest.raises(IntegrityError, match="signature"):
        ResumableSweep(
            items, key=key, checkpoint_path=target, resume_from=str(mirror), signing_key="other"
        )
    assert not progress_dir_for(target).exists()
    # A forger without the key rewrites the manifest consistently: hashes fine, HMAC not.
    body = json.loads((mirror / "manifest.json").read_bytes())
    body.pop("signature")
    body["extra"] = {"forged": True}
    (mirror / "manifest.json").write_bytes(_signed_body(body))
    with pytest.raises(IntegrityError, match="not signed"):
        ResumableSweep(
            items, key=key, checkpoint_path=target, resume_from=str(mirror), signing_key="k"
        )
    problems = verify(str(mirror), signing_key="k")
    assert len(problems) == 1 and "signature: unsigned" in str(problems[0])
    assert verify(str(mirror)) == []  # without a key only integrity is checked


def test_verify_reports_a_wrongly_signed_manifest(tmp_path: Path):
    from resumable.view import verify

    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS[:3], key=key, checkpoint_path=ckpt, signing_key="k1") as sweep:
        for item in sweep.pending:
            sweep.record(item, 1)
    problems = verify(str(ckpt), signing_key="k2")
    assert len(problems) == 1 and "wrongly signed" in str(problems[0])


def test_a_deleted_manifest_is_damage_for_views_not_absence(tmp_path: Path):
    from resumable.view import open_view

    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS[:3], key=key, checkpoint_path=ckpt) as sweep:
        for item in sweep.pending:
            sweep.record(item, 1)
    (progress_dir_for(ckpt) / "manifest.json").unlink()
    with pytest.raises(IntegrityError, match=r"manifest\.json is missing"):
        open_view(str(ckpt))


# -- hash-consistent hostile content (issue 11, item 6) ------------------------------------------


def test_manifest_holding_nan_with_a_recomputed_hash_is_refused():
    from tests.fixtures.fuzz import hostile_manifest

    for field in ("extra", "generation", "seg.size"):
        with pytest.raises(IntegrityError, match="NaN is not a JSON value") as info:
            parse_manifest(hostile_manifest(field, float("nan")), source="evil/manifest.json")
        assert "evil/manifest.json" in str(info.value)


def test_failure_with_an_infinite_attempt_is_refused_at_open(tmp_path: Path):
    from tests.fixtures.fuzz import journal, write_checkpoint

    for value, words in ((float("inf"), "Infinity"), (1e300, "attempt must be an integer")):
        d = write_checkpoint(
            tmp_path / repr(value), journal("failure", "field:attempt", value), True
        )
        with pytest.raises(IntegrityError, match=words) as info:
            load(d)
        assert "seg-00000001.jsonl: record 4" in str(info.value)


def test_value_tags_whose_payload_has_the_wrong_type_are_refused():
    for evil, words in (
        ({"__t": "dict", "v": [1, 2]}, "field 'v' must be a dict, found list"),
        ({"__t": "tuple", "v": {"a": 1}}, "field 'v' must be a list, found dict"),
        ({"__t": "f", "v": ["nan"]}, "non-finite float"),
        ({"__t": "nd", "d": "<f8", "s": "12", "b": ""}, "field 's' must be a list"),
        ({"__t": "nd", "d": "<f8", "s": [1.5], "b": ""}, "array shape"),
        ({"__t": "np", "d": "<f8", "b": 7}, "field 'b' must be a str"),
    ):
        with pytest.raises(IntegrityError, match=words):
            decode(evil, where="evil")


@pytest.mark.parametrize("descr", [[["a"]], [[]], [7], {"a": 1}, [["a", "<f8", 5]]])
def test_array_descriptions_of_the_wrong_shape_are_refused(descr):
    evil = {"__t": "nd", "d": descr, "s": [1], "b": "AAAAAAAAAAA="}
    with pytest.raises(IntegrityError) as info:
        decode(evil, where="evil result")
    assert str(info.value).startswith("evil result: ")


def test_meta_holding_nan_is_refused(tmp_path: Path):
    from tests.fixtures.fuzz import journal, write_checkpoint

    for sealed in (True, False):
        d = write_checkpoint(
            tmp_path / str(sealed), journal("meta", "field:meta", {"x": float("nan")}), sealed
        )
        with pytest.raises(IntegrityError, match="NaN is not a JSON value"):
            load(d)


@pytest.mark.parametrize("t", ["nan", "inf", "-inf", "1e300", "-1"])
def test_record_times_that_no_clock_produces_are_refused(tmp_path: Path, t: str):
    from tests.fixtures.fuzz import journal, write_checkpoint

    for sealed in (True, False):
        d = write_checkpoint(tmp_path / f"{sealed}", journal("result", "time", t), sealed)
        with pytest.raises(IntegrityError, match="record 3 at byte"):
            load(d)


def test_lone_surrogates_and_tagged_meta_found_by_the_structured_fuzzer(tmp_path: Path):
    """scripts/fuzz_structured.py found these: a lone surrogate escape in a journal payload
    (UnicodeEncodeError when the meta was re-encoded at open) and a meta that decodes to an
    int (AttributeError at open). Both are IntegrityErrors now."""
    from resumable._checkpoint import progress_dir_for
    from tests.fixtures.fuzz import consume, journal, write_checkpoint

    for i, meta in enumerate(({"note": "\ud800x"}, {"__t": "i", "v": "ff"})):
        where = progress_dir_for(tmp_path / str(i) / "exp.h5")
        d = write_checkpoint(where, journal("meta", "field:meta", meta), False)
        with pytest.raises(IntegrityError, match=r"meta|surrogate"):
            consume(d)
