#!/usr/bin/env bash
# One command: set up a venv, then run the example Ising sweep on local storage, crash it
# (SIGKILL) partway, and relaunch it to show that it resumes where it stopped.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$("$root/scripts/setup_env.sh")
out=${EXAMPLE_OUT:-$root/out/example}
rm -rf "$out"
echo "== launch 1: will be killed with SIGKILL after 40 items"
"$py" "$root/scripts/run_example_sweep.py" --out "$out/ising.h5" --crash-after 40 || echo "(launch 1 exited with $?: killed)"
echo "== launch 2: resumes from the checkpoint"
"$py" "$root/scripts/run_example_sweep.py" --out "$out/ising.h5"
