#!/usr/bin/env bash
# User-space instructions per request of each whole proxy process, Keyway against twemproxy,
# counted by callgrind on the same 3-server pool: everything the process runs in user space
# (its event loop or runtime, allocator, parsing, routing), not the kernel. Startup is taken
# out by subtracting a run of the same process that served only a PING. twemproxy runs as
# scripts/bench.sh runs it (log level 4, warnings).
#
#   scripts/bench/callgrind-proxies.sh              # GET -P 1 (50k requests), GET -P 16 (200k)
#   scripts/bench/callgrind-proxies.sh mset 1 20000 # one cell of your choice
#
# Environment: BENCH_KEYWAY_BIN=path (else cargo build --release).
# Needs: valgrind, redis-server, redis-benchmark, redis-cli, nutcracker, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh

die() { echo "callgrind-proxies: $*" >&2; exit 1; }
require_tools valgrind callgrind_annotate redis-server redis-benchmark redis-cli nutcracker python3
if [[ $# -ge 3 ]]; then cells=("$1:$2:$3"); else cells=("get:1:50000" "get:16:200000"); fi
keyway=$(keyway_binary) || die "cargo build --release failed"

scratch_dir callgrind-proxies
export RUST_LOG=warn
read -r -a ports <<<"$(free_ports 7)"
start_redis_servers "${ports[0]}" "${ports[1]}" "${ports[2]}"
{
  # Under valgrind everything runs many times slower: generous deadlines for both proxies.
  printf 'listen = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n[pool]\ntimeout = "10s"\n' "${ports[3]}" "${ports[4]}"
  pool_servers_toml "${ports[0]}" "${ports[1]}" "${ports[2]}"
} >"$dir/keyway.toml"
twemproxy_yml bench "${ports[5]}" "${ports[0]}" "${ports[1]}" "${ports[2]}" |
  sed 's/timeout: 1000/timeout: 10000/' >"$dir/twemproxy.yml"

# total_instructions NAME PORT REQUESTS TEST PIPE -- COMMAND...: the process's instruction count
# after serving REQUESTS (0: a PING only).
total_instructions() {
  local name=$1 port=$2 requests=$3 test=$4 pipeline=$5 out vp
  shift 6
  out=$dir/$name.$requests.out
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$dir/$name.log" 2>&1 &
  vp=$!
  wait_for_ping "$port" 30 || die "$name did not start: $(tail -3 "$dir/$name.log")"
  if (( requests > 0 )); then
    redis-benchmark -p "$port" -t "$test" -P "$pipeline" -c 50 -n "$requests" -r 100000 -d 64 -q \
      >/dev/null 2>&1 || die "redis-benchmark failed against $name"
  fi
  kill -INT "$vp"
  wait "$vp" 2>/dev/null || true
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}

echo "# callgrind-proxies: $("$keyway" --version) (git $(git rev-parse --short HEAD 2>/dev/null || echo '?')), $(nutcracker --version 2>&1 | head -1 | sed 's/This is //')"
for cell in "${cells[@]}"; do
  IFS=: read -r test pipeline requests <<<"$cell"
  echo
  echo "## $test -P $pipeline -c 50, $requests requests: user-space instructions per request"
  for name in keyway twemproxy; do
    if [[ $name == keyway ]]; then
      port=${ports[3]}; cmd=("$keyway" serve --config "$dir/keyway.toml")
    else
      port=${ports[5]}; cmd=(nutcracker -c "$dir/twemproxy.yml" -s "${ports[6]}" -a 127.0.0.1 -v 4 -o "$dir/twemproxy.out")
    fi
    base=$(total_instructions "$name" "$port" 0 "$test" "$pipeline" -- "${cmd[@]}")
    total=$(total_instructions "$name" "$port" "$requests" "$test" "$pipeline" -- "${cmd[@]}")
    printf '%-10s %8d\n' "$name" $(( (total - base) / requests ))
  done
done
