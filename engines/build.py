"""``astro-edge engines build``: measure each precision on this device, pick one, record the choice.

For the chosen backend (``auto``: TensorRT where TensorRT, pycuda and a GPU are present, else ONNX
Runtime) every candidate precision is timed at the requested batch size and checked against the
accuracy gate: the golden stamps' parity with the FP32 outputs, within the manifest's tolerances
(:mod:`engines.check`). ``--precision auto`` keeps the fastest precision that passes; a named
precision is kept only if it passes. TensorRT plans are built here, explicitly, from the FP32 ONNX
(fp32, fp16) or the INT8 QDQ ONNX (int8), with a timing cache that later builds reuse. The choice,
the file it runs, the platform (CPU architecture, OS, and for TensorRT the CUDA version) and every
measured figure go into the manifest's ``build`` record, written to the output folder (the model
folder itself unless ``--out`` names another; the model files are copied there). Each plan's file
entry records the platform it was built on, which the runtime checks before loading it.
:func:`choose_precision` is the pure decision rule.

The chosen precision is then timed at every batch size of :data:`BATCH_SWEEP`;
:func:`choose_batch` keeps the smallest batch within 5 % of the fastest, and the record holds it
as ``figures["batch"]`` with the sweep as ``figures["batch_sweep"]``. A node whose
``[engine] batch_size`` is 0 (the default) runs that batch.
"""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ConfigError, EngineCompatibilityError, EngineError
from edge.log import get_logger

__all__ = ["BATCH_SWEEP", "build_engine", "choose_batch", "choose_precision", "time_engine"]

log = get_logger(__name__)

PRECISION_ORDER = ("fp32", "fp16", "int8")
#: batch sizes the chosen precision is timed at
BATCH_SWEEP = (16, 32, 64, 128, 256, 512)
#: a smaller batch within this share of the fastest rate is kept: as fast, with less memory and latency
BATCH_TOLERANCE = 0.05


def choose_precision(figures: dict[str, dict[str, Any]], requested: str = "auto") -> str:
    """The precision to run: the requested one if it passed the gate, else (``auto``) the fastest that passed.

    ``figures`` maps precision to at least ``stamps_per_s`` and ``passed``. Raises
    EngineCompatibilityError when nothing acceptable was measured.
    """
    passed = {p: f for p, f in figures.items() if f.get("passed") and f.get("stamps_per_s")}
    if requested != "auto":
        if requested not in passed:
            why = "was not measured" if requested not in figures else "failed the accuracy gate"
            raise EngineCompatibilityError(f"precision {requested} {why} on this device; see the "
                                           "figures above or choose --precision auto", where="precision")
        return requested
    if not passed:
        raise EngineCompatibilityError("no precision passed the accuracy gate; the engine folder is "
                                       "broken, re-export it", where="precision")
    return max(passed, key=lambda p: (passed[p]["stamps_per_s"], -PRECISION_ORDER.index(p)))


def choose_batch(rates: dict[int, float], tolerance: float = BATCH_TOLERANCE) -> int:
    """The smallest batch whose stamps per second are within ``tolerance`` of the fastest measured."""
    best = max(rates.values(), default=0.0)
    if best <= 0:
        raise EngineCompatibilityError("no batch size was measured", where="batch")
    return min(b for b, rate in rates.items() if rate >= (1.0 - tolerance) * best)


def time_engine(engine: Any, stamps: np.ndarray, batch: int, min_time_s: float = 1.0,
                min_repeats: int = 3) -> float:
    """Stamps per second of an active engine at one batch size (best of repeated timed runs)."""
    x = np.ascontiguousarray(np.resize(stamps, (batch, *stamps.shape[1:])), np.float32)
    engine.infer(x)  # warm-up: allocations, kernel selection
    best = np.inf
    start_all = time.perf_counter()
    n = 0
    while n < min_repeats or time.perf_counter() - start_all < min_time_s:
        t0 = time.perf_counter()
        engine.infer(x)
        best = min(best, time.perf_counter() - t0)
        n += 1
    return float(batch / best)


def _device_name(backend: str, device: Any) -> str:
    if backend == "tensorrt" and device is not None:
        return f"{device.name or 'GPU'} (sm {device.compute_capability})"
    return f"{platform.machine()} CPU ({platform.processor() or platform.system()})"


def build_engine(model_dir: Path, out_dir: Path | None = None, backend: str = "auto",
                 precision: str = "auto", batch: int = 512, threads: int = 1,
                 cache_dir: Path | None = None) -> Any:
    """Measure, choose and record; returns the written (verified) manifest."""
    from engines.check import compare_outputs, load_golden
    from engines.manifest import BuildInfo, file_entry, load_manifest, write_manifest
    from engines.runtime import OnnxRuntimeEngine, TensorRTEngine
    from engines.runtime.trt import TrtBuildSettings, build_plan, probe_device, source_onnx_for

    if backend not in ("auto", "onnxruntime", "tensorrt"):
        raise ConfigError(f"backend {backend!r} is not auto, onnxruntime or tensorrt", where="--backend")
    if precision not in ("auto", *PRECISION_ORDER):
        raise ConfigError(f"precision {precision!r} is not auto, fp32, fp16 or int8", where="--precision")
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}", where="--batch")
    manifest = load_manifest(model_dir)
    out = Path(out_dir) if out_dir is not None else Path(model_dir)
    if out.resolve() != Path(model_dir).resolve():
        out.mkdir(parents=True, exist_ok=True)
        for rel in manifest.files:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(manifest.path(rel), out / rel)
        write_manifest(manifest, out)
        manifest = load_manifest(out)
    golden = load_golden(manifest)
    device = probe_device() if backend in ("auto", "tensorrt") else None
    if backend == "tensorrt" and device is None:
        raise EngineCompatibilityError("TensorRT asked for, but tensorrt, pycuda or a GPU is missing "
                                       "here; use --backend onnxruntime", where="--backend")
    chosen_backend = "tensorrt" if device is not None else "onnxruntime"
    candidates = PRECISION_ORDER if precision == "auto" else (precision,)
    files = dict(manifest.files)
    figures: dict[str, dict[str, Any]] = {}
    runs: dict[str, str] = {}
    for prec in candidates:
        tolerance = manifest.golden.tolerance.get(prec, {}) if manifest.golden else {}
        if device is not None:   # the TensorRT backend was chosen
            settings = TrtBuildSettings(precision=prec, opt_batch=batch, max_batch=max(batch, 512))
            plan_rel = f"plan_{prec}_sm{device.compute_capability.replace('.', '')}.engine"
            built = build_plan(manifest.path(source_onnx_for(manifest, prec)), out / plan_rel, settings,
                               cache_dir=cache_dir or out / "trt-cache", device=device)
            files[plan_rel] = file_entry(out / plan_rel, prec, "tensorrt-plan", **built.file_fields())
            write_manifest(manifest.with_files(files), out)
            manifest = load_manifest(out)
            engine: Any = TensorRTEngine(manifest, plan_rel, prec, device=device)
            extra = {"build_s": round(built.build_s, 2), "timing_cache_reused": built.timing_cache_reused}
            rel = plan_rel
        else:
            wanted = ("onnx-qdq",) if prec == "int8" else ("onnx",)
            found = manifest.model_files(prec, wanted)
            if not found:
                log.warning("engines.build.missing", precision=prec)
                continue
            rel = found[0]
            engine = OnnxRuntimeEngine(manifest, rel, prec, threads=threads)
            extra = {}
        try:
            with engine:
                logits, embedding = engine.infer(golden["stamps"])
                rate = time_engine(engine, golden["stamps"], batch)
        except EngineError as exc:
            log.warning("engines.build.failed", precision=prec, error=str(exc))
            figures[prec] = {"passed": False, "error": str(exc)}
            continue
        d_l, d_e, top1, passed = compare_outputs(logits, embedding, golden["logits"], golden["embedding"], tolerance)
        figures[prec] = {"stamps_per_s": round(rate, 1), "batch": batch, "logits_max_abs": d_l,
                         "embedding_max_abs": d_e, "top1_agreement": top1, "passed": passed, **extra}
        runs[prec] = rel
        log.info("engines.build.measured", backend=chosen_backend, precision=prec, **figures[prec])
    choice = choose_precision(figures, precision)
    # the chosen precision at every batch size it takes: the node's [engine] batch_size = 0 runs the best
    # (TensorRT plans are built for batches up to max(batch, 512), so every size of the sweep fits)
    sweep_engine = (TensorRTEngine(manifest, runs[choice], choice, device=device) if device is not None
                    else OnnxRuntimeEngine(manifest, runs[choice], choice, threads=threads))
    with sweep_engine:
        sweep = {b: round(time_engine(sweep_engine, golden["stamps"], b, min_time_s=0.3), 1) for b in BATCH_SWEEP}
    best_batch = choose_batch(sweep)
    batch_sweep = {str(b): rate for b, rate in sweep.items()}
    log.info("engines.build.batch", precision=choice, batch=best_batch, stamps_per_s=batch_sweep)
    if device is not None:
        cpu_arch, os_name, cuda_version = device.cpu_arch, device.os, device.cuda_version
    else:
        cpu_arch, os_name, cuda_version = platform.machine(), platform.system(), ""
    info = BuildInfo(backend=chosen_backend, precision=choice, file=runs[choice],
                     device=_device_name(chosen_backend, device),
                     tensorrt_version=device.tensorrt_version if device is not None else None,
                     compute_capability=device.compute_capability if device is not None else None,
                     figures={"threads": threads, "precisions": figures, "batch": best_batch,
                              "batch_sweep": batch_sweep,
                              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                     cpu_arch=cpu_arch or None, os=os_name or None, cuda_version=cuda_version or None)
    write_manifest(manifest.with_files(files, build=info), out)
    log.info("engines.build.chosen", backend=chosen_backend, precision=choice, file=runs[choice])
    return load_manifest(out)
