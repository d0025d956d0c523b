#!/usr/bin/env bash
# Runs Keyway's whole test suite: unit, property and integration tests against real
# redis-servers (installed first when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo test --locked --all-targets "$@"
scripts/check-helm.sh
