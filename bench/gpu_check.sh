#!/usr/bin/env bash
# GPU check of the engines, on whatever GPU machine is at hand; harmless without one.
#
#   bash bench/gpu_check.sh [ENGINE_DIR]      (default: the shipped default engine)
#
# Runs every GPU-side piece this machine can run, and prints what it could not run and why:
#   1. the GPU as nvidia-smi sees it;
#   2. bench/gpu_check.py: the engine runtimes as the node logs them at start, the start-up
#      refusals, the plan platform check against this GPU's own facts (CuPy or numba), and the
#      engine's network on the GPU through PyTorch against the golden outputs;
#   3. parity of every ONNX file on the execution providers ONNX Runtime offers here;
#   4. where tensorrt and pycuda are installed: TensorRT plans built here (twice: the second build
#      reuses the timing cache), their platform record, parity and speed; else the ONNX speed;
#   5. the tests marked gpu.
# Exit code: 0 when everything that ran was right, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MODEL=${1:-engines/models/$(cat engines/models/DEFAULT)}
WORK=${OUT:-$(mktemp -d)}
failed=()

step() {  # step NAME COMMAND...: run, remember a failure, go on
    local name=$1
    shift
    echo "=== $name"
    if ! "$@"; then
        failed+=("$name")
    fi
}

echo "=== GPU"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv \
    || echo "nvidia-smi: not available (no NVIDIA driver here)"
step "GPU-side checks without TensorRT (bench/gpu_check.py)" "$PY" bench/gpu_check.py --model "$MODEL"
step "parity of every ONNX file on the providers present" "$PY" -m edge.cli engines check --model "$MODEL"

if "$PY" -c "import tensorrt, pycuda.driver" 2>/dev/null; then
    "$PY" -c "import tensorrt as t; print('tensorrt', t.__version__)"
    step "TensorRT plans, first build (fills the timing cache)" \
        "$PY" -m edge.cli engines build --model "$MODEL" --backend tensorrt --precision auto --batch 512 --out "$WORK/built"
    step "TensorRT int8 plan, second build (reuses the timing cache)" \
        "$PY" -m edge.cli engines build --model "$WORK/built" --backend tensorrt --precision int8 --batch 512
    step "the plans' platform record and the build record" "$PY" -c "
import json, sys
m = json.load(open(sys.argv[1]))
for rel, f in m['files'].items():
    if f['format'] == 'tensorrt-plan':
        print(rel, {k: f.get(k) for k in ('cpu_arch', 'os', 'gpu_name', 'integrated', 'compute_capability',
                                          'tensorrt_version', 'cuda_version', 'hardware_compatibility')})
print(json.dumps(m['build'], indent=1))" "$WORK/built/manifest.json"
    step "parity of the plans" "$PY" -m edge.cli engines check --model "$WORK/built"
    step "speed" "$PY" bench/engines.py --model "$WORK/built"
else
    echo "=== could not run: native TensorRT plans (build, platform record, parity, speed): tensorrt or pycuda is not installed"
    step "speed (ONNX Runtime)" "$PY" bench/engines.py --model "$MODEL"
fi

echo "=== tests marked gpu"
"$PY" -m pytest -q -p no:cacheprovider tests/engines -m gpu -rs
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then   # 5: no GPU tests collected
    failed+=("tests marked gpu")
fi

if [ ${#failed[@]} -gt 0 ]; then
    printf '=== FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "=== every step that could run here passed"
