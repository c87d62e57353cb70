"""Remote reads under the fetch deadline vs a baseline tree, side by side, in one run.

Starts moto's S3 server and an http.server on 127.0.0.1, then times Store.read_bytes of small
objects, Store.exists, and streaming a large object through Store.open_read, for this tree and
for --baseline (another checkout of resumable, e.g. /work/main before the deadline), each in
its own process, interleaved. Figures are medians; compare the ratios (the machine is shared).

    python scripts/bench_fetch.py --baseline /path/to/other/checkout [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(s3_bucket: str, http_base: str, big_mb: int) -> dict[str, float]:
    from resumable._storage import Store

    out: dict[str, float] = {}
    for label, url in (("s3", s3_bucket), ("http", http_base)):
        store = Store(url)
        times = []
        for i in range(100):
            t = time.perf_counter()
            store.read_bytes(f"small/{i % 20}.json", max_bytes=1 << 20)
            times.append(time.perf_counter() - t)
        out[f"{label} read_bytes 1 KiB (ms)"] = 1000 * statistics.median(times)
        times = []
        for i in range(50):
            t = time.perf_counter()
            store.exists(f"small/{i % 20}.json")
            times.append(time.perf_counter() - t)
        out[f"{label} exists (ms)"] = 1000 * statistics.median(times)
        t = time.perf_counter()
        n = 0
        with store.open_read("big.bin") as f:
            while chunk := f.read(1 << 20):
                n += len(chunk)
        assert n == big_mb << 20
        out[f"{label} open_read {big_mb} MiB (MiB/s)"] = big_mb / (time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", required=False)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-mb", type=int, default=64)
    ap.add_argument("--child", nargs=2, metavar=("S3", "HTTP"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.big_mb)))
        return 0
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.servers import HTTPServer, S3Server

    s3 = S3Server()
    env = dict(os.environ, AWS_ENDPOINT_URL=s3.endpoint, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    os.environ.update(env)
    from resumable._storage import Store

    bucket = f"s3://{s3.new_bucket()}"
    with tempfile.TemporaryDirectory() as tmp:
        www = Path(tmp)
        http = HTTPServer(www)
        big = os.urandom(args.big_mb << 20)
        (www / "small").mkdir()
        for i in range(20):
            Store(bucket).write_bytes(f"small/{i}.json", b"x" * 1024)
            (www / "small" / f"{i}.json").write_bytes(b"x" * 1024)
        Store(bucket).write_bytes("big.bin", big)
        (www / "big.bin").write_bytes(big)
        trees = {"this tree": str(ROOT)}
        if args.baseline:
            trees["baseline"] = str(Path(args.baseline).resolve())
        results: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                child_env = dict(env, PYTHONPATH=tree)
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", bucket, http.base_url,
                     "--big-mb", str(args.big_mb)],
                    env=child_env, capture_output=True, text=True, check=True, cwd=tree,
                )  # fmt: skip
                results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        http.stop()
    s3.stop()
    keys = list(results["this tree"][0])
    print(f"{'figure (median of rounds)':40}" + "".join(f"{n:>14}" for n in trees) + "     ratio")
    for k in keys:
        vals = [statistics.median(r[k] for r in results[n]) for n in trees]
        ratio = f"{vals[0] / vals[1]:9.2f}" if len(vals) == 2 and vals[1] else ""
        print(f"{k:40}" + "".join(f"{v:14.2f}" for v in vals) + ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
