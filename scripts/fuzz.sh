#!/usr/bin/env bash
# Runs Keyway's fuzz targets (fuzz/, docs/fuzzing.md) one after the other, each as one libFuzzer
# process for SECONDS seconds (default 600), logging to fuzz/logs/TARGET.log and printing each
# run's closing figures. Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Not part of scripts/test.sh: the bounded versions run with `cargo test` (tests/fuzz_props.rs).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(request_decoder inline reply_decoder config acl_rules)
fi
mkdir -p logs
status=0
for t in "${targets[@]}"; do
  echo "== $t: ${seconds}s"
  if ! cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    -print_final_stats=1 >"logs/$t.log" 2>&1; then
    echo "$t: stopped early, see fuzz/logs/$t.log and fuzz/artifacts/$t/"
    status=1
  fi
  grep -E '^#[0-9]+.*DONE|^stat::number_of_executed_units' "logs/$t.log" || true
done
exit "$status"
