#!/usr/bin/env bash
# Keyway vs twemproxy vs direct redis: throughput, CPU per request, latency, memory.
#
#   scripts/bench.sh                      # full run (~16 min), rewrites docs/benchmarks.md
#   BENCH_QUICK=1 scripts/bench.sh        # smoke run (~1-2 min), same output, marked QUICK
#
# Environment (all optional):
#   REPS=3            repetitions of the throughput and low-load latency matrices (quick: 1)
#   DURATION=4        target seconds per throughput cell, -c 50 (quick: 1)
#   LAT_DURATION=3    target seconds per low-load latency cell, -c 1 (quick: 1)
#   LAT_ROUNDS=30     rounds of the microsecond latency probe, 400 requests per target each (quick: 6)
#   CONNS=10000       idle client connections for the memory test (quick: 1000)
#   HEAVY_SECS=8      length of the heavy pipelined run for the memory-return test (quick: 2)
#   BENCH_OUT=docs/benchmarks.md   where the report goes (the generated section is replaced)
#   BENCH_KEYWAY_BIN=path          use this keyway binary instead of `cargo build --release`
#   BENCH_KEEP=1      keep the temp dir (configs, logs, raw results) and print its path
#
# What runs: 3 pool redis-servers + 1 standalone "direct" redis-server (all --save ""
# --appendonly no, free loopback ports, temp dir), Keyway on the pool (its default
# pool.connections = 1), twemproxy (nutcracker) on the same pool (ketama, fnv1a_64,
# server_connections 1 = its default, preconnect). Every cell is one `redis-benchmark --csv`
# invocation; the proxy's CPU time is read from /proc/PID/stat (utime+stime) around it.
# Last, scripts/bench/client_modes.sh on a pool of its own: RESP3 against RESP2, MULTI/EXEC
# against a pipeline, two-phase cross-server MULTI against a pipeline under write = "primary";
# scripts/bench/blocking.py: BLPOP/RPUSH ping-pong against direct, memory per blocked client;
# scripts/bench/pubsub.py: messages delivered to 1,000 subscribers of one channel against direct;
# scripts/bench/tls.sh: GET and SET over Keyway's tls_listen against its plain listen.
# Needs: redis-server, redis-benchmark, redis-cli, nutcracker, python3, openssl, cargo (or
# BENCH_KEYWAY_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh

quick=${BENCH_QUICK:-0}
# The exact command, for the report: the variables the caller set, then the script.
cmd="scripts/bench.sh"
for v in HEAVY_SECS CONNS LAT_ROUNDS LAT_DURATION DURATION REPS BENCH_QUICK; do
  [[ -n ${!v:-} ]] && cmd="$v=${!v} $cmd"
done
if [[ $quick == 1 ]]; then
  REPS=${REPS:-1}; DURATION=${DURATION:-1}; LAT_DURATION=${LAT_DURATION:-1}
  CONNS=${CONNS:-1000}; HEAVY_SECS=${HEAVY_SECS:-2}; LAT_ROUNDS=${LAT_ROUNDS:-6}
else
  REPS=${REPS:-3}; DURATION=${DURATION:-4}; LAT_DURATION=${LAT_DURATION:-3}
  CONNS=${CONNS:-10000}; HEAVY_SECS=${HEAVY_SECS:-8}; LAT_ROUNDS=${LAT_ROUNDS:-30}
fi
OUT=${BENCH_OUT:-docs/benchmarks.md}
TESTS=(set get incr mset)
PIPES=(1 16)
CLIENTS=50
KEYSPACE=100000
DATASIZE=64

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

for tool in redis-server redis-cli redis-benchmark nutcracker python3 timeout taskset; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y redis-server redis-tools nutcracker python3)"
done

# ---- file descriptors: 10k idle clients need ~10k fds in the proxy and in the client script.
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && (( hard < CONNS + 512 )); then
  die "ulimit -Hn is $hard; CONNS=$CONNS needs $((CONNS + 512)) (raise the hard limit or lower CONNS)"
fi
ulimit -n "$([[ $hard == unlimited ]] && echo $((CONNS + 4096)) || echo "$hard")"

# ---- keyway binary
if [[ -n ${BENCH_KEYWAY_BIN:-} ]]; then
  keyway=$BENCH_KEYWAY_BIN
else
  log "cargo build --release"
  cargo build --release --quiet || die "cargo build --release failed"
  keyway=$root/target/release/keyway
fi
[[ -x $keyway ]] || die "no keyway binary at $keyway"

dir=$(mktemp -d /tmp/keyway-bench.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "kept $dir"; else rm -rf "$dir"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- free loopback ports
read -r -a ports <<<"$(free_ports 8)"
pool_ports=("${ports[0]}" "${ports[1]}" "${ports[2]}")
direct_port=${ports[3]}
keyway_port=${ports[4]}
keyway_admin=${ports[5]}
twem_port=${ports[6]}
twem_stats=${ports[7]}

# ---- redis-servers: 3 for the pool, 1 standalone as the direct reference
start_redis() { # port; sets $started
  mkdir -p "$dir/redis-$1"
  redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --dir "$dir/redis-$1" --logfile "$dir/redis-$1/redis.log" --maxclients 20000 </dev/null >/dev/null 2>&1 &
  started=$!
  pids+=("$started")
}
declare -A pid_of
pool_pids=()
for p in "${pool_ports[@]}"; do start_redis "$p"; pool_pids+=("$started"); done
start_redis "$direct_port"; pid_of[direct]=$started
for p in "${pool_ports[@]}" "$direct_port"; do
  ok=0
  for _ in $(seq 100); do
    if redis-cli -p "$p" ping >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.05
  done
  (( ok )) || die "redis-server on port $p did not start (see $dir/redis-$p/redis.log)"
done

# ---- keyway
cat >"$dir/keyway.toml" <<EOF
listen = "127.0.0.1:$keyway_port"
admin = "127.0.0.1:$keyway_admin"
drain_timeout = "1s"

[pool]
connections = 1   # Keyway's default
timeout = "1s"
$(pool_servers_toml "${pool_ports[@]}")

[limits]
max_clients = $((CONNS + 1000))
EOF
# KEYWAY_* variables of the caller would override the file: drop them.
keyway_env=(env)
while IFS='=' read -r name _; do keyway_env+=(-u "$name"); done < <(env | grep -E '^KEYWAY_' || true)
"${keyway_env[@]}" "$keyway" check --config "$dir/keyway.toml" >/dev/null || die "keyway check rejected the bench config"
"${keyway_env[@]}" RUST_LOG=warn "$keyway" serve --config "$dir/keyway.toml" </dev/null >"$dir/keyway.log" 2>&1 &
pid_of[keyway]=$!
pids+=($!)

# ---- twemproxy
twemproxy_yml bench "$twem_port" "${pool_ports[@]}" >"$dir/twemproxy.yml"
nutcracker -t -c "$dir/twemproxy.yml" >/dev/null 2>&1 || die "nutcracker rejected $dir/twemproxy.yml"
nutcracker -c "$dir/twemproxy.yml" -s "$twem_stats" -a 127.0.0.1 -v 4 -o "$dir/twemproxy.log" </dev/null >/dev/null 2>&1 &
pid_of[twemproxy]=$!
pids+=($!)

declare -A port_of=([direct]=$direct_port [keyway]=$keyway_port [twemproxy]=$twem_port)
for t in keyway twemproxy; do
  ok=0
  for _ in $(seq 100); do
    if [[ $(redis-cli -p "${port_of[$t]}" set bench:probe 1 2>/dev/null) == OK ]]; then ok=1; break; fi
    kill -0 "${pid_of[$t]}" 2>/dev/null || break
    sleep 0.1
  done
  (( ok )) || die "$t did not start serving on ${port_of[$t]} (see $dir/$t.log)"
done
log "ports: pool ${pool_ports[*]}, direct $direct_port, keyway $keyway_port, twemproxy $twem_port; tmp $dir"

ticks() { # pid -> utime+stime in clock ticks
  local s
  s=$(<"/proc/$1/stat")
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $(( ${12} + ${13} ))
}
pool_ticks() { local sum=0 p; for p in "${pool_pids[@]}"; do sum=$((sum + $(ticks "$p"))); done; echo "$sum"; }
# The whole machine's busy time (user, nice, system, irq, softirq) in clock ticks: every process,
# the load generator included. On a saturated machine throughput is inversely proportional to
# it per request, which is what bounds the throughput ratios (see report.py).
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# bench TARGET TEST PIPE CLIENTS N -> "rps p50 p99" (from redis-benchmark --csv)
bench() {
  local out line
  out=$(redis-benchmark -h 127.0.0.1 -p "${port_of[$1]}" -t "$2" -P "$3" -c "$4" -n "$5" \
    -r "$KEYSPACE" -d "$DATASIZE" --csv 2>>"$dir/redis-benchmark.err") \
    || die "redis-benchmark failed: $1 $2 -P $3 -c $4 -n $5"
  line=$(grep -v '^"test"' <<<"$out" | tail -1)
  [[ -n $line ]] || die "redis-benchmark printed no result: $1 $2 -P $3 -c $4"
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  python3 -c 'import csv,sys; r=next(csv.reader([sys.argv[1]])); print(r[1], r[4], r[6])' "$line"
}

# calibrate TARGET TEST PIPE CLIENTS SECONDS -> N for about SECONDS
calibrate() {
  local n0 rps
  if (( $4 == 1 )); then n0=3000; elif (( $3 == 1 )); then n0=15000; else n0=150000; fi
  [[ $2 == mset ]] && n0=$((n0 / 3))
  [[ $quick == 1 ]] && n0=$((n0 / 3))
  read -r rps _ _ <<<"$(bench "$1" "$2" "$3" "$4" "$n0")"
  requests_for "$rps" "$5" "$3" "$4"
}

# requests_for RPS SECONDS PIPE CLIENTS -> N for about SECONDS at RPS, a whole number of
# pipelines for every client
requests_for() {
  python3 -c 'import sys; r,s,p,c=float(sys.argv[1]),float(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4]); n=max(int(r*s), 1000); print((n//(p*c)+1)*p*c)' "$@"
}

# ---- facts
facts=$dir/facts.tsv
{
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'nproc\t%s\n' "$(nproc)"
  printf 'cpu\t%s\n' "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  printf 'kernel\t%s\n' "$(uname -sr)"
  printf 'redis\t%s\n' "$(redis-server --version | sed 's/Redis server //')"
  printf 'twemproxy\t%s\n' "$(nutcracker --version 2>&1 | head -1 | sed 's/This is //')"
  printf 'keyway\t%s (git %s%s)\n' "$("$keyway" --version)" "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "$(git diff --quiet HEAD 2>/dev/null || echo ', working tree modified')"
  printf 'load_start\t%s\n' "$load_start"
  printf 'quick\t%s\n' "$quick"
  printf 'params\tREPS=%s DURATION=%ss LAT_DURATION=%ss LAT_ROUNDS=%s CONNS=%s HEAVY_SECS=%s\n' "$REPS" "$DURATION" "$LAT_DURATION" "$LAT_ROUNDS" "$CONNS" "$HEAVY_SECS"
} >"$facts"

# ---- 1. memory with idle connections (fresh processes, before any load)
for t in keyway twemproxy; do
  log "memory: $CONNS idle connections to $t"
  python3 scripts/bench/hold_conns.py --pid "${pid_of[$t]}" --port "${port_of[$t]}" --conns "$CONNS" \
    >"$dir/mem-$t.json" || die "idle-connection test against $t failed: $(cat "$dir/mem-$t.json")"
done

# ---- 2. throughput matrix, -c 50: calibrate N per (target, test, pipe), then REPS rounds
targets=(direct keyway twemproxy)
declare -A n_of
log "calibrating (${DURATION}s cells)"
for test in "${TESTS[@]}"; do
  for p in "${PIPES[@]}"; do
    for t in "${targets[@]}"; do
      n_of[$t/$test/$p]=$(calibrate "$t" "$test" "$p" "$CLIENTS" "$DURATION")
    done
  done
done
for test in get set; do
  for t in "${targets[@]}"; do
    n_of[$t/$test/lat]=$(calibrate "$t" "$test" 1 1 "$LAT_DURATION")
  done
done

results=$dir/results.tsv
printf 'kind\trep\ttest\tpipe\ttarget\tn\trps\tp50\tp99\tsecs\tcpu_ticks\tpool_ticks\tmachine_ticks\n' >"$results"
clk=$(getconf CLK_TCK)
cell() { # kind rep target test pipe clients n
  local kind=$1 rep=$2 t=$3 test=$4 p=$5 c=$6 n=$7 c0 c1 q0 q1 m0 m1 rps p50 p99
  c0=$(ticks "${pid_of[$t]}"); q0=$(pool_ticks); m0=$(machine_ticks)
  read -r rps p50 p99 <<<"$(bench "$t" "$test" "$p" "$c" "$n")"
  [[ -n $rps ]] || die "no result for $t $test -P $p -c $c"
  c1=$(ticks "${pid_of[$t]}"); q1=$(pool_ticks); m1=$(machine_ticks)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$rep" "$test" "$p" "$t" "$n" "$rps" \
    "$p50" "$p99" "$(python3 -c "print(round($n/$rps, 2))")" "$((c1 - c0))" "$((q1 - q0))" "$((m1 - m0))" >>"$results"
  # The short calibration run misjudges the rate by up to a third on this kind of machine: the
  # next round's cell aims at the target duration from this cell's own rate.
  if [[ $kind == lat ]]; then
    n_of[$t/$test/lat]=$(requests_for "$rps" "$LAT_DURATION" "$p" "$c")
  else
    n_of[$t/$test/$p]=$(requests_for "$rps" "$DURATION" "$p" "$c")
  fi
}
for rep in $(seq "$REPS"); do
  # Rotate the order each round (D K T, K T D, T D K, ...) so no target always goes first.
  k=$(( (rep - 1) % 3 ))
  order=("${targets[@]:k}" "${targets[@]:0:k}")
  log "round $rep/$REPS: throughput (order ${order[*]})"
  for test in "${TESTS[@]}"; do
    for p in "${PIPES[@]}"; do
      for t in "${order[@]}"; do cell tput "$rep" "$t" "$test" "$p" "$CLIENTS" "${n_of[$t/$test/$p]}"; done
    done
  done
  log "round $rep/$REPS: low-load latency (-c 1 -P 1)"
  for test in get set; do
    for t in "${order[@]}"; do cell lat "$rep" "$t" "$test" 1 1 "${n_of[$t/$test/lat]}"; done
  done
done

# ---- 2b. low-load latency with microsecond resolution (redis-benchmark's percentiles move in
# 8 µs steps here): one client, targets interleaved every LAT_PER_ROUND requests. Three CPU
# placements (taskset, every thread of every process, restored afterwards):
#   free   the scheduler places the client, the servers and the proxies as it likes;
#   core   all of them on one core: every wake-up is a context switch on that core, so the
#          added latency is the proxy's own work (user and kernel) plus its two switches;
#   split  the client on one core, servers and proxies on the other: every hop between the
#          client and what serves it wakes the other core (the floor of one loopback hop).
# On a shared VM an idle core's wake-up costs tens of µs and where the scheduler puts three or
# four processes on two cores changes from round to round; "core" is the placement whose result
# does not move with that, so the target is judged on it (see docs/benchmarks.md).
# The CPUs this script may use (a cpuset may leave out some), as a list and one by one.
read -r -a cpus <<<"$(python3 -c 'import os; print(" ".join(map(str, sorted(os.sched_getaffinity(0)))))')"
all_cpus=$(IFS=,; echo "${cpus[*]}")
all_pids=("${pool_pids[@]}" "${pid_of[direct]}" "${pid_of[keyway]}" "${pid_of[twemproxy]}")
place() { # CPU list for the servers and proxies
  local p
  for p in "${all_pids[@]}"; do taskset -a -p -c "$1" "$p" >/dev/null || die "taskset $1 $p failed"; done
}
placements=(free)
(( ${#cpus[@]} >= 2 )) && placements+=(core split)
for placement in "${placements[@]}"; do
  case $placement in
    free) place "$all_cpus"; client_cpus=$all_cpus ;;
    core) place "${cpus[0]}"; client_cpus=${cpus[0]} ;;
    split) place "${cpus[1]}"; client_cpus=${cpus[0]} ;;
  esac
  for test in get set; do
    log "low-load latency probe: $test, placement $placement (${LAT_ROUNDS} rounds)"
    taskset -c "$client_cpus" python3 scripts/bench/latency.py --test "$test" --rounds "$LAT_ROUNDS" \
      --port "direct=$direct_port" --port "keyway=$keyway_port" --port "twemproxy=$twem_port" \
      >"$dir/latency-$placement-$test.json" || die "latency probe failed ($test, $placement)"
  done
done
place "$all_cpus"

# ---- 3. memory after a heavy pipelined run, once its clients have left
heavy=$dir/heavy.tsv
printf 'target\trss_before_kib\trss_peak_kib\trss_after_kib\n' >"$heavy"
for t in keyway twemproxy; do
  log "memory: heavy pipelined run against $t (${HEAVY_SECS}s: -c 200 -P 64 -d 1024, set/get/mset)"
  before=$(rss_kib "${pid_of[$t]}")
  timeout -s INT "$HEAVY_SECS" redis-benchmark -h 127.0.0.1 -p "${port_of[$t]}" -c 200 -P 64 -d 1024 \
    -r "$KEYSPACE" -t set,get,mset -n 1000000 -l -q >/dev/null 2>>"$dir/redis-benchmark.err" &
  hb=$!
  peak=$before
  while kill -0 "$hb" 2>/dev/null; do
    r=$(rss_kib "${pid_of[$t]}"); (( r > peak )) && peak=$r
    sleep 0.2
  done
  wait "$hb" || true
  sleep 3
  printf '%s\t%s\t%s\t%s\n' "$t" "$before" "$peak" "$(rss_kib "${pid_of[$t]}")" >>"$heavy"
done

for t in keyway twemproxy; do kill -0 "${pid_of[$t]}" 2>/dev/null || die "$t died during the run (see $dir/$t.log)"; done
printf 'load_end\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$facts"
printf 'clk_tck\t%s\n' "$clk" >>"$facts"

# ---- 4. client modes: RESP3 against RESP2, MULTI/EXEC, two-phase MULTI (a pool of their own)
log "client modes (scripts/bench/client_modes.sh)"
modes_env=(BENCH_KEYWAY_BIN="$keyway" BENCH_OUT="$dir/client-modes.md" REPS="$REPS")
[[ $quick == 1 ]] && modes_env+=(BENCH_N=50000 BATCHES=150)
env "${modes_env[@]}" scripts/bench/client_modes.sh >"$dir/client-modes.log" 2>&1 ||
  die "client modes failed (see $dir/client-modes.log)"

# ---- 5. blocking commands: BLPOP/RPUSH ping-pong against direct, memory per blocked client
log "blocking commands (scripts/bench/blocking.py)"
blocking_args=(--keyway "$keyway")
[[ $quick == 1 ]] && blocking_args+=(--seconds 1 --rounds 1 --blocked 500)
python3 scripts/bench/blocking.py "${blocking_args[@]}" >"$dir/blocking.json" 2>"$dir/blocking.log" ||
  die "blocking bench failed (see $dir/blocking.log)"

# ---- 6. pub/sub fan-out: 1,000 subscribers of one channel, through Keyway against direct
log "pub/sub fan-out (scripts/bench/pubsub.py)"
pubsub_args=(--keyway "$keyway")
[[ $quick == 1 ]] && pubsub_args+=(--seconds 1 --rounds 1 --subscribers 200)
python3 scripts/bench/pubsub.py "${pubsub_args[@]}" >"$dir/pubsub.json" 2>"$dir/pubsub.log" ||
  die "pub/sub bench failed (see $dir/pubsub.log)"

# ---- 7. TLS on the client side against plaintext, one Keyway (a pool of its own)
log "TLS against plaintext (scripts/bench/tls.sh)"
tls_env=(BENCH_KEYWAY_BIN="$keyway" BENCH_OUT="$dir/tls.md" REPS="$REPS")
[[ $quick == 1 ]] && tls_env+=(BENCH_N=50000)
env "${tls_env[@]}" scripts/bench/tls.sh >"$dir/tls.log" 2>&1 ||
  die "TLS bench failed (see $dir/tls.log)"

python3 scripts/bench/report.py --dir "$dir" --out "$OUT" --command "$cmd"
log "wrote $OUT"
