#!/usr/bin/env bash
# GPU check of the engines: ONNX Runtime on every provider present (TensorRT EP, CUDA EP, CPU) and,
# where tensorrt and pycuda are installed, explicit TensorRT plans built from the QDQ ONNX (built
# twice, so the second build shows the timing cache reused), their parity and their speed.
#
#   bash bench/gpu_check.sh [ENGINE_DIR]      (default: the shipped engine)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MODEL=${1:-engines/models/stampnet-v1}
WORK=${OUT:-$(mktemp -d)}

nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv || echo "nvidia-smi: not available"
"$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"

echo "== parity of every ONNX file on the providers present"
"$PY" -m edge.cli engines check --model "$MODEL"

if "$PY" -c "import tensorrt, pycuda.driver" 2>/dev/null; then
    "$PY" -c "import tensorrt as t; print('tensorrt', t.__version__)"
    echo "== TensorRT plans (first build fills the timing cache, the second reuses it)"
    "$PY" -m edge.cli engines build --model "$MODEL" --backend tensorrt --precision auto --batch 512 --out "$WORK/built"
    "$PY" -m edge.cli engines build --model "$WORK/built" --backend tensorrt --precision int8 --batch 512
    "$PY" -c "import json,sys; b=json.load(open(sys.argv[1]))['build']; print(json.dumps(b, indent=1))" "$WORK/built/manifest.json"
    echo "== parity of the plans"
    "$PY" -m edge.cli engines check --model "$WORK/built"
    echo "== speed"
    "$PY" bench/engines.py --model "$WORK/built"
else
    echo "tensorrt or pycuda is not installed: the TensorRT plan path is skipped"
    "$PY" bench/engines.py --model "$MODEL"
fi
"$PY" -m pytest tests/engines -q -m gpu || test $? -eq 5   # 5: no GPU tests collected
