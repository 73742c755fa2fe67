#!/usr/bin/env bash
# Runs every rollq test on a fresh Debian machine with Rust, Node and Python: installs what the
# tests need (the Azure Storage emulator from this project's package-lock.json, the deploy
# checks' tools), then runs the whole suite. The README's test command. Its last line counts
# every test it ran: cargo's tests plus the deploy checks inside them.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies (npm ci: Azurite)"
npm ci --no-audit --no-fund --loglevel=error

echo "== installing the deploy checks' tools (promtool, shellcheck, PyPI venv)"
bash scripts/setup-deploy-tools.sh

echo "== cargo build --examples"
# The bounded-memory tests run example programs as child processes and read their peak RSS;
# `cargo test --all-targets` builds examples only as test harnesses, so build them for real.
cargo build --examples --locked

echo "== cargo test"
mkdir -p target
LOG=target/test.log
# The deploy-check test writes its own `check-deploy: N passed, M failed` line here.
SUMMARY=target/tmp/check-deploy.summary
rm -f "$SUMMARY"
status=0
cargo test --all-targets --locked 2>&1 | tee "$LOG" || status=$?

# Every `test result: ok. N passed; M failed; ...` line of cargo, plus the deploy checks.
read -r passed failed < <(
    sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed;.*/\1 \2/p' "$LOG" |
        awk '{p += $1; f += $2} END {print p + 0, f + 0}'
)
if [ -f "$SUMMARY" ]; then
    read -r dp df < <(sed -n 's/^check-deploy: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$SUMMARY")
    passed=$((passed + ${dp:-0}))
    failed=$((failed + ${df:-0}))
fi
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1 # cargo failed without a test failing (a build error): still a failure
fi
echo "$passed passed, $failed failed"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
