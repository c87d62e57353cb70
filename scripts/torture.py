#!/usr/bin/env python3
"""Torture at scale: the example sweep killed over and over, locally and through an S3 mirror.

Runs `resumable.chaos` rounds on scripts/run_example_sweep.py until the kill budget is spent,
across five scenarios (the budget is split between them):

- local:        one machine, its local checkpoint survives every kill;
- s3-mirror:    one machine, mirroring to S3 (moto on 127.0.0.1) as well;
- fresh-machine: every launch on a new empty local dir (`{machine}`), resuming from S3 only,
                 as a preempted spot instance would;
- threads:      one machine, four threads computing and recording through the one sweep
                 (the example's --threads 4) while it is killed;
- group:        one machine, `sweep.run` computing in-process and committing results in
                groups, one fdatasync per group (the example's --run).

Kills are mixed SIGTERM and SIGKILL at uniform random moments after each launch's first new
record. After every launch the checkpoint is read: a record seen before and missing now is lost,
a key completed twice is doubled. At the end of each round the checkpoint must verify and the
results must be bit-identical to an uninterrupted run. Prints the figures; exits 1 on any loss.

    python scripts/torture.py --kills 1000          # the full proof (~20-30 min on 2 cores)
    python scripts/torture.py --kills 50            # the short version CI runs
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resumable.chaos import ChaosConfig, ChaosReport, run_chaos  # noqa: E402
from resumable.view import open_view  # noqa: E402

EXAMPLE = ROOT / "scripts" / "run_example_sweep.py"
SWEEP_ARGS = ["--sizes", "8", "12", "--temps", "60", "--quiet"]


def start_s3() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="torture")
    return server, endpoint


def results_of(location: str) -> dict[str, object]:
    return {key: value for key, _, value in open_view(location).results()}


def identical(a: dict[str, object], b: dict[str, object]) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict) and isinstance(y, dict):
            if not identical(x, y):  # type: ignore[arg-type]
                return False
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (
                isinstance(x, np.ndarray)
                and isinstance(y, np.ndarray)
                and x.dtype == y.dtype
                and x.shape == y.shape
                and x.tobytes() == y.tobytes()
            ):
                return False
        elif type(x) is not type(y) or (x != y and not (x != x and y != y)):
            return False
    return True


def reference(tmp: Path) -> dict[str, object]:
    out = tmp / "reference" / "ising.h5"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEP_")}
    subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(out), *SWEEP_ARGS],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return results_of(str(out))


def round_config(scenario: str, tmp: Path, n: int, kills: int, seed: int, log) -> ChaosConfig:
    """One chaos round of `scenario`: where the sweep writes, what it mirrors, what is read."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEP_")}
    base = [sys.executable, str(EXAMPLE), *SWEEP_ARGS, "--out"]
    common = {"kills": kills, "seed": seed, "env": env, "output": log, "timeout_s": 120}
    if scenario == "local":
        ckpt = str(tmp / f"local-{n}" / "ising.h5")
        return ChaosConfig(command=[*base, ckpt], checkpoint=ckpt, max_s=0.6, **common)
    if scenario == "threads":
        ckpt = str(tmp / f"threads-{n}" / "ising.h5")
        command = [*base, ckpt, "--threads", "4"]
        return ChaosConfig(command=command, checkpoint=ckpt, max_s=0.6, **common)
    if scenario == "group":
        ckpt = str(tmp / f"group-{n}" / "ising.h5")
        return ChaosConfig(command=[*base, ckpt, "--run"], checkpoint=ckpt, max_s=0.6, **common)
    url = f"s3://torture/{scenario}-{n}"
    env.update(SWEEP_SNAPSHOT_DIR=url, SWEEP_RESUME_FROM=url)
    if scenario == "s3-mirror":
        ckpt = str(tmp / f"mirror-{n}" / "ising.h5")
        return ChaosConfig(command=[*base, ckpt], checkpoint=ckpt, max_s=0.6, **common)
    return ChaosConfig(  # fresh-machine: every launch on an empty dir, the mirror carries over
        command=[*base, "{machine}/ising.h5"],
        checkpoint=url,
        min_s=0.2,
        max_s=1.5,
        machine_root=str(tmp / "machines"),
        **common,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=1000, help="total kill budget")
    ap.add_argument("--per-round", type=int, default=40, help="kill budget of one chaos round")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", default=None, help="keep the work dir here")
    args = ap.parse_args()
    server, endpoint = start_s3()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="resumable-torture-"))
    tmp.mkdir(parents=True, exist_ok=True)
    log = open(tmp / "commands.log", "a")  # noqa: SIM115 - closed at the end
    t0 = time.monotonic()
    ref = reference(tmp)
    scenarios = ["local", "s3-mirror", "fresh-machine", "threads", "group"]
    k = len(scenarios)
    share = {s: args.kills // k + (1 if i < args.kills % k else 0) for i, s in enumerate(scenarios)}
    totals = {
        s: {
            "rounds": 0,
            "launches": 0,
            "kills": {"TERM": 0, "KILL": 0},
            "exit_codes": {},
            "records": 0,
            "lost": 0,
            "doubled": 0,
            "unexpected": 0,
            "time_lost_s": 0.0,
            "verified": True,
            "identical": True,
            "failures": [],
        }
        for s in scenarios
    }
    counter = itertools.count(1)
    lock = threading.Lock()

    errors: list[str] = []

    def scenario_rounds(scenario: str) -> None:
        try:
            rounds(scenario)
        except Exception as exc:  # a harness failure must fail the run, not vanish in a thread
            errors.append(f"{scenario}: {exc!r}")
            raise

    def rounds(scenario: str) -> None:
        left = share[scenario]
        while left > 0:
            with lock:
                n = next(counter)
            cfg = round_config(scenario, tmp, n, min(args.per_round, left), args.seed + n, log)
            report: ChaosReport = run_chaos(cfg)
            t = totals[scenario]
            spent = sum(report.kills.values())
            left -= max(spent, 1)
            t["rounds"] += 1
            t["launches"] += len(report.launches)
            for sig, k in report.kills.items():
                t["kills"][sig] += k
            for code, k in report.exit_codes.items():
                t["exit_codes"][code] = t["exit_codes"].get(code, 0) + k
            t["records"] += report.records
            t["lost"] += report.lost
            t["doubled"] += report.doubled
            t["unexpected"] += len(report.unexpected)
            t["time_lost_s"] += report.time_lost_s
            t["verified"] &= report.verified
            same = report.finished and identical(results_of(cfg.checkpoint), ref)
            t["identical"] &= same
            if not report.ok or not same:
                t["failures"].append({"round": n, **report.as_dict(), "identical": same})
            if not args.json:
                print(
                    f"[{time.monotonic() - t0:6.0f}s] {scenario:13} round {n:3}: "
                    f"{len(report.launches):3} launches, kills {report.kills}, "
                    f"lost {report.lost}, doubled {report.doubled}, "
                    f"{'identical' if same else 'DIFFERENT'}, {'OK' if report.ok else 'FAILED'}",
                    flush=True,
                )

    # Scenarios run side by side: the harness mostly waits on its subprocesses.
    threads = [threading.Thread(target=scenario_rounds, args=(s,)) for s in scenarios]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()
    server.stop()  # type: ignore[attr-defined]
    all_kills = sum(sum(t["kills"].values()) for t in totals.values())
    ok = not errors and all(
        t["lost"] == 0
        and t["doubled"] == 0
        and t["unexpected"] == 0
        and t["verified"]
        and t["identical"]
        for t in totals.values()
    )
    summary = {
        "ok": ok,
        "kills": all_kills,
        "wall_s": round(time.monotonic() - t0, 1),
        "scenarios": totals,
        "items_per_sweep": len(ref),
        "errors": errors,
        "s3_endpoint": endpoint,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print()
        for s, t in totals.items():
            print(
                f"{s:13}: {t['rounds']} rounds, {t['launches']} launches, kills "
                f"{t['kills']['TERM']} SIGTERM + {t['kills']['KILL']} SIGKILL, exit codes "
                f"{dict(sorted(t['exit_codes'].items(), key=lambda kv: int(kv[0])))}, "
                f"unexpected {t['unexpected']}, records lost {t['lost']}, doubled "
                f"{t['doubled']}, wall time lost to kills {t['time_lost_s']:.0f} s, verifies "
                f"{'yes' if t['verified'] else 'NO'}, bit-identical to an uninterrupted run "
                f"{'yes' if t['identical'] else 'NO'}"
            )
        print(
            f"\ntotal: {all_kills} kills in {summary['wall_s']} s; acknowledged records lost: "
            f"{sum(t['lost'] for t in totals.values())}, doubled: "
            f"{sum(t['doubled'] for t in totals.values())}; verdict: {'OK' if ok else 'FAILED'}"
        )
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
