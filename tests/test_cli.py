"""The `resumable` command line: status, verify, export, retry-failed, errors and exit codes.

Sweeps are made with real ResumableSweeps (local, mirrored to a directory, to moto's S3 server
and served over HTTP); most commands run in-process through `cli.main`, a few end to end as
`python -m resumable` subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resumable import MirrorOptions, ResumableSweep
from resumable._checkpoint import progress_dir_for
from resumable._status_text import span
from resumable.cli import main

OPTS = MirrorOptions(interval_s=0.0, gc_delay_s=60.0, max_backoff_s=0.2, flush_timeout_s=20.0)
ITEMS = [{"i": i, "T": round(0.25 * i, 2)} for i in range(12)]
FAIL_VALUE = {3, 8}
FAIL_RUNTIME = {5}
PROGS = Path(__file__).parent / "integration" / "progs"


def key(c: dict) -> str:
    return f"T{c['T']:.2f}"


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESUMABLE_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("RESUMABLE_RETRY_TOTAL_S", "2")
    monkeypatch.delenv("SWEEP_SNAPSHOT_DIR", raising=False)
    monkeypatch.delenv("SWEEP_RESUME_FROM", raising=False)


def run_sweep(ckpt: Path, *, stop_after: int | None = None, **kw: Any) -> ResumableSweep:
    """Open the sweep, record results (failures for FAIL_* items), close it."""
    kw.setdefault("mirror_options", OPTS)
    with ResumableSweep(ITEMS, key=key, checkpoint_path=ckpt, **kw) as sweep:
        for n, item in enumerate(sweep.pending):
            if stop_after is not None and n >= stop_after:
                break
            if item["i"] in FAIL_VALUE:
                sweep.record_failure(item, ValueError(f"bad input {item['i']}"), duration=0.01)
            elif item["i"] in FAIL_RUNTIME:
                sweep.record_failure(item, RuntimeError("diverged"), duration=0.02)
            else:
                sweep.record(item, {"E": np.float64(item["T"] ** 2), "x": np.arange(3) * item["i"]})
    return sweep


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def python_m(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "resumable", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )


# -- status ---------------------------------------------------------------------------------


def test_status_text_local(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "exp.h5"
    run_sweep(ckpt, stop_after=4)
    time.sleep(0.05)
    run_sweep(ckpt, stop_after=3)
    code, out, err = cli(capsys, "status", str(ckpt))
    assert code == 0, err
    assert out.startswith(f"sweep 'exp' at {progress_dir_for(ckpt)}")
    # 7 items finished: T0..T6 minus failures 3, 5 -> 5 done, 2 failed, 5 pending
    assert "items      12: 5 done (41.7%), 2 failed, 5 pending, 0 stale" in out
    assert "s ago)" in out and "last item  20" in out
    assert "items/s (latest launch); ETA" in out
    assert "launches   2, 1 interrupted before the sweep was complete" in out
    assert "failures   2 in 2 error type(s)" in out
    assert "ValueError    x1     e.g. 'T0.75': bad input 3" in out
    assert "RuntimeError  x1     e.g. 'T1.25': diverged" in out
    assert "verified   yes (every hash checked)" in out
    assert err == ""


def test_status_text_escapes_what_users_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "exp.h5"
    items = ["\x1b[31mred\nkey", "ok"]
    with ResumableSweep(items, key=str, checkpoint_path=ckpt) as sweep:
        sweep.record_failure(items[0], OSError("line one\n\x1b[2Jline two"))
    code, out, _ = cli(capsys, "status", str(ckpt))
    assert code == 0 and "\x1b" not in out
    assert "OSError  x1     e.g. '\\x1b[31mred\\nkey': line one\\n\\x1b[2Jline two" in out
    assert "the latest is still running or stopped with 1 pending" in out


def test_status_json_local_and_file_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "exp.h5"
    run_sweep(ckpt)
    d = cli_json(capsys, "status", str(ckpt))
    assert (d["name"], d["total"], d["done"], d["failed"], d["pending"]) == ("exp", 12, 9, 3, 0)
    assert d["verified"] is True and d["problems"] == []
    assert d["eta_s"] == 0.0 and d["rate_per_s"] > 0
    assert d["last_finished"] <= d["now"] and d["last_finished_ago_s"] >= 0
    assert [(g["error_type"], g["count"]) for g in d["failures"]] == [
        ("ValueError", 2),
        ("RuntimeError", 1),
    ]
    assert d["history"]["launches"] == 1 and d["history"]["interrupted"] == 0
    assert d["history"]["detail"][0]["outcome"] == "completed"
    # the same through a file:// URL and through the progress directory itself
    url = progress_dir_for(ckpt).as_uri()
    d2 = cli_json(capsys, "status", url)
    d3 = cli_json(capsys, "status", str(progress_dir_for(ckpt)))
    for other in (d2, d3):
        assert (other["done"], other["failed"], other["pending"]) == (9, 3, 0)
    assert d2["location"] == url


def test_status_of_a_mirror_dir_and_mirror_lag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt, mirror = tmp_path / "exp.h5", tmp_path / "mirror"
    run_sweep(ckpt, stop_after=5, snapshot_dir=str(mirror))
    d = cli_json(capsys, "status", str(mirror))
    assert (d["done"], d["failed"]) == (4, 1)
    # up to date
    d = cli_json(capsys, "status", str(ckpt), "--mirror", str(mirror))
    m = d["mirror"]
    assert m["state"] == "ok" and m["lag_records"] == 0 and m["same_sweep"] is True
    assert m["local_records"] == m["mirror_records"] > 0
    assert 0 <= m["manifest_age_s"] < 60
    # more records locally, without the mirror: it lags behind; found through the env too
    time.sleep(0.05)
    run_sweep(ckpt, stop_after=3)
    monkeypatch.setenv("SWEEP_SNAPSHOT_DIR", str(mirror))
    code, out, _ = cli(capsys, "status", str(ckpt))
    assert code == 0
    d = cli_json(capsys, "status", str(ckpt))
    m = d["mirror"]
    assert m["lag_records"] == m["local_records"] - m["mirror_records"] >= 4
    assert f"mirror     {mirror}: {m['mirror_records']} of {m['local_records']} records" in out
    assert f"({m['lag_records']} not yet mirrored); manifest updated" in out
    # a URL target is never compared with the env's mirror; --mirror with a URL is a usage error
    d = cli_json(capsys, "status", mirror.as_uri())
    assert d["mirror"] is None
    code, _, err = cli(capsys, "status", mirror.as_uri(), "--mirror", str(mirror))
    assert code == 2 and "--mirror compares a local checkpoint" in err


@pytest.mark.integration
def test_status_verify_export_over_s3(
    tmp_path: Path, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{s3_bucket}/sweeps/exp"
    ckpt = tmp_path / "exp.h5"
    run_sweep(ckpt, snapshot_dir=url, segment_bytes=1500)
    d = cli_json(capsys, "status", url)
    assert (d["name"], d["done"], d["failed"], d["verified"]) == ("exp", 9, 3, True)
    assert d["location"] == url
    assert d["history"]["exact"] is True and d["history"]["detail"][0]["results"] == 9
    assert cli(capsys, "verify", url)[0] == 0
    d = cli_json(capsys, "status", str(ckpt), "--mirror", url)
    assert d["mirror"]["state"] == "ok" and d["mirror"]["lag_records"] == 0
    out = tmp_path / "s3.jsonl"
    assert cli(capsys, "export", url + "/manifest.json", "--jsonl", str(out))[0] == 0
    assert len(out.read_text().splitlines()) == 9
    # nothing there: not found, exit 2
    code, _, err = cli(capsys, "status", f"{s3_bucket}/sweeps/none")
    assert code == 2 and "no checkpoint" in err


@pytest.mark.integration
def test_status_over_http_never_shows_credentials(
    tmp_path: Path, http_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    root, base = http_server
    run_sweep(tmp_path / "exp.h5", snapshot_dir=str(root / "m"), segment_bytes=1500)
    secret_url = base.replace("http://", "http://alice:s3cr3t@") + "/m"
    code, out, err = cli(capsys, "status", secret_url)
    assert code == 0, err
    assert "items      12: 9 done (75.0%), 3 failed, 0 pending" in out
    assert "s3cr3t" not in out + err and "http://***@127.0.0.1" in out
    d = cli_json(capsys, "status", secret_url)
    assert "s3cr3t" not in json.dumps(d) and d["done"] == 9
    code, out, err = cli(capsys, "verify", secret_url)
    assert code == 0 and "intact" in out and "s3cr3t" not in out + err
    code, _, err = cli(capsys, "status", secret_url.replace("/m", "/none"))
    assert code == 2 and "s3cr3t" not in err


def test_status_sharded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, mirror = tmp_path / "exp.h5", tmp_path / "mirror"
    for index in (0, 1):  # shard 2 of 3 never started
        run_sweep(ckpt, shard=(index, 3), snapshot_dir=str(mirror))
    code, out, err = cli(capsys, "status", str(ckpt))
    assert code == 0, err
    assert "shards     3 (2 started)" in out
    assert "shard 0/3" in out and "shard 1/3" in out
    assert "shard 2/3    not started" in out
    d = cli_json(capsys, "status", str(ckpt), "--mirror", str(mirror))
    assert len(d["shards"]) == 3 and [s["started"] for s in d["shards"]] == [True, True, False]
    assert d["done"] == sum(s.get("done", 0) for s in d["shards"])
    assert d["history"]["launches"] == 2
    assert len(d["mirror"]["shards"]) == 2 and d["mirror"]["lag_records"] == 0
    d2 = cli_json(capsys, "status", str(mirror))  # the mirror root of a sharded sweep
    assert (d2["done"], d2["failed"], d2["total"]) == (d["done"], d["failed"], d["total"])


# -- verify ---------------------------------------------------------------------------------


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_intact_and_tampered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, mirror = tmp_path / "exp.h5", tmp_path / "mirror"
    run_sweep(ckpt, snapshot_dir=str(mirror), segment_bytes=1500)
    code, out, _ = cli(capsys, "verify", str(ckpt))
    assert code == 0 and out == f"{ckpt}: intact (every hash checked)\n"
    assert cli_json(capsys, "verify", str(mirror)) == {
        "location": str(mirror),
        "ok": True,
        "problems": [],
    }
    # damage two objects of the mirror: both are reported
    named = {s["name"] for s in json.loads((mirror / "manifest.json").read_bytes())["segments"]}
    parts = sorted(p for p in (mirror / "segments").iterdir() if p.name in named)  # not garbage
    assert len(parts) >= 2
    _flip(parts[0], 100)
    parts[1].write_bytes(parts[1].read_bytes()[:-10])
    code, out, _ = cli(capsys, "verify", str(mirror))
    assert code == 1
    assert out.splitlines()[0] == f"{mirror}: 2 problem(s)"
    assert f"{parts[0].name}: SHA-256 mismatch" in out
    assert f"{parts[1].name}: expected" in out and "found" in out
    code, out, _ = cli(capsys, "verify", str(mirror), "--json")
    d = json.loads(out)
    assert code == 1 and d["ok"] is False and len(d["problems"]) == 2
    # status of a damaged checkpoint: one line, no traceback, exit 1
    code, out, err = cli(capsys, "status", str(mirror))
    assert code == 1 and out == ""
    assert err.startswith("resumable: error: IntegrityError: ") and "Traceback" not in err
    assert "resumable verify" in err and len(err.strip().splitlines()) == 1
    # --debug adds the traceback
    code, _, err = cli(capsys, "status", str(mirror), "--debug")
    assert code == 1 and "Traceback (most recent call last)" in err
    # the local progress: a flipped byte in the journal of the active segment, in a record
    # before its last (damage to the last record reads as a torn tail: see test_journal)
    for _ in range(10):
        active = max((progress_dir_for(ckpt) / "segments").glob("*.jsonl"))
        if active.read_bytes().count(b"\n") >= 2:
            break
        run_sweep(ckpt, segment_bytes=1500)  # one more launch record
    _flip(active, 30)
    code, out, _ = cli(capsys, "verify", str(ckpt))
    assert code == 1 and "1 problem(s)" in out and "SHA-256 mismatch" in out
    # nothing there: exit 2
    code, out, err = cli(capsys, "verify", str(tmp_path / "nothing"))
    assert code == 2 and out == "" and "no checkpoint at" in err


def test_verify_and_status_with_a_mirror_find_deleted_last_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting the last acknowledged records of the active segment looks exactly like a torn
    tail: alone, verify calls the checkpoint intact. Against its mirror it cannot hide."""
    ckpt, mirror = tmp_path / "exp.h5", tmp_path / "mirror"
    with ResumableSweep(
        ITEMS, key=key, checkpoint_path=ckpt, snapshot_dir=str(mirror), mirror_options=OPTS
    ) as sweep:
        for item in ITEMS[:6]:
            sweep.record(item, item["i"])
        sweep.flush()
    code, out, _ = cli(capsys, "verify", str(ckpt), "--mirror", str(mirror))
    assert code == 0 and "nothing missing against the mirror" in out
    active = max((progress_dir_for(ckpt) / "segments").glob("*.jsonl"))
    lines = active.read_bytes().splitlines(keepends=True)
    active.write_bytes(b"".join(lines[:-2]))  # the last two acknowledged results, gone
    gone = [key(ITEMS[4]), key(ITEMS[5])]
    code, out, _ = cli(capsys, "verify", str(ckpt))
    assert code == 0 and "intact" in out  # the documented limit of a checkpoint alone
    code, out, _ = cli(capsys, "verify", str(ckpt), "--mirror", str(mirror))
    assert code == 1 and "1 problem(s)" in out
    assert "lacks" in out and all(repr(k) in out for k in gone), out
    monkeypatch.setenv("SWEEP_SNAPSHOT_DIR", str(mirror))  # a configured mirror is the default
    code, out, _ = cli(capsys, "verify", str(ckpt))
    assert code == 1 and "lacks" in out
    code, out, _ = cli(capsys, "status", str(ckpt))
    assert code == 1 and "verified   NO" in out and "lacks" in out
    d = json.loads(cli(capsys, "status", str(ckpt), "--json")[1])
    assert d["verified"] is False and d["mirror"]["ahead_records"] == 2


def test_a_deleted_manifest_is_damage_not_absence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, mirror = tmp_path / "exp.h5", tmp_path / "mirror"
    run_sweep(ckpt, snapshot_dir=str(mirror), segment_bytes=1500)
    (mirror / "manifest.json").unlink()
    for target in (str(mirror), mirror.as_uri()):
        code, out, _ = cli(capsys, "verify", target)
        assert code == 1 and "1 problem(s)" in out
        assert "manifest.json is missing but" in out and "refusing to start over" in out
        code, out, err = cli(capsys, "status", target)
        assert code == 1 and "IntegrityError" in err and "manifest.json is missing" in err


# -- retry-failed -----------------------------------------------------------------------------


def test_retry_failed_then_a_real_rerun_runs_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "exp.h5"
    run_sweep(ckpt)
    code, out, err = cli(capsys, "retry-failed", str(ckpt), "--dry-run")
    assert code == 0 and out.startswith("would mark 3 failed item(s) of sweep 'exp'")
    assert cli_json(capsys, "status", str(ckpt))["failed"] == 3  # a dry run changes nothing
    code, out, err = cli(capsys, "retry-failed", str(ckpt), "--keys", "T0.75", "nope")
    assert code == 0
    assert out.strip() == (
        "marked 1 failed item(s) of sweep 'exp' for another attempt (ValueError: 1); "
        "the next launch runs them"
    )
    assert "not a failed item, skipped: 'nope'" in err
    code, out, _ = cli(capsys, "retry-failed", str(ckpt), "--error-type", "RuntimeError")
    assert code == 0 and "marked 1 failed item(s)" in out and "(RuntimeError: 1)" in out
    d = cli_json(capsys, "status", str(ckpt))
    assert (d["failed"], d["pending"]) == (1, 2)
    with ResumableSweep(ITEMS, key=key, checkpoint_path=ckpt) as sweep:
        pending = [sweep.key(i) for i in sweep.pending]
        assert pending == ["T0.75", "T1.25"]
        for item in sweep.pending:
            sweep.record(item, "second try")
    d = cli_json(capsys, "status", str(ckpt))
    assert (d["done"], d["failed"], d["pending"], d["verified"]) == (11, 1, 0, True)
    # the remaining one; then nothing is left to mark
    assert "marked 1 failed" in cli(capsys, "retry-failed", str(progress_dir_for(ckpt)))[1]
    assert "marked 0 failed" in cli(capsys, "retry-failed", str(ckpt))[1]


def test_retry_failed_sharded_and_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "exp.h5"
    for index in (0, 1):
        run_sweep(ckpt, shard=(index, 2))
    code, out, _ = cli(capsys, "retry-failed", str(ckpt))
    assert code == 0 and "marked 3 failed item(s)" in out
    assert cli_json(capsys, "status", str(ckpt))["failed"] == 0
    # URLs: refused with a clear message
    code, _, err = cli(capsys, "retry-failed", "s3://bucket/sweeps/exp")
    assert code == 2 and "on the machine that runs the sweep" in err
    code, _, err = cli(capsys, "retry-failed", str(tmp_path / "none.h5"))
    assert code == 2 and "no checkpoint at" in err


@pytest.mark.integration
def test_retry_failed_fails_fast_while_a_sweep_holds_the_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "exp.h5"
    holder = subprocess.Popen(
        [sys.executable, str(PROGS / "sweep_lock_holder.py"), str(ckpt)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().startswith("ready")
        started = time.monotonic()
        code, out, err = cli(capsys, "retry-failed", str(ckpt))
        assert time.monotonic() - started < 5
        assert code == 1 and out == ""
        assert "CheckpointLockedError" in err and "open for writing by another live process" in err
        assert "stop it first" in err and "Traceback" not in err
    finally:
        holder.communicate(input="", timeout=30)
    assert holder.returncode == 0


# -- usage and end to end ---------------------------------------------------------------------


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    capsys.readouterr()
    ckpt = tmp_path / "exp.h5"
    run_sweep(ckpt, stop_after=2)
    code, _, err = cli(capsys, "export", str(ckpt))
    assert code == 2 and "give --h5 OUT.h5 and/or --jsonl OUT.jsonl" in err
    code, _, err = cli(capsys, "export", str(ckpt), "--h5", str(tmp_path / "no" / "x.h5"))
    assert code == 2 and "no such directory" in err
    assert not (tmp_path / "no").exists()


def test_span_formatting() -> None:
    assert [span(x) for x in (0.004, 4.25, 42, 185, 3 * 3600 + 300, 3 * 86400 + 7200)] == [
        "4 ms",
        "4.2 s",
        "42 s",
        "3 min 5 s",
        "3 h 5 min",
        "3 d 2 h",
    ]


@pytest.mark.integration
def test_end_to_end_subprocesses(tmp_path: Path) -> None:
    ckpt = tmp_path / "exp.h5"
    run_sweep(ckpt, segment_bytes=1500)
    res = python_m("status", str(ckpt), "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert (d["done"], d["failed"], d["verified"]) == (9, 3, True)
    res = python_m("export", str(ckpt), "--h5", str(tmp_path / "out.h5"))
    assert res.returncode == 0 and "wrote 9 item(s) of sweep 'exp'" in res.stdout
    sealed = min((progress_dir_for(ckpt) / "segments").glob("*.jsonl"))
    _flip(sealed, 80)
    res = python_m("verify", str(ckpt))
    assert res.returncode == 1 and "1 problem(s)" in res.stdout and sealed.name in res.stdout
    res = python_m("status", str(tmp_path / "missing"))
    assert res.returncode == 2 and res.stdout == ""
    assert (
        res.stderr.startswith("resumable: error: no checkpoint at")
        and "Traceback" not in res.stderr
    )
