"""Structure-aware fuzzing behind the hash: hostile JSON with every hash, chain and signature
recomputed reaches every parser; only ResumableErrors may escape (issue 11, item 6). The
machinery is in tests/fixtures/fuzz.py; scripts/fuzz_structured.py runs 100,000+ examples,
these run a modest share in CI (RESUMABLE_FUZZ_EXAMPLES scales them)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from fixtures import fuzz
except ImportError:  # pragma: no cover - run from the repository root
    from tests.fixtures import fuzz

N = int(os.environ.get("RESUMABLE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=N,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TIMES = st.sampled_from(["nan", "inf", "-inf", "1e300", "1e308", "-1", "-0.0", "1e10", "1e11"]) | (
    st.floats(allow_nan=True, allow_infinity=True).map(repr)
)
PARTS = st.sampled_from(
    ["payload", "key", "fp"]
    + [f"field:{f}" for f in ("value", "attempt", "duration", "keys", "items", "meta", "launch")]
    + [f"field:{f}" for f in ("pid", "n_items", "error_type", "reason", "message", "host")]
)


@FUZZ
@given(st.sampled_from(fuzz.MANIFEST_FIELDS), fuzz.hostile_field)
def test_checkpoint_manifest(field, value):
    fuzz.check_manifest(field, value)


@FUZZ
@given(st.sampled_from(fuzz.TYPES), PARTS, fuzz.hostile_field, st.booleans())
def test_journal_records_of_every_type(kind, part, value, sealed):
    fuzz.check_journal(kind, part, value, sealed)


@FUZZ
@given(st.sampled_from(fuzz.TYPES), TIMES, st.booleans())
def test_journal_record_times(kind, t, sealed):
    fuzz.check_journal(kind, "time", t, sealed)


@FUZZ
@given(fuzz.hostile)
def test_encoded_values(value):
    fuzz.check_decode(value)


@FUZZ
@given(st.sampled_from(fuzz.DESCRIPTOR_FIELDS), fuzz.hostile_field)
def test_shard_descriptors(field, value):
    fuzz.check_descriptor_field(field, value)


@FUZZ
@given(st.sampled_from(fuzz.SNAPSHOT_FIELDS), fuzz.hostile_field)
def test_snapshot_manifests(tmp_path_factory, field, value):
    fuzz.check_snapshot(field, value, tmp_path_factory.mktemp("snap"))


def test_the_fuzzer_reaches_the_parsers_behind_the_hashes(tmp_path):
    """A valid structure built by the fuzzer's own writers loads: so hostile content is refused
    by the parsers themselves, not by a hash the fuzzer got wrong."""
    from resumable._checkpoint import load
    from resumable._manifest import parse_manifest

    m = parse_manifest(fuzz.hostile_manifest("extra", {"ok": 1}), source="x", signing_key=fuzz.KEY)
    assert m.extra == {"ok": 1}
    from resumable._checkpoint import progress_dir_for

    where = progress_dir_for(tmp_path / "exp.h5")  # consume() also resumes a sweep from it
    d = fuzz.write_checkpoint(where, fuzz.journal("meta", "field:meta", {"a": 1}), True)
    fuzz.consume(d)
    loaded = load(d)
    assert loaded is not None and loaded.state.meta == {"a": 1} and len(loaded.state.results) == 1
    d2 = fuzz.write_checkpoint(tmp_path / "q", fuzz.journal("meta", "payload", {"meta": {}}), False)
    fuzz.consume(d2)
    fuzz.check_snapshot("extra", {"step": 4}, tmp_path)
    from resumable.snapshot import read_snapshot

    arrays, report = read_snapshot(str(tmp_path / "s.npz"), signing_key=fuzz.KEY)
    assert report.extra == {"step": 4} and arrays["a"].sum() == 15.0
