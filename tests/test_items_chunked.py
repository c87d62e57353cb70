"""Item listings longer than `limits.ITEMS_PART_BYTES`: written as ``itemspart`` records
closed by an ``items`` record, read back as the one list (see resumable/_itemlist.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resumable import ResumableSweep
from resumable import _limits as limits
from resumable._checkpoint import progress_dir_for
from resumable._items import ItemSet
from resumable._journal import encode_record, parse_segment
from resumable._manifest import parse_manifest
from resumable.errors import IntegrityError
from resumable.view import open_view, verify

KEY = lambda c: str(c["i"])  # noqa: E731
BIG = 1 << 30  # segment_bytes: every record in the active segment (easy to rewrite)


def _items(n: int, start: int = 0) -> list[dict]:
    return [{"i": i, "x": i * 0.5, "pad": "p" * (i % 7)} for i in range(start, start + n)]


def _launch(path: Path, items: list, record: int = 3, **kw) -> None:
    with ResumableSweep(items, key=KEY, checkpoint_path=path, **kw) as s:
        for item in list(s.pending)[:record]:
            s.record(item, item["i"])


def _journal_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in (progress_dir_for(path) / "segments").glob("*.jsonl"))


def _active(path: Path) -> Path:
    pdir = progress_dir_for(path)
    manifest = parse_manifest((pdir / "manifest.json").read_bytes(), source="m")
    return pdir / "segments" / manifest.active


def _records(path: Path) -> list:
    seg = _active(path)
    return parse_segment(
        seg.read_bytes(), source=str(seg), first_seq=1, prev_hash="", allow_torn_tail=False
    ).records


def _rewrite(path: Path, rows: list[tuple]) -> None:
    """Write the active segment (the only one) anew: (kind, key, t, fp, payload) rows,
    numbered and hash-chained as the writer does."""
    prev, out = "", []
    for seq, (kind, key, t, fp, payload) in enumerate(rows, 1):
        line, prev, _ = encode_record(prev, seq, kind, key, t, fp, payload)
        out.append(line)
    _active(path).write_bytes(b"".join(out))


def _rows(path: Path) -> list[tuple]:
    return [(r.type, r.key, r.t, r.fp, r.payload) for r in _records(path)]


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr(limits, "ITEMS_PART_BYTES", 2000)


def test_a_long_list_is_parted_and_reads_back_as_the_one_record_form(tmp_path, small_parts):
    path = tmp_path / "exp.h5"
    items = _items(300)
    _launch(path, items, segment_bytes=BIG)
    kinds = [r.type for r in _records(path)]
    k = kinds.count("itemspart")
    assert k > 5 and kinds[1 : k + 2] == ["itemspart"] * k + ["items"]
    recs = _records(path)
    ident = recs[k + 1].fp
    assert [r.key for r in recs[1 : k + 1]] == [str(i) for i in range(k)]
    assert all(r.fp == ident for r in recs[1 : k + 2]) and recs[k + 1].key == str(k)
    assert json.loads(recs[k + 1].payload) == {"parts": k}
    for r in recs[1 : k + 1]:  # each part at most the limit, split between entries
        assert len(r.payload) <= 2000
    expected = ItemSet.build(items, KEY).listing()
    view = open_view(str(path))
    assert view.items() == expected
    assert view.keys() == [e[0] for e in expected]
    assert view.status().total == 300 and view.status().done == 3
    # the same list in one record (a large limit) reads back the same
    other = tmp_path / "one.h5"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(limits, "ITEMS_PART_BYTES", 1 << 26)
        _launch(other, items, segment_bytes=BIG)
    assert "itemspart" not in [r.type for r in _records(other)]
    assert open_view(str(other)).items() == expected
    # reopened for writing: unchanged, O(1) bytes
    before = _journal_bytes(path)
    _launch(path, items, record=0)
    assert _journal_bytes(path) - before < 700  # a launch record


def test_parts_written_by_a_sweep_are_not_kept_in_memory(tmp_path, small_parts):
    from resumable._journal import LazyRecord

    path = tmp_path / "exp.h5"
    items = _items(300)
    with ResumableSweep(items, key=KEY, checkpoint_path=path) as s:
        state = s._journal.state
        parts = [p for ps in state.item_parts.values() for p in ps]
        assert parts and all(type(p) is LazyRecord for p in parts)
        assert type(state.items_record) is LazyRecord
        assert state.items_with_fingerprints() == ItemSet.build(items, KEY).listing()  # read back


def test_appends_to_a_parted_list_write_only_the_new_entries(tmp_path, small_parts):
    path = tmp_path / "exp.h5"
    items = _items(300)
    _launch(path, items)
    grown = items + _items(5, start=300)
    before = _journal_bytes(path)
    _launch(path, grown)
    assert _journal_bytes(path) - before < 2500  # 5 entries in one record, no list again
    many = grown + _items(200, start=305)
    before = _journal_bytes(path)
    _launch(path, many, segment_bytes=BIG)
    written = _journal_bytes(path) - before
    whole = len(ItemSet.build(many, KEY).record_payload(None, None))
    appended = len(ItemSet.build(many, KEY).listing_json(305))
    # 200 entries of 505, in parts (+ their headers, a launch, 3 results): O(k)
    assert 200 * 20 < written < appended + 3000 < whole
    view = open_view(str(path))
    assert view.items() == ItemSet.build(many, KEY).listing()
    closing = view.loaded.state.items_record
    assert json.loads(closing.payload)["parts"] > 1 and json.loads(closing.payload)["base_n"] == 305
    assert view.loaded.state.keys_all_current()
    from resumable._history import timeline

    tl = timeline(view)
    assert [x.n_items for x in tl.launches] == [300, 305, 505]
    assert [x.pending_at_end for x in tl.launches] == [297, 299, 496]
    # one items event per list, however many parts
    assert sum(r.type == "items" for r in view.loaded.state.events) == 3
    assert not any(r.type == "itemspart" for r in view.loaded.state.events)


def test_a_changed_parted_list_keeps_the_timeline_right(tmp_path, small_parts):
    path = tmp_path / "exp.h5"
    items = _items(300)
    _launch(path, items)
    changed = [dict(items[0], x=-1.0), *items[1:]]
    _launch(path, changed, on_change="rerun")
    view = open_view(str(path))
    assert view.loaded.state.keys_all_current() is False
    assert view.items() == ItemSet.build(changed, KEY).listing()
    from resumable._history import timeline

    tl = timeline(view)
    assert [x.n_items for x in tl.launches] == [300, 300]
    assert [x.pending_at_end for x in tl.launches] == [297, 295]


def test_the_limit_at_its_value_and_one_past_it(tmp_path, monkeypatch):
    items = _items(40)
    one = ItemSet.build(items, KEY).record_payload(None, None)
    ident = ItemSet.build(items, KEY).identity()
    monkeypatch.setattr(limits, "ITEMS_PART_BYTES", len(one))
    entries = list(ItemSet.build(items, KEY).record_entries(None, None, ident))
    assert entries == [("items", one, None, ident)]
    monkeypatch.setattr(limits, "ITEMS_PART_BYTES", len(one) - 1)
    entries = list(ItemSet.build(items, KEY).record_entries(None, None, ident))
    assert [e[0] for e in entries] == ["itemspart", "itemspart", "items"]
    assert all(len(e[1]) <= len(one) - 1 for e in entries)
    joined = [x for e in entries[:-1] for x in json.loads(e[1])["entries"]]
    assert joined == json.loads(one)["items"]
    # a limit smaller than one entry: a part per entry
    monkeypatch.setattr(limits, "ITEMS_PART_BYTES", 10)
    entries = list(ItemSet.build(items, KEY).record_entries(None, None, ident))
    assert len(entries) == 41 and entries[-1][1] == b'{"parts":40}'


def test_an_append_at_the_limit(monkeypatch):
    items = _items(60)
    base = ItemSet.build(items[:20], KEY).identity()
    whole = ItemSet.build(items, KEY)
    one = whole.record_payload(base, 20)
    assert one.startswith(b'{"base":')
    monkeypatch.setattr(limits, "ITEMS_PART_BYTES", len(one))
    assert [e[0] for e in whole.record_entries(base, 20, "3:x")] == ["items"]
    monkeypatch.setattr(limits, "ITEMS_PART_BYTES", len(one) - 1)
    entries = list(whole.record_entries(base, 20, "3:x"))
    assert [e[0] for e in entries] == ["itemspart", "items"]  # (the head is in the closing)
    closing = json.loads(entries[-1][1])
    assert closing == {"base": base, "base_n": 20, "parts": len(entries) - 1}
    joined = [x for e in entries[:-1] for x in json.loads(e[1])["entries"]]
    assert joined == json.loads(one)["append"]


def _parted(tmp_path: Path) -> tuple[Path, list[tuple], list[int]]:
    path = tmp_path / "exp.h5"
    _launch(path, _items(300), segment_bytes=BIG)
    rows = _rows(path)
    parts = [i for i, r in enumerate(rows) if r[0] == "itemspart"]
    return path, rows, parts


def _damaged(
    path: Path, rows: list[tuple], match: str | None = None, *, headers: bool = True
) -> None:
    """The rewritten journal opens with an IntegrityError naming the segment; `verify`
    reports damage seen in the headers (replay checks those; a payload, re-hashed as a
    forger would, is decoded only when the listing is asked for, as for one items record)."""
    _rewrite(path, rows)
    with pytest.raises(IntegrityError, match=match) as info:
        open_view(str(path)).items()
    assert str(_active(path)) in str(info.value)
    if headers:
        problems = verify(str(path))  # reported, not raised
        assert problems and str(_active(path)) in " ".join(map(str, problems))


def test_a_part_missing_is_damage(tmp_path, small_parts):
    path, rows, parts = _parted(tmp_path)
    _damaged(path, rows[: parts[2]] + rows[parts[2] + 1 :], "part 3")


def test_parts_reordered_are_damage(tmp_path, small_parts):
    path, rows, parts = _parted(tmp_path)
    rows[parts[1]], rows[parts[2]] = rows[parts[2]], rows[parts[1]]
    _damaged(path, rows)


def test_a_part_of_another_list_is_damage(tmp_path, small_parts):
    path, rows, parts = _parted(tmp_path)
    kind, key, t, _, payload = rows[parts[3]]
    rows[parts[3]] = (kind, key, t, "3:" + "0" * 64, payload)
    _damaged(path, rows, "part 3")
    path, rows, parts = _parted(tmp_path / "b")
    closing = parts[-1] + 1
    kind, key, t, _, payload = rows[closing]
    rows[closing] = (kind, key, t, "3:" + "0" * 64, payload)
    _damaged(path, rows, "closes an item list")


def test_a_wrong_count_is_damage(tmp_path, small_parts):
    path, rows, parts = _parted(tmp_path)
    closing = parts[-1] + 1
    kind, key, t, fp, payload = rows[closing]
    rows[closing] = (kind, str(len(parts) + 1), t, fp, payload)
    _damaged(path, rows, "closes an item list")
    path, rows, parts = _parted(tmp_path / "b")
    kind, key, t, fp, payload = rows[closing]
    rows[closing] = (kind, key, t, fp, b'{"parts":%d}' % (len(parts) - 1))  # payload says less
    _damaged(path, rows, "malformed items", headers=False)
    path, rows, parts = _parted(tmp_path / "c")
    rows[closing] = (kind, None, t, fp, payload)  # closes nothing, after parts
    _damaged(path, rows, "follows")
    path, rows, parts = _parted(tmp_path / "d")
    rows[closing] = (kind, "01", t, fp, payload)
    _damaged(path, rows, "number of parts")


@pytest.mark.parametrize(
    "payload",
    [
        b"[]",
        b'{"entries":5}',
        b'{"entries":[[1,2,3]]}',
        b'{"entries":[["k",null]]}',
        b'{"entries":[' + b"[" * 5000 + b"]" * 5000 + b"]}",
        b'{"nothing":[]}',
    ],
)
def test_hostile_part_payloads_are_damage(tmp_path, small_parts, payload):
    path, rows, parts = _parted(tmp_path)
    kind, key, t, fp, _ = rows[parts[1]]
    rows[parts[1]] = (kind, key, t, fp, payload)
    _damaged(path, rows, headers=False)


def test_unclosed_parts_are_ignored_and_the_list_written_again(tmp_path, small_parts):
    path, rows, parts = _parted(tmp_path)
    closing = parts[-1] + 1
    # a crash after the launch record and some parts: the rest never written
    _rewrite(path, rows[: parts[4]])
    view = open_view(str(path))
    assert view.loaded.state.items_record is None and view.items() == []
    assert verify(str(path)) == []
    items = _items(300)
    _launch(path, items, record=2, segment_bytes=BIG)
    view = open_view(str(path))
    assert view.items() == ItemSet.build(items, KEY).listing()
    assert view.status().done == 2
    kinds = [r.type for r in _records(path)]
    assert kinds.count("itemspart") == parts[4] - parts[0] + len(parts)
    assert closing  # (the list was closed the second time)


def test_status_verify_export_on_a_parted_list(tmp_path, small_parts, capsys):
    from resumable.cli import main

    path = tmp_path / "exp.h5"
    _launch(path, _items(500), record=10, segment_bytes=4000)  # parts in sealed segments
    pdir = progress_dir_for(path)
    manifest = parse_manifest((pdir / "manifest.json").read_bytes(), source="m")
    assert len(manifest.segments) > 3
    assert verify(str(path)) == []
    assert main(["status", str(path)]) == 0
    assert "500" in capsys.readouterr().out
    assert main(["export", str(path), "--jsonl", str(tmp_path / "out.jsonl")]) == 0
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 10
    view = open_view(str(path))
    assert view.items() == ItemSet.build(_items(500), KEY).listing()
    from resumable._journal import LazyRecord

    parts = [p for ps in view.loaded.state.item_parts.values() for p in ps]
    assert parts and all(type(p) is LazyRecord for p in parts)


def test_limit_errors_give_advice_that_fits_the_record(tmp_path, monkeypatch):
    from resumable.errors import LimitExceededError

    monkeypatch.setattr(limits, "MAX_RECORD_BYTES", 4000)
    path = tmp_path / "exp.h5"
    with (
        ResumableSweep(_items(5), key=KEY, checkpoint_path=path) as s,
        pytest.raises(LimitExceededError, match="Keep large data out of results"),
    ):
        s.record(_items(1)[0], "v" * 5000)
    # a listing part larger than a record (the part size raised past the record limit)
    monkeypatch.setattr(limits, "ITEMS_PART_BYTES", 1 << 20)
    with pytest.raises(LimitExceededError, match="item listing") as info:
        ResumableSweep(_items(300), key=KEY, checkpoint_path=tmp_path / "b.h5")
    assert "results" not in str(info.value)


def test_one_entry_longer_than_a_part_is_a_part_of_its_own(tmp_path, small_parts):
    """An entry is bounded (a key of at most MAX_KEY_CHARS, params past MAX_PARAMS_BYTES
    recorded by fingerprint only), so a listing never exceeds the record limit."""
    path = tmp_path / "exp.h5"
    items = [*_items(20), {"i": "k" * 5000, "x": 0.0, "big": "b" * 100_000}]
    _launch(path, items, record=0, segment_bytes=BIG)
    recs = _records(path)
    assert any(r.type == "itemspart" and len(r.payload) > 5000 for r in recs)
    listing = open_view(str(path)).items()
    assert listing == ItemSet.build(items, KEY).listing()
    assert listing[-1][0] == "k" * 5000 and listing[-1][2] is None  # params too large: None
