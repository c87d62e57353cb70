#!/usr/bin/env bash
# Packaging check (run by scripts/test.sh, so by CI): build the sdist and the wheel, `twine check
# --strict` both, and make sure the sdist carries every tracked file of tests/, scripts/, jobs/
# and docs/ (someone testing from the sdist needs them) and the wheel only the package.
# Usage: scripts/check_package.sh [PYTHON]   (default: .venv/bin/python; needs the test extra)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${1:-$root/.venv/bin/python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cd "$root"
"$py" -m build --outdir "$out" . >"$out/build.log" 2>&1 || { cat "$out/build.log" >&2; exit 1; }
"$py" -m twine check --strict "$out"/*.tar.gz "$out"/*.whl
sdist=$(ls "$out"/*.tar.gz)
"$py" - "$sdist" "$out"/*.whl <<'PY'
import subprocess, sys, tarfile, zipfile
from pathlib import Path

sdist, wheel = sys.argv[1], sys.argv[2]
with tarfile.open(sdist) as tar:
    names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
need = {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "mkdocs.yml", ".ci/run"}
if Path(".git").exists():  # every tracked file the tests, docs and CI read
    tracked = subprocess.run(
        ["git", "ls-files", "tests", "scripts", "jobs", "docs", "resumable"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    need |= set(tracked)
missing = sorted(n for n in need if n not in names)
if missing:
    sys.exit(f"{sdist} lacks {len(missing)} files: {missing[:20]}")
with zipfile.ZipFile(wheel) as whl:
    tops = {n.split("/", 1)[0] for n in whl.namelist()}
stray = sorted(t for t in tops if t != "resumable" and not t.endswith(".dist-info"))
if stray:
    sys.exit(f"{wheel} holds more than the package: {stray}")
print(f"package: {Path(sdist).name} ({len(names)} files), {Path(wheel).name}: twine check passed")
PY
