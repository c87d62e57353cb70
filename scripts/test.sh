#!/usr/bin/env bash
# One command: set up a venv with the test extra, lint, and run the whole test suite
# (it starts its own S3 server and HTTP server on 127.0.0.1).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$("$root/scripts/setup_env.sh" test)
cd "$root"
bash "$root/scripts/install_slurm.sh"  # a one-node SLURM for tests/integration/test_slurm*.py
"$root/.venv/bin/ruff" check .
"$root/.venv/bin/ruff" format --check .
"$py" -m pytest -q "$@"
