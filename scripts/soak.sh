#!/usr/bin/env bash
# The on-demand fault-injection soak: two workers behind the fault-injecting proxy, every
# fault kind at 5 % into every request kind, MESSAGES one-day inputs (default 1000), seed
# SEED (default 1209). Runs the ignored test `worker_soak::soak_on_demand` and prints its
# one-line result (messages, requests, deliveries, outcomes, faults injected per kind,
# storage errors, duration); docs/RELIABILITY.md records a run.
#
#   scripts/soak.sh                    # 1,000 messages
#   MESSAGES=200 SEED=7 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

[ -d node_modules/azurite ] || npm ci --no-audit --no-fund --loglevel=error
export ROLLQ_SOAK_MESSAGES="${MESSAGES:-1000}"
export ROLLQ_SOAK_SEED="${SEED:-1209}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
start=$(date +%s)
if cargo test --test it worker_soak::soak_on_demand -- --ignored --exact --nocapture >"$log" 2>&1; then
    status=passed
else
    status=FAILED
fi
grep -E '^soak on-demand:|panicked|^soak on-demand \(seed' "$log" || true
echo "soak $status: $ROLLQ_SOAK_MESSAGES messages, seed $ROLLQ_SOAK_SEED, $(($(date +%s) - start)) s wall (build included)"
if [ "$status" = FAILED ]; then
    tail -n 200 "$log"
    exit 1
fi
