#!/usr/bin/env bash
# Where each wake-up lands at low load (-c 1 -P 1): for Keyway and twemproxy on the same
# 3-server pool, counts the scheduler's wake-ups between the processes of a request's path
# (client, proxy, servers) and the share of them that land on the waker's own CPU. A wake-up on
# another CPU that is idle costs that CPU's wake-up latency, which on a VM is tens of µs; the
# low-load latency of both proxies is made of these, so their patterns are what to compare.
#
#   scripts/bench/wakeups.sh                 # GET, 10,000 requests per proxy, 2 rounds
#   scripts/bench/wakeups.sh set 20000 3
#
# Needs: perf (tracepoint sched:sched_waking, system-wide), redis-server, redis-benchmark,
# redis-cli, nutcracker, python3. Environment: BENCH_KEYWAY_BIN=path (else cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh

die() { echo "wakeups: $*" >&2; exit 1; }
require_tools perf redis-server redis-benchmark redis-cli nutcracker python3
test=${1:-get}; requests=${2:-10000}; rounds=${3:-2}
keyway=$(keyway_binary) || die "cargo build --release failed"

scratch_dir wakeups
read -r -a ports <<<"$(free_ports 7)"
start_redis_servers "${ports[0]}" "${ports[1]}" "${ports[2]}"
{
  printf 'listen = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n[pool]\n' "${ports[3]}" "${ports[4]}"
  pool_servers_toml "${ports[0]}" "${ports[1]}" "${ports[2]}"
} >"$dir/keyway.toml"
twemproxy_yml bench "${ports[5]}" "${ports[0]}" "${ports[1]}" "${ports[2]}" >"$dir/twemproxy.yml"
RUST_LOG=warn "$keyway" serve --config "$dir/keyway.toml" >"$dir/keyway.log" 2>&1 &
pids+=($!)
nutcracker -c "$dir/twemproxy.yml" -s "${ports[6]}" -o "$dir/twemproxy.log" >/dev/null 2>&1 &
pids+=($!)
for port in "${ports[3]}" "${ports[5]}"; do
  wait_for_ping "$port" 10 || die "no proxy on port $port"
done

echo "# wakeups: $test -c 1 -P 1, $requests requests per run; $("$keyway" --version) (git $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
for round in $(seq 1 "$rounds"); do
  for target in "keyway:${ports[3]}" "twemproxy:${ports[5]}"; do
    IFS=: read -r name port <<<"$target"
    rps=$(perf record -q -e sched:sched_waking -a -o "$dir/perf.data" -- \
      redis-benchmark -p "$port" -t "$test" -c 1 -P 1 -n "$requests" -r 100000 -d 64 --csv 2>/dev/null |
      tail -1 | cut -d, -f2 | tr -d '"')
    echo
    echo "## round $round, $name: $rps requests/s"
    perf script -i "$dir/perf.data" -F comm,cpu,event,trace 2>/dev/null | python3 -c '
import collections, re, sys
n = int(sys.argv[1])
path = ("redis-benchmark", "redis-server", "keyway", "nutcracker")
count, same = collections.Counter(), collections.Counter()
for line in sys.stdin:
    m = re.match(r"\s*(\S+)\s+\[(\d+)\]\s+sched:sched_waking:\s+comm=(\S+)\s.*target_cpu=(\d+)", line)
    if not m:
        continue
    waker, cpu, wakee, target = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
    if not (waker.startswith(path) and wakee.startswith(path)):
        continue
    count[(waker, wakee)] += 1
    same[(waker, wakee)] += cpu == target
print("waker -> wakee                     per request  on the waker'"'"'s CPU")
for (waker, wakee), c in count.most_common():
    if c < n / 100:
        break  # health checks and the like, not the request path
    pair = waker + " -> " + wakee
    print(f"{pair:34s} {c / n:11.2f}  {same[(waker, wakee)] / c:18.0%}")
' "$requests"
  done
done
