#!/usr/bin/env bash
# Keyway's quick start: three local redis-servers (ports 7001-7003, no persistence) and Keyway
# on config/keyway.toml, listening on 127.0.0.1:6380. Ctrl-C stops everything.
#
#   scripts/run-local.sh            # then, in another terminal: redis-cli -p 6380
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh redis
cargo build --release --quiet
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM
for port in 7001 7002 7003; do
  mkdir -p "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$dir/$port" --logfile "$dir/$port/redis.log" &
  pids+=($!)
done
for port in 7001 7002 7003; do
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
echo "redis-servers on 7001 7002 7003; keyway on 127.0.0.1:6380 (try: redis-cli -p 6380)" >&2
target/release/keyway serve --config config/keyway.toml "$@" &
pids+=($!)
wait "${pids[-1]}"
