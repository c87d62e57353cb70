"""Sharding a sweep across a cluster's job array: which shard owns a key, and where it lives.

Items go to shards by a hash of their key, so a relaunched shard gets exactly its own items
back and appending items never moves existing ones. Each shard keeps its own checkpoint in
``shard-IIII-of-NNNN/`` under the sweep's progress directory and under the mirror root, so one
job spec (the same ``SWEEP_SNAPSHOT_DIR`` / ``SWEEP_RESUME_FROM`` for every index) serves all
shards and no two shards ever write the same object.

The shard count is fixed for the life of a sweep: a descriptor (``sweep.json``) written once,
create-only, records it beside the shards, and a launch with another count is refused with a
clear error rather than silently losing or redoing work. (Re-sharding would need every shard's
records read and merged by one writer; start a new sweep, or finish with the original count.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._codec import canonical_json, loads, sha256_hex
from ._durable import atomic_write_bytes, make_dirs
from ._storage import Store
from ._urls import redact
from ._version import __version__
from .errors import ConfigurationError, IntegrityError, ObjectExistsError, ObjectNotFoundError

DESCRIPTOR_NAME = "sweep.json"
DESCRIPTOR_FORMAT = "resumable-sweep"
SHARD_DIR_RE = re.compile(r"^shard-(\d{4,})-of-(\d{4,})$")
MAX_SHARDS = 100_000
ENV_INDEX = "SWEEP_SHARD_INDEX"
ENV_COUNT = "SWEEP_SHARD_COUNT"


def shard_dir_name(index: int, count: int) -> str:
    return f"shard-{index:04d}-of-{count:04d}"


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) that owns `key`: stable across runs, machines and item lists."""
    digest = hashlib.sha256(b"resumable-shard\0" + key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def check_shard(shard: object) -> tuple[int, int]:
    """Validate a `shard=(index, count)` argument."""
    if (
        not isinstance(shard, (tuple, list))
        or len(shard) != 2
        or not all(type(v) is int for v in shard)
    ):
        raise ConfigurationError(f"shard must be (index, count) with two ints, found {shard!r}")
    index, count = shard
    if not 1 <= count <= MAX_SHARDS or not 0 <= index < count:
        raise ConfigurationError(f"shard {shard!r}: expected 0 <= index < count <= {MAX_SHARDS}")
    return index, count


def _int(env: Mapping[str, str], var: str) -> int | None:
    raw = env.get(var, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{var}={raw!r} is not an integer") from None


def shard_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(index, count) from the cluster's own job-array environment, or None if unsharded.

    In order: ``SWEEP_SHARD_INDEX``/``SWEEP_SHARD_COUNT``; Kubernetes Indexed Jobs
    (``JOB_COMPLETION_INDEX``, count from ``SWEEP_SHARD_COUNT`` set by the job spec); SLURM job
    arrays (``SLURM_ARRAY_TASK_ID``, count from ``SLURM_ARRAY_TASK_COUNT`` or MIN/MAX, index
    relative to ``SLURM_ARRAY_TASK_MIN``; the array must be contiguous); AWS Batch array jobs
    (``AWS_BATCH_JOB_ARRAY_INDEX``, count from ``SWEEP_SHARD_COUNT``). A count without an
    index is refused: every task of the array would run the whole sweep.
    """
    env = os.environ if environ is None else environ
    count = _int(env, ENV_COUNT)
    for var in (ENV_INDEX, "JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"):
        index = _int(env, var)
        if index is not None:
            if count is None:
                raise ConfigurationError(
                    f"{var}={index} is set but {ENV_COUNT} is not: set {ENV_COUNT} to the number "
                    "of shards (parallelism/completions of the job) in the job spec"
                )
            return check_shard((index, count))
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    if task is not None:
        lo = _int(env, "SLURM_ARRAY_TASK_MIN") or 0
        hi = _int(env, "SLURM_ARRAY_TASK_MAX")
        slurm_count = _int(env, "SLURM_ARRAY_TASK_COUNT")
        span = hi - lo + 1 if hi is not None else None
        if slurm_count is not None and span is not None and slurm_count != span:
            # --array=1,3,5 or 0-10:2: task IDs minus MIN are not 0..count-1
            raise ConfigurationError(
                f"SLURM array tasks {lo}..{hi} are not contiguous ({slurm_count} tasks): "
                "submit the sharded sweep as --array=0-N (a %-limit is fine, steps and lists "
                "are not)"
            )
        n = count or slurm_count or span
        if n is None:
            raise ConfigurationError(
                "SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor "
                f"SLURM_ARRAY_TASK_MAX nor {ENV_COUNT} is"
            )
        if not 0 <= task - lo < n:
            raise ConfigurationError(
                f"SLURM_ARRAY_TASK_ID={task} is outside the array {lo}..{lo + n - 1} "
                f"({n} shards); submit the sharded sweep as --array=0-{n - 1}"
            )
        return check_shard((task - lo, n))
    if count is not None:
        raise ConfigurationError(
            f"{ENV_COUNT}={count} is set but no shard index is ({ENV_INDEX}, "
            "JOB_COMPLETION_INDEX of an Indexed Job, SLURM_ARRAY_TASK_ID, "
            "AWS_BATCH_JOB_ARRAY_INDEX): every task would run the whole sweep"
        )
    return None


def descriptor_bytes(name: str, count: int) -> bytes:
    body = {
        "format": DESCRIPTOR_FORMAT,
        "schema": 1,
        "sweep": name,
        "shards": count,
        "created": repr(time.time()),
        "library_version": __version__,
    }
    body["sha256"] = sha256_hex(canonical_json(body))
    return json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"


def parse_descriptor(data: bytes, where: str) -> dict[str, Any]:
    try:
        body = loads(data)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        claimed = body.pop("sha256")
        if body.get("format") != DESCRIPTOR_FORMAT or body.get("schema") != 1:
            raise ValueError(f"format {body.get('format')!r} schema {body.get('schema')!r}")
        if sha256_hex(canonical_json(body)) != claimed:
            raise ValueError("SHA-256 mismatch")
        if type(body["shards"]) is not int or not 1 <= body["shards"] <= MAX_SHARDS:
            raise ValueError(f"bad shard count {body['shards']!r}")
        if type(body["sweep"]) is not str:
            raise ValueError("bad sweep name")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise IntegrityError(f"{where}: not a valid sweep descriptor ({exc})") from None
    return body


def check_descriptor(body: dict[str, Any], name: str, count: int, where: str) -> None:
    if body["sweep"] != name:
        raise ConfigurationError(
            f"{where} describes sweep {body['sweep']!r}, not {name!r}; use another location"
        )
    if body["shards"] != count:
        raise ConfigurationError(
            f"{where}: sweep {name!r} was started with {body['shards']} shard(s); this launch "
            f"asks for {count}. Changing the shard count is refused (it would lose or redo "
            f"work): relaunch with {body['shards']} shards, or start a new sweep elsewhere"
        )


def ensure_local_descriptor(root: Path, name: str, count: int) -> None:
    """Check (or write, the first time) the descriptor in a sweep's local progress dir."""
    path = root / DESCRIPTOR_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        others = (
            [p.name for p in root.glob("shard-*") if SHARD_DIR_RE.match(p.name)]
            if (root.is_dir())
            else []
        )
        if others or (root / "manifest.json").exists():
            raise ConfigurationError(
                f"{root} holds an unsharded checkpoint or shards without a descriptor; "
                f"refusing to add {count} shard(s) to it"
            ) from None
        make_dirs(root)
        atomic_write_bytes(path, descriptor_bytes(name, count))
        return
    check_descriptor(parse_descriptor(data, str(path)), name, count, str(path))


def read_descriptor(store: Store) -> dict[str, Any] | None:
    """The descriptor at a mirror root, or None if there is none."""
    try:
        data = store.read_bytes(DESCRIPTOR_NAME, max_bytes=64 * 1024)
    except ObjectNotFoundError:
        return None
    return parse_descriptor(data, redact(store.url(DESCRIPTOR_NAME)))


def ensure_remote_descriptor(store: Store, name: str, count: int) -> None:
    """Check (or write once, create-only) the descriptor at a mirror root."""
    body = read_descriptor(store)
    if body is None:
        with contextlib.suppress(ObjectExistsError):  # another shard wrote it first
            store.write_bytes(DESCRIPTOR_NAME, descriptor_bytes(name, count), create_only=True)
        body = read_descriptor(store)
        if body is None:  # pragma: no cover - just written
            raise IntegrityError(f"{store.display}: descriptor vanished after it was written")
    check_descriptor(body, name, count, redact(store.url(DESCRIPTOR_NAME)))
