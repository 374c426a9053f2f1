"""What this environment can run an engine with, and the start-up check of an engine request.

Two ONNX Runtime wheels provide the same module ``onnxruntime``: ``onnxruntime`` (CPU execution
provider only) and ``onnxruntime-gpu`` (CUDA and TensorRT execution providers as well). Installed
side by side, the module on disk is whichever wheel was written last, so the providers a node
believes it has may be absent. :func:`probe_runtime` reports the installed distributions, the
providers ONNX Runtime really offers and the native TensorRT device (or why there is none);
:func:`check_request` refuses, with an error that says what to install, a request this
environment cannot honour: ``backend = "tensorrt"`` without TensorRT, pycuda and a GPU, or an
execution provider the installed ONNX Runtime lacks.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.errors import EngineCompatibilityError
from engines.runtime.ort import CPU_EP
from engines.runtime.trt import DeviceInfo, probe_device

__all__ = ["ORT_DISTRIBUTIONS", "RuntimeReport", "check_request", "probe_runtime"]

#: the wheels that install the module ``onnxruntime``; exactly one may be present
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")

_INSTALL_HINT = ("./build.sh setup installs exactly one ONNX Runtime: onnxruntime-gpu on a host "
                 "with an NVIDIA GPU, onnxruntime elsewhere (pip: astro-edge[gpu] or astro-edge[cpu])")


@dataclass(frozen=True)
class RuntimeReport:
    """The engine runtimes of this environment, as probed."""

    #: onnxruntime.__version__, or None where the module does not import
    onnxruntime_version: str | None
    #: installed wheels among ORT_DISTRIBUTIONS (more than one is a broken environment)
    distributions: tuple[str, ...]
    #: execution providers the imported onnxruntime offers
    providers: tuple[str, ...]
    #: the native TensorRT device, or None
    device: DeviceInfo | None = None
    #: why there is no native TensorRT device ("" when there is one)
    tensorrt_absent: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def conflicting(self) -> bool:
        """Both ONNX Runtime wheels are installed: which one's files are on disk is unknown."""
        return len(self.distributions) > 1

    def describe(self) -> str:
        """One line for errors: version, wheel, providers."""
        if self.onnxruntime_version is None:
            return "no onnxruntime"
        wheel = " + ".join(self.distributions) or "unknown wheel"
        return f"onnxruntime {self.onnxruntime_version} ({wheel}) offering {list(self.providers)}"

    def as_log(self) -> dict[str, Any]:
        """Key-value context for the ``engine.runtime`` log event."""
        dev = self.device
        return {"onnxruntime": self.onnxruntime_version, "onnxruntime_wheels": list(self.distributions),
                "providers": list(self.providers),
                "tensorrt": None if dev is None else dev.tensorrt_version,
                "gpu": None if dev is None else dev.name or dev.compute_capability,
                "compute_capability": None if dev is None else dev.compute_capability,
                "tensorrt_absent": self.tensorrt_absent or None}


def _installed(names: Sequence[str]) -> tuple[str, ...]:
    found = []
    for name in names:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return tuple(found)


def _tensorrt_absent(device: DeviceInfo | None, find_spec: Callable[[str], Any]) -> str:
    if device is not None:
        return ""
    if find_spec("tensorrt") is None:
        return "the tensorrt module is not installed"
    try:
        pycuda = find_spec("pycuda")
    except (ImportError, ValueError):
        pycuda = None
    if pycuda is None:
        return "pycuda is not installed"
    return "no CUDA GPU is visible to pycuda"


def probe_runtime(*, probe_tensorrt: bool = True, ort_module: Any = None,
                  distributions: Sequence[str] | None = None, device: DeviceInfo | None = None,
                  find_spec: Callable[[str], Any] = importlib.util.find_spec) -> RuntimeReport:
    """Probe ONNX Runtime (version, wheels, providers) and, when asked, the native TensorRT device.

    The keyword arguments stand in for the environment in tests: ``ort_module`` for the imported
    onnxruntime, ``distributions`` for the installed wheels, ``device`` for the probed GPU.
    """
    ort = ort_module
    if ort is None:
        try:
            ort = importlib.import_module("onnxruntime")
        except ImportError:
            ort = None
    version = None if ort is None else str(getattr(ort, "__version__", "unknown"))
    providers = () if ort is None else tuple(ort.get_available_providers())
    wheels = _installed(ORT_DISTRIBUTIONS) if distributions is None else tuple(distributions)
    if probe_tensorrt and device is None:
        device = probe_device()
    absent = _tensorrt_absent(device, find_spec) if probe_tensorrt else "not probed"
    return RuntimeReport(onnxruntime_version=version, distributions=wheels, providers=providers,
                         device=device, tensorrt_absent=absent)


def check_request(report: RuntimeReport, backend: str = "auto",
                  providers: Sequence[str] = ()) -> None:
    """Refuse an engine request this environment cannot honour; say what to install instead.

    ``backend`` is the ``[engine] backend`` (auto | onnxruntime | tensorrt) and ``providers`` the
    ``[engine] providers`` (empty: every provider ONNX Runtime offers, in preference order).
    """
    gpu_named = [p for p in providers if p != CPU_EP]
    if backend == "tensorrt":
        if report.device is None:
            hint = ""
            if "TensorrtExecutionProvider" in report.providers:
                hint = ("; this onnxruntime offers the TensorRT execution provider: backend = "
                        "\"onnxruntime\" with providers = [\"TensorrtExecutionProvider\"] uses it")
            raise EngineCompatibilityError(
                f"backend \"tensorrt\" runs native TensorRT plans, but {report.tensorrt_absent}; "
                f"set backend = \"onnxruntime\" or install TensorRT 10 with pycuda (docs/engines-runtime.md, "
                f"\"Installing on a GPU host or a Jetson\"){hint}", where="engine.backend")
        if gpu_named or providers:
            raise EngineCompatibilityError("engine.providers choose ONNX Runtime's execution providers; "
                                           "with backend \"tensorrt\" they are not used: leave them empty",
                                           where="engine.providers")
        return
    if report.onnxruntime_version is None and (backend == "onnxruntime" or report.device is None):
        raise EngineCompatibilityError(f"no ONNX Runtime is installed here; {_INSTALL_HINT}",
                                       where="onnxruntime")
    if gpu_named and report.conflicting:
        raise EngineCompatibilityError(
            f"both {' and '.join(report.distributions)} are installed; they write the same module, so "
            f"whether {gpu_named} really exist cannot be trusted; uninstall both, then install one: "
            f"{_INSTALL_HINT}", where="onnxruntime")
    missing = [p for p in gpu_named if p not in report.providers]
    if missing:
        raise EngineCompatibilityError(
            f"{missing} asked for, but this environment has {report.describe()}; "
            f"{_INSTALL_HINT}", where="engine.providers")
