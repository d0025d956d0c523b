#!/usr/bin/env bash
# Installs what Keyway's scripts and tests run against, when missing (Debian/Ubuntu):
# redis-server, redis-tools (redis-cli, redis-benchmark; Debian's are built with TLS, which
# tests/tls.rs uses), openssl (certificates for scripts/bench/tls.sh), prometheus for promtool,
# redis-py, RQ and Celery, and (where node and npm are) the npm packages of tests/clients and
# tests/frameworks.
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
# RQ and Celery (with kombu's Redis transport), pinned, for tests/frameworks.rs.
frameworks_py='import sys, rq, celery, kombu, kombu.transport.redis; sys.exit((rq.__version__, celery.__version__, kombu.__version__) != ("3.0.0", "5.7.0", "5.7.0"))'
if [ "${1:-all}" = all ] && ! python3 -c "$frameworks_py" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "redis==8.2.0" "rq==3.0.0" "celery[redis]==5.7.0" "kombu[redis]==5.7.0" >&2 ||
    echo "warning: could not install RQ 3.0.0 and Celery 5.7.0; their tests will be skipped" >&2
fi
# node-redis and ioredis for tests/clients.rs, BullMQ (with them) for tests/frameworks.rs, at the
# versions of each directory's package-lock.json: `npm ci` when node_modules is missing or was
# installed from another lock file.
if [ "${1:-all}" = all ] && command -v node >/dev/null && command -v npm >/dev/null; then
  for dir in clients frameworks; do
    pkgs="$(dirname "$0")/../tests/$dir"
    if ! cmp -s "$pkgs/package-lock.json" "$pkgs/node_modules/.keyway-installed-lock"; then
      if npm ci --prefix "$pkgs" --no-audit --no-fund --loglevel=error >&2; then
        cp "$pkgs/package-lock.json" "$pkgs/node_modules/.keyway-installed-lock"
      else
        echo "warning: npm ci failed in tests/$dir; its node tests will be skipped" >&2
      fi
    fi
  done
fi
have && exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "installing ${want[*]}..." >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
