"""resumable: long sweeps and simulations that survive preemption.

The public API is what this module exports (``__all__``); modules whose names start with an
underscore are internal and may change. Every name is imported lazily (PEP 562), so
``import resumable`` loads neither numpy, fsspec, tenacity, h5py nor botocore until a name that
needs them is used.

Sweeps
    `ResumableSweep`         a checkpointed sweep: iterate, record, ``run`` over executors
    `SweepStatus`            counts of a sweep (done, failed, pending, ...)
    `RunSummary`             what ``sweep.run`` did
    `MirrorOptions`          how the background mirror to a remote store paces itself
    `shard_from_env`         (index, count) of this task in a job array (SLURM, Kubernetes, ...)

Preemption (`resumable.preempt`)
    `PreemptionGuard`        SIGTERM or a spot notice -> hooks at a safe point -> exit 75
    `Preempted`              the ``SystemExit`` raised at that safe point
    `PREEMPTED_EXIT_CODE`    75 (EX_TEMPFAIL): "preempted, requeue me"

Snapshots of array state (`resumable.snapshot`)
    `save_state_with_manifest`, `download_and_load_state`, `verify_snapshot`, `read_snapshot`
    `make_preempt_snapshot_hook`  a guard hook (or periodic save) writing one snapshot per call
    `resume_from_url`        load a graph from a snapshot at start-up, or start fresh

Reading and checking checkpoints
    `open_view`              a read-only view of a checkpoint (all shards merged)
    `verify`                 check every hash of a checkpoint (and its mirror)
    `run_chaos`, `ChaosConfig`  kill a command at random and check nothing acknowledged is lost

Errors
    `errors`                 the module with the whole error tree (drawn in its docstring);
    `ResumableError`         the root of it, `IntegrityError` damaged or unexpected stored data
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import errors
    from ._mirror import MirrorOptions
    from ._version import __version__
    from .chaos import ChaosConfig, run_chaos
    from .errors import IntegrityError, ResumableError
    from .preempt import PREEMPTED_EXIT_CODE, Preempted, PreemptionGuard
    from .runner import RunSummary
    from .shards import shard_from_env
    from .snapshot import (
        download_and_load_state,
        make_preempt_snapshot_hook,
        read_snapshot,
        resume_from_url,
        save_state_with_manifest,
        verify_snapshot,
    )
    from .status import SweepStatus
    from .sweep import ResumableSweep
    from .view import open_view, verify

_HOMES: dict[str, str] = {
    # name -> the module that defines it (relative to this package)
    "ResumableSweep": ".sweep",
    "SweepStatus": ".status",
    "RunSummary": ".runner",
    "MirrorOptions": "._mirror",
    "shard_from_env": ".shards",
    "PreemptionGuard": ".preempt",
    "Preempted": ".preempt",
    "PREEMPTED_EXIT_CODE": ".preempt",
    "save_state_with_manifest": ".snapshot",
    "download_and_load_state": ".snapshot",
    "verify_snapshot": ".snapshot",
    "read_snapshot": ".snapshot",
    "make_preempt_snapshot_hook": ".snapshot",
    "resume_from_url": ".snapshot",
    "open_view": ".view",
    "verify": ".view",
    "run_chaos": ".chaos",
    "ChaosConfig": ".chaos",
    "ResumableError": ".errors",
    "IntegrityError": ".errors",
    "__version__": "._version",
}
_MODULES = frozenset({"errors"})  # submodules exported as names

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "ChaosConfig",
    "IntegrityError",
    "MirrorOptions",
    "Preempted",
    "PreemptionGuard",
    "ResumableError",
    "ResumableSweep",
    "RunSummary",
    "SweepStatus",
    "__version__",
    "download_and_load_state",
    "errors",
    "make_preempt_snapshot_hook",
    "open_view",
    "read_snapshot",
    "resume_from_url",
    "run_chaos",
    "save_state_with_manifest",
    "shard_from_env",
    "verify",
    "verify_snapshot",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562) and keep it in the module's namespace."""
    if name in _MODULES:
        value: Any = importlib.import_module(f".{name}", __name__)
    elif name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (for completion), not the helpers this module imports."""
    return sorted(set(__all__) | {name for name in globals() if name.startswith("__")})
