#!/usr/bin/env bash
# astro-edge: set-up, test, demo, engines, benchmarks. See README.md.
#
#   ./build.sh setup     create .venv and install astro-edge with the extras this machine can use
#   ./build.sh test      set up if needed, then ruff, mypy and the whole test suite (extra args go to pytest)
#   ./build.sh demo      set up if needed, then run the demo (extra args go to `astro-edge demo`)
#   ./build.sh engines   set up if needed, then `astro-edge engines ARGS...` (default: build)
#   ./build.sh bench     set up if needed, then run every benchmark in bench/ (or the ones named)
#   ./build.sh clean     remove .venv and build leftovers
#
# Environment: PYTHON (interpreter to build the venv from, default python3),
#              ASTRO_EDGE_EXTRAS (override the extras list, e.g. "dev,twin").
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
MARKER="$VENV/.astro-edge-setup"

say() { printf '[build.sh] %s\n' "$*" >&2; }

platform_extras() {
    # Jetson (JetPack): TensorRT and pycuda come with the system Python; the venv sees them.
    if [ -f /etc/nv_tegra_release ] || [ -d /usr/src/tensorrt ] && [ "$(uname -m)" = "aarch64" ]; then
        echo "jetson dev,twin"
        return
    fi
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "gpu dev,twin,train,gpu"
        return
    fi
    echo "cpu dev,twin,train"
}

setup_stamp() {
    # the set-up is redone when pyproject.toml or this script change
    cat pyproject.toml build.sh | sha256sum | cut -c1-16
}

cmd_setup() {
    read -r kind extras <<<"$(platform_extras)"
    extras="${ASTRO_EDGE_EXTRAS:-$extras}"
    if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
        say "astro-edge needs Python >= 3.10; $PY is $("$PY" --version 2>&1). Set PYTHON=/path/to/python3.10+"
        exit 1
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        if [ "$kind" = jetson ]; then
            say "Jetson detected: the venv sees the system site packages (TensorRT, pycuda from JetPack)"
            "$PY" -m venv --system-site-packages "$VENV"
        else
            "$PY" -m venv "$VENV"
        fi
    fi
    say "installing astro-edge[$extras] into .venv ($kind machine)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[$extras]"
    if [ "$kind" = gpu ]; then
        say "NVIDIA GPU found: onnxruntime-gpu installed. For TensorRT engines: ASTRO_EDGE_EXTRAS=dev,twin,train,gpu,tensorrt ./build.sh setup"
    fi
    setup_stamp >"$MARKER"
}

ensure_setup() {
    if [ ! -f "$MARKER" ] || [ "$(cat "$MARKER")" != "$(setup_stamp)" ]; then
        cmd_setup
    fi
}

cmd_test() {
    ensure_setup
    # lint and types first: a suite that passes on code ruff or mypy refuses does not pass
    say "ruff check"
    "$VENV/bin/ruff" check .
    say "mypy (settings in pyproject.toml)"
    "$VENV/bin/mypy"
    "$VENV/bin/python" -m pytest "$@"
}

cmd_demo() {
    ensure_setup
    "$VENV/bin/astro-edge" demo "$@"
}

cmd_engines() {
    ensure_setup
    if [ $# -eq 0 ]; then set -- build; fi
    "$VENV/bin/astro-edge" engines "$@"
}

cmd_bench() {
    ensure_setup
    local scripts=("$@")
    if [ ${#scripts[@]} -eq 0 ]; then scripts=(bench/*.py); fi
    for s in "${scripts[@]}"; do
        say "bench: $s"
        "$VENV/bin/python" "$s"
    done
}

cmd_clean() {
    rm -rf "$VENV" build dist ./*.egg-info .pytest_cache .ruff_cache .hypothesis bench/out
    find . -name __pycache__ -type d -prune -exec rm -rf {} +
}

sub="${1:-}"
[ $# -gt 0 ] && shift
case "$sub" in
    setup) cmd_setup "$@" ;;
    test) cmd_test "$@" ;;
    demo) cmd_demo "$@" ;;
    engines) cmd_engines "$@" ;;
    bench) cmd_bench "$@" ;;
    clean) cmd_clean ;;
    *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; [ -z "$sub" ] || exit 2 ;;
esac
