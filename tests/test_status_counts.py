"""`resumable status` counts exactly, from the one pass that opened the checkpoint.

Status counts the done, failed, pending and stale items without looking at every key when it
can (every recorded key current: the list only grew), and the timeline counts each launch's
results by binary search instead of replaying them. Both are checked here against a naive
recount of every record read straight from the segment files, for random histories where the
list grows, shrinks (results of keys no longer in it) and changes (invalidated results), items
fail, are retried by the sweep and by `resumable retry-failed` between launches.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from test_history import _all_records, _reference

from resumable import ResumableSweep
from resumable._checkpoint import progress_dir_for
from resumable._history import timeline
from resumable._state import State
from resumable.cli import main as cli_main
from resumable.view import open_view


def _naive_status(records: list[Any]) -> dict[str, Any]:
    """done/failed/pending/stale/total of the latest list, recounted record by record."""
    done: set[str] = set()
    failed: set[str] = set()
    keys: list[str] = []
    launches = 0
    last = None
    for rec in records:
        if rec.type == "launch":
            launches += 1
        elif rec.type == "result":
            done.add(rec.key)
            failed.discard(rec.key)
            last = rec.t
        elif rec.type == "failure":
            failed.add(rec.key)
            last = rec.t
        elif rec.type == "retry":
            failed.difference_update(rec.body()["keys"])
        elif rec.type == "invalidate":
            done.difference_update(rec.body()["keys"])
        elif rec.type == "items":
            body = rec.body()
            if "items" in body:
                keys = [e[0] for e in body["items"]]
            else:
                assert len(keys) == body["base_n"]
                keys = keys + [e[0] for e in body["append"]]
    current = set(keys)
    return {
        "total": len(current),
        "done": len(done & current),
        "failed": len(failed & current),
        "pending": len(current - done - failed),
        "stale": len(done - current) + len(failed - current),
        "launches": launches,
        "last_finished": last,
    }


def _history(path: Path, seed: int, *, shrink: bool) -> None:
    """Launches that grow the list, shrink or change it (with `shrink`), fail and retry items
    (without `shrink`, results are still invalidated: of failed items retried)."""
    rng = random.Random(seed)
    items = [{"i": i, "v": 0} for i in range(30)]
    for launch in range(rng.randint(4, 10)):
        roll = rng.random()
        if roll < 0.3:  # the list grows
            items = items + [
                {"i": 1000 + launch * 10 + j, "v": 0} for j in range(rng.randint(1, 4))
            ]
        elif shrink and roll < 0.5:  # some items leave it: their records become stale
            items = [c for c in items if rng.random() > 0.2]
        on_change = "keep"
        if shrink and rng.random() < 0.2:  # some items change: their results are invalidated
            for _ in range(2):
                j = rng.randrange(len(items))
                items[j] = {"i": items[j]["i"], "v": items[j]["v"] + 1}
            on_change = "rerun"
        if launch and rng.random() < 0.2:  # retried between launches, from the command line
            cli_main(["retry-failed", str(path)])
        with ResumableSweep(
            items,
            key=lambda c: str(c["i"]),
            checkpoint_path=path,
            on_change=on_change,
            retry_failed=rng.random() < 0.3,
            segment_bytes=rng.choice([600, 4096, 1 << 20]),
            handle_signals=False,
        ) as sweep:
            stop = rng.randint(0, len(items))
            for count, item in enumerate(sweep.pending):
                if count >= stop:
                    break
                if rng.random() < 0.25:
                    sweep.record_failure(item, ValueError(f"bad {item['i']}"))
                else:
                    sweep.record(item, item["i"])


def _counts(d: Any) -> dict[str, Any]:
    get = d.get if isinstance(d, dict) else lambda k: getattr(d, k)
    keys = ("total", "done", "failed", "pending", "stale", "launches", "last_finished")
    return {k: get(k) for k in keys}


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _all_records(progress_dir_for(path))
    expected = _naive_status(records)
    view = open_view(str(path))
    assert _counts(view.status()) == expected
    capsys.readouterr()
    assert cli_main(["status", "--json", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert _counts(out) == expected and out["verified"]
    per_launch = _reference(records)
    for detail in (False, True):
        got = [
            {
                "t": x.t,
                "n_items": x.n_items,
                "pending": x.pending_at_end,
                "last_t": x.last_t,
                "results": x.results,
                "failures": x.failures,
            }
            for x in timeline(view, detail=detail).launches
        ]
        assert got == per_launch
    assert [x["pending_at_end"] for x in out["history"]["detail"]] == [
        x["pending"] for x in per_launch
    ]


@pytest.mark.parametrize("seed", range(10))
def test_counts_equal_a_naive_recount_when_the_list_grows_shrinks_and_changes(
    tmp_path: Path, seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "exp.h5"
    _history(path, seed, shrink=True)
    _check(path, capsys)


@pytest.mark.parametrize("seed", range(6))
def test_a_list_that_only_grew_is_counted_without_decoding_it(
    tmp_path: Path, seed: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Launch records carry the list's length: with every recorded key current, neither the
    status nor the timeline decodes a listing, and the counts stay exact (failures, retries,
    invalidations included)."""
    path = tmp_path / "exp.h5"
    _history(path, seed, shrink=False)
    assert any(r.type == "failure" for r in _all_records(progress_dir_for(path)))
    records = _all_records(progress_dir_for(path))
    view = open_view(str(path))
    assert view.loaded.state.keys_all_current()

    def refuse(self: State, *args: Any) -> Any:
        raise AssertionError("a listing was decoded")

    monkeypatch.setattr(State, "listing_of", refuse)
    monkeypatch.setattr(State, "items_listing", refuse)
    assert _counts(view.status()) == _naive_status(records)
    got = [x.pending_at_end for x in timeline(view, detail=False).launches]
    assert got == [x["pending"] for x in _reference(records)]
    _check(path, capsys)


def test_results_of_keys_no_longer_listed_are_stale_not_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "exp.h5"
    key = str
    with ResumableSweep(list(range(10)), key=key, checkpoint_path=path) as sweep:
        for item in range(6):
            sweep.record(item, item)
        sweep.record_failure(6, ValueError("x"))
    with ResumableSweep(list(range(3, 12)), key=key, checkpoint_path=path) as sweep:
        sweep.record(10, 10)
    st = open_view(str(path)).status()
    # listed: 3..11; done 3,4,5,10; failed 6; stale: results of 0,1,2
    assert (st.total, st.done, st.failed, st.pending, st.stale) == (9, 4, 1, 4, 3)
    _check(path, capsys)


def test_status_lists_only_the_latest_launches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sweep preempted many times prints a status as short as one preempted twice: the
    latest launches one by one, the others counted (the report lists them all)."""
    from resumable._status_text import STATUS_LAUNCHES

    path = tmp_path / "exp.h5"
    n = STATUS_LAUNCHES + 5
    for i in range(n):
        with ResumableSweep(list(range(n)), key=str, checkpoint_path=path) as sweep:
            sweep.record(i, i)
    capsys.readouterr()
    assert cli_main(["status", "--json", str(path)]) == 0
    h = json.loads(capsys.readouterr().out)["history"]
    assert h["launches"] == n and h["interrupted"] == n - 1
    assert len(h["detail"]) == STATUS_LAUNCHES and h["detail_omitted"] == 5
    assert [x["index"] for x in h["detail"]] == list(range(5, n))
    assert h["detail"][-1]["outcome"] == "completed" and h["detail"][-1]["pending_at_end"] == 0
    assert cli_main(["status", str(path)]) == 0
    assert f"launches   {n}, {n - 1} interrupted" in capsys.readouterr().out


def test_with_a_signing_key_status_checks_the_signature_without_a_second_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening checked every hash: a signing key adds the manifest's signature and the item
    snapshots, not a second read of the journal (`verify` would re-read it all)."""
    import resumable.view as view_mod

    path = tmp_path / "exp.h5"
    with ResumableSweep(list(range(4)), key=str, checkpoint_path=path, signing_key="k1") as sweep:
        for i in range(4):
            sweep.record(i, i)

    def no_second_pass(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the journal was verified twice")

    monkeypatch.setattr(view_mod, "_verify", no_second_pass)
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", "k1")
    capsys.readouterr()
    assert cli_main(["status", "--json", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verified"] and out["problems"] == [] and out["done"] == 4
    monkeypatch.setenv("RESUMABLE_SIGNING_KEY", "another")
    assert cli_main(["status", "--json", str(path)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["verified"]
    assert [p["what"] for p in out["problems"]] == [
        "signature: wrongly signed (altered, or another key)"
    ]
