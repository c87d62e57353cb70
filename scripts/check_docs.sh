#!/usr/bin/env bash
# Build the documentation site with `mkdocs build --strict` (run by scripts/test.sh, so by CI):
# every warning fails, so a broken link or anchor, a page missing from the nav, a snippet file
# that moved or a `::: resumable.X` reference that no longer resolves stops the build.
# Installs the `docs` extra into .venv first (scripts/setup_env.sh). Output goes to a temporary
# directory; `mkdocs serve` previews the site locally.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$("$root/scripts/setup_env.sh" docs)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cd "$root"
NO_MKDOCS_2_WARNING=1 "$py" -m mkdocs build --strict --quiet --site-dir "$out/site"
echo "docs: mkdocs build --strict passed ($(find "$out/site" -name index.html | wc -l) pages)"
