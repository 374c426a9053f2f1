"""The ONNX Runtime backend: TensorRT EP, then CUDA EP, then CPU EP, whichever are present.

``onnxruntime`` is imported when an engine activates, not when this module is imported. Provider
choice (:func:`select_providers`) is a pure function of the providers the installed build offers,
so it is tested without a GPU. With a GPU execution provider the session is warmed up inside
``activate()`` (TensorRT EP builds or loads its engine then), never on the first frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import EngineCompatibilityError, EngineIntegrityError
from engines.manifest import EngineManifest
from engines.runtime.base import Engine

__all__ = ["CPU_EP", "CUDA_EP", "PROVIDER_ORDER", "TENSORRT_EP", "OnnxRuntimeEngine", "select_providers"]

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
#: preference order; the CPU EP always closes the list as the fallback
PROVIDER_ORDER = (TENSORRT_EP, CUDA_EP, CPU_EP)


def select_providers(available: Sequence[str], *, precision: str = "fp32",
                     batch_profile: tuple[int, int, int] = (1, 64, 512), input_name: str = "stamps",
                     input_chw: tuple[int, int, int] = (2, 32, 32), cache_dir: Path | None = None,
                     allowed: Sequence[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(provider, options) pairs in preference order, limited to ``available``.

    ``allowed`` (None: every provider in PROVIDER_ORDER that is available) names the providers to
    use; each one named must be available, else EngineCompatibilityError.
    """
    wanted = PROVIDER_ORDER if allowed is None else tuple(allowed)
    unknown = [p for p in wanted if p not in PROVIDER_ORDER]
    if unknown:
        raise EngineCompatibilityError(f"unknown execution providers {unknown}; choose from "
                                       f"{list(PROVIDER_ORDER)}", where="providers")
    if allowed is not None:
        # a provider named on purpose must be there: a silent fall back to the CPU would run the
        # node at a fraction of the speed its operator planned for
        absent = [p for p in wanted if p not in available]
        if absent:
            raise EngineCompatibilityError(f"execution providers {absent} are not available in this "
                                           f"onnxruntime (it offers {list(available)})", where="providers")
    chosen: list[tuple[str, dict[str, Any]]] = []
    for name in PROVIDER_ORDER:
        if name not in wanted or name not in available:
            continue
        options: dict[str, Any] = {}
        if name == TENSORRT_EP:
            dims = "x".join(str(d) for d in input_chw)
            lo, opt, hi = batch_profile
            options = {
                "trt_fp16_enable": precision == "fp16",
                # a QDQ graph carries its own scales: INT8 on, no calibration table
                "trt_int8_enable": precision == "int8",
                "trt_profile_min_shapes": f"{input_name}:{lo}x{dims}",
                "trt_profile_opt_shapes": f"{input_name}:{opt}x{dims}",
                "trt_profile_max_shapes": f"{input_name}:{hi}x{dims}",
            }
            if cache_dir is not None:
                options.update({
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache_dir),
                    "trt_timing_cache_enable": True,
                    "trt_timing_cache_path": str(cache_dir),
                })
        chosen.append((name, options))
    if not chosen:
        raise EngineCompatibilityError(f"none of the providers {list(wanted)} is available in this "
                                       f"onnxruntime (it offers {list(available)})", where="providers")
    return chosen


class OnnxRuntimeEngine(Engine):
    """An ONNX model run by ONNX Runtime with ``threads`` intra-op threads."""

    backend = "onnxruntime"

    def __init__(self, manifest: EngineManifest, file: str, precision: str, *, threads: int = 1,
                 providers: Sequence[str] | None = None, cache_dir: Path | None = None,
                 batch_profile: tuple[int, int, int] = (1, 64, 512)) -> None:
        if int(threads) != threads or threads < 1:
            raise EngineCompatibilityError(f"threads must be a positive integer, got {threads!r}",
                                           where="threads")
        super().__init__(manifest, file, precision)
        self.threads = int(threads)
        self._allowed = None if providers is None else tuple(providers)
        self._cache_dir = cache_dir
        self._batch_profile = batch_profile
        self._session: Any = None

    @property
    def providers(self) -> list[str]:
        """Execution providers of the open session, in the order ONNX Runtime uses them."""
        return [] if self._session is None else list(self._session.get_providers())

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineCompatibilityError(
                "no ONNX Runtime is installed here: install astro-edge[cpu], or astro-edge[gpu] on a "
                "host with an NVIDIA GPU (./build.sh setup picks one)", where="onnxruntime") from exc

        chosen = select_providers(ort.get_available_providers(), precision=self.precision,
                                  batch_profile=self._batch_profile,
                                  input_name=self.manifest.input.name,
                                  input_chw=tuple(self.manifest.input.shape[1:]),  # type: ignore[arg-type]
                                  cache_dir=self._cache_dir, allowed=self._allowed)
        if self._cache_dir is not None:
            Path(self._cache_dir).mkdir(parents=True, exist_ok=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # The node's batches change size every frame. With memory patterns on, ONNX Runtime plans
        # and keeps one allocation pattern per input shape, so a process's memory creeps up with
        # each new batch size it meets (59 MB over 1500 random batches of 1-512 stamps, against
        # 17 MB with patterns off), at no measurable speed gain for this small graph (20.2k vs
        # 20.9k stamps/s, patterns on vs off): see docs/benchmarks.md, soak.
        options.enable_mem_pattern = False
        try:
            session = ort.InferenceSession(str(self.model_path), sess_options=options,
                                           providers=[name for name, _ in chosen],
                                           provider_options=[opts for _, opts in chosen])
        except Exception as exc:  # onnxruntime raises its own classes for bad graphs and files
            raise EngineIntegrityError(f"ONNX Runtime cannot load the model: {exc}",
                                       where=str(self.model_path)) from exc
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        want_out = [self.manifest.outputs.logits, self.manifest.outputs.embedding]
        if inputs != [self.manifest.input.name] or any(o not in outputs for o in want_out):
            raise EngineCompatibilityError(f"the model has inputs {inputs} and outputs {outputs}; the "
                                           f"manifest promises {self.manifest.input.name!r} -> {want_out}",
                                           where=str(self.model_path))
        self._session = session
        self._output_names = want_out
        # an FP16 graph exported without float32 I/O wants float16 stamps
        self._input_dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
        if chosen[0][0] != CPU_EP:
            # GPU providers compile at the first run; pay that here, not on the first frame
            shape = (self._batch_profile[1], *self.manifest.input.shape[1:])
            self._infer(np.zeros(shape, np.float32))

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, stamps: NDArray[np.float32]) -> tuple[NDArray[Any], NDArray[Any]]:
        feed = {self.manifest.input.name: stamps.astype(self._input_dtype, copy=False)}
        logits, emb = self._session.run(self._output_names, feed)
        return logits, emb
