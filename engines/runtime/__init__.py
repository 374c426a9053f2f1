"""Runtime backends behind one ``Engine`` interface, and ``load_engine`` that picks one.

``load_engine(model_dir, backend, precision, threads)`` verifies the folder's manifest, chooses a
backend and a model file with :func:`select_backend` (a pure function of the manifest, the request
and the probed device), and returns an inactive engine: use it as a context manager. Heavy runtime
libraries (onnxruntime, tensorrt, pycuda) are imported only when an engine activates or a device
is probed. The runtime never imports the node (``edge``), except its error tree and logging.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ConfigError, EngineCompatibilityError
from edge.log import get_logger
from engines.manifest import EngineManifest, load_manifest
from engines.runtime.base import Engine
from engines.runtime.ort import OnnxRuntimeEngine, select_providers
from engines.runtime.trt import DeviceInfo, TensorRTEngine, check_plan_compatible, probe_device

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "BackendChoice",
    "DeviceInfo",
    "Engine",
    "OnnxRuntimeEngine",
    "TensorRTEngine",
    "load_engine",
    "select_backend",
    "select_providers",
]

log = get_logger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")
PRECISIONS = ("auto", "fp32", "fp16", "int8")
_ORT_FORMAT = {"fp32": ("onnx",), "fp16": ("onnx",), "int8": ("onnx-qdq",)}
#: without a build record, "auto" on TensorRT tries plans in this order
_TRT_AUTO_ORDER = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs which file of the engine folder, at which precision."""

    backend: str
    precision: str
    file: str


def _ort_file(manifest: EngineManifest, precision: str) -> str:
    build = manifest.build
    if build is not None and build.backend == "onnxruntime" and build.precision == precision:
        return build.file
    files = manifest.model_files(precision, _ORT_FORMAT[precision])
    if not files:
        have = sorted({e.precision for e in manifest.files.values() if e.format in ("onnx", "onnx-qdq")})
        raise EngineCompatibilityError(f"engine {manifest.name} has no {precision} ONNX file (it has "
                                       f"{have}); export it or choose another precision", where="precision")
    return files[0]


def _compatible_plans(manifest: EngineManifest, precision: str, device: DeviceInfo) -> list[str]:
    out = []
    for rel in manifest.model_files(precision, "tensorrt-plan"):
        try:
            check_plan_compatible(manifest.files[rel], device, where=rel)
        except EngineCompatibilityError:
            continue
        out.append(rel)
    return out


def select_backend(manifest: EngineManifest, backend: str = "auto", precision: str = "auto",
                   device: DeviceInfo | None = None) -> BackendChoice:
    """Pick backend, precision and file.

    ``auto`` takes a TensorRT plan when ``device`` (the probed TensorRT and GPU) is given and the
    manifest holds a plan compatible with it; otherwise ONNX Runtime. ``auto`` precision takes the
    build record's precision for that backend, else int8, fp16, fp32 plans in that order on
    TensorRT, and fp32 on ONNX Runtime.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not one of {BACKENDS}", where="backend")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {PRECISIONS}", where="precision")
    build = manifest.build

    if backend in ("auto", "tensorrt"):
        if device is None:
            if backend == "tensorrt":
                raise EngineCompatibilityError("TensorRT backend asked for, but tensorrt, pycuda or a GPU "
                                               "is missing here; use --backend onnxruntime", where="tensorrt")
        else:
            if precision != "auto":
                order: tuple[str, ...] = (precision,)
            elif build is not None and build.backend == "tensorrt":
                order = (build.precision, *[p for p in _TRT_AUTO_ORDER if p != build.precision])
            else:
                order = _TRT_AUTO_ORDER
            for prec in order:
                plans = _compatible_plans(manifest, prec, device)
                if build is not None and build.backend == "tensorrt" and build.file in plans:
                    return BackendChoice("tensorrt", prec, build.file)
                if plans:
                    return BackendChoice("tensorrt", prec, plans[0])
            if backend == "tensorrt":
                wanted = "any precision" if precision == "auto" else precision
                for prec in order:
                    # say why the closest plan is refused, when there is one
                    for rel in manifest.model_files(prec, "tensorrt-plan"):
                        check_plan_compatible(manifest.files[rel], device, where=rel)
                raise EngineCompatibilityError(
                    f"engine {manifest.name} has no TensorRT plan of {wanted} for this device; build "
                    f"one first with `astro-edge engines build --backend tensorrt`", where="tensorrt")

    if precision == "auto":
        ort_precision = build.precision if build is not None and build.backend == "onnxruntime" else "fp32"
    else:
        ort_precision = precision
    return BackendChoice("onnxruntime", ort_precision, _ort_file(manifest, ort_precision))


def load_engine(model_dir: Path | str, backend: str = "auto", precision: str = "auto", threads: int = 1,
                *, cache_dir: Path | None = None, providers: list[str] | None = None,
                device: DeviceInfo | None = None, trt_module: Any = None,
                cuda_module: Any = None) -> Engine:
    """Verify an engine folder and return an inactive Engine for the chosen backend and precision."""
    manifest = load_manifest(model_dir)
    if device is None and backend in ("auto", "tensorrt"):
        device = probe_device(trt_module=trt_module, cuda_module=cuda_module)
    choice = select_backend(manifest, backend, precision, device)
    engine: Engine
    if choice.backend == "tensorrt":
        engine = TensorRTEngine(manifest, choice.file, choice.precision, device=device,
                                trt_module=trt_module, cuda_module=cuda_module)
    else:
        engine = OnnxRuntimeEngine(manifest, choice.file, choice.precision, threads=threads,
                                   providers=providers, cache_dir=cache_dir)
    log.info("engine.selected", engine_id=engine.engine_id, backend=choice.backend,
             precision=choice.precision, file=choice.file,
             device=None if device is None else device.name or device.compute_capability)
    return engine
