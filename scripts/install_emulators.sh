#!/usr/bin/env bash
# Install the object-store emulators the tests use, idempotently, into .ci-tools/ (gitignored):
#   - Azurite (npm), Azure Blob Storage's emulator: .ci-tools/node_modules/.bin/azurite-blob
# The GCS emulator (gcp-storage-emulator) is a Python package in the `test` extra.
# Tests that need an emulator skip (saying why) when it is missing; CI runs this first, and
# RESUMABLE_REQUIRE_EMULATORS=1 (set by scripts/test.sh) turns those skips into failures.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.ci-tools"
azurite_version="3.37.0"
bin="$tools/node_modules/.bin/azurite-blob"
if [ -x "$bin" ] && [ "$(cat "$tools/.azurite-version" 2>/dev/null)" = "$azurite_version" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "install_emulators: npm not found; install Node.js (apt-get install nodejs npm)" >&2
  exit 1
fi
mkdir -p "$tools"
npm install --prefix "$tools" --no-audit --no-fund --loglevel=error "azurite@$azurite_version" >&2
echo "$azurite_version" >"$tools/.azurite-version"
