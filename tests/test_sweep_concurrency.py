"""One sweep, many threads; and a sweep inherited by a forked child.

A sweep may be used from many threads: each check-and-append (already recorded? then append)
is atomic, so two threads recording the same item give one record and one
`AlreadyRecordedError`, never two records that would make every reopen fail. A forked child
inherits the sweep but may not record through it, and must not disturb the parent.
"""

from __future__ import annotations

import threading

import pytest

from resumable import ResumableSweep
from resumable._checkpoint import load, progress_dir_for
from resumable.errors import AlreadyRecordedError

ITEMS = [{"i": i} for i in range(40)]
THREADS = 8


def _hammer(target, n_threads: int = THREADS) -> list[BaseException]:
    """Run `target(thread_index)` in threads released together; the errors they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def run(t: int) -> None:
        barrier.wait()
        try:
            target(t)
        except BaseException as exc:  # collected, asserted by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return errors


def test_threads_recording_the_same_items_record_each_once(tmp_path):
    ckpt = tmp_path / "exp.h5"
    won: list[tuple[int, int]] = []
    refused: list[tuple[int, int]] = []
    lock = threading.Lock()
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, handle_signals=False) as sweep:

        def each(t: int) -> None:
            for item in ITEMS:
                try:
                    sweep.record(item, {"by": t})
                except AlreadyRecordedError:
                    with lock:
                        refused.append((t, item["i"]))
                else:
                    with lock:
                        won.append((t, item["i"]))

        assert _hammer(each) == []
    assert sorted(i for _, i in won) == [it["i"] for it in ITEMS]
    assert len(refused) == len(ITEMS) * (THREADS - 1)
    loaded = load(progress_dir_for(ckpt))  # the reopen that used to fail ("done twice")
    assert loaded is not None and len(loaded.state.results) == len(ITEMS)
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, handle_signals=False) as again:
        winners = dict((i, t) for t, i in won)
        assert {it["i"]: again.result(it)["by"] for it in ITEMS} == winners


def test_threads_recording_different_items_and_failures_then_reopen(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, handle_signals=False) as sweep:

        def each(t: int) -> None:
            for item in ITEMS[t::THREADS]:
                if item["i"] % 3 == 0:
                    sweep.record_failure(item, RuntimeError(f"boom {item['i']}"))
                else:
                    sweep.record(item, item["i"] * 2)
                sweep.meta[f"t{t}"] = item["i"]  # meta saved by other threads' records

        assert _hammer(each) == []
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, handle_signals=False) as again:
        st = again.status()
        assert st.done == len([i for i in ITEMS if i["i"] % 3])
        assert st.failed == len([i for i in ITEMS if i["i"] % 3 == 0])
        assert all(again.result(i) == i["i"] * 2 for i in ITEMS if i["i"] % 3)


def test_threads_racing_failure_record_and_retry_on_one_item(tmp_path):
    """record_failure, retry_failures and record on the same items from many threads: every
    outcome the API allows, and always a checkpoint that reopens to the same state."""
    ckpt = tmp_path / "exp.h5"
    items = ITEMS[:10]
    with ResumableSweep(items, checkpoint_path=ckpt, handle_signals=False) as sweep:

        def each(t: int) -> None:
            for _round in range(5):
                for item in items:
                    try:
                        if t % 3 == 0:
                            sweep.record_failure(item, "bad")
                        elif t % 3 == 1:
                            sweep.retry_failures()
                        else:
                            sweep.record(item, t)
                    except AlreadyRecordedError:
                        pass

        assert _hammer(each, 9) == []
        before = sweep.status()
    loaded = load(progress_dir_for(ckpt))
    assert loaded is not None
    assert sorted(loaded.state.results) == sorted(sweep.key(i) for i in items)
    with ResumableSweep(items, checkpoint_path=ckpt, handle_signals=False) as again:
        after = again.status()
    assert (after.done, after.failed) == (before.done, before.failed) == (len(items), 0)


@pytest.mark.parametrize("rounds", [3])
def test_many_threads_same_item_repeatedly(tmp_path, rounds):
    """The reviewer's reproduction (88 failures in 100) as a loop: two threads, one item."""
    for r in range(rounds * 10):
        ckpt = tmp_path / f"r{r}" / "exp.h5"
        with ResumableSweep(ITEMS[:1], checkpoint_path=ckpt, handle_signals=False) as sweep:
            errors = _hammer(lambda t: sweep.record(ITEMS[0], t), 2)
        assert len(errors) == 1 and isinstance(errors[0], AlreadyRecordedError)
        assert load(progress_dir_for(ckpt)) is not None


# -- forks ---------------------------------------------------------------------------------------


def _lock_is_held(pdir) -> bool:
    """Whether another process holds the checkpoint's writer lock (asked from a fresh process)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from resumable._checkpoint import DirLock\n"
        "from resumable.errors import CheckpointLockedError\n"
        "try:\n"
        f"    DirLock(__import__('pathlib').Path({str(pdir)!r})).release()\n"
        "except CheckpointLockedError:\n"
        "    sys.exit(3)\n"
    )
    rc = subprocess.run([sys.executable, "-c", code], timeout=60).returncode
    assert rc in (0, 3), rc
    return rc == 3


def _child_tries_everything(sweep: ResumableSweep, item) -> int:
    """In a forked child: every way to write must raise ForeignProcessError; 0 if so."""
    from resumable.errors import ForeignProcessError

    attempts = [
        lambda: sweep.record(item, "from the child"),
        lambda: sweep.record_failure(item, "from the child"),
        lambda: sweep.retry_failures(),
        lambda: sweep.flush(),
    ]
    code = 0
    for i, attempt in enumerate(attempts):
        try:
            attempt()
        except ForeignProcessError:
            pass
        except BaseException:
            code |= 1 << i
        else:
            code |= 1 << i
    sweep.meta["child"] = True
    sweep.__exit__(None, None, None)  # what a `with` block in the child would do
    sweep.close()
    return code


def test_forked_child_cannot_record_and_leaves_the_parent_alone(tmp_path):
    import os

    ckpt = tmp_path / "exp.h5"
    pdir = progress_dir_for(ckpt)
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, handle_signals=False) as sweep:
        sweep.record(ITEMS[0], 0)
        size_before = sum(p.stat().st_size for p in (pdir / "segments").glob("*.jsonl"))
        pid = os.fork()
        if pid == 0:  # the child
            code = 99
            try:
                code = _child_tries_everything(sweep, ITEMS[1])
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        size_after = sum(p.stat().st_size for p in (pdir / "segments").glob("*.jsonl"))
        assert size_after == size_before  # the child wrote nothing
        assert _lock_is_held(pdir)  # the child's close did not release the parent's lock
        for item in ITEMS[1:5]:
            sweep.record(item, item["i"])
    loaded = load(pdir)  # used to fail: the child's record broke the hash chain
    assert loaded is not None and len(loaded.state.results) == 5
    assert "child" not in loaded.state.meta


def test_forked_child_exiting_normally_runs_no_writes(tmp_path):
    """A child leaving through sys.exit (atexit handlers, garbage collection) writes nothing."""
    import os

    ckpt = tmp_path / "exp.h5"
    pdir = progress_dir_for(ckpt)
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, handle_signals=False) as sweep:
        sweep.record(ITEMS[0], 0)
        sweep.meta["x"] = 1  # unsaved meta: a child closing must not save it
        before = (pdir / "segments" / "seg-00000001.jsonl").read_bytes()
        pid = os.fork()
        if pid == 0:
            try:
                with sweep:
                    pass
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert (pdir / "segments" / "seg-00000001.jsonl").read_bytes() == before
        assert _lock_is_held(pdir)
        sweep.record(ITEMS[1], 1)
    assert load(pdir) is not None


def _pool_record(args):
    sweep, item = args
    try:
        sweep.record(item, "from a worker")
    except BaseException as exc:  # reported back to the parent
        return type(exc).__name__
    return "acknowledged"


def test_multiprocessing_fork_workers_cannot_record(tmp_path):
    import multiprocessing

    ckpt = tmp_path / "exp.h5"
    ctx = multiprocessing.get_context("fork")
    with ResumableSweep(ITEMS, checkpoint_path=ckpt, handle_signals=False) as sweep:
        with ctx.Pool(2) as pool:
            outcomes = pool.map(_pool_record_global, ITEMS[:6])
        assert outcomes == ["ForeignProcessError"] * 6
        for item in ITEMS[:6]:
            sweep.record(item, item["i"])
    loaded = load(progress_dir_for(ckpt))
    assert loaded is not None and len(loaded.state.results) == 6


def _pool_record_global(item):
    # the sweep reaches the worker by inheritance (the fork), not by pickling
    import gc

    # (a sweep whose constructor raised early, not yet collected, has no state: not this one)
    sweep = next(
        o
        for o in gc.get_objects()
        if isinstance(o, ResumableSweep) and hasattr(o, "_journal") and not o.closed
    )
    return _pool_record((sweep, item))
