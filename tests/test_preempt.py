"""PreemptionGuard in-process: real signals to this process, real threads, real HTTP servers.

The watchdog's os._exit path ends the process, so it is exercised in
tests/integration/test_preempt_subprocess.py.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resumable import _signals
from resumable.errors import ConfigurationError
from resumable.preempt import (
    DEFAULT_GRACE_S,
    PREEMPTED_EXIT_CODE,
    AwsSpotWatcher,
    AzureScheduledEventsWatcher,
    GcpPreemptionWatcher,
    Preempted,
    PreemptionGuard,
    current_guard,
    make_preempt_snapshot_hook,
    resolve_grace_s,
    resume_from_url,
)
from resumable.snapshot import verify_snapshot


def _wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def _kill_self(sig: int = signal.SIGTERM) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # let the eval loop run the Python-level handler


@pytest.fixture(autouse=True)
def _no_grace_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("RESUMABLE_GRACE_S", raising=False)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    yield
    assert current_guard() is None
    assert {s: signal.getsignal(s) for s in before} == before  # every test leaves them alone


def test_handlers_installed_and_restored() -> None:
    original = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard(signals=(signal.SIGTERM, signal.SIGUSR1)) as guard:
        assert signal.getsignal(signal.SIGTERM) is _signals.on_signal
        assert signal.getsignal(signal.SIGUSR1) is _signals.on_signal
        assert current_guard() is guard and not guard.preempted
        assert guard.deadline is None and guard.remaining_s() == float("inf")
        guard.checkpoint_if_preempted()  # no request: a no-op
    assert signal.getsignal(signal.SIGTERM) is original
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_signal_runs_hooks_once_then_raises_preempted() -> None:
    calls: list[str] = []
    flushed: list[float] = []
    with (
        pytest.raises(Preempted) as info,
        PreemptionGuard(
            lambda: calls.append("save"),
            lambda: calls.append("second"),
            flush=[flushed.append],
            grace_s=10,
        ) as guard,
    ):
        for step in range(1000):
            if step == 3:
                _kill_self()
                assert guard.preempted and guard.reason == "SIGTERM"
                assert guard.signum == signal.SIGTERM
                assert 9.0 < guard.remaining_s() <= 10.0
                assert guard.deadline is not None
            guard.checkpoint_if_preempted()
    exc = info.value
    assert isinstance(exc, SystemExit) and exc.code == PREEMPTED_EXIT_CODE == 75
    assert exc.reason == "SIGTERM" and exc.signum == signal.SIGTERM and exc.hook_errors == ()
    assert calls == ["save", "second"]
    assert len(flushed) == 1 and 9.0 < flushed[0] <= 10.0
    with pytest.raises(Preempted):
        guard.checkpoint_if_preempted()  # again: raises, but hooks do not run twice
    assert calls == ["save", "second"]


def test_hook_failure_keeps_exit_code_and_runs_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def broken() -> None:
        raise OSError("bucket gone")

    with (
        pytest.raises(Preempted) as info,
        PreemptionGuard(
            broken, lambda: calls.append("after"), flush=[lambda: calls.append("flush")]
        ) as guard,
    ):
        guard.request("test")
        guard.checkpoint_if_preempted()
    assert calls == ["after", "flush"]
    assert info.value.code == 75
    assert [type(e) for e in info.value.hook_errors] == [OSError]
    assert isinstance(info.value.__cause__, OSError)
    assert "bucket gone" in caplog.text


def test_second_signal_during_shutdown_is_harmless() -> None:
    calls: list[int] = []

    def hook() -> None:
        calls.append(1)
        _kill_self()  # a second SIGTERM while the hooks run
        _kill_self()

    with pytest.raises(Preempted), PreemptionGuard(hook) as guard:
        _kill_self()
        guard.checkpoint_if_preempted()
    assert calls == [1]
    assert guard.late_signals == 2 and guard.reason == "SIGTERM"


def test_signal_after_last_safe_point_finishes_normally(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    with PreemptionGuard(lambda: calls.append(1)) as guard:
        for _ in range(3):
            guard.checkpoint_if_preempted()
        _kill_self()  # the work is done: nothing more to protect
    assert guard.preempted and calls == []
    assert "after the last safe point" in caplog.text


def test_body_exception_propagates_without_hooks() -> None:
    calls: list[int] = []
    with pytest.raises(ZeroDivisionError), PreemptionGuard(lambda: calls.append(1)):
        _kill_self()
        _ = 1 / 0
    assert calls == []


def test_nested_guards_both_see_the_signal() -> None:
    order: list[str] = []
    with (
        pytest.raises(Preempted) as info,
        PreemptionGuard(lambda: order.append("outer"), signals=(signal.SIGTERM,)) as outer,
    ):
        with PreemptionGuard(
            lambda: order.append("inner"), signals=(signal.SIGTERM, signal.SIGUSR1)
        ) as inner:
            assert current_guard() is inner
            _kill_self()
            assert inner.preempted and outer.preempted
            # the inner block completes its work without a safe point ...
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is _signals.on_signal
        assert current_guard() is outer
        outer.checkpoint_if_preempted()  # ... but the outer work is not done
    assert order == ["outer"] and info.value.code == 75


def test_inner_only_signal_does_not_flag_outer() -> None:
    with PreemptionGuard() as outer:
        with pytest.raises(Preempted), PreemptionGuard(signals=(signal.SIGUSR1,)) as inner:
            _kill_self(signal.SIGUSR1)
            assert inner.preempted and inner.reason == "SIGUSR1"
            inner.checkpoint_if_preempted()
        assert not outer.preempted


def test_sigint_can_be_a_preemption_signal() -> None:
    with pytest.raises(Preempted), PreemptionGuard(signals=(signal.SIGINT,)) as guard:
        _kill_self(signal.SIGINT)  # no KeyboardInterrupt: just the flag
        guard.checkpoint_if_preempted()


def test_guard_only_in_main_thread() -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with PreemptionGuard():
                pass
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], ConfigurationError)
    assert "main thread" in str(errors[0])


def test_guard_enters_once() -> None:
    guard = PreemptionGuard()
    with guard:
        pass
    with pytest.raises(ConfigurationError), guard:
        pass


def test_request_from_another_thread_and_exit() -> None:
    with pytest.raises(Preempted) as info, PreemptionGuard() as guard:
        t = threading.Thread(target=guard.request, args=("spot notice",))
        t.start()
        t.join()
        assert guard.preempted and guard.reason == "spot notice" and guard.signum is None
        guard.checkpoint_if_preempted()
    assert info.value.reason == "spot notice"
    with pytest.raises(Preempted) as info2, PreemptionGuard() as guard2:
        guard2.exit("sweep asked")  # the lower-level API: exit() without a prior request
    assert info2.value.reason == "sweep asked" and info2.value.code == 75


def test_flush_callables_with_and_without_argument() -> None:
    got: list[Any] = []
    with (
        pytest.raises(Preempted),
        PreemptionGuard(
            flush=[lambda: got.append("none"), lambda left: got.append(left)], grace_s=3
        ) as guard,
    ):
        guard.add_flush(lambda *a: got.append(a))
        guard.request("x")
        guard.exit()
    assert got[0] == "none" and 0 < got[1] <= 3 and len(got[2]) == 1


def test_custom_exit_code() -> None:
    with pytest.raises(Preempted) as info, PreemptionGuard(exit_code=143) as guard:
        guard.request("x")
        guard.checkpoint_if_preempted()
    assert info.value.code == 143


@pytest.mark.parametrize("raw, expected", [("", DEFAULT_GRACE_S), ("10", 10.0), (" 2.5 ", 2.5)])
def test_grace_from_env(monkeypatch: pytest.MonkeyPatch, raw: str, expected: float) -> None:
    monkeypatch.setenv("RESUMABLE_GRACE_S", raw)
    assert resolve_grace_s() == expected
    assert PreemptionGuard().grace_s == expected
    assert PreemptionGuard(grace_s=7).grace_s == 7.0  # the argument wins


@pytest.mark.parametrize("raw", ["abc", "0", "-3", "nan", "inf", "1e999"])
def test_bad_grace_env(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("RESUMABLE_GRACE_S", raw)
    with pytest.raises(ConfigurationError) as info:
        PreemptionGuard()
    assert "RESUMABLE_GRACE_S" in str(info.value) and repr(raw) in str(info.value)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigurationError):
        PreemptionGuard(grace_s=0)
    with pytest.raises(ConfigurationError):
        PreemptionGuard(grace_s=5, flush_reserve_s=6)
    with pytest.raises(ConfigurationError):
        PreemptionGuard("not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        PreemptionGuard(signals=())


# --- snapshot hook + resume ----------------------------------------------------------------------


def test_snapshot_hook_as_preemption_and_periodic_hook(tmp_path: Path) -> None:
    graph = {"x": np.zeros(4)}
    step = 0
    url = str(tmp_path / "snap.npz")
    hook = make_preempt_snapshot_hook(graph, url, extra=lambda: {"step": step}, keep=2)
    assert resume_from_url(graph, os.environ.get("RESUMABLE_TEST_UNSET")) is None
    with pytest.raises(Preempted), PreemptionGuard(hook) as guard:
        while True:
            graph["x"] += 1
            step += 1
            if step % 5 == 0:
                hook()  # periodic
            if step == 7:
                _kill_self()
            guard.checkpoint_if_preempted()
    assert verify_snapshot(url).extra == {"step": 7}
    assert verify_snapshot(tmp_path / "snap.1.npz").extra == {"step": 5}
    fresh = {"x": np.zeros(4)}
    assert resume_from_url(fresh, url) == {"step": 7}
    assert fresh["x"].tolist() == [7.0] * 4
    assert "snap.npz" in repr(hook)


# --- spot watchers against a fake metadata server ---------------------------------------------


class FakeMetadata:
    """AWS IMDSv2, GCP and Azure metadata endpoints: "no notice" for `quiet` polls, then one."""

    def __init__(self, quiet: int = 2) -> None:
        self.quiet = quiet
        self.polls: dict[str, int] = {}
        self.log: list[tuple[str, str, dict[str, str]]] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                fake.log.append(("PUT", self.path, dict(self.headers)))
                if self.path == "/latest/api/token" and self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    self._reply(200, b"tok-123")
                else:
                    self._reply(400)

            def do_GET(self) -> None:
                fake.log.append(("GET", self.path, dict(self.headers)))
                n = fake.polls[self.path] = fake.polls.get(self.path, 0) + 1
                notice = n > fake.quiet
                if self.path == "/latest/meta-data/spot/instance-action":
                    if self.headers.get("X-aws-ec2-metadata-token") != "tok-123":
                        return self._reply(401)
                    if not notice:
                        return self._reply(404)
                    body = {"action": "terminate", "time": "2030-01-01T00:00:00Z"}
                    return self._reply(200, json.dumps(body).encode())
                if self.path == "/computeMetadata/v1/instance/preempted":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return self._reply(403)
                    return self._reply(200, b"TRUE" if notice else b"FALSE")
                if self.path == "/metadata/scheduledevents?api-version=2020-07-01":
                    if self.headers.get("Metadata") != "true":
                        return self._reply(400)
                    events: list[dict[str, Any]] = [{"EventId": "a", "EventType": "Freeze"}]
                    if notice:
                        events.append({"EventId": "b", "EventType": "Preempt", "NotBefore": "soon"})
                    doc = {"DocumentIncarnation": n, "Events": events}
                    return self._reply(200, json.dumps(doc).encode())
                return self._reply(404)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def metadata() -> Iterator[FakeMetadata]:
    fake = FakeMetadata()
    yield fake
    fake.stop()


@pytest.mark.parametrize(
    "watcher_cls, path, needle",
    [
        (AwsSpotWatcher, "/latest/meta-data/spot/instance-action", "action=terminate"),
        (GcpPreemptionWatcher, "/computeMetadata/v1/instance/preempted", "GCP"),
        (AzureScheduledEventsWatcher, "/metadata/scheduledevents?api-version=2020-07-01", "id=b"),
    ],
)
def test_watchers_raise_the_flag(
    metadata: FakeMetadata, watcher_cls: type, path: str, needle: str
) -> None:
    watcher = watcher_cls(metadata.url, interval_s=0.02)
    with pytest.raises(Preempted) as info, PreemptionGuard(watchers=[watcher]) as guard:
        assert _wait_for(lambda: guard.preempted)
        assert metadata.polls[path] == metadata.quiet + 1  # first "no notice", then a notice
        guard.checkpoint_if_preempted()
    assert needle in info.value.reason and watcher.notice == info.value.reason
    if watcher_cls is AwsSpotWatcher:
        puts = [e for e in metadata.log if e[0] == "PUT"]
        assert len(puts) == 1  # the IMDSv2 token is reused


def test_watcher_endpoint_from_env(metadata: FakeMetadata, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESUMABLE_GCP_METADATA_URL", metadata.url)
    watcher = GcpPreemptionWatcher(interval_s=0.02)
    assert watcher.endpoint == metadata.url
    with pytest.raises(Preempted), PreemptionGuard(watchers=[watcher]) as guard:
        assert _wait_for(lambda: guard.preempted)
        guard.checkpoint_if_preempted()


def test_watchers_survive_network_errors_and_stop_promptly() -> None:
    from fixtures.servers import refused_url  # tests/ is on sys.path (see conftest)

    url = refused_url()
    watchers = [
        AwsSpotWatcher(url, interval_s=0.01, timeout_s=0.2),
        GcpPreemptionWatcher(url, interval_s=0.01, timeout_s=0.2),
        AzureScheduledEventsWatcher(url, interval_s=0.01, timeout_s=0.2),
    ]
    with PreemptionGuard(watchers=watchers) as guard:
        time.sleep(0.3)
        assert not guard.preempted
        threads = [w._thread for w in watchers]
        assert all(t is not None and t.is_alive() for t in threads)
    t0 = time.monotonic()
    assert _wait_for(lambda: not any(t.is_alive() for t in threads if t), timeout=2)
    assert time.monotonic() - t0 < 1.0


def test_snapshot_hook_annotations_resolve() -> None:
    # found by mypy: these public functions were annotated with resumable.snapshot.Graph, a name
    # that exists nowhere, so get_type_hints (used by documentation and validation tools) failed
    for fn in (make_preempt_snapshot_hook, resume_from_url):
        hints = typing.get_type_hints(fn)
        assert hints["graph"] is Any
        assert hints["storage_options"] == Mapping[str, Any] | None
