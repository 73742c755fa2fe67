#!/usr/bin/env bash
# Local demo of the main job: start Azurite (the project's pinned npm emulator), build rollq,
# generate six sample files (one year of one-minute readings each), submit them, run the
# worker until the queue stays idle, then list the outputs and show the head of one.
# Everything runs on loopback; Azurite keeps its data in memory and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
azurite_pid=""
cleanup() {
    if [[ -n "$azurite_pid" ]]; then
        kill "$azurite_pid" 2>/dev/null || true
        wait "$azurite_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [[ ! -f node_modules/azurite/dist/src/azurite.js ]]; then
    echo "== installing Azurite (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
fi

echo "== building rollq"
# A debug build is enough for six one-year files and shares target/ with the tests.
cargo build --locked --quiet
rollq="target/debug/rollq"

echo "== starting Azurite"
node node_modules/azurite/dist/src/azurite.js --silent --disableTelemetry --inMemoryPersistence \
    --blobHost 127.0.0.1 --blobPort 0 --queueHost 127.0.0.1 --queuePort 0 \
    --tableHost 127.0.0.1 --tablePort 0 >"$work/azurite.out" 2>"$work/azurite.err" &
azurite_pid=$!
blob_port="" queue_port=""
for _ in $(seq 1 600); do
    blob_port="$(sed -n 's|.*Blob service is successfully listening at http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/azurite.out")"
    queue_port="$(sed -n 's|.*Queue service is successfully listening at http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/azurite.out")"
    [[ -n "$blob_port" && -n "$queue_port" ]] && break
    kill -0 "$azurite_pid" 2>/dev/null || { cat "$work/azurite.err"; exit 1; }
    sleep 0.1
done
[[ -n "$blob_port" && -n "$queue_port" ]] || { echo "Azurite did not start"; exit 1; }
echo "   blob :$blob_port, queue :$queue_port"

# The emulator's well-known development account and key (public, not a secret).
key="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
export AZURE_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$key;BlobEndpoint=http://127.0.0.1:$blob_port/devstoreaccount1;QueueEndpoint=http://127.0.0.1:$queue_port/devstoreaccount1;"
export ROLLQ_QUEUE="rollups" ROLLQ_CONTAINER="data"

echo "== generating six sample files (one year of minutes each)"
python3 - "$work" <<'PY'
import datetime, math, sys
out = sys.argv[1]
for n in range(1, 7):
    t = datetime.datetime(2023, 1, 1)
    step = datetime.timedelta(minutes=1)
    with open(f"{out}/temperature{n}.csv", "w") as f:
        f.write("Datetime,Temperature\n")
        for i in range(365 * 24 * 60):
            day = math.sin(2 * math.pi * (i % 1440) / 1440)
            year = math.sin(2 * math.pi * i / (365 * 1440))
            v = 12 + 8 * year + 4 * day + ((i * 7919 + n * 31) % 17) / 10
            f.write(f"{t:%Y-%m-%d %H:%M:%S},{v:.1f}\n")
            t += step
PY
ls -l "$work"/temperature*.csv

echo "== submitting"
"$rollq" submit "$work"/temperature*.csv

echo "== running the worker until the queue stays idle for 5 s"
"$rollq" worker --exit-when-idle 5s --http-addr 127.0.0.1:0

echo "== outputs in container 'data' (rollq blob list)"
ROLLQ_LOG=warn "$rollq" blob list --container data | grep '_aggregated\.csv' | sed 's/^/   /'
echo "== head of temperature1_aggregated.csv (rollq blob get)"
ROLLQ_LOG=warn "$rollq" blob get --container data temperature1_aggregated.csv | head -n 6 | sed 's/^/   /'
