"""The deployment recipes under jobs/: valid for their platform, wired to the library, and working.

Three levels, for each of the Kubernetes Indexed Job, the SLURM array script and the SkyPilot
managed job:

- syntax: the Kubernetes manifests against the official API schema (`kubernetes-validate
  --strict`, offline, for every Kubernetes version from 1.31, where podFailurePolicy is GA);
  the sbatch script with `bash -n` and a parser of its #SBATCH directives; the SkyPilot task
  against the fields of SkyPilot's own task schema;
- wiring: the exit codes, grace periods and environment variables in each spec agree with the
  library's constants (`PREEMPTION_EXIT_CODES`, `DEFAULT_GRACE_S`, `ENV_RESUME_FROM`, ...);
- behaviour: each spec's own command and environment, run locally against a small version of
  the example sweep (S3 on a local moto server, job-array variables substituted, a fresh local
  directory per launch as on a new machine), is interrupted once with the spec's signal, exits
  75, is relaunched as its platform would, finishes, and leaves results equal to an
  uninterrupted run.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from resumable.export import read_h5
from resumable.preempt import (
    DEFAULT_GRACE_S,
    GRACE_ENV,
    PREEMPTED_EXIT_CODE,
    PREEMPTION_EXIT_CODES,
    resolve_grace_s,
)
from resumable.shards import ENV_COUNT, ENV_INDEX, shard_of
from resumable.sweep import ENV_RESUME_FROM, ENV_SNAPSHOT_DIR
from resumable.view import open_view

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs"
K8S_JOB = JOBS / "kubernetes" / "indexed-job.yaml"
K8S_SECRET = JOBS / "kubernetes" / "s3-secret.yaml"
SBATCH = JOBS / "slurm" / "sweep-array.sbatch"
SKY = JOBS / "skypilot" / "sweep.yaml"
EXAMPLE = ROOT / "scripts" / "run_example_sweep.py"
DEMO = ROOT / "scripts" / "preemption_demo.py"

PLACEHOLDER_ROOT = "s3://my-sweeps-bucket"  # the bucket the specs name, replaced by moto's
EXIT_NEEDS_ATTENTION = 78  # run_example_sweep.py: a relaunch cannot fix it
SWEEP_ARGS = ["--sizes", "8", "--temps", "24", "--sweeps", "150"]  # 24 small items
SLOW_ARGS = ["--progress-every", "1", "--item-delay", "0.15"]  # slow enough to interrupt
K8S_VERSIONS = ["1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0"]


# -- helpers ------------------------------------------------------------------------------------


def load_k8s_job() -> dict[str, Any]:
    return yaml.safe_load(K8S_JOB.read_text())


def k8s_container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def k8s_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def k8s_policy_action(job: dict[str, Any], exit_code: int, conditions: tuple[str, ...] = ()) -> str:
    """What the Job's podFailurePolicy does with a failed pod (Kubernetes' rule order)."""
    spec = job["spec"]
    container = k8s_container(job)["name"]
    for rule in spec["podFailurePolicy"]["rules"]:
        if "onPodConditions" in rule:
            if any(c["type"] in conditions for c in rule["onPodConditions"]):
                return rule["action"]
            continue
        on = rule["onExitCodes"]
        if on.get("containerName", container) != container:
            continue
        inside = exit_code in on["values"]
        if (on["operator"] == "In") == inside:
            return rule["action"]
    return "Count"  # the default for failures no rule matches


def sbatch_text() -> str:
    return SBATCH.read_text()


def sbatch_directives(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, option, value) of every #SBATCH line, in order."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^#SBATCH\s+(--[a-z-]+)(?:[=\s]\s*(\S+))?\s*$", line)
        if line.startswith("#SBATCH"):
            assert m, f"line {n}: cannot parse {line!r}"
            out.append((n, m.group(1), m.group(2)))
    return out


def sbatch_option(text: str, name: str) -> str | None:
    values = [v for _, opt, v in sbatch_directives(text) if opt == name]
    assert len(values) == 1, f"{name} given {len(values)} times"
    return values[0]


def sbatch_exports(text: str) -> dict[str, str]:
    """Variables assigned at the top level of the script (column 0), after expansion.

    `${VAR:-default}` reads as its default: the value when the environment does not set VAR.
    """
    assigned: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^(?:export\s+)?([A-Z_][A-Z0-9_]*)=(.*)$", line)
        if m:
            (value,) = shlex.split(m.group(2), comments=True) or [""]
            value = re.sub(r"\$\{[A-Z_][A-Z0-9_]*:-([^}]*)\}", r"\1", value)
            for var, known in assigned.items():
                value = value.replace(f"${{{var}}}", known).replace(f"${var}", known)
            assigned[m.group(1)] = value
    return assigned


def parse_signal(value: str) -> tuple[str, signal.Signals, int]:
    """--signal=[{R|B}:]SIG[@seconds] -> (flags, signal, seconds)."""
    m = re.fullmatch(r"(?:([RB]{1,2}):)?([A-Za-z0-9]+)(?:@(\d+))?", value)
    assert m, f"--signal={value!r} is not [{{R|B}}:]<sig>[@<seconds>]"
    flags, sig, when = m.group(1) or "", m.group(2), m.group(3)
    signum = (
        signal.Signals(int(sig))
        if sig.isdigit()
        else signal.Signals[sig.upper() if sig.upper().startswith("SIG") else "SIG" + sig.upper()]
    )
    seconds = int(when) if when is not None else 60  # SLURM's default
    assert 0 <= seconds <= 65535
    return flags, signum, seconds


def load_sky() -> dict[str, Any]:
    return yaml.safe_load(SKY.read_text())


def with_bucket(value: str, bucket: str) -> str:
    """A spec's value with its placeholder bucket replaced by the test's."""
    return value.replace(PLACEHOLDER_ROOT, bucket)


def append_to_python_line(script: str, extra: list[str]) -> str:
    """Append arguments to the (only) line of a shell script that runs the example."""
    lines = script.splitlines()
    hits = [i for i, line in enumerate(lines) if "scripts/run_example_sweep.py" in line]
    assert len(hits) == 1, script
    i = hits[0]
    lines[i] = lines[i].rstrip() + " " + shlex.join(extra)
    return "\n".join(lines) + "\n"


def python_shim(tmp: Path) -> Path:
    """A bin directory whose `python` is this interpreter (exec'd: the pid stays python's)."""
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "python"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    shim.chmod(0o755)
    return bindir


def base_env(bindir: Path, home: Path) -> dict[str, str]:
    """A minimal environment, as a fresh machine has (no SWEEP_* leaking in from ours)."""
    return {
        "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }


def aws_env() -> dict[str, str]:
    """The S3 settings the s3_bucket fixture put in our environment (moto on 127.0.0.1)."""
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    return {k: os.environ[k] for k in names}


class Launch:
    """A process started from a spec's command; output collected, waited on with timeouts."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pred: Callable[[list[str]], bool], timeout: float = 30.0) -> None:
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        while not pred(self.lines):
            left = end - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            line = self.proc.stdout.readline() if ready else ""
            if not line:
                self.proc.kill()
                self.finish()
                raise AssertionError(
                    f"condition not met; rc={self.proc.returncode}:\n{self.output}"
                )
            self.lines.append(line)

    def wait_items(self, n: int) -> None:
        self.wait_for(lambda lines: sum("items this launch" in x for x in lines) >= n)

    def finish(self, timeout: float = 60.0) -> int:
        assert self.proc.stdout is not None
        try:
            rest, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, _ = self.proc.communicate()
        self.lines.append(rest or "")
        return self.proc.returncode


def items_done_this_launch(output: str) -> int:
    m = re.search(r"done: \d+/\d+ items \((\d+) this launch", output)
    assert m, output
    return int(m.group(1))


def assert_same_results(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same keys; every field equal, arrays bitwise (dtype, shape, bytes)."""
    assert sorted(got) == sorted(want)
    for key, res in want.items():
        other = got[key]
        assert sorted(other) == sorted(res), key
        for field, value in res.items():
            if isinstance(value, np.ndarray):
                o = other[field]
                assert isinstance(o, np.ndarray), (key, field)
                assert (o.dtype, o.shape) == (value.dtype, value.shape), (key, field)
                assert o.tobytes() == value.tobytes(), (key, field)
            else:
                assert type(other[field]) is type(value) and other[field] == value, (key, field)


def mirror_results(root: str) -> dict[str, Any]:
    return {key: result for key, _params, result in open_view(root).results()}


def example_keys() -> list[str]:
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import run_example_sweep as ex
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    args = ex.parse_args(SWEEP_ARGS)
    return [it["label"] for it in ex.make_items(args.sizes, args.temps, args.sweeps)]


def busiest_shard(count: int) -> int:
    """The shard of the small sweep with the most items (the one worth interrupting)."""
    sizes = [0] * count
    for key in example_keys():
        sizes[shard_of(key, count)] += 1
    assert max(sizes) >= 4, sizes
    return sizes.index(max(sizes))


def load_demo() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("preemption_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """Results and HDF5 output of one uninterrupted, unsharded, mirrorless run."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "ising.h5"
    env = base_env(python_shim(tmp), tmp)
    env.update({ENV_SNAPSHOT_DIR: "", ENV_RESUME_FROM: ""})
    launch = Launch(["python", str(EXAMPLE), "--out", str(out), *SWEEP_ARGS], env, ROOT)
    assert launch.finish() == 0, launch.output
    results = {key: result for key, _p, result in open_view(str(out)).results()}
    assert len(results) == len(example_keys())
    return results, out


# -- Kubernetes: schema -------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate_against_the_api_schema(version: str) -> None:
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "kubernetes-validate"),
            "--strict",
            "--kubernetes-version",
            version,
            str(K8S_JOB),
            str(K8S_SECRET),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "ERROR" not in report and "did not validate" not in report, report
    assert report.count("passed") == 2, report


@pytest.mark.integration
def test_k8s_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    """The validator really is strict: a typo in podFailurePolicy is reported."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(K8S_JOB.read_text().replace("onExitCodes:", "onExitCode:", 1))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "onExitCode" in proc.stdout + proc.stderr


# -- Kubernetes: wiring -------------------------------------------------------------------------


def test_k8s_job_is_indexed_with_one_pod_per_shard() -> None:
    job = load_k8s_job()
    spec = job["spec"]
    env = k8s_env(k8s_container(job))
    assert spec["completionMode"] == "Indexed"
    count = int(env[ENV_COUNT]["value"])
    assert count > 1
    assert spec["completions"] == spec["parallelism"] == count
    assert ENV_INDEX not in env  # Kubernetes sets JOB_COMPLETION_INDEX itself


def test_k8s_pod_failure_policy_ignores_preemption() -> None:
    job = load_k8s_job()
    spec = job["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # required by the policy
    assert spec["backoffLimit"] >= 1
    for code in PREEMPTION_EXIT_CODES:
        assert k8s_policy_action(job, code) == "Ignore", code
    assert PREEMPTED_EXIT_CODE in PREEMPTION_EXIT_CODES
    for code in (1, 2, 75, 78, 137, 143):
        assert k8s_policy_action(job, code, ("DisruptionTarget",)) == "Ignore", code
    assert k8s_policy_action(job, 1) == "Count"  # a crash counts against backoffLimit
    assert k8s_policy_action(job, 2) == "FailJob"  # a bad command line never fixes itself
    assert k8s_policy_action(job, EXIT_NEEDS_ATTENTION) == "FailJob"
    container = k8s_container(job)["name"]
    for rule in spec["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == container
            values = rule["onExitCodes"]["values"]
            assert values == sorted(set(values))  # the API wants them sorted and unique


def test_k8s_grace_period_outlasts_the_library_deadline() -> None:
    job = load_k8s_job()
    pod = job["spec"]["template"]["spec"]
    env = k8s_env(k8s_container(job))
    grace = (
        resolve_grace_s(environ={GRACE_ENV: env[GRACE_ENV]["value"]})
        if GRACE_ENV in env
        else DEFAULT_GRACE_S
    )
    assert grace == DEFAULT_GRACE_S  # the recipe documents the library's default
    assert pod["terminationGracePeriodSeconds"] > grace
    assert pod["terminationGracePeriodSeconds"] - grace >= 5  # room for interpreter shutdown


def test_k8s_sweep_env_is_set_unconditionally_to_one_root() -> None:
    job = load_k8s_job()
    env = k8s_env(k8s_container(job))
    snapshot, resume = env[ENV_SNAPSHOT_DIR], env[ENV_RESUME_FROM]
    assert set(snapshot) == set(resume) == {"name", "value"}  # literal values, no valueFrom
    assert snapshot["value"] == resume["value"]
    assert snapshot["value"].startswith(PLACEHOLDER_ROOT + "/")
    assert "$(" not in snapshot["value"]  # the same root for every index


def test_k8s_command_execs_python() -> None:
    container = k8s_container(load_k8s_job())
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    lines = [x.strip() for x in script.splitlines() if x.strip() and not x.strip().startswith("#")]
    assert lines[-1].startswith("exec python scripts/run_example_sweep.py ")
    out = shlex.split(lines[-1])[shlex.split(lines[-1]).index("--out") + 1]
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(out.startswith(m.rstrip("/") + "/") for m in mounts)  # a writable local volume


def test_k8s_credentials_come_from_the_secret() -> None:
    container = k8s_container(load_k8s_job())
    secret = yaml.safe_load(K8S_SECRET.read_text())
    assert secret["kind"] == "Secret"
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= set(refs)
    for name, ref in refs.items():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] == name
        if not ref.get("optional", False):
            assert ref["key"] in secret["stringData"], name
    assert refs["AWS_ENDPOINT_URL"]["optional"] is True  # AWS S3 itself needs no endpoint


# -- SLURM: syntax and wiring -------------------------------------------------------------------

SBATCH_OPTIONS: dict[str, Callable[[str | None], bool]] = {
    "--job-name": lambda v: bool(v) and re.fullmatch(r"[\w.%-]+", v) is not None,
    "--array": lambda v: (
        v is not None
        and re.fullmatch(r"\d+(-\d+(:\d+)?)?(,\d+(-\d+(:\d+)?)?)*(%\d+)?", v) is not None
    ),
    "--ntasks": lambda v: v is not None and v.isdigit() and int(v) >= 1,
    "--cpus-per-task": lambda v: v is not None and v.isdigit() and int(v) >= 1,
    "--mem": lambda v: v is not None and re.fullmatch(r"\d+[KMGT]?", v) is not None,
    "--time": lambda v: (
        v is not None and re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}|\d+", v) is not None
    ),
    "--signal": lambda v: v is not None and parse_signal(v) is not None,
    "--requeue": lambda v: v is None,
    "--open-mode": lambda v: v in ("append", "truncate"),
    "--output": lambda v: bool(v),
}


@pytest.mark.integration
def test_sbatch_is_valid_bash() -> None:
    proc = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sbatch_text().startswith("#!/bin/bash\n")


@pytest.mark.integration
def test_sbatch_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run([shellcheck, str(SBATCH)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.integration
def test_embedded_shell_scripts_are_valid() -> None:
    """The Kubernetes container script (sh) and SkyPilot's setup and run (bash)."""
    (k8s_script,) = k8s_container(load_k8s_job())["args"]
    task = load_sky()
    for shell, script in (("sh", k8s_script), ("bash", task["setup"]), ("bash", task["run"])):
        proc = subprocess.run([shell, "-n", "-c", script], capture_output=True, text=True)
        assert proc.returncode == 0, (shell, script, proc.stderr)


def test_sbatch_directives_are_known_options_with_valid_values() -> None:
    text = sbatch_text()
    directives = sbatch_directives(text)
    assert directives
    for n, opt, value in directives:
        assert opt in SBATCH_OPTIONS, f"line {n}: unknown option {opt}"
        assert SBATCH_OPTIONS[opt](value), f"line {n}: bad value {opt}={value!r}"
    # sbatch stops reading #SBATCH lines at the first command: all must come before it
    first_command = next(
        n
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert all(n < first_command for n, _, _ in directives)
    assert {"--array", "--requeue", "--signal", "--open-mode"} <= {o for _, o, _ in directives}
    assert sbatch_option(text, "--open-mode") == "append"


def test_sbatch_signal_is_one_the_sweep_catches_early_enough() -> None:
    text = sbatch_text()
    flags, signum, lead = parse_signal(sbatch_option(text, "--signal") or "")
    # Not "B:": the signal must reach the python step, and the batch shell must survive to
    # requeue. ResumableSweep catches SIGTERM by default (`signals=`).
    assert "B" not in flags
    assert signum == signal.SIGTERM
    exported = sbatch_exports(text)
    grace = resolve_grace_s(environ={GRACE_ENV: exported.get(GRACE_ENV, "")})
    assert grace <= DEFAULT_GRACE_S
    assert lead > grace  # the sweep is done (exit 75) before the time limit
    assert re.search(r'^srun\b[^\n]*\\\n\s*"\$PYTHON" scripts/run_example_sweep\.py', text, re.M)


def test_sbatch_sweep_env_is_set_unconditionally_to_one_root() -> None:
    text = sbatch_text()
    exported = sbatch_exports(text)
    assert exported[ENV_SNAPSHOT_DIR] == exported[ENV_RESUME_FROM]
    assert exported[ENV_SNAPSHOT_DIR].startswith(PLACEHOLDER_ROOT + "/")
    assert "SLURM_ARRAY" not in exported[ENV_SNAPSHOT_DIR]
    for var in (ENV_SNAPSHOT_DIR, ENV_RESUME_FROM):
        assert re.search(rf"^export {var}=", text, re.M), var  # column 0: not inside a branch
    assert ENV_COUNT not in exported  # the count comes from SLURM_ARRAY_TASK_COUNT


def test_sbatch_requeues_on_exactly_the_preemption_codes() -> None:
    text = sbatch_text()
    arms = re.findall(r"^\s*([0-9|]+)\)\s*$", text, re.M)
    codes = {int(c) for arm in arms for c in arm.split("|")}
    assert codes - {0} == set(PREEMPTION_EXIT_CODES)
    assert 'scontrol requeue "$self"' in text


@pytest.mark.integration
@pytest.mark.parametrize(
    ("job_id", "array", "want"),
    [
        # the first task of an array to start: its job id IS the array's, and requeueing that
        # id requeues (kills) every running sibling
        ("7000", ("7000", "0"), "7000_0"),
        ("7003", ("7000", "3"), "7000_3"),
        ("7100", None, "7100"),  # not an array: the job itself
    ],
)
def test_sbatch_requeues_only_its_own_task(
    tmp_path: Path, job_id: str, array: tuple[str, str] | None, want: str
) -> None:
    """The spec, run with a stand-in python that is preempted at once (exit 75)."""
    _bindir, state = _fake_slurm(tmp_path)
    fake_python = tmp_path / "preempted-python"
    fake_python.write_text(f"#!/bin/sh\nexit {PREEMPTED_EXIT_CODE}\n")
    fake_python.chmod(0o755)
    env = base_env(tmp_path / "bin", tmp_path)
    env.update(
        SLURM_JOB_ID=job_id,
        SLURM_RESTART_COUNT="0",
        SLURM_SUBMIT_DIR=str(ROOT),
        PYTHON=str(fake_python),
        SWEEP_ROOT=str(tmp_path / "mirror"),
        TMPDIR=str(tmp_path),
    )
    if array is not None:
        env.update(SLURM_ARRAY_JOB_ID=array[0], SLURM_ARRAY_TASK_ID=array[1])
    proc = subprocess.run(
        ["bash", str(SBATCH)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == PREEMPTED_EXIT_CODE, proc.stdout + proc.stderr
    assert (state / "scontrol.log").read_text().splitlines() == [f"requeue {want}"]


# -- SkyPilot: schema and wiring ----------------------------------------------------------------

# Transcribed from SkyPilot's own task schema (skypilot-org/skypilot, sky/utils/schemas.py:
# get_task_schema and the resources schema's job_recovery; the strategies from
# docs/source/reference/yaml-spec.rst). Only the parts these recipes use are spelled out; the
# top-level and resources key sets are SkyPilot's, so a misspelt field fails here.
_EXIT_CODE = {"type": "integer", "minimum": 0, "maximum": 255}
# valid resources fields these recipes do not use
SKY_OTHER_RESOURCE_KEYS = (  # noqa: SIM905
    "cloud region zone infra accelerators instance_type disk_size disk_tier network_tier "
    "local_disk max_hourly_cost ports labels accelerator_args image_id autostop priority "
    "priority_class volumes any_of ordered ephemeral_storage _no_missing_accel_warnings"
).split()
SKY_RESOURCES_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **{k: {} for k in SKY_OTHER_RESOURCE_KEYS},
        "cpus": {"anyOf": [{"type": "string"}, {"type": "number"}]},
        "memory": {"anyOf": [{"type": "string"}, {"type": "number"}]},
        "use_spot": {"type": "boolean"},
        "job_recovery": {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "strategy": {
                            "anyOf": [
                                {"type": "string", "enum": ["FAILOVER", "EAGER_NEXT_REGION"]},
                                {"type": "null"},
                            ]
                        },
                        "max_restarts_on_errors": {"type": "integer", "minimum": 0},
                        "recover_on_exit_codes": {
                            "anyOf": [
                                _EXIT_CODE,
                                {"type": "array", "items": _EXIT_CODE, "uniqueItems": True},
                            ]
                        },
                    },
                },
            ]
        },
    },
}
SKY_TASK_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "workdir": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        "event_callback": {"type": "string"},
        "num_nodes": {"type": "integer"},
        "resources": SKY_RESOURCES_SCHEMA,
        "file_mounts": {"type": "object"},
        "service": {"type": "object"},
        "pool": {"type": "object"},
        "setup": {"type": "string"},
        "run": {"type": "string"},
        "envs": {
            "type": "object",
            "patternProperties": {"^[a-zA-Z_][a-zA-Z0-9_]*$": {"type": ["string", "null"]}},
            "additionalProperties": False,
        },
        "secrets": {"anyOf": [{"type": "object"}, {"type": "array"}]},
        "managed_secrets": {"type": "array"},
        "inputs": {"type": "object"},
        "outputs": {"type": "object"},
        "file_mounts_mapping": {"type": "object"},
        "config": {"type": "object"},
        "volumes": {"type": "object"},
        "volume_mounts": {"type": "array"},
        "api_server_access": {"type": "boolean"},
        "_metadata": {"type": "object"},
    },
}


def test_skypilot_task_matches_skypilot_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    task = load_sky()
    jsonschema.validate(task, SKY_TASK_SCHEMA)
    # the schema's own check catches a typo, as SkyPilot's would
    typo = {**task, "resources": {**task["resources"], "use_spots": True}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, SKY_TASK_SCHEMA)


def test_skypilot_recovers_on_preemption_codes_on_spot() -> None:
    res = load_sky()["resources"]
    assert res["use_spot"] is True
    recovery = res["job_recovery"]
    assert set(recovery["recover_on_exit_codes"]) == set(PREEMPTION_EXIT_CODES)
    assert PREEMPTED_EXIT_CODE in recovery["recover_on_exit_codes"]
    assert recovery["strategy"] in ("FAILOVER", "EAGER_NEXT_REGION")
    assert isinstance(recovery["max_restarts_on_errors"], int)


def test_skypilot_env_and_command() -> None:
    task = load_sky()
    envs = task["envs"]
    assert envs[ENV_SNAPSHOT_DIR] == envs[ENV_RESUME_FROM]
    assert envs[ENV_SNAPSHOT_DIR].startswith(PLACEHOLDER_ROOT + "/")
    assert all(isinstance(v, str) for v in envs.values())
    assert resolve_grace_s(environ=envs) <= DEFAULT_GRACE_S  # GCP spot allows 30 s
    assert envs.get(ENV_INDEX, "") == envs.get(ENV_COUNT, "") == ""  # unsharded by default
    lines = [x.strip() for x in task["run"].splitlines() if x.strip()]
    assert lines[-1].startswith("exec python scripts/run_example_sweep.py ")


# -- the example itself -------------------------------------------------------------------------


def test_example_shards_from_the_environment(tmp_path: Path, reference: Any) -> None:
    """Two shards from SWEEP_SHARD_INDEX/COUNT: disjoint halves, together the whole sweep."""
    want, _ = reference
    env = base_env(python_shim(tmp_path), tmp_path)
    env.update({ENV_SNAPSHOT_DIR: str(tmp_path / "mirror"), ENV_RESUME_FROM: "", ENV_COUNT: "2"})
    outs = {index: tmp_path / f"pod{index}" / "ising.h5" for index in (0, 1)}
    launches = {
        index: Launch(
            ["python", str(EXAMPLE), "--out", str(out), *SWEEP_ARGS],
            {**env, ENV_INDEX: str(index)},
            ROOT,
        )
        for index, out in outs.items()
    }
    for index, launch in launches.items():
        assert launch.finish() == 0, launch.output
        assert f"shard {index} of 2" in launch.output
    assert_same_results(mirror_results(str(tmp_path / "mirror")), want)


# -- running the specs --------------------------------------------------------------------------


@pytest.mark.integration
def test_k8s_spec_preempted_pod_is_replaced_and_the_sweep_completes(
    s3_bucket: str, tmp_path: Path, reference: Any
) -> None:
    """Every index of the Indexed Job, run as the manifest says; one pod SIGTERMed partway."""
    want, _ = reference
    job = load_k8s_job()
    container = k8s_container(job)
    count = job["spec"]["completions"]
    (spec_script,) = container["args"]
    secret = aws_env()  # the Secret's contents: credentials and endpoint of the moto server
    spec_env: dict[str, str] = {}
    for e in container["env"]:
        if "value" in e:
            spec_env[e["name"]] = with_bucket(e["value"], s3_bucket)
        elif e["name"] in secret:
            spec_env[e["name"]] = secret[e["name"]]
    root = spec_env[ENV_SNAPSHOT_DIR]
    bindir = python_shim(tmp_path)
    pods = iter(range(100))

    def pod(index: int, slow: bool = False) -> tuple[Launch, Path]:
        """A new pod: a fresh emptyDir at each mountPath, JOB_COMPLETION_INDEX from the Job.
        Returns the launch and where the pod's --out file lands."""
        n = next(pods)
        body = append_to_python_line(spec_script, SWEEP_ARGS + (SLOW_ARGS if slow else []))
        for mount in container["volumeMounts"]:
            local = tmp_path / f"pod{n}" / mount["name"]
            local.mkdir(parents=True)
            body = body.replace(mount["mountPath"], str(local))
        env = {**base_env(bindir, tmp_path / f"pod{n}"), **spec_env}
        env["JOB_COMPLETION_INDEX"] = str(index)
        words = shlex.split(body.strip().splitlines()[-1])
        out = Path(words[words.index("--out") + 1])
        return Launch([*container["command"], body], env, ROOT), out  # workingDir: the repo

    victim = busiest_shard(count)
    # parallelism == completions: every index starts at once; one of them gets preempted
    first = {i: pod(i, slow=(i == victim))[0] for i in range(count)}
    first[victim].wait_items(2)
    first[victim].proc.send_signal(signal.SIGTERM)  # the kubelet's SIGTERM
    for index, launch in first.items():
        rc = launch.finish()
        if index != victim:
            assert rc == 0, launch.output
    rc = first[victim].proc.returncode
    assert rc == PREEMPTED_EXIT_CODE, first[victim].output
    assert k8s_policy_action(job, rc) == "Ignore"  # not counted against backoffLimit

    replacement, out = pod(victim)  # the Job controller's new pod for the same index
    assert replacement.finish() == 0, replacement.output
    assert "already done" in replacement.output
    assert "resumed from: remote" in replacement.output
    assert items_done_this_launch(replacement.output) > 0

    assert_same_results(mirror_results(root), want)  # all shards, merged from the bucket
    _info, rows = read_h5(out)  # the replacement pod's HDF5 output: its shard, complete
    assert_same_results(
        {key: result for key, _params, result in rows},
        {k: v for k, v in want.items() if shard_of(k, count) == victim},
    )

    # A relaunch with another shard count is refused with the "needs a human" code: FailJob.
    spec_env[ENV_COUNT] = str(count - 1)
    refused, _ = pod(0)
    rc = refused.finish()
    assert rc == EXIT_NEEDS_ATTENTION, refused.output
    assert f"started with {count} shard(s); this launch asks for {count - 1}" in refused.output
    assert k8s_policy_action(job, rc) == "FailJob"


def _fake_slurm(tmp: Path) -> tuple[Path, Path]:
    """srun that execs its command (writing the step's pid), scontrol that logs its calls."""
    bindir = python_shim(tmp)
    state = tmp / "slurm-state"
    state.mkdir()
    (bindir / "srun").write_text(
        "#!/bin/bash\n"
        "while [[ $# -gt 0 && $1 == -* ]]; do shift; done\n"
        f"echo $$ > {shlex.quote(str(state))}/step.pid\n"
        'exec "$@"\n'
    )
    (bindir / "scontrol").write_text(
        f'#!/bin/bash\necho "$*" >> {shlex.quote(str(state))}/scontrol.log\n'
    )
    for name in ("srun", "scontrol"):
        (bindir / name).chmod(0o755)
    return bindir, state


def _slurm_array(text: str) -> tuple[int, int]:
    """(min, max) task IDs of a contiguous --array range."""
    value = sbatch_option(text, "--array") or ""
    m = re.fullmatch(r"(\d+)-(\d+)(%\d+)?", value)
    assert m, value
    return int(m.group(1)), int(m.group(2))


def _sbatch_launch(
    tmp: Path, bucket: str, task: int, restarts: int, tag: str, slow: bool = False
) -> tuple[Launch, Path]:
    text = sbatch_text()
    lo, hi = _slurm_array(text)
    script = tmp / "job.sbatch"
    extra = SWEEP_ARGS + (SLOW_ARGS if slow else [])
    script.write_text(append_to_python_line(with_bucket(text, bucket), extra))
    bindir = tmp / "bin"
    state = tmp / "slurm-state"
    node_tmp = tmp / tag / "tmp"  # node-local scratch of the node this launch lands on
    node_tmp.mkdir(parents=True)
    env = {**base_env(bindir, tmp / tag), **aws_env()}  # S3 settings from the user's env
    env.update(
        SLURM_JOB_ID=str(5000 + task),
        SLURM_ARRAY_JOB_ID="5000",
        SLURM_ARRAY_TASK_ID=str(task),
        SLURM_ARRAY_TASK_MIN=str(lo),
        SLURM_ARRAY_TASK_MAX=str(hi),
        SLURM_ARRAY_TASK_COUNT=str(hi - lo + 1),
        SLURM_RESTART_COUNT=str(restarts),
        SLURM_SUBMIT_DIR=str(ROOT),
        TMPDIR=str(node_tmp),
    )
    (state / "step.pid").unlink(missing_ok=True)
    return Launch(["bash", str(script)], env, tmp), state


def _step_pid(state: Path) -> int:
    for _ in range(200):
        try:
            return int((state / "step.pid").read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    raise AssertionError("srun never started the step")


@pytest.mark.integration
def test_slurm_spec_time_limit_warning_requeues_and_resumes(
    s3_bucket: str, tmp_path: Path, reference: Any
) -> None:
    want, _ = reference
    text = sbatch_text()
    lo, hi = _slurm_array(text)
    count = hi - lo + 1
    _, signum, _ = parse_signal(sbatch_option(text, "--signal") or "")
    _bindir, state = _fake_slurm(tmp_path)
    index = busiest_shard(count)
    task = lo + index

    first, state = _sbatch_launch(tmp_path, s3_bucket, task, 0, "launch1", slow=True)
    first.wait_items(2)
    os.kill(_step_pid(state), signum)  # --signal without B: goes to the job step only
    assert first.finish() == PREEMPTED_EXIT_CODE, first.output
    assert f"sweep exited with {PREEMPTED_EXIT_CODE}" in first.output
    assert (state / "scontrol.log").read_text().split("\n")[0] == f"requeue 5000_{task}"

    second, state = _sbatch_launch(tmp_path, s3_bucket, task, 1, "launch2")  # the requeued task
    assert second.finish() == 0, second.output
    assert "resumed from: remote" in second.output and "shard done" in second.output
    assert items_done_this_launch(second.output) > 0
    assert (state / "scontrol.log").read_text().count("requeue") == 1  # not requeued again

    got = mirror_results(with_bucket(sbatch_exports(text)[ENV_SNAPSHOT_DIR], s3_bucket))
    assert_same_results(got, {k: v for k, v in want.items() if shard_of(k, count) == index})


@pytest.mark.integration
def test_slurm_spec_leaves_a_cancelled_job_cancelled(s3_bucket: str, tmp_path: Path) -> None:
    """scancel / preemption signal the whole job, batch shell included: no self-requeue."""
    text = sbatch_text()
    lo, _hi = _slurm_array(text)
    _fake_slurm(tmp_path)
    launch, state = _sbatch_launch(tmp_path, s3_bucket, lo, 0, "launch1", slow=True)
    launch.wait_items(1)
    os.kill(_step_pid(state), signal.SIGTERM)
    os.kill(launch.proc.pid, signal.SIGTERM)
    assert launch.finish() == PREEMPTED_EXIT_CODE, launch.output
    assert "leaving the requeue to SLURM" in launch.output
    assert not (state / "scontrol.log").exists()

    # and a task that keeps being preempted stops requeueing itself after MAX_REQUEUES
    m = re.search(r"^MAX_REQUEUES=\$\{MAX_REQUEUES:-(\d+)\}$", text, re.M)
    assert m  # a default the user can override from the environment
    limit = int(m.group(1))
    again, state = _sbatch_launch(tmp_path, s3_bucket, lo, limit, "launch2", slow=True)
    again.wait_items(1)
    os.kill(_step_pid(state), signal.SIGTERM)
    assert again.finish() == PREEMPTED_EXIT_CODE, again.output
    assert "giving up" in again.output
    assert not (state / "scontrol.log").exists()


@pytest.mark.integration
def test_skypilot_spec_recovers_on_a_new_vm(s3_bucket: str, tmp_path: Path, reference: Any) -> None:
    want, ref_h5 = reference
    task = load_sky()
    envs = {k: with_bucket(v, s3_bucket) for k, v in task["envs"].items()}
    codes = set(task["resources"]["job_recovery"]["recover_on_exit_codes"])
    bindir = python_shim(tmp_path)

    def vm(n: int, slow: bool = False) -> tuple[Launch, Path]:
        home = tmp_path / f"vm{n}"  # a new VM: an empty home directory
        home.mkdir()
        script = append_to_python_line(task["run"], SWEEP_ARGS + (SLOW_ARGS if slow else []))
        env = {**base_env(bindir, home), **aws_env(), **envs}  # AWS_*: the VM's identity
        return Launch(["bash", "-c", script], env, ROOT), home  # workdir: the repo

    first, _ = vm(1, slow=True)
    first.wait_items(3)
    first.proc.send_signal(signal.SIGTERM)
    rc = first.finish()
    assert rc == PREEMPTED_EXIT_CODE and rc in codes, first.output

    second, home = vm(2)
    assert second.finish() == 0, second.output
    assert "resumed from: remote" in second.output
    assert_same_results(mirror_results(envs[ENV_SNAPSHOT_DIR]), want)

    # the HDF5 output, rebuilt from the checkpoint on the new VM, equals the reference's
    words = shlex.split(task["run"].strip().splitlines()[-1])
    out = Path(words[words.index("--out") + 1].replace("~", str(home), 1))
    n_ds, _n_attrs, diffs = load_demo().compare_h5(ref_h5, out, {"/": {"created"}})
    assert n_ds > 0 and diffs == []


@pytest.mark.integration
def test_preemption_demo_runs_and_reports_identical_output(s3_bucket: str, tmp_path: Path) -> None:
    """The demo, against S3 (the fixture's moto server, found through AWS_ENDPOINT_URL)."""
    bucket = s3_bucket.removeprefix("s3://")
    proc = subprocess.run(
        [
            sys.executable,
            str(DEMO),
            "--bucket",
            bucket,
            "--workdir",
            str(tmp_path / "demo"),
            "--sizes",
            "8",
            "--temps",
            "6",
            "--signal-after",
            "2",
            "--item-delay",
            "0.2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"exit code {PREEMPTED_EXIT_CODE} = PREEMPTED_EXIT_CODE" in proc.stdout
    assert "IDENTICAL" in proc.stdout
    assert f"mirror (SWEEP_SNAPSHOT_DIR = SWEEP_RESUME_FROM): s3://{bucket}/" in proc.stdout


def test_compare_h5_sees_a_flipped_bit(tmp_path: Path, reference: Any) -> None:
    """The demo's comparison is bitwise: one changed float32 bit is a difference."""
    import h5py

    _, ref_h5 = reference
    copy = tmp_path / "copy.h5"
    shutil.copy(ref_h5, copy)
    compare_h5 = load_demo().compare_h5
    assert compare_h5(ref_h5, copy, {"/": {"created"}})[2] == []
    with h5py.File(copy, "r+") as f:
        name = next(iter(f["items"]))
        trace = f["items"][name]["result"]["trace"]
        data = trace[()]
        data.view(np.uint32)[0] ^= 1
        trace[...] = data
    diffs = compare_h5(ref_h5, copy, {"/": {"created"}})[2]
    assert diffs == [f"/items/{name}/result/trace: data differs"]
