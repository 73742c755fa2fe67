#!/usr/bin/env bash
# End-to-end check of the monitoring: a real Prometheus server (Debian `prometheus`) with
# deploy/components/monitoring/prometheusrule.yaml's rules loaded scrapes a rollq worker that runs against
# Azurite; a message the worker cannot parse is poisoned, and the RollqPoisonQueueNotEmpty alert
# must turn `pending`, read back from Prometheus' HTTP API. The worker's real /metrics scrape is
# saved and every rollq_* name used by the dashboard and the alerts is checked against it.
#
#   scripts/e2e-prometheus.sh --rollq target/debug/rollq [--save-scrape FILE]
#   scripts/e2e-prometheus.sh --rollq target/debug/rollq --stand-in-metrics FILE
#
# The rollq binary also sets up Azurite (`rollq queue create|send|stats`, `rollq blob
# create-container`). --stand-in-metrics serves FILE (e.g. the contract fixture) in place of a
# worker, to check this harness, the Prometheus configuration and the rules themselves before
# the worker exists; it still exercises Azurite and rollq's queue tools. It is NOT the
# end-to-end test.
#
# Everything listens on 127.0.0.1 only; Azurite picks its own ports, the others get free ports
# from the kernel. Every process started here is stopped by its own PID on exit. Needs
# `npm ci` (Azurite) and the tools scripts/setup-deploy-tools.sh installs (scripts/test.sh runs both).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROLLQ_BIN=""
STAND_IN=""
SAVE_SCRAPE=""
DEADLINE_SECS=${E2E_DEADLINE_SECS:-180}
while [ $# -gt 0 ]; do
    case "$1" in
        --rollq) ROLLQ_BIN=$2; shift 2 ;;
        --stand-in-metrics) STAND_IN=$2; shift 2 ;;
        --save-scrape) SAVE_SCRAPE=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "e2e: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$ROLLQ_BIN" ]; then
    echo "e2e: give --rollq BIN (plus --stand-in-metrics FILE to check the harness only)" >&2
    exit 2
fi

PY=$ROOT/target/deploy-tools/venv/bin/python
if ! command -v prometheus >/dev/null || [ ! -x "$PY" ]; then
    echo "e2e: prometheus or the venv is missing: run scripts/setup-deploy-tools.sh first" >&2
    exit 2
fi
if [ ! -f node_modules/azurite/dist/src/azurite.js ]; then
    echo "e2e: Azurite is missing: run npm ci first" >&2
    exit 2
fi

exec 3>&2
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_for DESCRIPTION CMD...: poll CMD every 0.5s until it succeeds or the deadline passes.
wait_for() {
    local what=$1 end=$((SECONDS + DEADLINE_SECS)); shift
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$end" ]; then echo "e2e: timed out after ${DEADLINE_SECS}s waiting for $what" >&2; return 1; fi
        sleep 0.5
    done
}

# --- Azurite -----------------------------------------------------------------------------------
node node_modules/azurite/dist/src/azurite.js --silent --disableTelemetry --inMemoryPersistence \
    --blobHost 127.0.0.1 --blobPort 0 --queueHost 127.0.0.1 --queuePort 0 \
    --tableHost 127.0.0.1 --tablePort 0 >"$WORK/azurite.log" 2>&1 &
PIDS+=($!)
wait_for "Azurite to listen" grep -q "Queue service is successfully listening" "$WORK/azurite.log"
BLOB_PORT=$(sed -n 's|.*Blob service is successfully listening at http://127.0.0.1:\([0-9]*\).*|\1|p' "$WORK/azurite.log")
QUEUE_PORT=$(sed -n 's|.*Queue service is successfully listening at http://127.0.0.1:\([0-9]*\).*|\1|p' "$WORK/azurite.log")
BLOB=http://127.0.0.1:$BLOB_PORT/devstoreaccount1
QUEUE_URL=http://127.0.0.1:$QUEUE_PORT/devstoreaccount1
# Azurite's published development account key (not a secret). The rollq tools below and the
# worker read the connection from the environment.
DEV_KEY=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==
export AZURE_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$DEV_KEY;BlobEndpoint=$BLOB;QueueEndpoint=$QUEUE_URL;"
echo "== Azurite: blob $BLOB_PORT, queue $QUEUE_PORT"

# rq ARGS...: a rollq tool against this Azurite; only warnings on stderr, results on stdout.
rq() { ROLLQ_LOG=warn RUST_LOG=warn "$ROLLQ_BIN" "$@"; }
# qstat QUEUE FIELD: one number from `rollq queue stats` (e.g. approximate_messages).
qstat() { rq queue stats --queue "$1" | sed -n "s/^$2: \([0-9]*\).*/\1/p"; }

SUFFIX=$(printf '%04x%04x' "$RANDOM" "$RANDOM")
Q=e2e-$SUFFIX
rq queue create --queue "$Q" >/dev/null # and $Q-poison
rq blob create-container --container "in-$SUFFIX" >/dev/null
rq blob create-container --container "out-$SUFFIX" >/dev/null
# The poison scenario: a message that is not a job (the worker cannot parse it) and one naming
# a blob that does not exist (a storage not_found error). Both go straight to the poison queue
# (bad input is never retried), and between them every rollq metric family gets a series.
rq queue send --queue "$Q" '{"not": "a rollq job"}' "missing-$SUFFIX.csv" >/dev/null
[ "$(qstat "$Q" approximate_messages)" = 2 ] || { echo "e2e: messages not enqueued" >&2; exit 1; }

# --- the worker (or the stand-in) --------------------------------------------------------------
TARGET_PORT=$(free_port)
if [ -z "$STAND_IN" ]; then
    ROLLQ_QUEUE=$Q ROLLQ_CONTAINER=in-$SUFFIX ROLLQ_OUTPUT_CONTAINER=out-$SUFFIX \
    ROLLQ_ALLOWED_CONTAINERS=in-$SUFFIX ROLLQ_HTTP_ADDR=127.0.0.1:$TARGET_PORT \
    ROLLQ_MAX_IN_FLIGHT=2 ROLLQ_MAX_DEQUEUE_COUNT=2 ROLLQ_MAX_POLL_INTERVAL=1s \
    ROLLQ_QUEUE_STATS_INTERVAL=1s ROLLQ_LOG_FORMAT=text \
        "$ROLLQ_BIN" worker >"$WORK/worker.log" 2>&1 &
    WORKER_PID=$!
    PIDS+=("$WORKER_PID")
    echo "== rollq worker on 127.0.0.1:$TARGET_PORT"
    worker_ready() {
        if ! kill -0 "$WORKER_PID" 2>/dev/null; then
            # fd 3 is the script's stderr: wait_for silences the probe's own output.
            echo "e2e: the worker exited before it was ready:" >&3
            cat "$WORK/worker.log" >&3
            exit 1
        fi
        curl -fsS "http://127.0.0.1:$TARGET_PORT/readyz"
    }
    wait_for "the worker to be ready" worker_ready || { cat "$WORK/worker.log" >&2; exit 1; }
else
    mkdir -p "$WORK/standin"
    cp "$STAND_IN" "$WORK/standin/metrics"
    (cd "$WORK/standin" && exec "$PY" -m http.server --bind 127.0.0.1 "$TARGET_PORT") >"$WORK/standin.log" 2>&1 &
    PIDS+=($!)
    echo "== STAND-IN metrics ($STAND_IN) on 127.0.0.1:$TARGET_PORT (harness check, not the e2e)"
    wait_for "the stand-in" curl -fsS "http://127.0.0.1:$TARGET_PORT/metrics"
fi

# --- Prometheus --------------------------------------------------------------------------------
"$PY" scripts/deploy_check.py rules-extract deploy/components/monitoring/prometheusrule.yaml "$WORK/rollq-rules.yaml"
PROM_PORT=$(free_port)
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
- $WORK/rollq-rules.yaml
scrape_configs:
- job_name: rollq/rollq
  static_configs:
  - targets: ["127.0.0.1:$TARGET_PORT"]
    labels:
      namespace: e2e
EOF
promtool check config "$WORK/prometheus.yml" >/dev/null
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
echo "== Prometheus on 127.0.0.1:$PROM_PORT"
wait_for "Prometheus to be ready" curl -fsS "http://127.0.0.1:$PROM_PORT/-/ready" \
    || { cat "$WORK/prometheus.log" >&2; exit 1; }

alert_state() { # prints the state of RollqPoisonQueueNotEmpty, or nothing
    curl -fsS "http://127.0.0.1:$PROM_PORT/api/v1/alerts" | "$PY" -c '
import json, sys
alerts = json.load(sys.stdin)["data"]["alerts"]
print(" ".join(a["state"] for a in alerts if a["labels"]["alertname"] == "RollqPoisonQueueNotEmpty"))'
}
alert_pending() { [ "$(alert_state)" = pending ]; }
if ! wait_for "RollqPoisonQueueNotEmpty to be pending" alert_pending; then
    echo "e2e: alert state: '$(alert_state)'" >&2
    curl -fsS "http://127.0.0.1:$PROM_PORT/api/v1/query?query=rollq_poison_queue_messages" >&2 || true
    [ -f "$WORK/worker.log" ] && tail -50 "$WORK/worker.log" >&2
    exit 1
fi
echo "ok   RollqPoisonQueueNotEmpty is pending (read from /api/v1/alerts)"

if [ -z "$STAND_IN" ]; then
    both_poisoned() {
        curl -fsS "http://127.0.0.1:$TARGET_PORT/metrics" | grep -q '^rollq_messages_total{outcome="poisoned"} 2$'
    }
    wait_for "the worker to count both messages poisoned" both_poisoned \
        || { tail -50 "$WORK/worker.log" >&2; exit 1; }
    POISON_LEN=$(qstat "$Q" poison_approximate_messages)
    [ "${POISON_LEN:-0}" -eq 2 ] || { echo "e2e: poison queue $Q-poison holds '${POISON_LEN}', not 2" >&2; exit 1; }
    echo "ok   $Q-poison holds $POISON_LEN message(s) (read from Azurite)"
fi

# The scrape Prometheus saw is the real list of names the worker emits.
curl -fsS "http://127.0.0.1:$TARGET_PORT/metrics" >"$WORK/scrape.prom"
[ -n "$SAVE_SCRAPE" ] && cp "$WORK/scrape.prom" "$SAVE_SCRAPE"
"$PY" scripts/deploy_check.py metrics --scrape "$WORK/scrape.prom" --allow deploy/tests/external-metrics.txt \
    --rules deploy/components/monitoring/prometheusrule.yaml --dashboard deploy/components/monitoring/dashboards/rollq.json
if [ -z "$STAND_IN" ]; then
    echo "e2e: 1 passed, 0 failed"
else
    echo "e2e harness check with STAND-IN metrics passed (not the end-to-end test)"
fi
