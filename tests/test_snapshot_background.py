"""Background saves: a consistent copy is taken before the call returns (issue 13)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from resumable.errors import ResumableError
from resumable.preempt import make_preempt_snapshot_hook
from resumable.snapshot import (
    _background,
    pending_saves,
    read_snapshot,
    save_state_with_manifest,
    verify_snapshot,
    wait_for_saves,
)


def test_mutating_right_after_the_call_does_not_change_what_was_saved(tmp_path: Path) -> None:
    url = tmp_path / "snap.npz"
    graph = {"u": np.full(3 << 20, 1.0), "nodes": {"v": [np.arange(1000)]}}
    fut = save_state_with_manifest(graph, url, extra={"step": 1}, background=True)
    assert isinstance(fut, Future)
    graph["u"][:] = -1.0  # the simulation goes on at once
    graph["nodes"]["v"][0][:] = 0
    report = fut.result(timeout=60)
    assert report.extra == {"step": 1}
    arrays, _ = read_snapshot(url)
    assert (arrays["u"] == 1.0).all() and list(arrays["nodes/v/0"]) == list(range(1000))
    assert pending_saves() == []


def test_a_thread_mutating_during_background_saves(tmp_path: Path) -> None:
    url = tmp_path / "snap.npz"
    graph = {f"u{i}": np.zeros(1 << 19) for i in range(4)}
    stop = threading.Event()
    lock = threading.Lock()  # the simulation's own step lock: copies happen between steps

    def simulate() -> None:
        while not stop.is_set():
            with lock:
                for arr in graph.values():
                    arr += 1

    t = threading.Thread(target=simulate)
    t.start()
    try:
        futs = []
        for step in range(6):
            with lock:  # a safe point: the copy is consistent across all four arrays
                futs.append(
                    save_state_with_manifest(graph, url, extra={"s": step}, background=True)
                )
        for fut in futs:
            fut.result(timeout=60)
    finally:
        stop.set()
        t.join()
    arrays, report = read_snapshot(url)
    assert report.extra == {"s": 5}
    first = arrays["u0"][0]
    assert all((a == first).all() for a in arrays.values())  # one consistent state


def test_one_save_per_target_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = tmp_path / "snap.npz"
    gate = threading.Event()
    real_write = _background.submit.__globals__["_executor"]
    order: list[str] = []

    def slow_executor() -> object:
        pool = real_write()

        class Wrapped:
            def submit(self, fn: object) -> object:
                def run() -> None:
                    order.append("start")
                    gate.wait(30)
                    fn()  # type: ignore[operator]
                    order.append("end")

                return pool.submit(run)

        return Wrapped()

    monkeypatch.setitem(_background.submit.__globals__, "_executor", slow_executor)
    first = save_state_with_manifest({"x": np.zeros(3)}, url, extra={"n": 1}, background=True)
    assert pending_saves() == [str(url)]
    done = threading.Event()
    second: list[object] = []

    def again() -> None:  # a second save to the same target waits for the first
        second.append(save_state_with_manifest({"x": np.ones(3)}, url, extra={"n": 2}))
        done.set()

    t = threading.Thread(target=again)
    t.start()
    time.sleep(0.3)
    assert not done.is_set() and not url.exists()
    gate.set()
    t.join(30)
    assert first.result(5).extra == {"n": 1} and done.is_set()
    assert verify_snapshot(url).extra == {"n": 2} and order == ["start", "end"]
    assert wait_for_saves(5) == []


def test_background_failure_surfaces_on_the_future(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    fut = save_state_with_manifest({"x": np.zeros(2)}, tmp_path / "file" / "s.npz", background=True)
    with pytest.raises(ResumableError, match=r"cannot create .*file.*Not a directory"):
        fut.result(30)
    # the target is free again
    save_state_with_manifest({"x": np.zeros(2)}, tmp_path / "ok.npz", background=True).result(30)


def test_hook_waits_for_a_background_save_to_the_same_target(tmp_path: Path) -> None:
    url = tmp_path / "snap.npz"
    graph = {"u": np.zeros(1 << 20)}
    fut = save_state_with_manifest(graph, url, extra={"step": 1}, background=True)
    graph["u"][:] = 2
    make_preempt_snapshot_hook(graph, str(url), extra={"step": 2})()
    assert fut.done() and fut.result().extra == {"step": 1}
    arrays, report = read_snapshot(url)
    assert report.extra == {"step": 2} and (arrays["u"] == 2).all()


def test_a_forked_child_does_not_wait_for_the_parents_saves(tmp_path: Path) -> None:
    import os

    gate = threading.Event()
    real = _background.submit.__globals__["_executor"]

    def held() -> object:
        pool = real()

        class Wrapped:
            def submit(self, fn: object) -> object:
                return pool.submit(lambda: (gate.wait(30), fn()))  # type: ignore[operator]

        return Wrapped()

    _background.submit.__globals__["_executor"] = held
    try:
        fut = save_state_with_manifest({"x": np.zeros(3)}, tmp_path / "s.npz", background=True)
    finally:
        _background.submit.__globals__["_executor"] = real
    assert pending_saves() != []
    pid = os.fork()
    if pid == 0:  # the child: nothing in flight here, and its own saves work
        code = 0
        try:
            if pending_saves() != [] or wait_for_saves(1) != []:
                code = 3
            f = save_state_with_manifest({"y": np.ones(2)}, tmp_path / "c.npz", background=True)
            f.result(10)
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    gate.set()
    fut.result(30)
    assert os.waitstatus_to_exitcode(status) == 0
    assert verify_snapshot(tmp_path / "c.npz").arrays[0].name == "y"
