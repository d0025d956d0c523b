#!/usr/bin/env bash
# How fast a resync copies a restarted replica's keys: the figure of docs/failover.md
# ("Restarted replicas").
#
# Three redis-servers (no persistence), Keyway with replicas = 2, write = all; KEYS keys
# (SET key:i value-i) written through Keyway; server a killed, seen down, started again empty
# on its port; Keyway's "resync completed" log line gives the keys copied and the seconds.
# Run once per rate given (pool.resync_keys_per_second).
#
#   scripts/bench/resync.sh                  # KEYS=200000, rates 1000000 (the cap) and 5000 (default)
#   KEYS=50000 scripts/bench/resync.sh 20000
#
# Environment: BENCH_KEYWAY_BIN=path (else cargo build --release), KEYS.
# Needs: redis-server, redis-cli, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh

die() { echo "resync: $*" >&2; exit 1; }
require_tools redis-server redis-cli python3
if [[ $# -gt 0 ]]; then rates=("$@"); else rates=(1000000 5000); fi
keys=${KEYS:-200000}
keyway=$(keyway_binary) || die "cargo build --release failed"
scratch_dir resync

read -r -a ports <<<"$(free_ports 5)"
start_redis_servers "${ports[0]}" "${ports[1]}" "${ports[2]}"
for p in "${ports[@]:0:3}"; do wait_for_ping "$p" 10 || die "redis-server on $p did not start"; done
echo "# resync: $keyway, $keys keys, replicas = 2, write = all"

for rate in "${rates[@]}"; do
  for p in "${ports[@]:0:3}"; do redis-cli -p "$p" flushall >/dev/null; done
  {
    printf 'listen = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n[pool]\n' "${ports[3]}" "${ports[4]}"
    printf 'replicas = 2\nwrite = "all"\nresync_keys_per_second = %s\n' "$rate"
    pool_servers_toml "${ports[0]}" "${ports[1]}" "${ports[2]}"
    printf '\n[pool.health]\ninterval = "100ms"\nfall = 2\n'
  } >"$dir/keyway.toml"
  log="$dir/keyway-$rate.log"
  RUST_LOG=info "$keyway" --log-format json serve --config "$dir/keyway.toml" >"$log" 2>&1 &
  kpid=$!
  pids+=("$kpid")
  wait_for_ping "${ports[3]}" 10 || die "keyway did not start: $(tail -5 "$log")"
  python3 -c "
import sys
for i in range($keys):
    sys.stdout.write(f'SET key:{i} value-{i}\r\n')
" | redis-cli -p "${ports[3]}" --pipe >/dev/null
  held=$(redis-cli -p "${ports[0]}" dbsize)
  kill -9 "${pids[0]}"
  wait "${pids[0]}" 2>/dev/null || true
  for _ in $(seq 50); do grep -q "server is down" "$log" && break; sleep 0.1; done
  redis-server --port "${ports[0]}" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$dir" --logfile "$dir/redis-0.log" </dev/null >/dev/null 2>&1 &
  pids[0]=$!
  wait_for_ping "${ports[0]}" 10 || die "redis-server a did not restart"
  for _ in $(seq 1200); do grep -q "resync completed" "$log" && break; sleep 0.1; done
  line=$(grep "resync completed" "$log" | tail -1)
  [[ -n $line ]] || die "no resync completed: $(tail -5 "$log")"
  python3 - "$rate" "$held" "$line" <<'PY'
import re, sys
rate, held, line = sys.argv[1], int(sys.argv[2]), sys.argv[3]
f = dict(re.findall(r"\"(\w+)\":([\d.]+)", line))
copied, seconds = int(f["copied"]), float(f["seconds"])
print(f"rate cap {rate}: a held {held} keys; copied {copied} (checked {f['checked']}, recopied {f['recopied']}) in {seconds:.2f} s: {copied / seconds:,.0f} keys/s")
PY
  kill "$kpid"
  wait "$kpid" 2>/dev/null || true
done
