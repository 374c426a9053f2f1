"""``astro-edge engines check``: parity of every available backend and precision against FP32.

Like Polygraphy's compare: each runnable (backend, file) of an engine folder infers the golden
stamps, and its logits, embedding and top-1 class are compared with the FP32 outputs stored in the
golden file, against the tolerances in the manifest. TensorRT plans are checked only where
TensorRT, pycuda and a compatible GPU are present; elsewhere they are reported as skipped with the
reason. :func:`compare_outputs` is pure numpy; :func:`check_engine` is the shell that loads files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import EngineCompatibilityError, EngineError, EngineIntegrityError
from edge.log import get_logger

__all__ = ["ParityResult", "check_engine", "compare_outputs", "load_golden"]

log = get_logger(__name__)


@dataclass(frozen=True)
class ParityResult:
    """One backend and file against the golden FP32 outputs."""

    backend: str
    precision: str
    file: str
    logits_max_abs: float
    embedding_max_abs: float
    top1_agreement: float
    passed: bool
    skipped: str | None = None   # why it did not run, when it did not


def compare_outputs(logits: NDArray[Any], embedding: NDArray[Any], ref_logits: NDArray[Any],
                    ref_embedding: NDArray[Any], tolerance: dict[str, float]) -> tuple[float, float, float, bool]:
    """(logits max |diff|, embedding max |diff|, top-1 agreement of the member mean, passed)."""
    if logits.shape != ref_logits.shape or embedding.shape != ref_embedding.shape:
        raise EngineError(f"output shapes {logits.shape}, {embedding.shape} differ from the golden "
                          f"{ref_logits.shape}, {ref_embedding.shape}", where="golden")
    d_logits = float(np.abs(logits - ref_logits).max())
    d_embedding = float(np.abs(embedding - ref_embedding).max())
    top1 = float((logits.mean(axis=1).argmax(axis=1) == ref_logits.mean(axis=1).argmax(axis=1)).mean())
    passed = (d_logits <= tolerance.get("logits_max_abs", np.inf)
              and d_embedding <= tolerance.get("embedding_max_abs", np.inf)
              and top1 >= tolerance.get("top1_agreement_min", 0.0))
    return d_logits, d_embedding, top1, bool(passed)


def load_golden(manifest: Any) -> dict[str, NDArray[Any]]:
    """The golden stamps and their FP32 outputs of a verified manifest."""
    if manifest.golden is None:
        raise EngineIntegrityError("the manifest names no golden stamps; re-export the engine",
                                   where=str(manifest.directory))
    with np.load(manifest.path(manifest.golden.file)) as data:
        missing = {"stamps", "logits", "embedding"} - set(data.files)
        if missing:
            raise EngineIntegrityError(f"golden file lacks arrays {sorted(missing)}", where=manifest.golden.file)
        return {k: data[k] for k in data.files}


def _runnables(manifest: Any) -> list[tuple[str, str, str]]:
    """(backend, precision, file) of every model file of the folder."""
    out = []
    for rel, entry in manifest.files.items():
        if entry.format in ("onnx", "onnx-qdq"):
            out.append(("onnxruntime", entry.precision, rel))
        elif entry.format == "tensorrt-plan":
            out.append(("tensorrt", entry.precision, rel))
    return out


def check_engine(model_dir: Path, threads: int = 1, device: Any = None) -> list[ParityResult]:
    """Run every available backend and file on the golden stamps; one result each."""
    from engines.manifest import load_manifest
    from engines.runtime import OnnxRuntimeEngine, TensorRTEngine
    from engines.runtime.trt import check_plan_compatible, probe_device

    manifest = load_manifest(model_dir)
    golden = load_golden(manifest)
    assert manifest.golden is not None  # load_golden refuses a manifest without one
    tolerances = manifest.golden.tolerance
    results = []
    runnables = _runnables(manifest)
    if device is None and any(b == "tensorrt" for b, _, _ in runnables):
        device = probe_device()
    for backend, precision, rel in runnables:
        tolerance = tolerances.get(precision, {})
        if backend == "tensorrt":
            if device is None:
                results.append(ParityResult(backend, precision, rel, np.nan, np.nan, np.nan, True,
                                            skipped="no TensorRT, pycuda or GPU here"))
                continue
            try:
                check_plan_compatible(manifest.files[rel], device, where=rel)
            except EngineCompatibilityError as exc:
                results.append(ParityResult(backend, precision, rel, np.nan, np.nan, np.nan, True,
                                            skipped=str(exc)))
                continue
            engine: Any = TensorRTEngine(manifest, rel, precision, device=device)
        else:
            engine = OnnxRuntimeEngine(manifest, rel, precision, threads=threads)
        with engine:
            logits, embedding = engine.infer(golden["stamps"])
        d_l, d_e, top1, passed = compare_outputs(logits, embedding, golden["logits"],
                                                 golden["embedding"], tolerance)
        results.append(ParityResult(backend, precision, rel, d_l, d_e, top1, passed))
        log.info("engines.check.result", backend=backend, precision=precision, file=rel,
                 logits_max_abs=d_l, embedding_max_abs=d_e, top1_agreement=top1, passed=passed)
    return results
