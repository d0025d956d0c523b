#!/usr/bin/env bash
# TLS on the client side against plaintext, through one Keyway in one run: redis-benchmark GET
# and SET at -P 1 and -P 16 (-c 50) on Keyway's plain `listen` and on its `tls_listen`
# (`--tls --cacert`), alternating REPS times per cell (default 3) so that a slow moment of a
# shared machine falls on both; each cell reports its median requests per second and Keyway's
# CPU per request (utime + stime of its process). Target (issue 19): TLS at least 0.7x
# plaintext throughput in every cell. redis-benchmark's own TLS work runs on the same machine.
#
# The certificates (a CA and a certificate for 127.0.0.1) are made by the openssl CLI.
# Prints a markdown table (also written to $BENCH_OUT when set).
#   scripts/bench/tls.sh              # BENCH_KEYWAY_BIN=path to measure a given binary
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/lib.sh
require_tools redis-server redis-benchmark redis-cli python3 openssl
bin=$(keyway_binary)
N=${BENCH_N:-200000}
REPS=${REPS:-3}
scratch_dir tls
read -r p1 p2 p3 kport tport aport <<<"$(free_ports 6)"
start_redis_servers "$p1" "$p2" "$p3"
for p in "$p1" "$p2" "$p3"; do wait_for_ping "$p" 10; done

# A CA, and a certificate for 127.0.0.1 that it signs.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=keyway bench CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$dir/keyway.key" -out "$dir/keyway.csr" 2>/dev/null
printf 'subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n' >"$dir/ext.cnf"
openssl x509 -req -in "$dir/keyway.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -days 2 -extfile "$dir/ext.cnf" -out "$dir/keyway.pem" 2>/dev/null

{ printf 'listen = "127.0.0.1:%s"\ntls_listen = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n' "$kport" "$tport" "$aport"
  printf '[tls]\ncert_file = "%s"\nkey_file = "%s"\n[pool]\n' "$dir/keyway.pem" "$dir/keyway.key"
  pool_servers_toml "$p1" "$p2" "$p3"; } >"$dir/keyway.toml"
"$bin" serve --config "$dir/keyway.toml" >"$dir/keyway.log" 2>&1 &
keyway_pid=$!
pids+=("$keyway_pid")
wait_for_ping "$kport" 10
redis-cli --tls --cacert "$dir/ca.pem" -p "$tport" ping >/dev/null ||
  { echo "tls.sh: Keyway's TLS port does not answer (see $dir/keyway.log)" >&2; exit 1; }

cpu() { awk '{print $14 + $15}' "/proc/$keyway_pid/stat"; }
ticks=$(getconf CLK_TCK)
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

rows=("| cell | plaintext | TLS | TLS / plaintext (target ≥ 0.7) | CPU µs/req plaintext | CPU µs/req TLS |"
      "| --- | --- | --- | --- | --- | --- |")
for p in 1 16; do
  for t in get set; do
    declare -A rps_of=() us_of=()
    for _rep in $(seq 1 "$REPS"); do
      for mode in plain tls; do
        args=(-p "$kport"); [[ $mode == tls ]] && args=(--tls --cacert "$dir/ca.pem" -p "$tport")
        c0=$(cpu)
        rps=$(redis-benchmark "${args[@]}" -t "$t" -n "$N" -c 50 -P "$p" -r 100000 --csv -q |
          awk -F'","' 'NR==2 {print $2}')
        c1=$(cpu)
        rps_of[$mode]+="${rps%.*} "
        us_of[$mode]+="$(python3 -c "print(($c1 - $c0) / $ticks / $N * 1e6)") "
      done
    done
    # shellcheck disable=SC2086
    rp=$(median ${rps_of[plain]}); rt=$(median ${rps_of[tls]})
    # shellcheck disable=SC2086
    up=$(median ${us_of[plain]}); ut=$(median ${us_of[tls]})
    ratio=$(python3 -c "r = $rt / $rp; print(f'{r:.2f}x ' + ('✅' if r >= 0.7 else '❌'))")
    printf -v cell '| %s -P %s (median of %s) | %.0f req/s | %.0f req/s | %s | %.2f | %.2f |' \
      "${t^^}" "$p" "$REPS" "$rp" "$rt" "$ratio" "$up" "$ut"
    rows+=("$cell")
    unset rps_of us_of
  done
done
table=$(printf '%s\n' "${rows[@]}")
note="Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs; N = $N requests per run, -c 50, -r 100000."
printf '%s\n\n%s\n' "$table" "$note"
[[ -n ${BENCH_OUT:-} ]] && printf '%s\n\n%s\n' "$table" "$note" >"$BENCH_OUT"
exit 0
