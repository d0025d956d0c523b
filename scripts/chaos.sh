#!/usr/bin/env bash
# Keyway's chaos test: two Keyways over three redis-servers (AOF, appendfsync always), eight
# clients doing INCR, cross-server MSET, GET and MGET through both, while servers are killed
# (SIGKILL, restarted from their AOF), stopped (SIGSTOP/SIGCONT), paused (CLIENT PAUSE), put to
# sleep (DEBUG SLEEP) and Keyways are killed and restarted; then the checker over the history.
# docs/chaos.md says what is checked and gives the last results.
#
#   scripts/chaos.sh                           # every mode, seed 1, 60 s
#   scripts/chaos.sh -d 30 -s 1,2,3 two_phase  # modes of your choice, seeds, seconds per run
#   scripts/chaos.sh -o /tmp/chaos all:2       # mode[:replicas]; keep histories in a directory
#
# Modes: primary, all, two_phase (replicas = 2), quorum (replicas = 3). Each run writes
# OUT/<mode>-<seed>/{history.jsonl,final.json,summary.json}. Exit status 1 when any run has a
# violation. Environment: CHAOS_KEYWAY_BIN=path (else cargo build
# --release), CHAOS_ARGS (more
# scripts/chaos/run.py options, e.g. "--faults redis_kill,keyway_kill"), CHECK_ARGS (more
# scripts/chaos/check.py options).
# Needs: redis-server, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=60 seeds=1 out=""
while getopts "d:s:o:" opt; do
  case $opt in
    d) duration=$OPTARG ;;
    s) seeds=$OPTARG ;;
    o) out=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [[ $# -gt 0 ]]; then cells=("$@"); else cells=(primary all quorum two_phase); fi
command -v redis-server >/dev/null || { echo "chaos: redis-server not found (scripts/ensure-deps.sh)" >&2; exit 1; }
if [[ -n ${CHAOS_KEYWAY_BIN:-} ]]; then
  keyway=$CHAOS_KEYWAY_BIN
else
  cargo build --release --quiet
  keyway="${CARGO_TARGET_DIR:-$PWD/target}/release/keyway"
fi
if [[ -z $out ]]; then
  out=$(mktemp -d /tmp/keyway-chaos.XXXXXX)
fi
echo "# chaos: $keyway, ${duration}s per run, histories in $out"
status=0
for cell in "${cells[@]}"; do
  mode=${cell%%:*}
  replicas=${cell#*:}
  if [[ $replicas == "$cell" ]]; then
    if [[ $mode == quorum ]]; then replicas=3; else replicas=2; fi
  fi
  for seed in ${seeds//,/ }; do
    run="$out/$mode-$seed"
    # shellcheck disable=SC2086
    if ! python3 scripts/chaos/run.py --keyway "$keyway" --mode "$mode" --replicas "$replicas" \
      --seed "$seed" --duration "$duration" --out "$run" --quiet ${CHAOS_ARGS:-}; then
      echo "mode=$mode seed=$seed: the run failed (see above)"
      status=1
      continue
    fi
    # shellcheck disable=SC2086
    python3 scripts/chaos/check.py "$run" ${CHECK_ARGS:-} || status=1
  done
done
exit $status
