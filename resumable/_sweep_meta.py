"""Whether a sweep's `meta` may have changed since it was last saved, told without encoding it.

`ResumableSweep` saves `meta` (a user's dict, changed at will during the run) before every
record that follows a change. Encoding it each time would cost as much as the record, so the
sweep keeps a private copy of it as last saved and compares: `meta_may_have_changed` is the
check made per record (is it still the empty dict it was? `record()` inlines it), `same_plain`
the full comparison (in `SweepJournal.save_meta`).
"""

from __future__ import annotations

import math
from typing import Any


def meta_may_have_changed(meta: Any, seen: Any) -> bool:
    """False when `meta` is, as when last saved (`seen`), an empty dict (checked per record;
    the full comparison is `same_plain`'s)."""
    return not (type(meta) is dict and not meta and type(seen) is dict and not seen)


def same_plain(a: Any, b: Any) -> bool:
    """True only if `a` and `b` are equal plain JSON-like values of exactly the same types
    (1, 1.0 and True differ, so do 0.0 and -0.0); anything else (numpy values...) is False."""
    t = type(a)
    if t is not type(b):
        return False
    if t is dict:
        return a.keys() == b.keys() and all(same_plain(v, b[k]) for k, v in a.items())
    if t is list or t is tuple:
        return len(a) == len(b) and all(map(same_plain, a, b))
    if t is float:
        return (a == b and math.copysign(1.0, a) == math.copysign(1.0, b)) or (a != a and b != b)
    return (t is str or t is int or t is bool or a is None) and a == b
