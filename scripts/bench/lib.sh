# Shared by scripts/bench.sh and the scripts in scripts/bench (sourced, not run): the pool
# both proxies serve and the chores around it, written once so that every script measures the
# same setup.

# free_ports N: N free loopback ports (bound, then released; a race with another process is
# unlikely), space-separated.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# pool_servers_toml PORT...: Keyway's [[pool.servers]] entries, named a, b, c, ... in order.
pool_servers_toml() {
  local names=(a b c d e f g h) i=0 port
  for port in "$@"; do
    printf '\n[[pool.servers]]\nname = "%s"\naddr = "127.0.0.1:%s"\n' "${names[$i]}" "$port"
    i=$((i + 1))
  done
}

# twemproxy_yml NAME LISTEN_PORT PORT...: twemproxy's equivalent pool (ketama over fnv1a_64,
# the same server names, one connection per server as is its default, no auto-eject).
twemproxy_yml() {
  local name=$1 listen=$2 names=(a b c d e f g h) i=0 port
  shift 2
  printf '%s:\n  listen: 127.0.0.1:%s\n  hash: fnv1a_64\n  distribution: ketama\n  redis: true\n' "$name" "$listen"
  printf '  auto_eject_hosts: false\n  server_connections: 1\n  preconnect: true\n  timeout: 1000\n  servers:\n'
  for port in "$@"; do
    printf '   - 127.0.0.1:%s:1 %s\n' "$port" "${names[$i]}"
    i=$((i + 1))
  done
}

# keyway_binary: the Keyway binary to measure: $BENCH_KEYWAY_BIN, else a fresh release build.
# Prints its path.
keyway_binary() {
  if [[ -n ${BENCH_KEYWAY_BIN:-} ]]; then
    echo "$BENCH_KEYWAY_BIN"
    return
  fi
  cargo build --release --quiet >&2 || return 1
  echo "$PWD/target/release/keyway"
}

# scratch_dir NAME: sets dir (a new temporary directory) and pids (empty); on exit every process
# in pids is killed and reaped, and dir is removed.
scratch_dir() {
  dir=$(mktemp -d "/tmp/keyway-$1.XXXXXX")
  pids=()
  trap scratch_cleanup EXIT
}
scratch_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}

# start_redis_servers PORT...: one redis-server per port, without persistence, logging into dir;
# their pids are added to pids.
start_redis_servers() {
  local i=0 port
  for port in "$@"; do
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$dir" --logfile "$dir/redis-$i.log" </dev/null >/dev/null 2>&1 &
    pids+=($!)
    i=$((i + 1))
  done
}

# require_tools TOOL...: exits with a message naming the first tool not on PATH.
require_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null && continue
    echo "$(basename "$0"): $tool not found (Debian: apt-get install -y redis-server redis-tools nutcracker valgrind linux-perf python3)" >&2
    exit 1
  done
}

# wait_for_ping PORT SECONDS: true once something on PORT answers PING, false after SECONDS.
wait_for_ping() {
  local port=$1 tries=$(( $2 * 5 ))
  while (( tries-- > 0 )); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  redis-cli -p "$port" ping >/dev/null 2>&1
}
