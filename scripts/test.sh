#!/usr/bin/env bash
# Runs Keyway's whole test suite: unit, property and integration tests against real
# redis-servers (installed first when missing), after `cargo fmt --check` and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
# House rules first: formatting and lints (Cargo.toml [lints], clippy.toml).
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets "$@"
scripts/check-helm.sh
