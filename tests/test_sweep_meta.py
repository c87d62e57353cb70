"""`meta` is recorded whenever it changed, and only then: the check before each record compares
structurally with a private copy instead of encoding it again, and must miss no change."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from resumable import ResumableSweep
from resumable.view import open_view


def _meta_records(path: Path) -> int:
    return sum(1 for r in open_view(str(path)).loaded.state.events if r.type == "meta")


def test_every_meta_change_is_recorded_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "exp.h5"
    changes = [
        lambda m: m["nested"]["xs"].append(3),  # in place, deep
        lambda m: m.update(flag=True),  # 1 -> True: equal in Python, not in JSON
        lambda m: m.update(z=-0.0),  # 0.0 -> -0.0
        lambda m: m.update(t=(1, 2)),  # list -> tuple
        lambda m: m.update(arr=np.arange(3)),  # not plain: compared by encoding
        lambda m: m["arr"].__setitem__(0, 7),  # numpy value changed in place
    ]
    meta = {"nested": {"xs": [1, 2]}, "flag": 1, "z": 0.0, "t": [1, 2], "nan": math.nan}
    with ResumableSweep(list(range(20)), key=str, checkpoint_path=path, meta=meta) as sweep:
        sweep.record(0, 0)
        sweep.record(1, 1)  # unchanged (NaN included): no new meta record
        base = _meta_records(path)
        for i, change in enumerate(changes):
            change(sweep.meta)
            sweep.record(2 + 2 * i, 0)
            sweep.record(3 + 2 * i, 0)  # unchanged since the last record
            assert _meta_records(path) == base + i + 1
    stored = open_view(str(path)).loaded.state.meta
    assert stored["nested"] == {"xs": [1, 2, 3]} and stored["flag"] is True
    assert math.copysign(1.0, stored["z"]) == -1.0
    assert stored["t"] == {"__t": "tuple", "v": [1, 2]}
    with ResumableSweep(list(range(20)), key=str, checkpoint_path=path) as sweep:
        assert sweep.meta["arr"].tolist() == [7, 1, 2] and sweep.meta["t"] == (1, 2)
