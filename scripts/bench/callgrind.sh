#!/usr/bin/env bash
# Keyway's own instructions per request for one benchmark cell, counted by callgrind: a figure
# that does not move with the machine's noise, for comparing two builds of the request path.
#
# Keyway runs under `valgrind --tool=callgrind` on a 3-server pool while redis-benchmark sends
# N requests; only code under keyway::server and keyway::backend is counted (with everything it
# calls: allocator, tokio, bytes), not the kernel and not startup. Prints the instructions per
# request and the functions with the most instructions of their own.
#
#   scripts/bench/callgrind.sh                  # GET -P 1 (100k requests), then GET -P 16 (200k)
#   scripts/bench/callgrind.sh mset 1 20000     # one cell of your choice
#
# Environment: BENCH_KEYWAY_BIN=path (else cargo build --release), CALLGRIND_TOP=20,
# CALLGRIND_KEEP=dir (keep the callgrind output files there, for callgrind_annotate by line).
# Needs: valgrind, redis-server, redis-benchmark, redis-cli, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh

die() { echo "callgrind: $*" >&2; exit 1; }
require_tools valgrind callgrind_annotate redis-server redis-benchmark redis-cli python3
if [[ $# -ge 3 ]]; then cells=("$1:$2:$3"); else cells=("get:1:100000" "get:16:200000"); fi
top=${CALLGRIND_TOP:-20}
keyway=$(keyway_binary) || die "cargo build --release failed"

scratch_dir callgrind

read -r -a ports <<<"$(free_ports 5)"
start_redis_servers "${ports[0]}" "${ports[1]}" "${ports[2]}"
{
  printf 'listen = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n[pool]\n' "${ports[3]}" "${ports[4]}"
  # Under valgrind everything runs many times slower: a generous deadline, so that no request
  # times out and is counted as another path.
  printf 'timeout = "10s"\n'
  pool_servers_toml "${ports[0]}" "${ports[1]}" "${ports[2]}"
} >"$dir/keyway.toml"

echo "# callgrind: $("$keyway" --version 2>/dev/null || echo keyway) (git $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
for cell in "${cells[@]}"; do
  IFS=: read -r test pipeline requests <<<"$cell"
  out=$dir/callgrind.$test.$pipeline.out
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" --collect-atstart=no \
    --toggle-collect='keyway::server::*' --toggle-collect='keyway::backend::*' \
    "$keyway" serve --config "$dir/keyway.toml" >"$dir/keyway.log" 2>&1 &
  kpid=$!
  wait_for_ping "${ports[3]}" 30 || die "keyway did not start: $(tail -5 "$dir/keyway.log")"
  redis-benchmark -p "${ports[3]}" -t "$test" -P "$pipeline" -c 50 -n "$requests" -r 100000 -d 64 -q \
    >/dev/null 2>&1 || die "redis-benchmark failed"
  kill -INT "$kpid"
  wait "$kpid" 2>/dev/null || true
  if [[ -n ${CALLGRIND_KEEP:-} ]]; then mkdir -p "$CALLGRIND_KEEP" && cp "$out" "$CALLGRIND_KEEP/"; fi
  echo
  echo "## $test -P $pipeline -c 50, $requests requests"
  # Totals and self cost per function (inlined code summed into the function it sits in).
  callgrind_annotate --inclusive=no --threshold=100 "$out" 2>/dev/null | awk -v n="$requests" -v top="$top" '
    /PROGRAM TOTALS/ { t = $1; gsub(",", "", t); printf "instructions per request: %.0f\n\nown instructions per request, top functions:\n", t / n }
    /^ *[0-9,]+ \(/ && /:/ && !/PROGRAM TOTALS/ && !/x\)$/ {
      ir = $1; gsub(",", "", ir); line = $0; sub(/^[^)]*\) +/, "", line)
      i = index(line, ":"); fn = substr(line, i + 1); sub(/ \[.*$/, "", fn); own[fn] += ir
    }
    END { for (f in own) printf "%8.0f  %s\n", own[f] / n, f | "sort -rn | head -" top }'
done
