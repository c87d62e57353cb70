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
# A registry download can stall without ever failing (seen here: npm still waiting after 21
# minutes), so each attempt is bounded and a stalled one is tried again from scratch.
for attempt in 1 2 3; do
  if timeout 300 npm install --prefix "$tools" --no-audit --no-fund --loglevel=error \
    --fetch-timeout=60000 --fetch-retries=3 "azurite@$azurite_version" >&2; then
    break
  fi
  if [ "$attempt" = 3 ]; then
    echo "install_emulators: npm install azurite@$azurite_version failed 3 times" >&2
    exit 1
  fi
  echo "install_emulators: npm install failed or stalled (attempt $attempt); retrying" >&2
  rm -rf "$tools/node_modules" "$tools/package.json" "$tools/package-lock.json"
done
echo "$azurite_version" >"$tools/.azurite-version"
