#!/usr/bin/env bash
# Create .venv (if missing) and install resumable with the given extras, e.g. `test`.
# Usage: source-free; prints the venv's python path on its last line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
extras=${1:-}
py=${PYTHON:-python3}
if [ ! -x "$root/.venv/bin/python" ]; then
  "$py" -m venv "$root/.venv" >&2
  "$root/.venv/bin/python" -m pip install -q --upgrade pip >&2
fi
spec="$root"
[ -n "$extras" ] && spec="${root}[${extras}]"
"$root/.venv/bin/python" -m pip install -q -e "$spec" >&2
echo "$root/.venv/bin/python"
