#!/usr/bin/env bash
# Runs every rollq test on a fresh Debian machine with Rust, Node and Python: installs what the
# tests need (the Azure Storage emulator from this project's package-lock.json), then runs the
# whole suite. The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies (npm ci: Azurite)"
npm ci --no-audit --no-fund --loglevel=error

echo "== cargo build --examples"
# The bounded-memory tests run example programs as child processes and read their peak RSS;
# `cargo test --all-targets` builds examples only as test harnesses, so build them for real.
cargo build --examples --locked

echo "== cargo test"
cargo test --all-targets --locked
