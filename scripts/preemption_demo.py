#!/usr/bin/env python3
"""Preemption, end to end: SIGTERM a sweep, resume it on a "new machine", compare the output.

    python scripts/preemption_demo.py              # the mirror is a local directory
    python scripts/preemption_demo.py --moto       # the mirror is in S3 (moto on 127.0.0.1)
    AWS_ENDPOINT_URL=http://127.0.0.1:9000 python scripts/preemption_demo.py --bucket demo
                                                   # your own S3-compatible store (or AWS S3
                                                   # itself: --s3 with the usual AWS_* setup)

What it does, with scripts/run_example_sweep.py (the 2D Ising sweep, made small):
1. a reference run, uninterrupted, with no mirror;
2. launch 1 on "machine A" with SWEEP_SNAPSHOT_DIR / SWEEP_RESUME_FROM set (as a job spec sets
   them, unconditionally); partway through it gets SIGTERM, as a preempted pod or spot VM
   does, and exits 75 (resumable.preempt.PREEMPTED_EXIT_CODE) after flushing the mirror;
3. launch 2 on "machine B": a fresh, empty local directory and the same environment: it
   resumes from the mirror and finishes;
4. the HDF5 output of launch 2 is compared with the reference, node by node with h5py:
   every dataset bitwise (dtype, shape, bytes), every attribute (except the export's own
   `created` timestamp).

Exits 0 if everything matched, 1 otherwise. Needs h5py (a dependency of resumable) and, for
--moto, moto[server].
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resumable.preempt import PREEMPTED_EXIT_CODE  # noqa: E402

EXAMPLE = ROOT / "scripts" / "run_example_sweep.py"
# Environment variables that would make the example sharded or point it elsewhere: the demo
# sets its own, so none leaks in from the caller's shell (or from a job it runs inside).
CLEARED_ENV = (
    "SWEEP_SNAPSHOT_DIR",
    "SWEEP_RESUME_FROM",
    "SWEEP_SHARD_INDEX",
    "SWEEP_SHARD_COUNT",
    "JOB_COMPLETION_INDEX",
    "AWS_BATCH_JOB_ARRAY_INDEX",
    "SLURM_ARRAY_TASK_ID",
)
VOLATILE_ATTRS = {"/": {"created"}}  # the export's wall-clock timestamp


# -- comparing HDF5 files -----------------------------------------------------------------------


def _same_value(a: Any, b: Any) -> bool:
    """Bitwise equality for arrays and numpy scalars (NaN == NaN), == for the rest."""
    if isinstance(a, (np.ndarray, np.generic)) or isinstance(b, (np.ndarray, np.generic)):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.dtype.kind == "O":
            return a.tolist() == b.tolist()
        return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    return type(a) is type(b) and a == b


def _dataset_value(ds: Any) -> Any:
    import h5py

    if ds.shape is None:  # an empty (null dataspace) dataset
        return h5py.Empty(ds.dtype)
    return ds[()]


def compare_h5(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    ignore_attrs: dict[str, set[str]] | None = None,
) -> tuple[int, int, list[str]]:
    """Compare two HDF5 files' contents: (datasets compared, attributes compared, differences).

    Same tree of groups and datasets; each dataset equal in dtype, shape and bytes; each
    attribute equal (bitwise for array and numpy values), except `ignore_attrs[node path]`.
    """
    import h5py

    ignore = ignore_attrs or {}
    diffs: list[str] = []
    n_datasets = n_attrs = 0
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        nodes_a: dict[str, Any] = {"/": fa}
        nodes_b: dict[str, Any] = {"/": fb}
        fa.visititems(lambda name, obj: nodes_a.__setitem__("/" + name, obj))
        fb.visititems(lambda name, obj: nodes_b.__setitem__("/" + name, obj))
        for path in sorted(set(nodes_a) ^ set(nodes_b)):
            diffs.append(f"{path}: only in {'the first' if path in nodes_a else 'the second'}")
        for path in sorted(set(nodes_a) & set(nodes_b)):
            na, nb = nodes_a[path], nodes_b[path]
            if type(na) is not type(nb):
                diffs.append(f"{path}: a {type(na).__name__} vs a {type(nb).__name__}")
                continue
            if isinstance(na, h5py.Dataset):
                n_datasets += 1
                if na.dtype != nb.dtype or na.shape != nb.shape:
                    diffs.append(
                        f"{path}: {na.dtype}{na.shape} vs {nb.dtype}{nb.shape}"  # dtype/shape
                    )
                elif na.shape is not None and not _same_value(
                    _dataset_value(na), _dataset_value(nb)
                ):
                    diffs.append(f"{path}: data differs")
            skip = ignore.get(path, set())
            keys_a = set(na.attrs) - skip
            keys_b = set(nb.attrs) - skip
            for key in sorted(keys_a ^ keys_b):
                diffs.append(f"{path} @{key}: attribute only in one file")
            for key in sorted(keys_a & keys_b):
                n_attrs += 1
                if not _same_value(na.attrs[key], nb.attrs[key]):
                    diffs.append(f"{path} @{key}: {na.attrs[key]!r} vs {nb.attrs[key]!r}")
    return n_datasets, n_attrs, diffs


# -- running the example ------------------------------------------------------------------------


def child_env(mirror: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    # Set unconditionally, as a job spec does; empty means "none" (the reference run).
    env["SWEEP_SNAPSHOT_DIR"] = mirror or ""
    env["SWEEP_RESUME_FROM"] = mirror or ""
    return env


def example_args(out: Path, opts: argparse.Namespace, delay: float = 0.0) -> list[str]:
    return [
        sys.executable,
        str(EXAMPLE),
        "--out",
        str(out),
        "--sizes",
        *[str(s) for s in opts.sizes],
        "--temps",
        str(opts.temps),
        "--progress-every",
        "1",
        "--item-delay",
        str(delay),
    ]


def show(tag: str, line: str) -> None:
    print(f"    {tag} | {line.rstrip()}", flush=True)


def run_to_end(tag: str, out: Path, mirror: str | None, opts: argparse.Namespace) -> int:
    proc = subprocess.Popen(
        example_args(out, opts),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(mirror),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if not line.startswith("  ") or "items this launch" not in line:  # skip the ticks
            show(tag, line)
    return proc.wait()


def run_and_preempt(
    tag: str, out: Path, mirror: str, after: int, opts: argparse.Namespace
) -> tuple[int, int]:
    """Start the example; SIGTERM it once `after` items are done. (exit code, items seen)"""
    proc = subprocess.Popen(
        example_args(out, opts, opts.item_delay),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(mirror),
    )
    assert proc.stdout is not None
    seen = 0
    sent = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if not ready:
            continue
        line = proc.stdout.readline()
        if not line:
            break
        if "items this launch" in line:
            seen += 1
            if seen % 5 == 0 or seen == after:
                show(tag, line)
        else:
            show(tag, line)
        if seen == after and not sent:
            print(f"    >>> sending SIGTERM to pid {proc.pid} (as a preemption would)", flush=True)
            proc.send_signal(signal.SIGTERM)
            sent = True
    else:
        proc.kill()
    return proc.wait(), seen


# -- mirrors ------------------------------------------------------------------------------------


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port), with fake credentials in os.environ."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        sys.exit("--moto needs moto[server]: pip install 'moto[server]'")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield endpoint
    finally:
        server.stop()


def ensure_bucket(bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem()
    if not fs.exists(bucket):
        fs.mkdir(bucket)


def mirror_status(mirror: str) -> str:
    from resumable.view import open_view

    st = open_view(mirror).status()
    return f"{st.done}/{st.total} items done, {st.launches} launch(es)"


# -- the demo -----------------------------------------------------------------------------------


def demo(opts: argparse.Namespace, work: Path, mirror: str) -> int:
    n_items = len(opts.sizes) * opts.temps
    print(f"work directory: {work}")
    print(f"mirror (SWEEP_SNAPSHOT_DIR = SWEEP_RESUME_FROM): {mirror}")
    print(f"sweep: {n_items} items (sizes {opts.sizes}, {opts.temps} temperatures each)\n")

    print("== 1. reference: one uninterrupted run, no mirror")
    ref = work / "reference" / "ising.h5"
    rc = run_to_end("reference", ref, None, opts)
    print(f"    exit code {rc}\n")
    if rc != 0:
        print("FAILED: the reference run did not finish")
        return 1

    print(f"== 2. launch 1 on machine A; SIGTERM after {opts.signal_after} items")
    out_a = work / "machine-a" / "ising.h5"
    rc, seen = run_and_preempt("machine A", out_a, mirror, opts.signal_after, opts)
    verdict = (
        "= PREEMPTED_EXIT_CODE: preempted, please requeue"
        if rc == PREEMPTED_EXIT_CODE
        else "UNEXPECTED"
    )
    print(f"    exit code {rc} {verdict}")
    print(f"    mirror now holds: {mirror_status(mirror)}")
    print(f"    machine A is gone (its local checkpoint {out_a.parent} is not used again)\n")
    if rc != PREEMPTED_EXIT_CODE or seen >= n_items:
        print(f"FAILED: expected exit {PREEMPTED_EXIT_CODE} partway through the sweep")
        return 1

    print("== 3. launch 2 on machine B: an empty local directory, the same environment")
    out_b = work / "machine-b" / "ising.h5"
    assert not out_b.parent.exists()
    rc = run_to_end("machine B", out_b, mirror, opts)
    print(f"    exit code {rc}")
    print(f"    mirror now holds: {mirror_status(mirror)}\n")
    if rc != 0:
        print("FAILED: the resumed run did not finish")
        return 1

    print(f"== 4. compare {out_b.relative_to(work)} with {ref.relative_to(work)} (h5py)")
    n_ds, n_attrs, diffs = compare_h5(ref, out_b, VOLATILE_ATTRS)
    print(
        f"    {n_ds} datasets compared bitwise (dtype, shape, bytes), {n_attrs} attributes "
        "compared (the root's `created` timestamp excepted)"
    )
    for d in diffs[:20]:
        print(f"    DIFFERENT: {d}")
    if diffs:
        print(f"\nFAILED: {len(diffs)} difference(s)")
        return 1
    print("\nIDENTICAL: the preempted-and-resumed sweep produced exactly the uninterrupted output")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--moto", action="store_true", help="start moto's S3 server on 127.0.0.1")
    where.add_argument("--s3", action="store_true", help="mirror to S3 even without an endpoint")
    ap.add_argument("--bucket", default="resumable-demo", help="bucket for the S3 mirror")
    ap.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 12])
    ap.add_argument("--temps", type=int, default=20)
    ap.add_argument(
        "--item-delay",
        type=float,
        default=0.05,
        help="seconds of sleep per item in launch 1 (so the SIGTERM lands partway)",
    )
    ap.add_argument("--signal-after", type=int, default=15, help="items before the SIGTERM")
    opts = ap.parse_args(argv)

    work = opts.workdir or Path(tempfile.mkdtemp(prefix="resumable-demo-"))
    if opts.workdir and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        if opts.moto:
            with moto_server() as endpoint:
                print(f"moto S3 server at {endpoint}")
                ensure_bucket(opts.bucket)
                return demo(opts, work, f"s3://{opts.bucket}/sweeps/ising")
        if opts.s3 or os.environ.get("AWS_ENDPOINT_URL"):
            ensure_bucket(opts.bucket)
            prefix = f"preemption-demo/{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            return demo(opts, work, f"s3://{opts.bucket}/{prefix}/ising")
        return demo(opts, work, str(work / "mirror"))
    finally:
        if opts.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
