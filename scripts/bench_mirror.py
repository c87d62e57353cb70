#!/usr/bin/env python3
"""Benchmark: the mirror against a real S3 server on loopback (moto), through s3fs.

Prints, for sweeps of 1k and 10k items recorded as fast as possible:
- requests and bytes sent to S3 per recorded item (they must not grow with N);
then the mirror lag (records not yet mirrored, age of the last upload) while recording at a
steady 1,000 items/s, and the time to resume a 100k-item sweep from s3:// on a fresh local dir.

Run: python scripts/bench_mirror.py [--sizes 1000 10000] [--resume-items 100000]
It starts moto's ThreadedMotoServer on 127.0.0.1 itself unless AWS_ENDPOINT_URL is set.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resumable import MirrorOptions, ResumableSweep


def start_s3() -> object | None:
    if os.environ.get("AWS_ENDPOINT_URL"):
        return None
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return server


def make_bucket(name: str) -> str:
    import boto3

    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return f"s3://{name}"


def items(n: int) -> list[dict]:
    return [{"i": i, "x": i * 0.5} for i in range(n)]


def key(c: dict) -> str:
    return str(c["i"])


def bench_per_item(n: int, root: Path, bucket: str) -> dict[str, float]:
    url = f"{bucket}/per-item-{n}"
    t0 = time.perf_counter()
    with ResumableSweep(
        items(n), key=key, checkpoint_path=root / f"pi-{n}" / "exp.h5", snapshot_dir=url
    ) as sweep:
        for item in sweep.pending:
            sweep.record(item, {"y": item["x"] * 2.0})
        sweep.flush()
        m = sweep.status().mirror
    elapsed = time.perf_counter() - t0
    assert m is not None and m["lag_records"] == 0
    return {
        "requests": m["requests"] / n,
        "bytes": m["bytes_sent"] / n,
        "uploads": m["uploads"],
        "rate": n / elapsed,
    }


def bench_lag(root: Path, bucket: str, rate: float = 1000.0, seconds: float = 8.0) -> dict:
    n = int(rate * seconds)
    lags: list[int] = []
    ages: list[float] = []
    with ResumableSweep(
        items(n), key=key, checkpoint_path=root / "lag" / "exp.h5", snapshot_dir=f"{bucket}/lag"
    ) as sweep:
        start = time.perf_counter()
        next_sample = start + 0.1
        for done, item in enumerate(sweep.pending):
            target = start + done / rate
            while time.perf_counter() < target:
                time.sleep(min(0.0005, max(0.0, target - time.perf_counter())))
            sweep.record(item, {"y": item["x"]})
            now = time.perf_counter()
            if now >= next_sample and now - start > 1.0:  # after warm-up
                m = sweep.status().mirror
                lags.append(m["lag_records"])
                if m["last_upload_age_s"] is not None:
                    ages.append(m["last_upload_age_s"])
                next_sample = now + 0.1
        achieved = n / (time.perf_counter() - start)
    return {
        "achieved": achieved,
        "lag_median": statistics.median(lags),
        "lag_max": max(lags),
        "age_median": statistics.median(ages),
        "age_max": max(ages),
    }


def bench_resume(n: int, root: Path, bucket: str) -> dict[str, float]:
    url = f"{bucket}/resume-{n}"
    with ResumableSweep(
        items(n),
        key=key,
        checkpoint_path=root / "r-src" / "exp.h5",
        snapshot_dir=url,
        mirror_options=MirrorOptions(interval_s=1.0),
    ) as sweep:
        for item in sweep.pending:
            sweep.record(item, {"y": item["x"] * 2.0})
    times = []
    for attempt in range(3):
        t0 = time.perf_counter()
        with ResumableSweep(
            items(n), key=key, checkpoint_path=root / f"r-new-{attempt}" / "exp.h5", resume_from=url
        ) as sweep:
            assert sweep.resumed_from == "remote" and sweep.status().done == n
        times.append(time.perf_counter() - t0)
    return {"resume": statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--resume-items", type=int, default=100_000)
    ap.add_argument("--skip-lag", action="store_true")
    args = ap.parse_args()
    server = start_s3()
    bucket = make_bucket(f"bench-{int(time.time())}")
    print(f"S3 endpoint {os.environ['AWS_ENDPOINT_URL']} (moto), bucket {bucket}\n")
    with tempfile.TemporaryDirectory(prefix="bench-mirror-") as tmp:
        root = Path(tmp)
        hdr = f"{'items':>8} | {'req/item':>9} | {'bytes/item':>10} | {'manifests':>9} | rate"
        print(hdr)
        for n in args.sizes:
            r = bench_per_item(n, root, bucket)
            print(
                f"{n:>8} | {r['requests']:>9.3f} | {r['bytes']:>10.1f} | {r['uploads']:>9} | "
                f"{r['rate']:>7.0f}/s",
                flush=True,
            )
        if not args.skip_lag:
            lag = bench_lag(root, bucket)
            print(
                f"\nmirror lag at {lag['achieved']:.0f} items/s: median {lag['lag_median']:.0f} "
                f"records (max {lag['lag_max']}), last upload age median "
                f"{lag['age_median']:.2f} s (max {lag['age_max']:.2f} s)",
                flush=True,
            )
        if args.resume_items:
            r = bench_resume(args.resume_items, root, bucket)
            print(
                f"\nresume {args.resume_items} items from s3:// on a fresh local dir: "
                f"{r['resume']:.2f} s (median of 3)"
            )
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
