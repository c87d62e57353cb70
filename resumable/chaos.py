"""The chaos harness: kill a sweep again and again, and prove nothing acknowledged is lost.

`run_chaos(ChaosConfig(command=[...], checkpoint=...))` launches the user's command, waits for
the launch's first new record, sends SIGTERM or SIGKILL at a random moment after it, waits,
and relaunches, until the command exits 0 on its own or the kill budget is spent (then one last
uninterrupted run). ``{machine}`` in the command becomes a new empty directory per launch, as on
a new spot instance: only the mirror carries the work over. After every launch the checkpoint is
read through `open_view`, the verified reader `verify` and `status` use: a result record (key,
launch, sequence) seen before and missing now is *lost*; a key completed twice without a rerun
being asked for is damage that reader refuses (an `IntegrityError` naming the key, reported as a
problem: the verdict fails). At the end the checkpoint is verified.
`resumable chaos` is the command-line face of the same machinery.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ._checkpoint import PROGRESS_SUFFIX, SEGMENTS_DIR
from ._urls import is_url, redact
from .errors import CheckpointNotFoundError, ConfigurationError, ResumableError
from .preempt import PREEMPTED_EXIT_CODE
from .view import CheckpointView, MergedView, open_view, verify

MACHINE = "{machine}"
SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}


@dataclass
class ChaosConfig:
    """What to run and how to torture it."""

    command: list[str]
    checkpoint: str  # checkpoint_path, progress dir, or mirror root (path or URL)
    kills: int = 10
    signal: str = "mixed"  # "TERM", "KILL" or "mixed"
    min_s: float = 0.0
    max_s: float = 1.0
    seed: int = 0
    timeout_s: float = 300.0
    watch: str | None = None  # local progress to watch for a launch's first record
    machine_root: str | None = None  # where {machine} directories are made
    storage_options: dict[str, Any] | None = None
    env: dict[str, str] | None = None
    output: IO[str] | None = None  # where the command's output goes (default: stderr)

    def __post_init__(self) -> None:
        if not self.command:
            raise ConfigurationError("chaos needs a command to run (after --)")
        if self.signal not in ("TERM", "KILL", "mixed"):
            raise ConfigurationError(f"signal must be TERM, KILL or mixed, found {self.signal!r}")
        if self.kills < 0 or not 0 <= self.min_s <= self.max_s or self.timeout_s <= 0:
            raise ConfigurationError(
                f"need kills >= 0, 0 <= min_s <= max_s and timeout_s > 0; found kills="
                f"{self.kills}, min_s={self.min_s}, max_s={self.max_s}, timeout_s={self.timeout_s}"
            )


@dataclass
class Launch:
    """One launch of the command and what the checkpoint said after it."""

    index: int
    signal: str | None  # sent to it: "TERM", "KILL" or None
    delay_s: float | None  # after its first new record
    exit_code: int  # shell style: 128 + signal when killed by one
    expected: bool
    note: str
    new_records: int
    lost: int
    doubled: int  # kept in the report's format; a key done twice is a reader error (note)
    time_lost_s: float
    wall_s: float


@dataclass
class ChaosReport:
    """Everything the harness saw; `ok` is the verdict."""

    command: list[str]
    checkpoint: str
    launches: list[Launch] = field(default_factory=list)
    records: int = 0
    lost: int = 0
    doubled: int = 0  # kept in the format; doubles are refused by the reader (problems)
    verified: bool = False
    problems: list[str] = field(default_factory=list)
    finished: bool = False

    @property
    def kills(self) -> dict[str, int]:
        out = {"TERM": 0, "KILL": 0}
        for launch in self.launches:
            if launch.signal:
                out[launch.signal] += 1
        return out

    @property
    def exit_codes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for launch in self.launches:
            out[str(launch.exit_code)] = out.get(str(launch.exit_code), 0) + 1
        return out

    @property
    def unexpected(self) -> list[Launch]:
        return [launch for launch in self.launches if not launch.expected]

    @property
    def time_lost_s(self) -> float:
        return sum(launch.time_lost_s for launch in self.launches)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.doubled == 0
            and not self.unexpected
            and self.verified
            and self.finished
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "command": self.command,
            "checkpoint": self.checkpoint,
            "launches": len(self.launches),
            "kills": self.kills,
            "exit_codes": self.exit_codes,
            "unexpected_exits": [asdict(launch) for launch in self.unexpected],
            "records": self.records,
            "records_per_launch": [launch.new_records for launch in self.launches],
            "lost": self.lost,
            "doubled": self.doubled,
            "time_lost_s": round(self.time_lost_s, 3),
            "verified": self.verified,
            "problems": self.problems,
            "finished": self.finished,
            "per_launch": [asdict(launch) for launch in self.launches],
        }

    def text(self) -> str:
        k = self.kills
        lines = [
            f"chaos: {len(self.launches)} launches of {' '.join(self.command)}",
            f"  kills: {k['TERM']} SIGTERM, {k['KILL']} SIGKILL",
            "  exit codes: "
            + ", ".join(f"{c} x{n}" for c, n in sorted(self.exit_codes.items(), key=_code_key)),
            f"  unexpected exits: {len(self.unexpected)}",
            f"  records: {self.records} in the checkpoint; per launch: "
            + " ".join(str(launch.new_records) for launch in self.launches[:40])
            + (" ..." if len(self.launches) > 40 else ""),
            f"  records lost: {self.lost}, doubled: {self.doubled}",
            f"  wall time lost to kills: {self.time_lost_s:.1f} s",
            f"  checkpoint verifies: {'yes' if self.verified else 'NO'}"
            + "".join(f"\n    {p}" for p in self.problems[:20]),
            f"  finished: {'yes' if self.finished else 'NO'}",
        ]
        for launch in self.unexpected[:20]:
            lines.append(f"  ! launch {launch.index}: exit {launch.exit_code}: {launch.note}")
        lines.append(f"verdict: {'OK' if self.ok else 'FAILED'}")
        return "\n".join(lines)


def _code_key(item: tuple[str, int]) -> int:
    return int(item[0])


# -- reading the checkpoint after each launch -----------------------------------------------------


@dataclass(frozen=True)
class Identity:
    key: str
    launch: str
    seq: int


def _views(checkpoint: str, storage_options: dict[str, Any] | None) -> list[CheckpointView]:
    """Every checkpoint (every started shard) behind `checkpoint`, read and verified by
    `open_view`, the reader `verify`, `status` and the views use; [] when there is none yet."""
    try:
        view = open_view(checkpoint, storage_options)
    except CheckpointNotFoundError:
        return []
    if isinstance(view, MergedView):
        return [shard for shard in view.shards if shard is not None]
    return [view]


@dataclass
class Observation:
    identities: set[Identity]
    by_launch: dict[str, list[float]]  # launch id -> times of its result records


def observe(checkpoint: str, storage_options: dict[str, Any] | None = None) -> Observation:
    """The result records now in the checkpoint (all shards), including results a rerun voided.

    A key completed twice without a rerun being asked for is damage the reader refuses: it
    raises `IntegrityError` naming the key, as any other damage, and the launch is a failure.
    """
    identities: set[Identity] = set()
    by_launch: dict[str, list[float]] = {}
    for view in _views(checkpoint, storage_options):
        state = view.loaded.state
        voided = (rec for rec in state.superseded if rec.type == "result")
        for rec in (*state.results.values(), *voided):
            if rec.key is None:
                continue
            launch = str(rec.body().get("launch", ""))
            identities.add(Identity(rec.key, launch, rec.seq))
            by_launch.setdefault(launch, []).append(rec.t)
    return Observation(identities, by_launch)


# -- watching a launch for its first record --------------------------------------------------------


# Segments this machine appends to; parts fetched from a mirror carry a digest suffix, so a
# resume's download is not mistaken for new work.
_LOCAL_SEGMENT = re.compile(r"seg-\d{8}\.jsonl")


class _Watcher:
    """Counts result records appended under a local directory, reading only new bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}
        self.count = 0
        self.poll()

    def poll(self) -> int:
        if not self.root.exists():
            return self.count
        try:  # the command renames and removes directories while we look
            found = self.root.glob(f"**/{SEGMENTS_DIR}/seg-*")
            paths = [p for p in found if _LOCAL_SEGMENT.fullmatch(p.name)]
        except OSError:
            return self.count
        for path in paths:
            try:
                size = path.stat().st_size
            except OSError:
                continue
            start = self._offsets.get(path, 0)
            if size <= start:
                continue
            with open(path, "rb") as fh:
                fh.seek(start)
                chunk = self._partial.pop(path, b"") + fh.read(size - start)
            self._offsets[path] = size
            lines = chunk.split(b"\n")
            self._partial[path] = lines.pop()
            self.count += sum(1 for line in lines if line[65:].split(b" ", 2)[1:2] == [b"result"])
        return self.count


# -- the harness ---------------------------------------------------------------------------------


def _shell_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run_chaos(
    cfg: ChaosConfig, *, on_launch: Callable[[Launch], None] | None = None
) -> ChaosReport:
    """Torture `cfg.command` as described in the module docstring; never raises for findings."""
    rng = random.Random(cfg.seed)
    report = ChaosReport(command=list(cfg.command), checkpoint=redact(cfg.checkpoint))
    seen: set[Identity] = set()
    own_root = cfg.machine_root is None
    machine_root = Path(cfg.machine_root or tempfile.mkdtemp(prefix="resumable-chaos-"))
    uses_machine = any(MACHINE in arg for arg in cfg.command)
    kills_left = cfg.kills
    index = 0
    previous_machine: Path | None = None
    try:
        while True:
            index += 1
            machine = machine_root / f"machine-{index:05d}"
            if uses_machine:
                machine_root.mkdir(parents=True, exist_ok=True)
                machine = Path(tempfile.mkdtemp(prefix=f"machine-{index:05d}-", dir=machine_root))
                if previous_machine is not None:
                    shutil.rmtree(previous_machine, ignore_errors=True)
                previous_machine = machine
            argv = [arg.replace(MACHINE, str(machine)) for arg in cfg.command]
            sig = None
            if kills_left > 0:
                sig = cfg.signal if cfg.signal != "mixed" else rng.choice(["TERM", "KILL"])
            delay = rng.uniform(cfg.min_s, cfg.max_s) if sig else None
            watch_root = _watch_root(cfg, machine if uses_machine else None)
            launch = _launch(cfg, argv, sig, delay, watch_root, index)
            if launch.signal:
                kills_left -= 1
            try:
                obs = observe(cfg.checkpoint, cfg.storage_options)
            except ResumableError as exc:
                launch.expected = False
                launch.note += f"; checkpoint unreadable after the launch: {exc}"
                report.launches.append(launch)
                report.problems.append(str(exc))
                break
            lost = seen - obs.identities
            launch.lost = len(lost)
            new = obs.identities - seen
            launch.new_records = len(new)
            report.lost += len(lost)
            if lost and launch.signal == "TERM" and launch.exit_code == 128 + signal.SIGTERM:
                launch.expected = False
                launch.note += "; killed by SIGTERM (no handler) and records were lost"
            seen |= obs.identities
            report.records = len(obs.identities)
            report.launches.append(launch)
            if on_launch is not None:
                on_launch(launch)
            if launch.exit_code == 0 and launch.signal is None:
                report.finished = True
                break
            if launch.exit_code == 0 and kills_left <= 0:
                report.finished = True
                break
            if not launch.expected and launch.signal is None:
                break  # the uninterrupted run failed: no point going on
            if index > cfg.kills + 50:  # a command that never finishes
                report.problems.append("the command did not finish after the kill budget")
                break
        try:
            report.problems.extend(str(p) for p in verify(cfg.checkpoint, cfg.storage_options))
            report.verified = not report.problems
        except ResumableError as exc:
            report.problems.append(str(exc))
    finally:
        if own_root:
            shutil.rmtree(machine_root, ignore_errors=True)
        elif previous_machine is not None:
            shutil.rmtree(previous_machine, ignore_errors=True)
    return report


def _watch_root(cfg: ChaosConfig, machine: Path | None) -> Path | None:
    if machine is not None:
        return machine
    if cfg.watch:
        return Path(cfg.watch)
    if not is_url(cfg.checkpoint):
        path = Path(cfg.checkpoint)
        return path if path.name.endswith(PROGRESS_SUFFIX) else Path(str(path) + PROGRESS_SUFFIX)
    return None


def _launch(
    cfg: ChaosConfig,
    argv: list[str],
    sig: str | None,
    delay: float | None,
    watch_root: Path | None,
    index: int,
) -> Launch:
    env = {**os.environ, **(cfg.env or {})}
    watcher = _Watcher(watch_root) if watch_root is not None else None
    remote_baseline = None
    if watcher is None and sig:
        remote_baseline = len(observe(cfg.checkpoint, cfg.storage_options).identities)
    out = cfg.output or sys.stderr
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
    )
    note = ""
    killed_at: float | None = None
    sent: str | None = None
    try:
        if sig:
            first = _wait_first_record(proc, watcher, cfg, remote_baseline, t0)
            if first is not None and proc.poll() is None:
                end = first + (delay or 0.0)
                while proc.poll() is None and time.monotonic() < end:
                    time.sleep(0.005)
                if proc.poll() is None:
                    if sig == "KILL":
                        os.killpg(proc.pid, signal.SIGKILL)
                    else:
                        os.kill(proc.pid, signal.SIGTERM)
                    killed_at = time.time()
                    sent = sig
        remaining = cfg.timeout_s - (time.monotonic() - t0)
        try:
            proc.wait(timeout=max(0.1, remaining))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            note = f"timed out after {cfg.timeout_s:.0f} s and was killed"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _reap_group(proc.pid)
    code = _shell_code(proc.returncode)
    expected, why = _expected(sent, code)
    if note:
        expected, why = False, note
    return Launch(
        index=index,
        signal=sent,
        delay_s=delay if sent else None,
        exit_code=code,
        expected=expected,
        note=why,
        new_records=0,
        lost=0,
        doubled=0,
        time_lost_s=0.0 if killed_at is None else _time_lost(cfg, killed_at, t0),
        wall_s=time.monotonic() - t0,
    )


def _wait_first_record(
    proc: subprocess.Popen[Any],
    watcher: _Watcher | None,
    cfg: ChaosConfig,
    remote_baseline: int | None,
    t0: float,
) -> float | None:
    """Monotonic time of the launch's first new record (None if it exits or times out first)."""
    baseline = watcher.count if watcher is not None else remote_baseline or 0
    while proc.poll() is None and time.monotonic() - t0 < cfg.timeout_s:
        if watcher is not None:
            if watcher.poll() > baseline:
                return time.monotonic()
            time.sleep(0.01)
        else:
            try:
                if len(observe(cfg.checkpoint, cfg.storage_options).identities) > baseline:
                    return time.monotonic()
            except ResumableError:
                pass
            time.sleep(0.25)
    return None


def _time_lost(cfg: ChaosConfig, killed_at: float, t0: float) -> float:
    """Wall time from the launch's last record to its kill (work that has to be redone)."""
    try:
        obs = observe(cfg.checkpoint, cfg.storage_options)
    except ResumableError:
        return 0.0
    started = killed_at - (time.monotonic() - t0)
    last = max((t for ts in obs.by_launch.values() for t in ts if t >= started), default=None)
    return max(0.0, killed_at - (last if last is not None else started))


def _expected(sent: str | None, code: int) -> tuple[bool, str]:
    if sent == "KILL":
        return code in (128 + signal.SIGKILL, 0), "killed by SIGKILL"
    if sent == "TERM":
        if code == PREEMPTED_EXIT_CODE:
            return True, "preempted: stopped at a safe point"
        if code == 0:
            return True, "had finished its work before the signal took effect"
        if code == 128 + signal.SIGTERM:
            return True, "SIGTERM outside the handler (before it was installed or after removal)"
        return False, f"unexpected exit {code} after SIGTERM"
    return code == 0, "ran to the end" if code == 0 else f"uninterrupted run exited {code}"


def _reap_group(pgid: int) -> None:
    """Children of the command left running after it exited are killed with their group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":  # python -m resumable.chaos: the command line's chaos command
    from .cli import main

    sys.exit(main(["chaos", *sys.argv[1:]]))
