"""The garbage collector's pause (resumable/_gcpause.py): counted across threads and forks."""

from __future__ import annotations

import gc
import os
import threading

import pytest

from resumable._gcpause import gc_paused


def test_a_pause_disables_and_restores() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():  # re-entrant
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_pauses_of_two_threads_overlap_correctly() -> None:
    """The first pause to end does not enable the collector under the other's feet (a
    save-and-restore per pause would)."""
    assert gc.isenabled()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def other() -> None:
        b_in.wait()
        with gc_paused():  # enters second
            a_in.set()
            a_out.wait()
            seen.append(gc.isenabled())  # the first one ended: still paused here
        seen.append(gc.isenabled())

    t = threading.Thread(target=other)
    t.start()
    with gc_paused():
        b_in.set()
        a_in.wait()
    a_out.set()
    t.join()
    assert seen == [False, True]
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_another_thread_pauses_runs_the_collector() -> None:
    holding, release = threading.Event(), threading.Event()

    def other() -> None:
        with gc_paused():
            holding.set()
            release.wait()

    t = threading.Thread(target=other)
    t.start()
    holding.wait()
    try:
        assert not gc.isenabled()
        pid = os.fork()
        if pid == 0:  # the child: the pausing thread does not exist here
            ok = gc.isenabled()
            with gc_paused():
                ok = ok and not gc.isenabled()
            os._exit(0 if ok and gc.isenabled() else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        t.join()
    assert gc.isenabled()
