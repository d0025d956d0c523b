#!/usr/bin/env bash
# Installs what Keyway's scripts and tests run against, when missing (Debian/Ubuntu):
# redis-server, redis-tools (redis-cli, redis-benchmark; Debian's are built with TLS, which
# tests/tls.rs uses), openssl (certificates for scripts/bench/tls.sh), prometheus for promtool,
# redis-py, and
# (where node and npm are) the npm packages of tests/clients.
# `scripts/ensure-deps.sh redis` installs only the Redis packages.
set -euo pipefail
want=(redis-server redis-tools openssl)
have() { command -v redis-server >/dev/null && command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null && command -v openssl >/dev/null; }
if [ "${1:-all}" = all ]; then
  want+=(prometheus)
  have() { command -v redis-server >/dev/null && command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null && command -v openssl >/dev/null && command -v promtool >/dev/null; }
fi
# redis-py, pinned: the client whose defaults (RESP3, MULTI/EXEC pipelines) the tests check.
if [ "${1:-all}" = all ] && ! python3 -c 'import redis, sys; sys.exit(redis.__version__ != "8.2.0")' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "redis==8.2.0" >&2 ||
    echo "warning: could not install redis-py 8.2.0; its tests will be skipped" >&2
fi
# node-redis and ioredis for tests/clients.rs, at the versions of tests/clients/package-lock.json:
# `npm ci` when node_modules is missing or was installed from another lock file.
if [ "${1:-all}" = all ] && command -v node >/dev/null && command -v npm >/dev/null; then
  clients="$(dirname "$0")/../tests/clients"
  if ! cmp -s "$clients/package-lock.json" "$clients/node_modules/.keyway-installed-lock"; then
    if npm ci --prefix "$clients" --no-audit --no-fund --loglevel=error >&2; then
      cp "$clients/package-lock.json" "$clients/node_modules/.keyway-installed-lock"
    else
      echo "warning: npm ci failed in tests/clients; the node-redis and ioredis tests will be skipped" >&2
    fi
  fi
fi
have && exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "installing ${want[*]}..." >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
