"""The timeline behind `resumable status` and `report`: exact, from the one pass that opened it.

A reference replays every record read straight from the segment files (the way the timeline
was first computed: re-reading the journal and recounting the pending items at every launch);
the timeline built from the view's state must tell exactly the same story, for random
histories with failures, retries, invalidations, item-list changes and many launches.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from resumable import ResumableSweep
from resumable._checkpoint import SEGMENTS_DIR, progress_dir_for
from resumable._history import timeline
from resumable._journal import parse_segment
from resumable._manifest import MANIFEST_NAME, parse_manifest
from resumable.errors import IntegrityError
from resumable.view import open_view


def _all_records(progress: Path) -> list[Any]:
    manifest = parse_manifest((progress / MANIFEST_NAME).read_bytes(), source="m")
    names = [s.name for s in manifest.segments] + ([manifest.active] if manifest.active else [])
    out: list[Any] = []
    prev = ""
    for name in names:
        parsed = parse_segment(
            (progress / SEGMENTS_DIR / name).read_bytes(),
            source=name,
            first_seq=len(out) + 1,
            prev_hash=prev,
            allow_torn_tail=True,
        )
        out += parsed.records
        prev = parsed.last_hash
    return out


def _reference(records: list[Any]) -> list[dict[str, Any]]:
    """Per launch: results, failures, last record time, pending at its end (naive recount)."""
    done: set[str] = set()
    failed: set[str] = set()
    keys: list[str] | None = None
    launches: list[dict[str, Any]] = []

    def close() -> None:
        if launches and launches[-1]["pending"] is None:
            n = launches[-1]["n_items"]
            launches[-1]["pending"] = (
                sum(1 for k in keys if k not in done and k not in failed)
                if keys is not None
                else max(0, n - len(done) - len(failed))
            )

    for rec in records:
        cur = launches[-1] if launches else None
        if rec.type == "launch":
            close()
            body = rec.body()
            launches.append(
                {"t": rec.t, "n_items": body["n_items"], "pending": None, "last_t": rec.t}
                | {"results": 0, "failures": 0}
            )
        elif rec.type == "result":
            done.add(rec.key)
            failed.discard(rec.key)
            if cur:
                cur["results"] += 1
                cur["last_t"] = max(cur["last_t"], rec.t)
        elif rec.type == "failure":
            if rec.key not in done:
                failed.add(rec.key)
            if cur:
                cur["failures"] += 1
                cur["last_t"] = max(cur["last_t"], rec.t)
        elif rec.type in ("retry", "invalidate"):
            body = rec.body()
            if body.get("reason") == "cli":
                close()
            (failed if rec.type == "retry" else done).difference_update(body["keys"])
        elif rec.type == "items":
            body = rec.body()
            if "items" in body:
                keys = [e[0] for e in body["items"]]
            else:  # appended entries after a list of base_n (the latest one)
                assert keys is not None and len(keys) == body["base_n"]
                keys = keys + [e[0] for e in body["append"]]
        elif rec.type == "meta" and cur:
            cur["last_t"] = max(cur["last_t"], rec.t)
    close()
    return launches


def _random_history(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    n = 40
    items = [{"i": i, "v": 0} for i in range(n)]
    for _launch in range(rng.randint(3, 9)):
        if rng.random() < 0.3:  # the item list grows
            items = items + [{"i": len(items) + j, "v": 0} for j in range(rng.randint(1, 5))]
        on_change = "keep"
        if rng.random() < 0.25:  # some items change: their results are invalidated
            for _ in range(3):
                j = rng.randrange(len(items))
                items[j] = {"i": items[j]["i"], "v": items[j]["v"] + 1}
            on_change = "rerun"
        with ResumableSweep(
            items,
            key=lambda c: str(c["i"]),
            checkpoint_path=path,
            on_change=on_change,
            retry_failed=rng.random() < 0.3,
            segment_bytes=rng.choice([600, 4096, 1 << 20]),
            handle_signals=False,
            meta={"launch": _launch} if rng.random() < 0.5 else None,
        ) as sweep:
            if rng.random() < 0.2 and sweep.status().failed:
                sweep.retry_failures()
            stop = rng.randint(0, len(items))
            for count, item in enumerate(sweep.pending):
                if count >= stop:
                    break
                if rng.random() < 0.2:
                    sweep.record_failure(item, ValueError(f"bad {item['i']}"))
                else:
                    sweep.record(item, item["i"] * 2)


@pytest.mark.parametrize("seed", range(12))
def test_timeline_equals_a_naive_replay_of_every_record(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "exp.h5"
    _random_history(path, seed)
    progress = progress_dir_for(path)
    expected = _reference(_all_records(progress))
    view = open_view(str(path))
    for detail in (True, False):
        tl = timeline(view, detail=detail)
        assert tl.exact and tl.note is None
        got = [
            {
                "t": x.t,
                "n_items": x.n_items,
                "pending": x.pending_at_end,
                "last_t": x.last_t,
                "results": x.results,
                "failures": x.failures,
            }
            for x in tl.launches
        ]
        assert got == expected
    records = _all_records(progress)
    finished = [
        (r.seq, r.key, r.type == "result") for r in records if r.type in ("result", "failure")
    ]
    assert [(f.seq, f.key, f.ok) for f in timeline(view).finished] == finished


def test_timeline_needs_no_second_read_of_the_journal(tmp_path: Path, monkeypatch) -> None:
    """The timeline comes from the state that opening replayed (the old code re-read the
    journal, and fell back to an approximation when it could not). Payloads of sealed records
    (items listings, durations) are read back lazily, verified again: files gone by then are
    a clear IntegrityError, never an approximation."""
    path = tmp_path / "exp.h5"
    _random_history(path, seed=3)
    expected = _reference(_all_records(progress_dir_for(path)))
    view = open_view(str(path))
    tl = timeline(view)
    assert tl.exact and tl.note is None
    assert [(x.results, x.failures, x.pending_at_end) for x in tl.launches] == [
        (x["results"], x["failures"], x["pending"]) for x in expected
    ]
    import resumable._loading as checkpoint

    monkeypatch.setattr(checkpoint, "_SCAN_MIN_RECORDS", 1)  # lazy records even here
    view = open_view(str(path))
    shutil.rmtree(progress_dir_for(path))
    with pytest.raises(IntegrityError, match="missing since the checkpoint was opened"):
        timeline(view)


def test_failures_retried_and_failed_again_are_each_in_the_timeline(tmp_path: Path) -> None:
    path = tmp_path / "exp.h5"
    items = list(range(5))
    key = str
    for _ in range(3):  # item 0 fails three times (retried in between), then succeeds
        with ResumableSweep(items, key=key, checkpoint_path=path, retry_failed=True) as sweep:
            sweep.record_failure(0, RuntimeError("boom"))
    with ResumableSweep(items, key=key, checkpoint_path=path, retry_failed=True) as sweep:
        for item in sweep.pending:
            sweep.record(item, item)
    tl = timeline(open_view(str(path)))
    assert [(f.key, f.ok) for f in tl.finished] == [("0", False)] * 3 + [
        (str(i), True) for i in range(5)
    ]
    assert [x.outcome for x in tl.launches] == ["interrupted"] * 3 + ["completed"]
    assert [x.pending_at_end for x in tl.launches] == [4, 4, 4, 0]
