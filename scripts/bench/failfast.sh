#!/usr/bin/env bash
# Successful writes per second while one of three servers hangs (SIGSTOP), per write mode: the
# figure of docs/failover.md ("Failing fast").
#
# Three redis-servers; for each cell a fresh Keyway with health checks every 100 ms, fall = 2
# (probe timeout 250 ms, request timeout 1 s: the defaults), and scripts/bench/write_loop.py:
# 8 clients doing SET one at a time, 3 s with every server running, 6 s with server b stopped,
# then SIGCONT and 3 s more. Prints ok/s, errors/s and the slowest reply per phase.
#
#   scripts/bench/failfast.sh                 # all (replicas = 2), quorum (3), primary (2), two_phase (2)
#   scripts/bench/failfast.sh all:2 quorum:3  # cells of your choice: mode:replicas
#
# Environment: BENCH_KEYWAY_BIN=path (else cargo build --release), FAILFAST_ARGS (more
# write_loop.py options, e.g. "--during 10 --clients 16").
# Needs: redis-server, redis-cli, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh

die() { echo "failfast: $*" >&2; exit 1; }
require_tools redis-server redis-cli python3
if [[ $# -gt 0 ]]; then cells=("$@"); else cells=(all:2 quorum:3 primary:2 two_phase:2); fi
keyway=$(keyway_binary) || die "cargo build --release failed"
scratch_dir failfast

read -r -a ports <<<"$(free_ports 5)"
start_redis_servers "${ports[0]}" "${ports[1]}" "${ports[2]}"
b_pid=${pids[1]}
for p in "${ports[@]:0:3}"; do wait_for_ping "$p" 10 || die "redis-server on $p did not start"; done
echo "# failfast: $keyway, server b stopped"

for cell in "${cells[@]}"; do
  mode=${cell%%:*} replicas=${cell##*:}
  for p in "${ports[@]:0:3}"; do redis-cli -p "$p" flushall >/dev/null; done
  {
    printf 'listen = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n[pool]\n' "${ports[3]}" "${ports[4]}"
    printf 'replicas = %s\nwrite = "%s"\n' "$replicas" "$mode"
    pool_servers_toml "${ports[0]}" "${ports[1]}" "${ports[2]}"
    printf '\n[pool.health]\ninterval = "100ms"\nfall = 2\n'
  } >"$dir/keyway.toml"
  RUST_LOG=error "$keyway" serve --config "$dir/keyway.toml" >"$dir/keyway-$mode.log" 2>&1 &
  kpid=$!
  pids+=("$kpid")
  wait_for_ping "${ports[3]}" 10 || die "keyway did not start: $(tail -5 "$dir/keyway-$mode.log")"
  echo "## write = $mode, replicas = $replicas"
  # shellcheck disable=SC2086
  python3 scripts/bench/write_loop.py --port "${ports[3]}" --stop-pid "$b_pid" ${FAILFAST_ARGS:-}
  kill "$kpid"
  wait "$kpid" 2>/dev/null || true
  # Let b's health come back in the next Keyway's eyes: it starts up anyway.
done
