#!/usr/bin/env bash
# astro-edge: set-up, test, demo, engines, benchmarks. See README.md.
#
#   ./build.sh setup     create .venv and install astro-edge with the extras this machine can use
#   ./build.sh test      set up if needed (and a C compiler, the C client, nats-server, Chromium), then ruff, mypy and the whole test suite (extra args go to pytest)
#   ./build.sh build-c   build the reference DAQ client in C (clients/c) into clients/c/build, installing its -dev packages with apt when root
#   ./build.sh demo      set up if needed, then run the demo (extra args go to `astro-edge demo`)
#   ./build.sh engines   set up if needed, then `astro-edge engines ARGS...` (default: build)
#   ./build.sh bench     set up if needed, then run every benchmark in bench/ (or the ones named)
#   ./build.sh clean     remove .venv and build leftovers
#   ./build.sh extras [jetson|gpu|cpu]   print the extras setup installs (on this machine, or a kind)
#
# Environment: PYTHON (interpreter to build the venv from, default python3; on a Jetson the system
#              Python that JetPack's TensorRT belongs to), CUDA_HOME (default /usr/local/cuda),
#              ASTRO_EDGE_EXTRAS (override the extras list, e.g. "dev,twin"; at most one of cpu and
#              gpu, and this machine's is added when it names neither), ASTRO_EDGE_MACHINE (jetson,
#              gpu or cpu: overrides the detected kind, e.g. in a container that hides the board).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
MARKER="$VENV/.astro-edge-setup"

say() { printf '[build.sh] %s\n' "$*" >&2; }

machine_kind() {
    if [ -n "${ASTRO_EDGE_MACHINE:-}" ]; then
        case "$ASTRO_EDGE_MACHINE" in
            jetson|gpu|cpu) echo "$ASTRO_EDGE_MACHINE"; return ;;
            *) say "ASTRO_EDGE_MACHINE=$ASTRO_EDGE_MACHINE is not jetson, gpu or cpu"; exit 2 ;;
        esac
    fi
    # jetson: an aarch64 Tegra board with JetPack (TensorRT from the system; an Arm server with a
    # discrete GPU is a "gpu" machine); gpu: an NVIDIA GPU that nvidia-smi lists; cpu: the rest
    if [ "$(uname -m)" = "aarch64" ] && { [ -f /etc/nv_tegra_release ] \
            || grep -qs 'nvidia,tegra' /proc/device-tree/compatible; }; then
        echo jetson
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo gpu
    else
        echo cpu
    fi
}

system_has_onnxruntime() {
    # on a Jetson the venv sees the system's packages: an ONNX Runtime already there is used as it is
    "$PY" -c 'import onnxruntime' >/dev/null 2>&1
}

kind_extras() {
    # the extras of one machine kind; exactly one ONNX Runtime wheel: "cpu" (onnxruntime) or "gpu"
    # (onnxruntime-gpu), never both, since both install the module onnxruntime and the last one
    # written wins. A Jetson whose system Python already has an ONNX Runtime installs neither.
    case "$1" in
        jetson) if [ "${2:-}" = system-ort ]; then echo "jetson,dev,twin"; else echo "jetson,cpu,dev,twin"; fi ;;
        gpu) echo "gpu,dev,twin,train" ;;
        cpu) echo "cpu,dev,twin,train" ;;
        *) say "unknown machine kind $1 (jetson, gpu or cpu)"; return 2 ;;
    esac
}

check_extras() {
    # an extras list names at most one ONNX Runtime wheel; with none, the machine's own ($2, which
    # may be empty: a Jetson whose system Python has one) is added
    local extras=$1 own=$2 ort=""
    case ",$extras," in *,cpu,*) ort=cpu ;; esac
    case ",$extras," in
        *,gpu,*) if [ -n "$ort" ]; then
                     say "extras '$extras' name both cpu (onnxruntime) and gpu (onnxruntime-gpu): they install the same module; name one"
                     return 2
                 fi
                 ort=gpu ;;
    esac
    if [ -z "$ort" ] && [ -n "$own" ]; then
        extras="$own,$extras"
    fi
    echo "$extras"
}

machine_extras() {
    local kind=$1 extras own
    if [ "$kind" = jetson ] && system_has_onnxruntime; then
        extras=$(kind_extras jetson system-ort)
    else
        extras=$(kind_extras "$kind")
    fi
    if [ -n "${ASTRO_EDGE_EXTRAS:-}" ]; then
        case ",$extras," in *,gpu,*) own=gpu ;; *,cpu,*) own=cpu ;; *) own="" ;; esac
        check_extras "$ASTRO_EDGE_EXTRAS" "$own"
    else
        echo "$extras"
    fi
}

need_cuda_toolkit() {
    # pycuda has no binary wheel: pip builds it against the CUDA toolkit of this machine
    local cuda=${CUDA_HOME:-/usr/local/cuda}
    if [ ! -x "$cuda/bin/nvcc" ] && ! command -v nvcc >/dev/null 2>&1; then
        say "pycuda is built against this machine's CUDA, and no nvcc was found (looked in $cuda/bin and PATH)."
        say "On a Jetson: sudo apt install nvidia-jetpack (or cuda-toolkit-12-6 on JetPack 6); elsewhere the CUDA toolkit; or set CUDA_HOME."
        exit 1
    fi
    if ! "$PY" -c 'import os, sysconfig, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)'; then
        say "pycuda needs Python's C headers to build: sudo apt install python3-dev build-essential"
        exit 1
    fi
    export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda"
}

check_jetpack() {
    # JetPack's TensorRT Python bindings belong to the system Python: the venv is built from it
    local v
    if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
        say "$PY is $("$PY" --version 2>&1): JetPack 5 ships Python 3.8 and TensorRT 8.5; astro-edge needs Python >= 3.10 and TensorRT 10 (JetPack 6.1 or newer)"
        exit 1
    fi
    if ! v=$("$PY" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null); then
        say "$PY cannot import tensorrt: install JetPack's TensorRT Python bindings (sudo apt install python3-libnvinfer) or point PYTHON at the Python they belong to"
        exit 1
    fi
    case "$v" in
        10.*) say "JetPack TensorRT $v with $("$PY" --version 2>&1)" ;;
        *) say "TensorRT $v found; astro-edge's TensorRT backend is written for TensorRT 10 (JetPack 6.1 or newer)"; exit 1 ;;
    esac
}

setup_stamp() {
    # the set-up is redone when pyproject.toml or this script change
    cat pyproject.toml build.sh | sha256sum | cut -c1-16
}

keep_one_onnxruntime() {
    # switching flavour in an existing venv: both wheels write onnxruntime/, so uninstalling one
    # breaks the other; remove both and let the install below bring back the one wanted
    local want=$1 other
    other=$([ "$want" = onnxruntime ] && echo onnxruntime-gpu || echo onnxruntime)
    if "$VENV/bin/python" - "$other" "$VENV" <<'PYEOF'
import importlib.metadata as md, os, sys
try:
    dist = md.distribution(sys.argv[1])
except md.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if os.path.realpath(str(dist.locate_file(""))).startswith(os.path.realpath(sys.argv[2])) else 1)
PYEOF
    then
        say "removing $other from .venv: it and $want install the same module"
        "$VENV/bin/python" -m pip uninstall --quiet --yes onnxruntime onnxruntime-gpu
    fi
}

cmd_setup() {
    local kind extras
    kind=$(machine_kind)
    if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
        if [ "$kind" = jetson ]; then check_jetpack; fi
        say "astro-edge needs Python >= 3.10; $PY is $("$PY" --version 2>&1). Set PYTHON=/path/to/python3.10+"
        exit 1
    fi
    if [ "$kind" = jetson ]; then check_jetpack; fi
    extras=$(machine_extras "$kind")
    case ",$extras," in *,jetson,*|*,tensorrt,*) need_cuda_toolkit ;; esac
    if [ ! -x "$VENV/bin/python" ]; then
        if [ "$kind" = jetson ]; then
            say "Jetson: the venv sees the system site packages (JetPack's TensorRT bindings)"
            "$PY" -m venv --system-site-packages "$VENV"
        else
            "$PY" -m venv "$VENV"
        fi
    fi
    case ",$extras," in
        *,cpu,*) keep_one_onnxruntime onnxruntime ;;
        *,gpu,*) keep_one_onnxruntime onnxruntime-gpu ;;
    esac
    say "installing astro-edge[$extras] into .venv ($kind machine)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[$extras]"
    if [ "$kind" = gpu ]; then
        case ",$extras," in
            *,tensorrt,*) ;;
            *) say "NVIDIA GPU found: onnxruntime-gpu installed. For native TensorRT plans: ASTRO_EDGE_EXTRAS=gpu,dev,twin,train,tensorrt ./build.sh setup" ;;
        esac
    fi
    setup_stamp >"$MARKER"
}

ensure_setup() {
    if [ ! -f "$MARKER" ] || [ "$(cat "$MARKER")" != "$(setup_stamp)" ]; then
        cmd_setup
    fi
}

# the disk-fault tests compile a small preloaded shim (tests/faults/ioshim.c); the C client is C
ensure_cc() {
    if command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; then return; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing a C compiler (gcc) for the disk-fault tests and the C client"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
    else
        say "the disk-fault tests and the C client need a C compiler: sudo apt install gcc (or your system's equivalent)"
        exit 1
    fi
}

# the reference DAQ client in C (clients/c): libzmq and libxxhash, and lz4 / zstd payloads when
# their libraries are there; its tests (tests/clients) run what this builds
C_CLIENT_PACKAGES="make pkg-config libzmq3-dev libxxhash-dev liblz4-dev libzstd-dev"

ensure_c_client_deps() {
    if command -v make >/dev/null 2>&1 && command -v pkg-config >/dev/null 2>&1 \
            && pkg-config --exists libzmq libxxhash liblz4 libzstd; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing the C client's build dependencies: $C_CLIENT_PACKAGES"
        # shellcheck disable=SC2086  # a list of package names
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $C_CLIENT_PACKAGES >/dev/null
    elif ! { command -v make && command -v pkg-config && pkg-config --exists libzmq libxxhash; } >/dev/null 2>&1; then
        say "the C client (clients/c) needs make, pkg-config, libzmq and libxxhash: sudo apt install $C_CLIENT_PACKAGES"
        exit 1
    fi
}

cmd_build_c() {
    ensure_cc
    ensure_c_client_deps
    make -C clients/c --no-print-directory
    say "C client built: clients/c/build (libastro_edge_daq.a, libastro_edge_daq.so, example_daq)"
}

# the JetStream tests start nats-server (the distribution's package)
ensure_nats_server() {
    if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then return; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing nats-server for the JetStream tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
    else
        say "the JetStream tests need nats-server: sudo apt install nats-server (or the release binary on PATH)"
        exit 1
    fi
}

# the review desk's tests drive headless Chromium through its WebDriver (the distribution's packages)
ensure_chromium() {
    if command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 \
            || command -v chromium-browser >/dev/null 2>&1; }; then return; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing chromium and chromium-driver for the review desk's browser tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        say "the review desk's browser tests need Chromium and its driver: sudo apt install chromium chromium-driver"
        exit 1
    fi
}

cmd_test() {
    ensure_setup
    ensure_cc
    ensure_nats_server
    ensure_chromium
    cmd_build_c
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
    rm -rf "$VENV" build dist ./*.egg-info .pytest_cache .ruff_cache .hypothesis bench/out clients/c/build
    find . -name __pycache__ -type d -prune -exec rm -rf {} +
}

sub="${1:-}"
[ $# -gt 0 ] && shift
case "$sub" in
    setup) cmd_setup "$@" ;;
    extras) if [ $# -gt 0 ]; then kind_extras "$@"; else kind=$(machine_kind) && machine_extras "$kind"; fi ;;
    test) cmd_test "$@" ;;
    build-c) cmd_build_c ;;
    demo) cmd_demo "$@" ;;
    engines) cmd_engines "$@" ;;
    bench) cmd_bench "$@" ;;
    clean) cmd_clean ;;
    *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; [ -z "$sub" ] || exit 2 ;;
esac
