#!/usr/bin/env bash
# Keyway's user-space instructions per request for one benchmark cell, counted by callgrind: a
# figure that does not move with the machine's noise, for comparing two builds of the request
# path.
#
# Keyway runs under `valgrind --tool=callgrind` on a 3-server pool, twice: once serving a single
# PING (the baseline: startup, topology build, shutdown), once while redis-benchmark sends N
# requests. Everything the process runs in user space counts (request path, runtime, allocator,
# libc), not the kernel; the baseline is subtracted, in total and per function. Prints the
# instructions per request and the functions with the most instructions of their own.
#
# (Until git 55472d6 this script counted only functions under keyway::server and
# keyway::backend with `--toggle-collect`; nested matches toggle collection off again, so those
# figures left out every second level of nesting. They compare builds with each other, not with
# the figures printed now.)
#
#   scripts/bench/callgrind.sh                  # GET -P 1 (100k requests), then GET -P 16 (200k)
#   scripts/bench/callgrind.sh mset 1 20000     # one cell of your choice
#
# Environment: BENCH_KEYWAY_BIN=path (else cargo build --release), CALLGRIND_TOP=20,
# CALLGRIND_BENCH_ARGS="-3" (more redis-benchmark options: -3 for RESP3 clients),
# CALLGRIND_POOL='write = "two_phase"' (more [pool] settings),
# CALLGRIND_TOML=$'[[users]]\nname = "default"\nrules = "on nopass ~key:* +@read +@write"' (more
# tables after the pool's, e.g. client users: the ACL check's cost),
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
  # More [pool] settings, one per line (CALLGRIND_POOL=$'write = "two_phase"').
  [[ -n ${CALLGRIND_POOL:-} ]] && printf '%s\n' "$CALLGRIND_POOL"
  pool_servers_toml "${ports[0]}" "${ports[1]}" "${ports[2]}"
  if [[ -n ${CALLGRIND_TOML:-} ]]; then printf '%s\n' "$CALLGRIND_TOML"; fi
} >"$dir/keyway.toml"

echo "# callgrind: $("$keyway" --version 2>/dev/null || echo keyway) (git $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"

# run_keyway OUT TEST PIPELINE REQUESTS: Keyway under callgrind serving REQUESTS requests of the
# cell (0: one PING).
run_keyway() {
  local out=$1 test=$2 pipeline=$3 requests=$4 kpid
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$keyway" serve --config "$dir/keyway.toml" >"$dir/keyway.log" 2>&1 &
  kpid=$!
  wait_for_ping "${ports[3]}" 30 || die "keyway did not start: $(tail -5 "$dir/keyway.log")"
  if (( requests > 0 )); then
    redis-benchmark -p "${ports[3]}" -t "$test" -P "$pipeline" -c 50 -n "$requests" -r 100000 -d 64 -q ${CALLGRIND_BENCH_ARGS:-} \
      >/dev/null 2>&1 || die "redis-benchmark failed"
  fi
  kill -INT "$kpid"
  wait "$kpid" 2>/dev/null || true
  if [[ -n ${CALLGRIND_KEEP:-} ]]; then mkdir -p "$CALLGRIND_KEEP" && cp "$out" "$CALLGRIND_KEEP/"; fi
}

base=$dir/callgrind.base.out
run_keyway "$base" ping 1 0
for cell in "${cells[@]}"; do
  IFS=: read -r test pipeline requests <<<"$cell"
  out=$dir/callgrind.$test.$pipeline.out
  run_keyway "$out" "$test" "$pipeline" "$requests"
  echo
  echo "## $test -P $pipeline -c 50, $requests requests"
  # Self cost per function (inlined code summed into the function it sits in), loaded run minus
  # baseline.
  python3 - "$base" "$out" "$requests" "$top" <<'PY'
import re, subprocess, sys
from collections import defaultdict

def own(path):
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                          capture_output=True, text=True, check=True).stdout
    total, cost = 0, defaultdict(int)
    for line in text.splitlines():
        m = re.match(r"^\s*([\d,]+) (?:\([^)]*\))?\s*(.*)$", line)
        if not m:
            continue
        ir, rest = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in rest:
            total = ir
        elif ":" in rest and not rest.endswith("x)"):
            fn = re.sub(r" \[.*$", "", rest.split(":", 1)[1])
            cost[fn] += ir
    return total, cost

(base_total, base), (total, loaded) = own(sys.argv[1]), own(sys.argv[2])
n, top = int(sys.argv[3]), int(sys.argv[4])
print(f"instructions per request: {(total - base_total) / n:.0f}")
print()
print("own instructions per request, top functions:")
diff = sorted(((loaded[f] - base.get(f, 0)) / n, f) for f in loaded)
for per, f in reversed(diff[-top:]):
    print(f"{per:8.0f}  {f}")
PY
done
