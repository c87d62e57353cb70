"""The public API (issue 15): what `resumable` exports, that it is documented, that importing it
is light, and that every import path the README, examples and job specs taught keeps working."""

from __future__ import annotations

import importlib
import inspect
import json
import re
import subprocess
import sys
import types

import pytest

import resumable

# What the issue asks the package root to offer; __all__ may hold more (never less).
REQUIRED = {
    "ResumableSweep",
    "SweepStatus",
    "RunSummary",
    "MirrorOptions",
    "shard_from_env",
    "PreemptionGuard",
    "Preempted",
    "PREEMPTED_EXIT_CODE",
    "save_state_with_manifest",
    "download_and_load_state",
    "verify_snapshot",
    "read_snapshot",
    "make_preempt_snapshot_hook",
    "resume_from_url",
    "open_view",
    "verify",
    "run_chaos",
    "ChaosConfig",
    "errors",
}
HEAVY = ("fsspec", "tenacity", "h5py", "botocore", "numpy")

# (module, name) pairs taught by README.md, jobs/, scripts/ and the examples.
TAUGHT = [
    ("resumable.preempt", "PreemptionGuard"),
    ("resumable.preempt", "Preempted"),
    ("resumable.preempt", "PREEMPTED_EXIT_CODE"),
    ("resumable.preempt", "PREEMPTION_EXIT_CODES"),
    ("resumable.preempt", "DEFAULT_GRACE_S"),
    ("resumable.preempt", "AwsSpotWatcher"),
    ("resumable.preempt", "current_guard"),
    ("resumable.preempt", "make_preempt_snapshot_hook"),
    ("resumable.preempt", "resume_from_url"),
    ("resumable.snapshot", "save_state_with_manifest"),
    ("resumable.snapshot", "download_and_load_state"),
    ("resumable.snapshot", "read_snapshot"),
    ("resumable.snapshot", "verify_snapshot"),
    ("resumable.errors", "ResumableError"),
    ("resumable.errors", "SourceUnreachableError"),
    ("resumable.view", "open_view"),
    ("resumable.view", "verify"),
    ("resumable.chaos", "run_chaos"),
    ("resumable.chaos", "ChaosConfig"),
    ("resumable.chaos", "ChaosReport"),
    ("resumable.ray_executor", "RayExecutor"),
    ("resumable.shards", "shard_from_env"),
    ("resumable.runner", "RunSummary"),
    ("resumable.runner", "worker_initializer"),
    ("resumable.cli", "main"),
    ("resumable.export", "decode"),  # named by `resumable export --raw` help
]


def _in_fresh_interpreter(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout)


def test_all_holds_what_users_need_sorted_and_unique() -> None:
    assert set(resumable.__all__) >= REQUIRED, REQUIRED - set(resumable.__all__)
    assert len(resumable.__all__) == len(set(resumable.__all__))


@pytest.mark.parametrize("name", sorted(resumable.__all__))
def test_every_public_name_resolves_and_is_documented(name: str) -> None:
    value = getattr(resumable, name)
    assert name in dir(resumable)
    # the root's docstring lists every public name with a line on what it is
    assert f"`{name}`" in (resumable.__doc__ or "") or name == "__version__"
    if isinstance(value, types.ModuleType) or inspect.isclass(value) or callable(value):
        own = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
        assert own and own.strip(), f"{name} has no docstring of its own"


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        resumable.no_such_name  # noqa: B018
    with pytest.raises(AttributeError, match="no_such_name"):
        importlib.import_module("resumable.preempt").no_such_name  # noqa: B018


def test_the_error_tree_is_drawn_in_the_errors_docstring() -> None:
    """Every error class is in the drawing, under its first base, with its other bases named."""
    from resumable import errors

    classes = {
        v.__name__: v
        for v in vars(errors).values()
        if inspect.isclass(v) and issubclass(v, BaseException)
    }
    drawn: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # (indent, name) of the open ancestors
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^( *)\* (\w+)(?: \[([\w, ]+)\])?", line)
        if not match:
            continue
        indent, name, also = len(match[1]), match[2], match[3]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        drawn[name] = stack[-1][1] if stack else None
        stack.append((indent, name))
        cls = classes[name]
        bases = [b.__name__ for b in cls.__bases__]
        assert bases[0] == (drawn[name] or "Exception"), name
        assert bases[1:] == ([b.strip() for b in also.split(",")] if also else []), name
    assert set(drawn) == set(classes), set(classes) ^ set(drawn)
    for cls in classes.values():
        assert issubclass(cls, errors.ResumableError)
        assert cls.__doc__ and cls.__doc__.strip()


@pytest.mark.parametrize(("module", "name"), TAUGHT)
def test_taught_import_paths_keep_working(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is not None


def test_the_same_object_behind_every_path() -> None:
    import resumable.preempt
    import resumable.snapshot

    assert resumable.make_preempt_snapshot_hook is resumable.preempt.make_preempt_snapshot_hook
    assert resumable.resume_from_url is resumable.snapshot.resume_from_url
    assert resumable.PreemptionGuard is resumable.preempt.PreemptionGuard


@pytest.mark.parametrize("module", ["resumable", "resumable.preempt"])
def test_importing_is_light(module: str) -> None:
    """Neither the package root nor the preemption guard pulls in storage, HDF5 or numpy, and the
    guard does not load the snapshot code (no upward import preempt -> snapshot)."""
    loaded = _in_fresh_interpreter(
        f"import json, sys, {module}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{HEAVY!r} or m.startswith('resumable.'))))"
    )
    assert not [m for m in loaded if m.split(".")[0] in HEAVY], loaded
    assert "resumable.snapshot" not in loaded
    assert "resumable.sweep" not in loaded


def test_names_load_only_when_used() -> None:
    loaded = _in_fresh_interpreter(
        "import json, sys, resumable\n"
        "before = 'resumable.sweep' in sys.modules\n"
        "resumable.ResumableSweep\n"
        "print(json.dumps([before, 'resumable.sweep' in sys.modules]))"
    )
    assert loaded == [False, True]


def test_version_comes_from_the_installed_metadata() -> None:
    from importlib import metadata

    from resumable._version import DISTRIBUTION

    try:
        expected = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        expected = "0+unknown"
    assert resumable.__version__ == expected
