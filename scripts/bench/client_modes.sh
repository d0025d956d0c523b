#!/usr/bin/env bash
# Client modes through Keyway, measured in one run on three local redis-servers:
#
#  1. RESP3 against RESP2: redis-benchmark GET and SET at -P 1 and -P 16 (-c 50), with and without
#     -3; requests per second and Keyway's CPU per request (utime + stime of its process).
#  2. MULTI/EXEC against a pipeline: transactions of 3 SETs of one slot against the same SETs
#     pipelined (scripts/bench/txn_load.py); Keyway's CPU per command.
#  3. Two-phase MULTI across servers against a pipeline under write = "primary": transactions of
#     3 SETs on three different servers under write = "two_phase" against the same 3 SETs
#     pipelined under write = "primary"; transactions (or groups of 3 SETs) per second.
#
# Prints a markdown table (also written to $BENCH_OUT, default docs/bench-client-modes.md).
#   scripts/bench/client_modes.sh              # BENCH_KEYWAY_BIN=path to measure a given binary
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/lib.sh
require_tools redis-server redis-benchmark redis-cli python3
bin=$(keyway_binary)
out=${BENCH_OUT:-docs/bench-client-modes.md}
N=${BENCH_N:-200000}
scratch_dir client-modes
read -r p1 p2 p3 kport aport <<<"$(free_ports 5)"
start_redis_servers "$p1" "$p2" "$p3"
for p in "$p1" "$p2" "$p3"; do wait_for_ping "$p" 10; done

keyway_pid=""
start_keyway() { # write mode
  [[ -n $keyway_pid ]] && { kill "$keyway_pid"; wait "$keyway_pid" 2>/dev/null || true; }
  { printf 'listen = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n[pool]\nwrite = "%s"\n' "$kport" "$aport" "$1"
    pool_servers_toml "$p1" "$p2" "$p3"; } >"$dir/keyway.toml"
  "$bin" serve --config "$dir/keyway.toml" >"$dir/keyway.log" 2>&1 &
  keyway_pid=$!
  pids+=("$keyway_pid")
  wait_for_ping "$kport" 10
}
cpu() { awk '{print $14 + $15}' "/proc/$keyway_pid/stat"; }
ticks=$(getconf CLK_TCK)

rows=()
start_keyway primary
for p in 1 16; do
  for t in get set; do
    for proto in 2 3; do
      flag=(); [[ $proto == 3 ]] && flag=(-3)
      c0=$(cpu)
      rps=$(redis-benchmark -p "$kport" -t "$t" -n "$N" -c 50 -P "$p" -r 100000 "${flag[@]}" --csv -q |
        awk -F'","' 'NR==2 {print $2}')
      c1=$(cpu)
      us=$(python3 -c "print(f'{($c1 - $c0) / $ticks / $N * 1e6:.2f}')")
      rows+=("| RESP$proto $t -P $p | ${rps%.*} req/s | $us µs CPU/req |")
    done
  done
done
# Keys on three different servers: set through Keyway, found on each server directly.
declare -A on
for i in $(seq 1 200); do
  redis-cli -p "$kport" set "x:$i" 1 >/dev/null
  for p in "$p1" "$p2" "$p3"; do
    if [[ -z ${on[$p]:-} && $(redis-cli -p "$p" exists "x:$i") == 1 ]]; then on[$p]="x:$i"; fi
  done
  [[ ${#on[@]} == 3 ]] && break
done
spread="${on[$p1]},${on[$p2]},${on[$p3]}"
load() { python3 scripts/bench/txn_load.py --port "$kport" --pid "$keyway_pid" "$@"; }
pipe=$(load --mode pipeline)
multi=$(load --mode multi)
rows+=("| 3 SETs of one slot, pipelined (primary) | $pipe |")
rows+=("| MULTI + 3 SETs of one slot + EXEC (primary) | $multi |")
pipe_spread=$(load --mode pipeline --keys "$spread")
rows+=("| 3 SETs on 3 servers, pipelined (primary) | $pipe_spread |")
start_keyway two_phase
tp=$(load --mode multi --keys "$spread" --conns 8 --batches 40 --per-batch 20)
rows+=("| MULTI + 3 SETs on 3 servers + EXEC (two_phase) | $tp |")

field() { sed -E "s/.*$1=([0-9.]+).*/\\1/" <<<"$2"; }
ratio_cpu=$(python3 -c "print(f'{$(field cpu_s_per_1M_commands "$multi") / $(field cpu_s_per_1M_commands "$pipe"):.2f}')")
ratio_tp=$(python3 -c "print(f'{$(field units/s "$tp") / $(field units/s "$pipe_spread"):.2f}')")
{
  echo "Run: $(date -u +%Y-%m-%dT%H:%MZ), git $(git rev-parse --short HEAD), $(nproc) cores, redis $(redis-server --version | grep -o 'v=[0-9.]*')."
  echo
  echo "| case | throughput | Keyway CPU |"
  echo "| --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "- MULTI/EXEC CPU per command against the same commands pipelined: ${ratio_cpu}x (target at most 1.5x)."
  echo "- Two-phase cross-server MULTI against the same 3 SETs pipelined under primary: ${ratio_tp}x the throughput (target at least 0.4x)."
} | tee "$out"
