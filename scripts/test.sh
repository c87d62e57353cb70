#!/usr/bin/env bash
# One command: set up a venv with the test and arrays (torch CPU, JAX) extras, lint, build the
# docs and the package, and run the whole test suite (it starts its own S3, GCS, Azure and HTTP
# servers on 127.0.0.1).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$("$root/scripts/setup_env.sh" test,arrays)
bash "$root/scripts/install_emulators.sh"  # Azurite (npm) into .ci-tools/; tests must not skip it
export RESUMABLE_REQUIRE_EMULATORS=${RESUMABLE_REQUIRE_EMULATORS:-1}
cd "$root"
bash "$root/scripts/install_slurm.sh"  # a one-node SLURM for tests/integration/test_slurm*.py
"$py" -c 'import sys, torch; sys.exit(f"torch {torch.__version__} is a CUDA build: install the CPU one" if torch.version.cuda else 0)'
"$root/.venv/bin/ruff" check .
"$root/.venv/bin/ruff" format --check .
"$root/.venv/bin/mypy" --config-file "$root/pyproject.toml"  # strict, over resumable/
bash "$root/scripts/check_docs.sh"           # mkdocs build --strict (installs the docs extra)
bash "$root/scripts/check_package.sh" "$py"  # python -m build, twine check, the sdist's contents
"$py" -m pytest -q "$@"
