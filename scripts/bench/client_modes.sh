#!/usr/bin/env bash
# Client modes through Keyway, measured in one run on three local redis-servers:
#
#  1. RESP3 against RESP2: redis-benchmark GET and SET at -P 1 and -P 16 (-c 50), with and without
#     -3; requests per second and Keyway's CPU per request (utime + stime of its process).
#  2. MULTI/EXEC against a pipeline: transactions of 3 SETs of one slot against the same SETs
#     pipelined (scripts/bench/txn_load.py); Keyway's CPU per command.
#  3. Two-phase MULTI across servers against a pipeline under write = "primary": transactions of
#     3 SETs on three different servers under write = "two_phase" against the same 3 SETs
#     pipelined under write = "primary", 50 connections each with its own keys and one unit in
#     flight; transactions (or groups of 3 SETs) per second.
#  4. GET under write = "two_phase" (reads check their keys' locks) against GET under "primary",
#     and MGET of 3 random keys (mostly over several servers: validated as one snapshot under
#     two_phase, docs/two-phase.md) likewise.
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
resp_notes=()
declare -A primary_get=()
start_keyway primary
# RESP2 and RESP3 alternate, REPS times per cell (default 3), so that a slow moment of a shared
# machine falls on both; each cell reports its median.
REPS=${REPS:-3}
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
# MGET of 3 random keys (those the SET cells wrote), -P $1: the median of REPS runs, req/s.
mget_rps() {
  local got=() r
  for _rep in $(seq 1 "$REPS"); do
    r=$(redis-benchmark -p "$kport" -n "$N" -c 50 -P "$1" -r 100000 --csv -q \
      MGET key:__rand_int__ key:__rand_int__ key:__rand_int__ | awk -F'","' 'NR==2 {print $2}')
    got+=("${r%.*}")
  done
  median "${got[@]}"
}
declare -A primary_mget=()
for p in 1 16; do
  for t in get set; do
    declare -A rps_of=() us_of=()
    for _rep in $(seq 1 "$REPS"); do
      for proto in 2 3; do
        flag=(); [[ $proto == 3 ]] && flag=(-3)
        c0=$(cpu)
        rps=$(redis-benchmark -p "$kport" -t "$t" -n "$N" -c 50 -P "$p" -r 100000 "${flag[@]}" --csv -q |
          awk -F'","' 'NR==2 {print $2}')
        c1=$(cpu)
        rps_of[$proto]+="${rps%.*} "
        us_of[$proto]+="$(python3 -c "print(($c1 - $c0) / $ticks / $N * 1e6)") "
      done
    done
    [[ $t == get ]] && primary_get[$p]=${rps_of[2]}
    for proto in 2 3; do
      # shellcheck disable=SC2086
      r=$(median ${rps_of[$proto]}); u=$(median ${us_of[$proto]})
      printf -v cell '| RESP%s %s -P %s (median of %s) | %.0f req/s | %.2f µs CPU/req |' "$proto" "$t" "$p" "$REPS" "$r" "$u"
      rows+=("$cell")
    done
    # shellcheck disable=SC2086
    resp_notes+=("$(python3 -c "
import statistics as st, sys
r2, r3 = (st.median(float(x) for x in s.split()) for s in sys.argv[1:3])
print(f'{sys.argv[3].upper()} -P {sys.argv[4]}: {r3 / r2:.3f}x')" "${rps_of[2]}" "${rps_of[3]}" "$t" "$p")")
    unset rps_of us_of
  done
done
for p in 1 16; do
  primary_mget[$p]=$(mget_rps "$p")
  printf -v cell '| RESP2 MGET of 3 random keys -P %s (median of %s, primary) | %.0f req/s | |' "$p" "$REPS" "${primary_mget[$p]}"
  rows+=("$cell")
done
# Each connection its own keys, so that transactions do not contend for locks: one slot per
# connection ({cN}:a,b,c) for the MULTI-against-pipeline CPU case, and three keys on three
# different servers per connection (found with `keyway route`) for the two-phase case.
conns=50
slot_groups=$(for i in $(seq 1 $conns); do printf '{c%s}:a,{c%s}:b,{c%s}:c;' "$i" "$i" "$i"; done)
slot_groups=${slot_groups%;}
spread_groups=$("$bin" route --config "$dir/keyway.toml" $(seq -f 'k:%g' 1 1000) 2>/dev/null | python3 -c "
import sys
by = {}
for line in sys.stdin:
    f = line.split()
    by.setdefault(f[4], []).append(f[0])
n = min(len(v) for v in by.values())
assert len(by) == 3 and n >= $conns, by.keys()
print(';'.join(','.join(by[s][i] for s in sorted(by)) for i in range($conns)))
")
load() { python3 scripts/bench/txn_load.py --port "$kport" --pid "$keyway_pid" "$@"; }
# Pipelined batches (50 units per write) for CPU per command: Keyway's cost, not the client's;
# 1,800,000 commands, so that the CPU read in clock ticks (10 ms) is precise to about 1%.
pipe=$(load --mode pipeline --keys "$slot_groups" --conns 8 --batches "${BATCHES:-1500}")
multi=$(load --mode multi --keys "$slot_groups" --conns 8 --batches "${BATCHES:-1500}")
rows+=("| 3 SETs of one slot, 50 units per batch, pipelined (primary) | $pipe |")
rows+=("| MULTI + 3 SETs of one slot + EXEC, 50 units per batch (primary) | $multi |")
# One unit in flight per connection, 50 connections: what an application's pipeline or
# transaction waits for.
pipe_spread=$(load --mode pipeline --keys "$spread_groups" --conns $conns --batches 200 --per-batch 1)
rows+=("| 3 SETs on 3 servers, pipelined, 1 unit in flight x $conns connections (primary) | $pipe_spread |")
start_keyway two_phase
tp=$(load --mode multi --keys "$spread_groups" --conns $conns --batches 200 --per-batch 1)
rows+=("| MULTI + 3 SETs on 3 servers + EXEC, 1 unit in flight x $conns connections (two_phase) | $tp |")
# Reads under two_phase check their keys' locks first (docs/two-phase.md): GET against the same
# GET under primary (the RESP2 cells above; the keys were written there by the SET cells).
read_notes=()
for p in 1 16; do
  declare -a got=()
  for _rep in $(seq 1 "$REPS"); do
    c0=$(cpu)
    r=$(redis-benchmark -p "$kport" -t get -n "$N" -c 50 -P "$p" -r 100000 --csv -q | awk -F'","' 'NR==2 {print $2}')
    c1=$(cpu)
    got+=("${r%.*}")
    us=$(python3 -c "print(($c1 - $c0) / $ticks / $N * 1e6)")
  done
  # shellcheck disable=SC2086
  r=$(median ${got[*]})
  printf -v cell '| RESP2 get -P %s under two_phase (median of %s) | %.0f req/s | %.2f µs CPU/req (last) |' "$p" "$REPS" "$r" "$us"
  rows+=("$cell")
  read_notes+=("GET -P $p: $(python3 -c "print(f'{$r / $(median ${primary_get[$p]}):.2f}x')")")
  unset got
  r=$(mget_rps "$p")
  printf -v cell '| RESP2 MGET of 3 random keys -P %s (median of %s, two_phase) | %.0f req/s | |' "$p" "$REPS" "$r"
  rows+=("$cell")
  read_notes+=("MGET -P $p: $(python3 -c "print(f'{$r / ${primary_mget[$p]}:.2f}x')")")
done

field() { grep -oE "(^| )$1=[0-9.]+" <<<"$2" | cut -d= -f2; }
ratio_cpu=$(python3 -c "print(f'{$(field cpu_s_per_1M_commands "$multi") / $(field cpu_s_per_1M_commands "$pipe"):.2f}')")
ratio_tp=$(python3 -c "print(f'{$(field units/s "$tp") / $(field units/s "$pipe_spread"):.2f}')")
{
  echo "Run: $(date -u +%Y-%m-%dT%H:%MZ), git $(git rev-parse --short HEAD), $(nproc) cores, redis $(redis-server --version | grep -o 'v=[0-9.]*')."
  echo
  echo "| case | throughput | Keyway CPU |"
  echo "| --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "- RESP3 throughput against RESP2, same Keyway, same run (target within 5%): $(IFS=';'; echo "${resp_notes[*]}" | sed 's/;/, /g')."
  echo "- MULTI/EXEC CPU per command against the same commands pipelined: ${ratio_cpu}x (target at most 1.5x)."
  echo "- GET and MGET under two_phase (each read checks its keys' two-phase locks; an MGET over several servers reads twice) against the same under primary: $(IFS=';'; echo "${read_notes[*]}" | sed 's/;/, /g')."
  echo "- Two-phase cross-server MULTI against the same 3 SETs pipelined under primary: ${ratio_tp}x the throughput (target at least 0.4x)."
} | tee "$out"
