"""Benchmark: stamps/s of every backend and precision of an engine, at batch sizes 1, 64 and 512.

Each runnable file of the engine folder (ONNX Runtime on every ONNX file; TensorRT on every plan
compatible with this machine, where TensorRT, pycuda and a GPU are present) infers the golden
stamps, tiled to the batch size, and the best of repeated timed runs is kept. The reference is
the FP32 ONNX file on ONNX Runtime, measured in the same run; the last line prints the ratio of
the best other precision to it at batch 512.

    .venv/bin/python bench/engines.py [--model engines/models/stampnet-v1] [--threads 1] [--min-time 1.0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# this script is named like the package it measures: keep its own folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

from edge.node.assemble import default_engine_dir  # noqa: E402
from engines.build import time_engine  # noqa: E402
from engines.check import load_golden  # noqa: E402
from engines.manifest import load_manifest  # noqa: E402
from engines.runtime import OnnxRuntimeEngine, TensorRTEngine  # noqa: E402
from engines.runtime.trt import check_plan_compatible, probe_device  # noqa: E402

BATCHES = (1, 64, 512)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="engine folder (default: the shipped engine)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default: 1)")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per point (default: 1.0)")
    parser.add_argument("--providers", default=None,
                        help="comma-separated ONNX Runtime providers to allow (default: all present, TensorRT EP first)")
    args = parser.parse_args()

    manifest = load_manifest(args.model or default_engine_dir())
    stamps = load_golden(manifest)["stamps"]
    device = probe_device()
    providers = args.providers.split(",") if args.providers else None
    runs = []
    for rel, entry in manifest.files.items():
        if entry.format in ("onnx", "onnx-qdq"):
            runs.append(("onnxruntime", entry.precision, rel,
                         OnnxRuntimeEngine(manifest, rel, entry.precision, threads=args.threads, providers=providers)))
        elif entry.format == "tensorrt-plan" and device is not None:
            try:
                check_plan_compatible(entry, device, where=rel)
            except Exception as exc:  # noqa: BLE001 - an incompatible plan is reported, not timed
                print(f"skip {rel}: {exc}")
                continue
            runs.append(("tensorrt", entry.precision, rel, TensorRTEngine(manifest, rel, entry.precision, device=device)))
    print(f"engine {manifest.name} {manifest.version}; device: {device.name if device else 'CPU only'}; "
          f"ONNX Runtime threads {args.threads}")
    print(f"{'backend':<12} {'precision':<9} {'providers':<28} " + " ".join(f"{'b=' + str(b):>10}" for b in BATCHES))
    rates: dict[tuple[str, str], dict[int, float]] = {}
    for backend, precision, _rel, engine in runs:
        with engine:
            rates[(backend, precision)] = {b: time_engine(engine, stamps, b, min_time_s=args.min_time) for b in BATCHES}
            where = ",".join(p.replace("ExecutionProvider", "") for p in getattr(engine, "providers", [])) or "-"
        print(f"{backend:<12} {precision:<9} {where:<28} "
              + " ".join(f"{rates[(backend, precision)][b]:>10.0f}" for b in BATCHES))
    ref = rates[("onnxruntime", "fp32")][512]
    others = {k: v[512] for k, v in rates.items() if k != ("onnxruntime", "fp32")}
    best = max(others, key=lambda k: others[k]) if others else ("onnxruntime", "fp32")
    ratio = others.get(best, ref) / ref
    print(f"reference onnxruntime fp32 at batch 512: {ref:.0f} stamps/s; best other {best[0]} {best[1]}: "
          f"{others.get(best, ref):.0f} stamps/s; ratio {ratio:.2f}x; "
          f"int8/fp32 on onnxruntime {rates.get(('onnxruntime', 'int8'), {512: np.nan})[512] / ref:.2f}x")


if __name__ == "__main__":
    main()
