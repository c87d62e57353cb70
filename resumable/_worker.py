"""The worker side of `sweep.run` on a pool: run a batch of items, send back their outcomes.

Apart from runner.py, and importing only the codec and the item fingerprints, because a pool's
workers (and the forkserver they fork from, which preloads this module) import it before the
first item runs: runner.py pulls in the whole sweep (journal, storage, mirror, fsspec, tqdm),
several times slower to import, and every `run` on a fresh pool paid that up front.

Results go back encoded when the worker runs the owner's library (`EncodedResult`: the
result's JSON and its item's fingerprint), which takes that work off the owner, the one process
that records. The owner names its library by this module's path (`SAME_CODE`), so that the
workers need not read the installed version (importlib.metadata, a third of their imports).
"""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

from ._codec import encode_json
from ._listing import item_fingerprint
from .errors import UnsupportedValueError

Outcome = tuple[bool, Any, "str | None", float]  # ok, value or exception, traceback, seconds
SAME_CODE = __file__  # what the owner sends to say "encode if you run this very library"


class EncodedResult(NamedTuple):
    """A result encoded where it was computed (`encode_result`, in a pool's worker), so that
    the owner only frames it: its JSON (`codec.encode_json`) and, when asked for, its item's
    fingerprint (computed from the worker's copy of the item before `fn` ran)."""

    json: bytes
    fp: str | None
    has_fp: bool


def encode_result(item: Any, result: Any, fp: bool | str | None) -> Any:
    """`result` as an EncodedResult, or as it is if the codec refuses it (its owner then records
    why). `fp`: the item's fingerprint (computed before `fn` ran), or False for none."""
    try:
        value = encode_json(result, what="")
    except UnsupportedValueError:
        return result
    if fp is False:
        return EncodedResult(value, None, False)
    return EncodedResult(value, fp if fp is not True else item_fingerprint(item), True)


def worker_initializer(*signals: int) -> None:
    """Pool initializer: ignore SIGINT (or the given signals) in worker processes.

    Ctrl-C reaches the whole process group; a worker dying of it mid-item breaks the pool. The
    owning process decides instead. ``ProcessPoolExecutor(n, initializer=worker_initializer)``;
    SLURM signals every process of a step on preemption: there add
    ``initargs=(signal.SIGINT, signal.SIGTERM)``.
    """
    for signum in signals or (signal.SIGINT,):
        signal.signal(signum, signal.SIG_IGN)


def run_batch(
    fn: Callable[..., Any],
    batch: list[tuple[Any, int | None]],
    encode: tuple[str, bool] | None = None,
) -> list[Outcome]:
    """Runs in the worker: one outcome per (item, seed); an exception fails only its item.

    `encode`: (the owner's library, as `SAME_CODE` or its version; whether to compute
    fingerprints). When this worker runs the same library, results go back encoded
    (`encode_result`: JSON bytes, and the item's fingerprint taken before `fn` could change the
    item). Another library sends results as they are."""
    if encode is None or not _same_library(encode[0]):
        return [run_one(fn, item, seed) for item, seed in batch]
    fps = [item_fingerprint(item) for item, _ in batch] if encode[1] else None
    out = []
    for i, (item, seed) in enumerate(batch):
        ok, value, tb, seconds = run_one(fn, item, seed)
        if ok:
            value = encode_result(item, value, False if fps is None else fps[i])
        out.append((ok, value, tb, seconds))
    return out


def _same_library(owner: str) -> bool:
    if owner == SAME_CODE:
        return True
    from ._version import __version__  # only when the owner runs another copy of the library

    return owner == __version__


def run_one(fn: Callable[..., Any], item: Any, seed: int | None) -> Outcome:
    """The outcome of `fn` on one item; an exception (not KeyboardInterrupt or SystemExit,
    such as Preempted) is a failure of the item."""
    t0 = time.perf_counter()
    try:
        value = fn(item) if seed is None else fn(item, seed=seed)
    except Exception as exc:
        return (False, exc, traceback.format_exc(), time.perf_counter() - t0)
    return (True, value, None, time.perf_counter() - t0)
