#!/usr/bin/env bash
# Installs what Keyway's scripts and tests run against, when missing (Debian/Ubuntu):
# redis-server, redis-tools (redis-cli, redis-benchmark), and prometheus for promtool.
# `scripts/ensure-deps.sh redis` installs only the Redis packages.
set -euo pipefail
want=(redis-server redis-tools)
have() { command -v redis-server >/dev/null && command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null; }
if [ "${1:-all}" = all ]; then
  want+=(prometheus)
  have() { command -v redis-server >/dev/null && command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null && command -v promtool >/dev/null; }
fi
have && exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "installing ${want[*]}..." >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
