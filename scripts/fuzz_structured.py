"""Structure-aware fuzzing behind the hash, at scale (issue 11, item 6).

Runs the targets of tests/fixtures/fuzz.py (hostile JSON in every field of the checkpoint
manifest, journal records of every type, item listings, record times, encoded values, shard
descriptors and snapshot manifests, with hashes, chains and signatures recomputed) for at least
--examples examples in total, and prints per target how many examples ran, how many were
refused with a ResumableError, accepted, or skipped (not expressible as JSON: ints past
Python's digit limit), and every *finding*: an exception that is not a
ResumableError (with where it was raised). Exit status 1 if there is any finding.

    .venv/bin/python scripts/fuzz_structured.py --examples 100000
"""

from __future__ import annotations

import argparse
import collections
import functools
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fixtures import fuzz

TIMES = st.sampled_from(["nan", "inf", "-inf", "1e300", "1e308", "-1", "-0.0", "1e10", "1e11"]) | (
    st.floats(allow_nan=True, allow_infinity=True).map(repr)
)
PARTS = st.sampled_from(
    ["payload", "key", "fp"]
    + [f"field:{f}" for f in ("value", "attempt", "duration", "keys", "items", "meta", "launch")]
    + [f"field:{f}" for f in ("pid", "n_items", "error_type", "reason", "message", "host")]
)
# (name, share of the examples, strategies, check)
TARGETS: list[tuple[str, float, tuple[st.SearchStrategy[Any], ...], Any]] = [
    ("checkpoint manifest", 0.25, (st.sampled_from(fuzz.MANIFEST_FIELDS), fuzz.hostile_field),
     fuzz.check_manifest),
    ("journal records (every type)", 0.20, (st.sampled_from(fuzz.TYPES), PARTS, fuzz.hostile_field,
     st.booleans()), fuzz.check_journal),
    ("journal record times", 0.05, (st.sampled_from(fuzz.TYPES), st.just("time"), TIMES,
     st.booleans()), fuzz.check_journal),
    ("encoded values", 0.25, (fuzz.hostile,), fuzz.check_decode),
    ("shard descriptors", 0.15, (st.sampled_from(fuzz.DESCRIPTOR_FIELDS), fuzz.hostile_field),
     fuzz.check_descriptor_field),
    ("snapshot manifests", 0.10, (st.sampled_from(fuzz.SNAPSHOT_FIELDS), fuzz.hostile_field),
     "snapshot"),
]  # fmt: skip


def run(n: int, strategies: tuple[Any, ...], check: Any) -> dict[str, Any]:
    stats: collections.Counter[str] = collections.Counter()
    findings: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.tuples(*strategies))
    def target(args: tuple[Any, ...]) -> None:
        stats["examples"] += 1
        try:
            stats[check(*args)] += 1
        except Exception as exc:  # a finding: anything but a ResumableError escaped
            tb = traceback.extract_tb(exc.__traceback__)
            frame = next((f for f in reversed(tb) if "/resumable/" in f.filename), tb[-1])
            where = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            findings[where] += 1
            examples.setdefault(where, f"{args!r:.300}: {exc!s:.200}")

    target()
    return {"stats": stats, "findings": findings, "examples": examples}


def _snapshot(field: str, value: Any, *, tmp: Path) -> str:
    return fuzz.check_snapshot(field, value, tmp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=100_000, help="total examples (all targets)")
    args = ap.parse_args()
    total, findings, start = 0, 0, time.monotonic()
    print(
        f"{'target':32} {'examples':>9} {'refused':>9} {'accepted':>9} {'skipped':>8} "
        f"{'findings':>9} {'s':>7}"
    )
    with tempfile.TemporaryDirectory(prefix="fuzz-structured-") as tmp:
        for name, share, strategies, check in TARGETS:
            n = math.ceil(args.examples * share)
            t0 = time.monotonic()
            if check == "snapshot":
                check = functools.partial(_snapshot, tmp=Path(tmp))
            r = run(n, strategies, check)
            s, nf = r["stats"], sum(r["findings"].values())
            total += s["examples"]
            findings += nf
            print(
                f"{name:32} {s['examples']:9d} {s['refused']:9d} {s['accepted']:9d} "
                f"{s['skipped']:8d} {nf:9d} {time.monotonic() - t0:7.1f}",
                flush=True,
            )
            for where, count in r["findings"].items():
                print(f"    FINDING {count}x {where}\n      e.g. {r['examples'][where]}")
    print(f"{'total':32} {total:9d} {'':28} {findings:9d} {time.monotonic() - start:7.1f}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
