"""`sweep.run`: in-process, on a ProcessPoolExecutor and on a real Dask LocalCluster.

The same sweep gives the same results, failures and seeds on every executor; at most
`max_in_flight` items are outstanding; preemption cancels queued items, records the running
ones and leaves the rest pending (never failed); the progress bar stays quiet off a terminal.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from resumable import ResumableSweep
from resumable.errors import (
    ConfigurationError,
    ResumableError,
    RunError,
    TooManyFailuresError,
)
from resumable.preempt import PREEMPTED_EXIT_CODE, Preempted, current_guard
from resumable.runner import DEFAULT_MIN_FAILURES, RunSummary, worker_initializer
from resumable.view import open_view

N = 20


def items(n: int = N) -> list[dict]:
    return [{"i": i} for i in range(n)]


# -- functions run by workers (module level: picklable by reference) ----------------------------


def flaky(item: dict) -> object:
    i = item["i"]
    if i % 5 == 2:
        raise ValueError(f"item {i} is bad")
    if i == 8:
        return {"obj": object()}  # cannot be stored: a failure of this item
    return {"i": i, "ten": i * 10, "arr": np.arange(i, dtype=np.int16)}


def seeded(item: dict, seed: int) -> dict:
    return {"i": item["i"], "seed": seed, "u": np.random.default_rng(seed).random(3)}


def sleepy(item: dict) -> int:
    time.sleep(item.get("s", 0.02))
    return item["i"]


def ident(item: dict) -> int:
    return item["i"]


def marked(item: dict) -> int:
    """Touch <dir>/<i> when starting, then work for item["s"] seconds."""
    Path(item["dir"], str(item["i"])).touch()
    time.sleep(item["s"])
    return item["i"]


def sigint_ignored(item: dict) -> bool:
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def dies_on_3(item: dict) -> int:
    if item["i"] == 3:
        os._exit(3)
    time.sleep(0.05)
    return item["i"]


# -- executors ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool():
    with cf.ProcessPoolExecutor(2, initializer=worker_initializer) as ex:
        yield ex


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=50,
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(params=["inline", "pool", "dask"])
def executor(request):
    if request.param == "inline":
        return None
    if request.param == "pool":
        return request.getfixturevalue("pool")
    return request.getfixturevalue("dask_client").get_executor()


class CountingExecutor(cf.Executor):
    """Wraps an executor; records the most items ever outstanding (submitted, not done)."""

    def __init__(self, inner: cf.Executor) -> None:
        self.inner, self.outstanding, self.peak, self.submitted = inner, 0, 0, 0
        self._max_workers = 2
        self._lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        n = len(args[1])  # run_batch(fn, [(item, seed), ...])
        with self._lock:
            self.outstanding += n
            self.submitted += n
            self.peak = max(self.peak, self.outstanding)
        fut = self.inner.submit(fn, *args, **kwargs)
        fut.add_done_callback(lambda _: self._done(n))
        return fut

    def _done(self, n: int) -> None:
        with self._lock:
            self.outstanding -= n


def _failures(ckpt: Path) -> dict[int, dict]:
    view = open_view(str(ckpt))
    params = {key: p for key, _, p in view.items()}
    return {params[k]["i"]: body for k, body in view.loaded.state.failures.items()}


# -- tests ----------------------------------------------------------------------------------------


def test_results_and_failures_are_the_same_on_every_executor(tmp_path, executor):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(items(), checkpoint_path=ckpt) as sweep:
        summary = sweep.run(flaky, executor=executor)
        results = {item["i"]: sweep.result(item) for item in items() if sweep.is_done(item)}
    assert isinstance(summary, RunSummary)
    assert (summary.done, summary.failed, summary.skipped) == (15, 5, 0)
    assert not summary.preempted and summary.remaining == 0 and summary.elapsed_s > 0
    assert sorted(results) == [i for i in range(N) if i % 5 != 2 and i != 8]
    for i, value in results.items():
        assert value["ten"] == i * 10 and value["arr"].dtype == np.int16
        assert value["arr"].tolist() == list(range(i))
    failures = _failures(ckpt)
    assert sorted(failures) == [2, 7, 8, 12, 17]
    for i in (2, 7, 12, 17):
        f = failures[i]
        assert f["error_type"] == "ValueError" and f["message"] == f"item {i} is bad"
        assert "flaky" in f["traceback"] and f["duration"] is not None
        if isinstance(executor, cf.ProcessPoolExecutor):  # the worker's traceback, as text
            assert "resumable.runner.RemoteTraceback: " in f["traceback"]
    assert failures[8]["error_type"] == "UnsupportedValueError"
    assert "builtins.object" in failures[8]["message"]
    assert "cannot be stored" in failures[8]["message"]


def test_seeds_are_reproducible_across_runs_and_executors(tmp_path, pool, dask_client):
    runs = {}
    for name, ex in [("a", None), ("b", None), ("pool", pool), ("dask", dask_client)]:
        with ResumableSweep(items(12), checkpoint_path=tmp_path / name / "exp.h5") as sweep:
            sweep.run(seeded, executor=ex)
            runs[name] = {item["i"]: (sweep.result(item), sweep.seed(item)) for item in items(12)}
    for name, got in runs.items():
        for i, (res, seed) in got.items():
            want = runs["a"][i][0]
            assert res["seed"] == seed == want["seed"], (name, i)
            assert res["u"].tobytes() == want["u"].tobytes(), (name, i)
    assert len({res["seed"] for res, _ in runs["a"].values()}) == 12


def test_rerun_skips_finished_and_failed_and_retry_failed_reruns(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(items(), checkpoint_path=ckpt) as sweep:
        sweep.run(flaky)
    with ResumableSweep(items(), checkpoint_path=ckpt) as sweep:
        again = sweep.run(flaky)
    assert (again.done, again.failed, again.skipped) == (0, 0, N)
    with ResumableSweep(items(), checkpoint_path=ckpt, retry_failed=True) as sweep:
        retry = sweep.run(flaky)
    assert (retry.done, retry.failed, retry.skipped) == (0, 5, 15)
    assert all(f["attempt"] == 2 for f in _failures(ckpt).values())


def test_max_in_flight_is_honoured_and_pending_read_lazily(tmp_path, pool):
    counting = CountingExecutor(pool)
    many = [{"i": i, "s": 0.01} for i in range(40)]
    with ResumableSweep(many, checkpoint_path=tmp_path / "a.h5") as sweep:
        summary = sweep.run(sleepy, executor=counting, max_in_flight=3)
    assert summary.done == 40 and summary.max_in_flight == 3 and summary.max_batch == 1
    assert counting.peak == 3 and counting.submitted == 40


def test_short_items_are_batched_within_the_window(tmp_path, pool):
    counting = CountingExecutor(pool)
    many = [{"i": i, "s": 0.002} for i in range(300)]
    with ResumableSweep(many, checkpoint_path=tmp_path / "b.h5") as sweep:
        summary = sweep.run(sleepy, executor=counting)
        assert [sweep.result(it) for it in many] == list(range(300))
    assert summary.done == 300 and summary.workers == 2
    assert 2 < summary.max_batch <= 10  # ~20 ms tasks of ~2 ms items
    assert counting.peak == summary.max_in_flight <= 2 * 2 * summary.max_batch

    counting = CountingExecutor(pool)
    with ResumableSweep(many, checkpoint_path=tmp_path / "c.h5") as sweep:
        summary = sweep.run(sleepy, executor=counting, max_in_flight=8)
    assert summary.max_batch <= 2 and counting.peak <= 8  # 8 items: 2 per task at most


def unpicklable_on_5(item: dict) -> object:
    return threading.Lock() if item["i"] == 5 else item["i"]


def test_a_result_that_cannot_travel_fails_only_its_item(tmp_path, pool):
    many = [{"i": i} for i in range(40)]
    with ResumableSweep(many, checkpoint_path=tmp_path / "exp.h5") as sweep:
        summary = sweep.run(unpicklable_on_5, executor=pool)
    assert (summary.done, summary.failed) == (39, 1)
    failures = _failures(tmp_path / "exp.h5")
    assert list(failures) == [5] and "pickle" in failures[5]["message"]


def test_dask_client_can_be_passed_directly(tmp_path, dask_client):
    with ResumableSweep(items(8), checkpoint_path=tmp_path / "exp.h5") as sweep:
        summary = sweep.run(sleepy, executor=dask_client)
        assert [sweep.result(it) for it in items(8)] == list(range(8))
    assert summary.workers == 2 and summary.max_in_flight <= 4 * summary.max_batch


def test_pool_made_by_run_ignores_sigint_in_its_workers(tmp_path):
    with ResumableSweep(items(4), checkpoint_path=tmp_path / "exp.h5") as sweep:
        summary = sweep.run(sigint_ignored, executor=2)
        assert list(sweep.completed) == [True] * 4
    assert summary.workers == 2


def test_progress_bar_quiet_off_a_terminal_and_starts_at_completed_count(tmp_path, capsys):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(items(10), checkpoint_path=ckpt) as sweep:
        for item in list(sweep.pending)[:5]:
            sweep.record(item, 0)
        sweep.run(flaky, max_in_flight=2)  # stderr is not a tty under pytest
    assert capsys.readouterr().err == ""
    with ResumableSweep(items(12), checkpoint_path=ckpt) as sweep:
        sweep.run(flaky, progress=True)
    err = capsys.readouterr().err
    assert "exp: " in err and " 10/12 " in err and " 12/12 " in err
    assert "item/s" in err and "failed=2" in err
    assert " 0/12 " not in err


def test_preemption_in_process_stops_between_items(tmp_path):
    def fn(item: dict) -> int:
        if item["i"] == 3:
            current_guard().request("test")
        return item["i"]

    ckpt = tmp_path / "exp.h5"
    with pytest.raises(Preempted) as info, ResumableSweep(items(), checkpoint_path=ckpt) as sweep:
        sweep.run(fn)
    assert info.value.code == PREEMPTED_EXIT_CODE
    summary = info.value.summary
    assert summary.preempted and (summary.done, summary.failed, summary.remaining) == (4, 0, 16)
    with ResumableSweep(items(), checkpoint_path=ckpt) as sweep:
        assert sweep.run(fn).done == 16  # a fresh guard: no request pending


def test_preemption_after_the_last_item_completes_normally(tmp_path):
    def fn(item: dict) -> int:
        if item["i"] == N - 1:
            current_guard().request("late")
        return item["i"]

    with ResumableSweep(items(), checkpoint_path=tmp_path / "exp.h5") as sweep:
        summary = sweep.run(fn)
    assert summary.preempted and summary.done == N and summary.remaining == 0


@pytest.mark.parametrize("kind", ["pool", "dask"])
def test_preemption_cancels_queued_items_and_records_running_ones(tmp_path, kind, request):
    ex = request.getfixturevalue("pool" if kind == "pool" else "dask_client")
    markers = tmp_path / "markers"
    markers.mkdir()
    work = [{"i": i, "s": 0.6, "dir": str(markers)} for i in range(12)]
    ckpt = tmp_path / "exp.h5"
    with pytest.raises(Preempted) as info, ResumableSweep(work, checkpoint_path=ckpt) as sweep:
        guard = sweep.guard

        def preempt_once_two_run() -> None:  # mid-item: items take 0.6 s
            end = time.monotonic() + 20
            while len(list(markers.iterdir())) < 2 and time.monotonic() < end:
                time.sleep(0.01)
            guard.request("test")

        timer = threading.Thread(target=preempt_once_two_run)
        timer.start()
        sweep.run(marked, executor=ex, max_in_flight=6)
    timer.join()
    summary = info.value.summary
    time.sleep(0.3)  # anything wrongly left running would have started by now
    started = {int(p.name) for p in markers.iterdir()}
    view = open_view(str(ckpt))
    recorded = {res for _, _, res in view.results()}
    assert not view.loaded.state.failures
    # pool: the executing items plus those in its call queue (max_workers + 1) may start
    assert recorded == started and 2 <= len(recorded) <= 5, (recorded, started)
    assert summary.done == len(recorded) and summary.remaining == 12 - len(recorded)

    with ResumableSweep(work, checkpoint_path=ckpt) as sweep:
        assert sweep.run(ident, executor=ex).done == 12 - len(recorded)
        assert sweep.status().done == 12


def test_ctrl_c_in_parent_records_running_items_and_reraises(tmp_path):
    # Ctrl-C means Python's own SIGINT handler: a pytest started in the background by a
    # non-interactive shell inherits SIGINT ignored, and then a SIGINT is nothing at all
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_in_parent(tmp_path)
    finally:
        signal.signal(signal.SIGINT, inherited)


def _ctrl_c_in_parent(tmp_path: Path) -> None:
    main = threading.main_thread().ident

    def fn(item: dict) -> int:
        if item["i"] == 2:
            signal.pthread_kill(main, signal.SIGINT)
        time.sleep(0.2)
        return item["i"]

    ckpt = tmp_path / "exp.h5"
    with (
        cf.ThreadPoolExecutor(2) as ex,
        pytest.raises(KeyboardInterrupt) as info,
        ResumableSweep(items(), checkpoint_path=ckpt) as sweep,
    ):
        sweep.run(fn, executor=ex, max_in_flight=4)
    view = open_view(str(ckpt))
    assert not view.loaded.state.failures
    recorded = {res for _, _, res in view.results()}
    assert 2 in recorded and len(recorded) < N  # running at the interrupt: recorded
    summary = info.value.summary
    assert summary.interrupted and summary.done == len(recorded) and summary.remaining > 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_run_outside_with_installs_a_guard_only_for_the_run(tmp_path):
    seen = []

    def fn(item: dict) -> int:
        seen.append(current_guard())
        return 0

    sweep = ResumableSweep(items(2), checkpoint_path=tmp_path / "a.h5")
    try:
        sweep.run(fn)
    finally:
        sweep.close()
    assert all(g is not None for g in seen) and current_guard() is None
    seen.clear()
    sweep = ResumableSweep(items(2), checkpoint_path=tmp_path / "b.h5", handle_signals=False)
    try:
        sweep.run(fn)
    finally:
        sweep.close()
    assert seen == [None, None]


def test_dead_worker_raises_and_leaves_its_items_pending(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with pytest.raises(cf.BrokenExecutor), ResumableSweep(items(), checkpoint_path=ckpt) as sweep:
        sweep.run(dies_on_3, executor=2)
    status = open_view(str(ckpt)).status()
    assert status.failed == 0 and status.pending > 0


@pytest.mark.parametrize(
    "kwargs",
    [{"max_in_flight": 0}, {"max_in_flight": 2.5}, {"executor": "threads"}, {"executor": object()}],
)
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, kwargs):
    with ResumableSweep(items(3), checkpoint_path=tmp_path / "exp.h5") as sweep:
        with pytest.raises(ConfigurationError):
            sweep.run(sleepy, **kwargs)
        with pytest.raises(ConfigurationError):
            sweep.run("not callable")  # type: ignore[arg-type]
        assert sweep.status().done == 0


def test_preempted_raised_inside_fn_propagates_and_is_not_a_failure(tmp_path):
    def fn(item: dict) -> int:
        if item["i"] == 2:
            current_guard().exit("fn reached its own safe point")
        return item["i"]

    ckpt = tmp_path / "exp.h5"
    with pytest.raises(Preempted), ResumableSweep(items(), checkpoint_path=ckpt) as sweep:
        sweep.run(fn)
    status = open_view(str(ckpt)).status()
    assert (status.done, status.failed) == (2, 0)


# -- errors of the run, not of an item; max_failures ---------------------------------------------


def always_fails(item: dict) -> int:
    raise RuntimeError(f"item {item['i']} fails")


def test_a_lambda_on_a_process_pool_raises_at_once_and_records_nothing(tmp_path, pool):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(items(), checkpoint_path=ckpt) as sweep:
        with pytest.raises(RunError, match="cannot send") as info:
            sweep.run(lambda it: it["i"], executor=pool)
        assert "nothing was run or recorded" in str(info.value).lower()
        assert (sweep.status().done, sweep.status().failed) == (0, 0)
        summary = sweep.run(ident, executor=pool)  # a plain rerun (fixed fn) runs them all
    assert (summary.done, summary.failed, summary.skipped) == (N, 0, 0)


def test_an_item_that_cannot_be_sent_raises_and_records_no_failure(tmp_path, pool):
    many = [{"i": i, "lock": threading.Lock() if i == 7 else None} for i in range(30)]
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(many, key=lambda it: str(it["i"]), checkpoint_path=ckpt) as sweep:
        with pytest.raises(RunError, match="pickle") as info:
            sweep.run(ident, executor=pool)
        assert "not of an item" in str(info.value)
        status = sweep.status()
    assert status.failed == 0 and status.pending >= 1  # item 7 (and its batch) stays pending


def test_a_worker_that_cannot_import_fn_raises_and_records_nothing(tmp_path):
    """The worker dies unpickling the task (its module exists only here): the pool breaks."""
    ghost = types.ModuleType("resumable_ghost_module")  # importable here, not in the workers
    exec("def fn(item):\n    return item['i']\n", ghost.__dict__)
    sys.modules[ghost.__name__] = ghost
    try:
        ckpt = tmp_path / "exp.h5"
        with ResumableSweep(items(), checkpoint_path=ckpt) as sweep:
            with pytest.raises((RunError, cf.BrokenExecutor)):
                sweep.run(ghost.fn, executor=2)
            status = sweep.status()
        assert (status.done, status.failed) == (0, 0)
    finally:
        del sys.modules[ghost.__name__]


def test_a_run_whose_every_item_fails_stops_by_default(tmp_path):
    ckpt = tmp_path / "exp.h5"
    with ResumableSweep(items(40), checkpoint_path=ckpt) as sweep:
        with pytest.raises(TooManyFailuresError, match="11 item") as info:
            sweep.run(always_fails)
        assert isinstance(info.value, ResumableError)
        status = sweep.status()
    assert (status.done, status.failed, status.pending) == (0, DEFAULT_MIN_FAILURES + 1, 29)
    assert info.value.summary.failed == DEFAULT_MIN_FAILURES + 1  # type: ignore[attr-defined]


def test_max_failures_stops_submitting_and_records_what_is_in_flight(tmp_path, pool):
    ckpt = tmp_path / "exp.h5"
    counting = CountingExecutor(pool)
    with ResumableSweep(items(60), checkpoint_path=ckpt) as sweep:
        with pytest.raises(TooManyFailuresError, match="max_failures=3"):
            sweep.run(always_fails, executor=counting, max_failures=3, max_in_flight=4)
        status = sweep.status()
    assert 4 <= status.failed <= 4 + 2 * 4 and status.pending > 0  # at most the windows open
    assert status.failed == counting.submitted  # every submitted item was recorded
    assert counting.outstanding == 0


def test_occasional_failures_do_not_stop_a_run_and_max_failures_at_its_value_passes(tmp_path):
    with ResumableSweep(items(), checkpoint_path=tmp_path / "a.h5") as sweep:
        summary = sweep.run(flaky)  # 5 of 20 fail: the default rule lets it finish
    assert (summary.done, summary.failed) == (15, 5)
    with ResumableSweep(items(), checkpoint_path=tmp_path / "b.h5") as sweep:
        summary = sweep.run(flaky, max_failures=5)  # exactly at the limit: not more than it
    assert summary.failed == 5
    with (
        ResumableSweep(items(), checkpoint_path=tmp_path / "c.h5") as sweep,
        pytest.raises(TooManyFailuresError),
    ):
        sweep.run(flaky, max_failures=4)  # one past it


@pytest.mark.parametrize("bad", [-1, 2.5, "3", True])
def test_bad_max_failures_is_refused(tmp_path, bad):
    with ResumableSweep(items(3), checkpoint_path=tmp_path / "exp.h5") as sweep:
        with pytest.raises(ConfigurationError):
            sweep.run(ident, max_failures=bad)
        assert sweep.status().done == 0


def unstorable_last(item: int) -> object:
    return object() if item == 2 else item


def test_a_failure_too_many_found_by_the_last_group_commit_still_raises(tmp_path):
    """An unstorable result is a failure found only when its group is committed: when that is
    the run's last commit, the run still stops with TooManyFailuresError."""
    with (
        ResumableSweep([0, 1, 2], checkpoint_path=tmp_path / "a.h5") as sweep,
        pytest.raises(TooManyFailuresError),
    ):
        sweep.run(unstorable_last, max_failures=0)
    with ResumableSweep([0, 1, 2], checkpoint_path=tmp_path / "a.h5") as sweep:
        assert (sweep.status().done, sweep.status().failed) == (2, 1)
