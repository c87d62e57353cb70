"""The payloads of a sweep's result and failure records, with their checked or measured durations.

`ResumableSweep.record` and its group commit (`record_many`, `record_by_key`) turn each result
into the exact bytes `journal.dumps` would write for it, here, outside the sweep's lock (CPU
only: the value's JSON, the duration, the launch); the sweep then checks and appends them under
the lock (sweep.py, _sweep_journal.py). Moved out of sweep.py whole: the result path calls each
as it called the method it was, so no call is added per record (`result_entries` is the first
half of the group commit's old `_commit_rows`, called once per group); `failure_text` and
`failure_payload` are `record_failure`'s own code, before and under the lock.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from typing import Any

from ._codec import encode_json
from ._items import ItemSet
from ._listing import values_json
from ._worker import EncodedResult
from .errors import ConfigurationError, UnsupportedValueError

MAX_TRACEBACK_CHARS = 32_000
Entry = tuple[str, "dict[str, Any] | bytes", "str | None", "str | None"]
"""One record to append: (kind, payload or its JSON bytes, key, fingerprint)."""


def checked_duration(key: str, duration: float | None) -> float | None:
    """A duration given for `key`, checked (None: measure it from `pending`)."""
    if duration is None:
        return None
    if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration >= 0):
        raise ConfigurationError(
            f"duration for item {key!r:.200} must be a finite number of seconds >= 0, "
            f"found {duration!r}"
        )
    return float(duration)


def failure_duration(key: str, duration: float | None, yielded: dict[str, float]) -> float | None:
    """A failure's duration: the one given for `key` (checked), else measured from when
    `pending` yielded the item (taken out of `yielded`), else None."""
    duration = checked_duration(key, duration)
    started = yielded.pop(key, None)
    if duration is not None:
        return duration
    return None if started is None else time.monotonic() - started


def duration_json(duration: float | None, started: float | None, measured: bool) -> bytes:
    """A result payload's duration with the comma before it: the one given (written exactly,
    or to the microsecond if the caller `measured` it), else measured from `started` (when
    `pending` yielded the item) to now, to the microsecond (a float's shortest repr costs as
    much as the rest of the payload), else null."""
    if duration is None:
        if started is None:
            return b',"duration":null'
        return b',"duration":%.6f' % (time.monotonic() - started)
    return (b',"duration":%.6f' if measured else b',"duration":%r') % duration


def result_payload(
    key: str, result: Any, duration: bytes, tail: bytes, value: bytes | None = None
) -> bytes:
    """The payload of a result record, as `journal.dumps` would make it from
    {"value": encode(result), "duration": duration, "launch": launch_id}: the value's JSON
    between a fixed prefix and the sweep's fixed suffix `tail` (the reports read it from the
    end); `duration` is its JSON with the comma before it (see `duration_json`); `value`:
    the result's JSON if made already (`_listing.values_json`)."""
    if value is None and type(result) is EncodedResult:
        value = result.json
    elif value is None:
        try:
            value = encode_json(result, what="")
        except UnsupportedValueError:  # again, for the message naming the item
            value = encode_json(result, what=f"the result of item {key!r}")
    return b'{"value":%s%s%s' % (value, duration, tail)


def result_entries(
    rows: list[tuple[str, Any, float | None]],
    measure: bool,
    items: ItemSet,
    pop_started: Callable[[str, None], float | None],
    tail: bytes,
) -> list[Entry]:
    """The result records of (key, result, duration) rows, in order, for one group commit:
    the items' fingerprints and the values' JSON made in bulk (a pool's worker may have sent
    both along, as an `EncodedResult`); `pop_started` takes the time `pending` yielded a key,
    `tail` is the sweep's payload suffix (see `result_payload`)."""
    entries: list[Entry] = []
    add = entries.append
    payload = result_payload
    fps = iter(
        items.fingerprints([k for k, r, _ in rows if type(r) is not EncodedResult or not r.has_fp])
    )
    values = iter(values_json([r for _, r, _ in rows if type(r) is not EncodedResult]))
    for key, result, duration in rows:
        dur = duration_json(duration, pop_started(key, None), measure)
        encoded = type(result) is EncodedResult
        value = None if encoded else next(values)
        fp = result.fp if encoded and result.has_fp else next(fps)
        add(("result", payload(key, result, dur, tail, value), key, fp))
    return entries


def failure_text(error: BaseException | str) -> tuple[str, str, str]:
    """(error type, message, traceback) of a failure, as UTF-8-safe text."""
    if isinstance(error, BaseException):
        etype = type(error).__qualname__
        message = _text(error)
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    else:
        etype, message, tb = "Error", str(error), ""
    etype, message, tb = (_utf8(x) for x in (etype, message, tb))
    return etype, message, tb


def failure_payload(
    text: tuple[str, str, str], attempt: int, duration: float | None, launch: str
) -> dict[str, Any]:
    """The payload of a failure record: `text` from `failure_text`, cut to
    MAX_TRACEBACK_CHARS (the message's start, the traceback's end)."""
    etype, message, tb = text
    return {
        "error_type": etype,
        "message": message[:MAX_TRACEBACK_CHARS],
        "traceback": tb[-MAX_TRACEBACK_CHARS:],
        "attempt": attempt,
        "duration": duration,
        "launch": launch,
    }


def _text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception as exc:  # a broken __str__ must not hide the failure being recorded
        return f"<str() of the error failed: {type(exc).__name__}>"


def _utf8(text: str) -> str:
    """Text that encodes as UTF-8 (lone surrogates from os.fsdecode become escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
