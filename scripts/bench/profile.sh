#!/usr/bin/env bash
# Where a proxy's time goes, per request: syscalls by kind, context switches and CPU time
# (perf stat: syscall tracepoints and software counters, which work where hardware counters do
# not), the split of CPU samples between kernel and user space and the top user-space symbols
# (perf record -e cpu-clock), and, from a second run of the cell that records every write with
# its socket, the writes per client batch (-P requests: 1 is the floor) and the writes to the
# servers per request (how well requests of different clients share a write).
#
# Targets, on the same 3-server pool: Keyway with its defaults (threads = 1, one current-thread
# runtime, and pool.connections = 1); Keyway with 2 connections per server (keyway-2-conns);
# Keyway with threads = 2 (two work-stealing workers) and 2 connections per server
# (keyway-2-threads); twemproxy.
#
#   scripts/bench/profile.sh                 # GET -P 1 (200k requests), then GET -P 16 (2M)
#   scripts/bench/profile.sh set 16 1000000  # one cell of your choice
#
# Environment: BENCH_KEYWAY_BIN=path (else cargo build --release), PROFILE_TOP=15 (symbols shown).
# Needs: perf (Debian linux-perf), redis-server, redis-benchmark, nutcracker, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh

die() { echo "profile: $*" >&2; exit 1; }
require_tools perf redis-server redis-benchmark redis-cli nutcracker python3
perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1 \
  || die "perf cannot read syscall tracepoints here (try: sysctl kernel.perf_event_paranoid=-1)"

if [[ $# -ge 3 ]]; then cells=("$1:$2:$3"); else cells=("get:1:200000" "get:16:2000000"); fi
top=${PROFILE_TOP:-15}
keyway=$(keyway_binary) || die "cargo build --release failed"

scratch_dir profile

read -r -a ports <<<"$(free_ports 11)"
start_redis_servers "${ports[0]}" "${ports[1]}" "${ports[2]}"

declare -A port_of pid_of
start_keyway() { # name threads connections listen admin
  cat >"$dir/$1.toml" <<EOF
listen = "127.0.0.1:$4"
admin = "127.0.0.1:$5"
threads = $2
[pool]
connections = $3
timeout = "1s"
$(pool_servers_toml "${ports[0]}" "${ports[1]}" "${ports[2]}")
EOF
  env -u KEYWAY_THREADS RUST_LOG=warn "$keyway" serve --config "$dir/$1.toml" </dev/null >"$dir/$1.log" 2>&1 &
  pids+=($!)
  pid_of[$1]=$!
  port_of[$1]=$4
}
sleep 0.3
start_keyway keyway 1 1 "${ports[3]}" "${ports[4]}"
start_keyway keyway-2-conns 1 2 "${ports[9]}" "${ports[10]}"
start_keyway keyway-2-threads 2 2 "${ports[5]}" "${ports[6]}"
twemproxy_yml profile "${ports[7]}" "${ports[0]}" "${ports[1]}" "${ports[2]}" >"$dir/twemproxy.yml"
nutcracker -c "$dir/twemproxy.yml" -s "${ports[8]}" -a 127.0.0.1 -o "$dir/twemproxy.log" </dev/null >/dev/null 2>&1 &
pids+=($!)
pid_of[twemproxy]=$!
port_of[twemproxy]=${ports[7]}
targets=(keyway keyway-2-conns keyway-2-threads twemproxy)
for t in "${targets[@]}"; do
  ok=0
  for _ in $(seq 100); do
    [[ $(redis-cli -p "${port_of[$t]}" set profile:probe 1 2>/dev/null) == OK ]] && { ok=1; break; }
    sleep 0.1
  done
  (( ok )) || die "$t did not start serving (see $dir/$t.log)"
done

events=raw_syscalls:sys_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,context-switches,task-clock

echo "# profile: keyway $("$keyway" --version) (git $(git rev-parse --short HEAD 2>/dev/null || echo '?')), $(nproc) cores, $(uname -sr)"
for cell in "${cells[@]}"; do
  IFS=: read -r test pipe n <<<"$cell"
  echo
  echo "## $test -P $pipe -c 50, $n requests: per request"
  printf '%-18s %9s %7s %9s %7s %7s %7s %7s %7s %9s %12s %12s\n' target rps syscalls send+recv write+read epoll futex ctxsw cpu_us user_% \
    writes/batch srv_writes
  for t in "${targets[@]}"; do
    pid=${pid_of[$t]}
    perf stat -x, -e "$events" -p "$pid" -o "$dir/stat.csv" &
    sp=$!
    perf record -q -e cpu-clock -F 2999 -p "$pid" -o "$dir/perf.data" >/dev/null 2>&1 &
    rp=$!
    sleep 0.3
    rps=$(redis-benchmark -p "${port_of[$t]}" -t "$test" -P "$pipe" -c 50 -n "$n" -r 100000 -d 64 --csv 2>/dev/null \
      | tail -1 | cut -d, -f2 | tr -d '"')
    kill -INT "$sp" "$rp" 2>/dev/null || true
    wait "$sp" "$rp" 2>/dev/null || true
    user=$(perf report -i "$dir/perf.data" --sort dso --stdio 2>/dev/null \
      | awk '/%/ && !/kernel/ && !/^#/ {gsub("%","",$1); s+=$1} END {printf "%.0f", s}')
    # A second run of the same cell records every write with its socket, to tell writes to
    # clients (replies) from writes to the servers (request batches). Server sockets are the
    # ones connected to the pool's ports.
    python3 - "$pid" "${ports[0]} ${ports[1]} ${ports[2]}" >"$dir/server-fds" <<'EOF'
import os, sys
pid, pool = sys.argv[1], {int(p) for p in sys.argv[2].split()}
inodes = set()
for line in open("/proc/net/tcp").readlines()[1:]:
    f = line.split()
    if int(f[2].split(":")[1], 16) in pool:
        inodes.add(f[9])
for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        continue
    if link.startswith("socket:[") and link[8:-1] in inodes:
        print(fd)
EOF
    perf record -q -e syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_write \
      -p "$pid" -o "$dir/writes.data" >/dev/null 2>&1 &
    wp=$!
    sleep 0.3
    redis-benchmark -p "${port_of[$t]}" -t "$test" -P "$pipe" -c 50 -n "$n" -r 100000 -d 64 -q >/dev/null 2>&1
    kill -INT "$wp" 2>/dev/null || true
    wait "$wp" 2>/dev/null || true
    perf script -i "$dir/writes.data" -F trace 2>/dev/null \
      | sed -n 's/.*fd: \(0x[0-9a-f]*\).*/\1/p' >"$dir/write-fds" || true
    python3 - "$dir/stat.csv" "$n" "$t" "$rps" "$user" "$pipe" "$dir/server-fds" "$dir/write-fds" <<'EOF'
import sys
path, n, target, rps, user = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
pipe, server_fds, write_fds = int(sys.argv[6]), sys.argv[7], sys.argv[8]
servers = {int(x) for x in open(server_fds).read().split()}
to_servers = to_clients = 0
for x in open(write_fds).read().split():
    if int(x, 16) in servers:
        to_servers += 1
    else:
        to_clients += 1
v = {}
for line in open(path):
    f = line.strip().split(",")
    if len(f) > 2 and f[0] and not line.startswith("#"):
        try:
            v[f[2]] = float(f[0])
        except ValueError:
            pass
g = lambda k: v.get(k, 0.0) / n
print(f"{target:<18} {float(rps):>9,.0f} {g('raw_syscalls:sys_enter'):>7.2f} "
      f"{g('syscalls:sys_enter_sendto') + g('syscalls:sys_enter_recvfrom'):>9.2f} "
      f"{g('syscalls:sys_enter_write') + g('syscalls:sys_enter_writev') + g('syscalls:sys_enter_read'):>7.2f} "
      f"{g('syscalls:sys_enter_epoll_wait'):>7.2f} {g('syscalls:sys_enter_futex'):>7.2f} "
      f"{g('context-switches'):>7.2f} {v.get('task-clock', 0.0) * 1000 / n:>7.2f} {user:>9} "
      f"{to_clients / (n / pipe):>12.2f} {to_servers / n:>12.3f}")
EOF
    if [[ $t == keyway ]]; then
      perf report -i "$dir/perf.data" --sort dso,sym --stdio 2>/dev/null \
        | awk -v top="$top" '/%/ && !/^#/ && !/kernel/ && n < top {print; n++}' >"$dir/top.txt" || true
    fi
  done
  echo
  echo "top user-space symbols, keyway (share of all its CPU samples):"
  sed 's/^/    /' "$dir/top.txt"
done
