"""`RayExecutor`: run a sweep's items on a Ray cluster through `sweep.run(fn, executor=...)`.

Ray has no `concurrent.futures` executor of its own, but every `ObjectRef` converts to a
`concurrent.futures.Future` (`ref.future()`); this thin adapter is built on that. The runner
batches items into tasks of about 250 ms as it does for Dask (a Ray task costs about a
millisecond of scheduling), and records each result in the owning process as it arrives.

Ray retries a task whose worker or node died (`max_retries`, 3 by default): the sweep sees
only the retried task's result, so each item is still recorded exactly once. Cancelling a
future cancels its Ray task (best effort: a task already running finishes unless `force`).

Needs the `ray` extra: ``pip install 'resumable-sweeps[ray]'``. Connects to the cluster that
`ray.init` (or the `address` given here, e.g. ``"auto"`` or ``"127.0.0.1:6379"``) names.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from .errors import ConfigurationError

__all__ = ["RayExecutor"]


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigurationError(
            f"RayExecutor needs ray ({exc}); install it with: pip install 'resumable-sweeps[ray]'"
        ) from None
    return ray


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Runs in a Ray worker."""
    return fn(*args, **kwargs)


class _RayFuture(cf.Future[Any]):  # Any: the user's function's result
    """A future whose `cancel()` also cancels the Ray task behind it."""

    def __init__(self, ref: Any) -> None:
        super().__init__()
        self._ref = ref

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        with contextlib.suppress(Exception):  # best effort: the task may have finished
            _ray().cancel(self._ref)
        return True


class RayExecutor(cf.Executor):
    """A `concurrent.futures.Executor` over Ray tasks (see the module docstring).

    `num_cpus`: CPUs each task reserves (1); `max_retries`: how often Ray reruns a task whose
    worker died (3); `init_kwargs`: passed to `ray.init` when Ray is not initialised yet.
    """

    task_target_s = 0.25  # the runner batches short items into tasks of about this length

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: float = 1,
        max_retries: int = 3,
        **init_kwargs: Any,
    ) -> None:
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=address, **init_kwargs)
        self._remote = ray.remote(_call).options(num_cpus=num_cpus, max_retries=max_retries)
        self._lock = threading.Lock()
        self._shutdown = False
        self._num_cpus = num_cpus

    @property
    def _max_workers(self) -> int:
        """Tasks that can run at once on the cluster now (the runner sizes its window by it)."""
        try:
            cpus = float(_ray().cluster_resources().get("CPU", 1))
        except Exception:
            return 1
        return max(1, int(cpus // max(self._num_cpus, 1e-9)))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            ref = self._remote.remote(fn, args, kwargs)
        out = _RayFuture(ref)
        inner = ref.future()

        def settle(done: cf.Future[Any]) -> None:
            if not out.set_running_or_notify_cancel():
                return
            exc = done.exception()
            if exc is None:
                out.set_result(done.result())
            else:
                out.set_exception(_unwrap(exc))

        inner.add_done_callback(settle)
        return out

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True


class RayClusterError(cf.BrokenExecutor):
    """Ray lost a task for good (its node or worker died past `max_retries`): not the item's
    fault, so the runner stops and leaves the task's items pending for the next launch."""


def _unwrap(exc: BaseException) -> BaseException:
    """The user's own exception from a Ray task error (Ray wraps it in RayTaskError); Ray's own
    system failures become `RayClusterError`."""
    try:
        from ray import exceptions as rex
    except ImportError:  # pragma: no cover - ray is there when its futures are
        return exc
    system = tuple(
        getattr(rex, name)
        for name in (
            "WorkerCrashedError",
            "NodeDiedError",
            "ObjectLostError",
            "OwnerDiedError",
            "RaySystemError",
            "TaskUnschedulableError",
            "OutOfMemoryError",
        )
        if hasattr(rex, name)
    )
    if isinstance(exc, system):
        return RayClusterError(f"Ray lost the task: {type(exc).__name__}: {exc}")
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return cause
    as_instance = getattr(exc, "as_instanceof_cause", None)
    if callable(as_instance):
        try:
            original: BaseException = as_instance()
            return original
        except Exception:
            return exc
    return exc
