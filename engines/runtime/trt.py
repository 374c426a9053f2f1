"""The TensorRT backend (TensorRT 10 Python API, pycuda buffers and stream), and plan building.

``tensorrt`` and ``pycuda`` are imported only inside the functions that need a GPU; every
function takes ``trt_module`` / ``cuda_module`` so that the GPU-free logic (compatibility checks,
build arguments, optimisation-profile shapes, timing-cache handling) is tested with stand-ins.

Rules this module enforces:

- A plan is loaded only when its manifest entry records the platform it was built on and that
  platform fits this device (:func:`check_plan_compatible`: same OS, CPU architecture, integrated
  or discrete GPU, TensorRT major.minor.patch and CUDA major version, and the same compute
  capability, or a discrete Ampere-or-newer GPU for a plan built with the ``ampere_plus``
  hardware-compatibility level); otherwise :class:`~edge.errors.EngineCompatibilityError` is
  raised before TensorRT sees the bytes.
- Nothing is built implicitly: :class:`TensorRTEngine` only loads plans; :func:`build_plan` is
  called by ``astro-edge engines build``.
- INT8 plans are built from the QDQ ONNX file (explicit quantization, no calibrator); FP16 and
  FP32 plans from the FP32 ONNX file.
- The timing cache lives in one file per TensorRT version and compute capability, is read before
  a build and written back after it, so later builds reuse the measured tactics.
"""

from __future__ import annotations

import importlib
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import EngineCompatibilityError, EngineError, EngineIntegrityError
from engines.manifest import EngineManifest, FileEntry
from engines.runtime.base import Engine

__all__ = [
    "BuiltPlan",
    "DeviceInfo",
    "TensorRTEngine",
    "TrtBuildSettings",
    "build_plan",
    "check_plan_compatible",
    "probe_device",
    "source_onnx_for",
    "timing_cache_path",
    "version_key",
]


@dataclass(frozen=True)
class DeviceInfo:
    """The installed TensorRT and the GPU it would run on, with the platform around them.

    The platform fields default to "unknown" (empty, discrete) so that a hand-made DeviceInfo
    still constructs; :func:`check_plan_compatible` refuses every plan for a device whose
    platform is unknown. :func:`probe_device` fills them all.
    """

    tensorrt_version: str      # as tensorrt.__version__, e.g. "10.3.0.26"
    compute_capability: str    # "major.minor", e.g. "8.7"
    name: str = ""
    cpu_arch: str = ""         # platform.machine(), e.g. "x86_64", "aarch64"
    os: str = ""               # platform.system(), e.g. "Linux"
    cuda_version: str = ""     # CUDA driver API "major.minor", e.g. "12.6"
    integrated: bool = False   # the GPU shares host memory, as on Jetson


def version_key(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a TensorRT version string; the build number is ignored."""
    parts = version.strip().split(".")
    try:
        nums = [int(p) for p in parts[:3]]
    except ValueError as exc:
        raise EngineIntegrityError(f"TensorRT version {version!r} is not numeric", where="tensorrt_version") from exc
    major, minor, patch = (nums + [0, 0, 0])[:3]
    return major, minor, patch


def _cc_key(cc: str) -> tuple[int, int]:
    try:
        major, minor = (int(p) for p in cc.split("."))
    except ValueError as exc:
        raise EngineIntegrityError(f"compute capability {cc!r} is not 'major.minor'",
                                   where="compute_capability") from exc
    return major, minor


_REBUILD = "rebuild it here with `astro-edge engines build --backend tensorrt`"
#: the platform record a plan entry needs before it is compared (gpu_name is only reported)
_PLAN_RECORD = ("cpu_arch", "os", "integrated", "cuda_version")


def _cuda_major(version: str | None, where: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError as exc:
        raise EngineIntegrityError(f"CUDA version {version!r} is not 'major.minor'", where=where) from exc


def _platform_text(cpu_arch: str | None, os_name: str | None, gpu_name: str | None,
                   integrated: bool | None, cc: str | None, level: str | None, tensorrt: str | None,
                   cuda: str | None) -> str:
    """One side of a refusal, e.g. "aarch64 Linux, Orin (integrated GPU, sm 8.7), TensorRT 10.3.0, CUDA 12.6"."""
    kind = {True: "integrated GPU, ", False: "discrete GPU, ", None: ""}[integrated]
    gpu = f"{gpu_name or 'GPU'} ({kind}sm {cc}{', ' + level if level else ''})"
    return (f"{cpu_arch or 'unknown architecture'} {os_name or 'unknown OS'}, {gpu}, "
            f"TensorRT {tensorrt}, CUDA {cuda or 'unknown'}")


def _refusal(reason: str, entry: FileEntry, device: DeviceInfo, where: str,
             remedy: str = _REBUILD) -> EngineCompatibilityError:
    built = _platform_text(entry.cpu_arch, entry.os, entry.gpu_name, entry.integrated,
                           entry.compute_capability, entry.hardware_compatibility,
                           entry.tensorrt_version, entry.cuda_version)
    here = _platform_text(device.cpu_arch, device.os, device.name, device.integrated,
                          device.compute_capability, None, device.tensorrt_version, device.cuda_version)
    return EngineCompatibilityError(f"{reason}; plan built on {built}; this device: {here}; {remedy}",
                                    where=where)


def check_plan_compatible(entry: FileEntry, device: DeviceInfo, where: str = "plan") -> None:
    """Refuse a plan built for another platform, TensorRT, CUDA or GPU, before TensorRT reads it.

    The rules, in the order they are applied (the first that fails is reported, naming where the
    plan was built and what this device is): the entry records its platform; same OS; same CPU
    architecture; both GPUs integrated or both discrete; same TensorRT major.minor.patch; same CUDA
    major version; same compute capability, or, for an ``ampere_plus`` plan, a discrete GPU of
    compute capability 8.0 or newer (TensorRT's hardware compatibility does not cover Jetson).
    """
    if entry.format != "tensorrt-plan" or entry.tensorrt_version is None or entry.compute_capability is None:
        raise EngineCompatibilityError("not a TensorRT plan entry with tensorrt_version and "
                                       "compute_capability", where=where)
    missing = [key for key in _PLAN_RECORD if getattr(entry, key) is None]
    if missing:
        raise _refusal(f"the plan's entry lacks {', '.join(missing)}: it was built before astro-edge "
                       "recorded the platform a plan is built on, and must be rebuilt", entry, device, where)
    unknown = [key for key in ("cpu_arch", "os", "cuda_version") if not getattr(device, key)]
    if unknown:
        raise _refusal(f"this device's {', '.join(unknown)} is unknown, so no plan can be checked "
                       "against it", entry, device, where, remedy="describe the device with probe_device()")
    if entry.os != device.os:
        raise _refusal(f"the plan was built for another OS: {entry.os}, this device runs {device.os}",
                       entry, device, where)
    if entry.cpu_arch != device.cpu_arch:
        raise _refusal(f"the plan was built for another CPU architecture: {entry.cpu_arch}, this "
                       f"device is {device.cpu_arch}", entry, device, where)
    if entry.integrated != device.integrated:
        built, here = ("an integrated", "a discrete") if entry.integrated else ("a discrete", "an integrated")
        raise _refusal(f"the plan was built on {built} GPU, this device has {here} GPU",
                       entry, device, where)
    if version_key(entry.tensorrt_version) != version_key(device.tensorrt_version):
        raise _refusal(f"the plan was built with TensorRT {entry.tensorrt_version}, this device has "
                       f"{device.tensorrt_version}", entry, device, where)
    if _cuda_major(entry.cuda_version, where) != _cuda_major(device.cuda_version, where):
        raise _refusal(f"the plan was built with CUDA {entry.cuda_version}, this device has CUDA "
                       f"{device.cuda_version}, another major version", entry, device, where)
    plan_cc, dev_cc = _cc_key(entry.compute_capability), _cc_key(device.compute_capability)
    if entry.hardware_compatibility == "ampere_plus":
        if device.integrated:
            raise _refusal("the plan was built with hardware compatibility ampere_plus, which TensorRT "
                           "does not support on integrated (Jetson) GPUs", entry, device, where)
        if dev_cc < (8, 0):
            raise _refusal(f"the plan was built with hardware compatibility ampere_plus, which needs "
                           f"compute capability 8.0 or newer; this GPU has {device.compute_capability}",
                           entry, device, where)
    elif plan_cc != dev_cc:
        raise _refusal(f"the plan was built for compute capability {entry.compute_capability} without "
                       f"a hardware-compatibility level, this GPU has {device.compute_capability}",
                       entry, device, where)


def probe_device(trt_module: Any = None, cuda_module: Any = None) -> DeviceInfo | None:
    """The installed TensorRT, GPU 0 and the platform around them, or None where TensorRT, pycuda
    or a GPU is missing."""
    try:
        trt = trt_module if trt_module is not None else __import__("tensorrt")
        cuda = cuda_module if cuda_module is not None else importlib.import_module("pycuda.driver")
        cuda.init()
        if cuda.Device.count() < 1:
            return None
        dev = cuda.Device(0)
        major, minor = dev.compute_capability()
        driver = int(cuda.get_driver_version())  # e.g. 12060 for CUDA 12.6
        return DeviceInfo(tensorrt_version=str(trt.__version__), compute_capability=f"{major}.{minor}",
                          name=str(dev.name()), cpu_arch=platform.machine(), os=platform.system(),
                          cuda_version=f"{driver // 1000}.{driver % 1000 // 10}",
                          integrated=bool(dev.get_attribute(cuda.device_attribute.INTEGRATED)))
    except ImportError:
        return None
    except Exception:  # noqa: BLE001 - pycuda raises its own errors when the driver or GPU is absent
        return None


def timing_cache_path(cache_dir: Path, device: DeviceInfo) -> Path:
    """One timing-cache file per TensorRT version and compute capability (tactics differ by both)."""
    major, minor, patch = version_key(device.tensorrt_version)
    cc = device.compute_capability.replace(".", "")
    return Path(cache_dir) / f"timing-trt{major}.{minor}.{patch}-sm{cc}.cache"


@dataclass(frozen=True)
class TrtBuildSettings:
    """Arguments of one plan build; validated at construction."""

    precision: str                  # fp32 | fp16 | int8
    min_batch: int = 1
    opt_batch: int = 64
    max_batch: int = 512
    workspace_bytes: int = 1 << 30
    #: None (this GPU only) or "ampere_plus" (any GPU of compute capability >= 8.0)
    hardware_compatibility: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16", "int8"):
            raise EngineCompatibilityError(f"precision {self.precision!r} is not fp32, fp16 or int8",
                                           where="precision")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise EngineCompatibilityError(f"batch profile needs 1 <= min <= opt <= max, got "
                                           f"{(self.min_batch, self.opt_batch, self.max_batch)}",
                                           where="batch_profile")
        if self.workspace_bytes < 1 << 20:
            raise EngineCompatibilityError("workspace_bytes below 1 MiB cannot build a plan",
                                           where="workspace_bytes")
        if self.hardware_compatibility not in (None, "ampere_plus"):
            raise EngineCompatibilityError(f"hardware_compatibility {self.hardware_compatibility!r} "
                                           "is not None or 'ampere_plus'", where="hardware_compatibility")

    @property
    def batch_profile(self) -> tuple[int, int, int]:
        return (self.min_batch, self.opt_batch, self.max_batch)

    def profile_shapes(self, input_chw: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) input shapes of the optimisation profile."""
        return tuple((b, *input_chw) for b in self.batch_profile)

    def builder_flags(self) -> tuple[str, ...]:
        """Names of the ``tensorrt.BuilderFlag`` members to set.

        INT8 also enables FP16 so that layers outside the QDQ pairs need not fall back to FP32.
        """
        return {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[self.precision]


def source_onnx_for(manifest: EngineManifest, precision: str) -> str:
    """The ONNX file a plan of this precision is built from: QDQ for int8, FP32 otherwise."""
    wanted = ("int8", "onnx-qdq") if precision == "int8" else ("fp32", "onnx")
    files = manifest.model_files(*wanted)
    if not files:
        raise EngineCompatibilityError(f"no {wanted[1]} file of precision {wanted[0]} in the manifest "
                                       f"of {manifest.name}; export it first", where="files")
    return files[0]


@dataclass(frozen=True)
class BuiltPlan:
    """What build_plan made, ready to become a manifest FileEntry."""

    path: Path
    device: DeviceInfo
    settings: TrtBuildSettings
    build_s: float
    timing_cache: Path
    timing_cache_reused: bool

    def file_fields(self) -> dict[str, Any]:
        """Keyword arguments for engines.manifest.file_entry(path, precision, "tensorrt-plan", ...)."""
        device = self.device
        return {"tensorrt_version": device.tensorrt_version,
                "compute_capability": device.compute_capability,
                "hardware_compatibility": self.settings.hardware_compatibility,
                "batch_profile": self.settings.batch_profile,
                "cpu_arch": device.cpu_arch or None, "os": device.os or None,
                "gpu_name": device.name or None, "integrated": device.integrated,
                "cuda_version": device.cuda_version or None}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_plan(onnx_path: Path, plan_path: Path, settings: TrtBuildSettings, *, cache_dir: Path,
               input_name: str = "stamps", input_chw: tuple[int, ...] = (2, 32, 32),
               device: DeviceInfo | None = None, trt_module: Any = None) -> BuiltPlan:
    """Build a serialized TensorRT plan from an ONNX file, reusing and updating the timing cache."""
    trt = trt_module if trt_module is not None else __import__("tensorrt")
    if device is None:
        device = probe_device(trt_module=trt)
        if device is None:
            raise EngineCompatibilityError("no GPU with TensorRT and pycuda here; TensorRT plans are "
                                           "built on the device that runs them", where="tensorrt")
    if settings.hardware_compatibility == "ampere_plus" and (
            device.integrated or _cc_key(device.compute_capability) < (8, 0)):
        raise EngineCompatibilityError(
            f"hardware compatibility ampere_plus needs a discrete GPU of compute capability 8.0 or "
            f"newer to build on; {device.name or 'this GPU'} is "
            f"{'integrated' if device.integrated else 'discrete'}, sm {device.compute_capability}; "
            "build without it", where="hardware_compatibility")
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineIntegrityError(f"TensorRT cannot parse the ONNX file: {errors}", where=str(onnx_path))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    for flag in settings.builder_flags():
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings.hardware_compatibility == "ampere_plus":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    profile = builder.create_optimization_profile()
    lo, opt, hi = settings.profile_shapes(input_chw)
    profile.set_shape(input_name, lo, opt, hi)
    config.add_optimization_profile(profile)

    cache_file = timing_cache_path(cache_dir, device)
    cached = cache_file.read_bytes() if cache_file.is_file() else b""
    timing_cache = config.create_timing_cache(cached)
    if not config.set_timing_cache(timing_cache, False):
        raise EngineCompatibilityError("TensorRT refused the timing cache; delete it to start afresh",
                                       where=str(cache_file))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError("TensorRT failed to build the plan; see its log above", where=str(onnx_path))
    _write_atomic(Path(plan_path), bytes(memoryview(serialized)))
    _write_atomic(cache_file, bytes(memoryview(config.get_timing_cache().serialize())))
    return BuiltPlan(path=Path(plan_path), device=device, settings=settings,
                     build_s=time.perf_counter() - start, timing_cache=cache_file,
                     timing_cache_reused=len(cached) > 0)


class TensorRTEngine(Engine):
    """A serialized TensorRT plan run with pycuda buffers on one CUDA stream."""

    backend = "tensorrt"

    def __init__(self, manifest: EngineManifest, file: str, precision: str, *,
                 device: DeviceInfo | None = None, trt_module: Any = None, cuda_module: Any = None) -> None:
        entry = manifest.files.get(file)
        if entry is None or entry.format != "tensorrt-plan":
            raise EngineCompatibilityError(f"{file!r} is not a TensorRT plan of {manifest.name}", where=file)
        max_batch = entry.batch_profile[2] if entry.batch_profile else None
        super().__init__(manifest, file, precision, max_batch=max_batch)
        self.entry = entry
        self._device = device
        self._trt_module = trt_module
        self._cuda_module = cuda_module
        self._state: dict[str, Any] = {}

    def _activate(self) -> None:
        trt = self._trt_module if self._trt_module is not None else __import__("tensorrt")
        cuda = self._cuda_module if self._cuda_module is not None else importlib.import_module("pycuda.driver")
        device = self._device or probe_device(trt_module=trt, cuda_module=cuda)
        if device is None:
            raise EngineCompatibilityError("no GPU visible to pycuda; use the onnxruntime backend",
                                           where=str(self.model_path))
        # refuse before TensorRT ever sees the bytes: a mismatched plan can crash the process
        check_plan_compatible(self.entry, device, where=str(self.model_path))
        cuda.init()
        ctx = cuda.Device(0).retain_primary_context()
        ctx.push()
        try:
            logger = trt.Logger(trt.Logger.WARNING)
            runtime = trt.Runtime(logger)
            engine = runtime.deserialize_cuda_engine(self.model_path.read_bytes())
            if engine is None:
                raise EngineCompatibilityError("TensorRT could not deserialize the plan (version or "
                                               "device mismatch); rebuild it here", where=str(self.model_path))
            context = engine.create_execution_context()
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            want = [self.manifest.outputs.logits, self.manifest.outputs.embedding]
            if inputs != [self.manifest.input.name] or any(n not in names for n in want):
                raise EngineCompatibilityError(f"plan has tensors {names}; the manifest promises "
                                               f"{self.manifest.input.name!r} -> {want}",
                                               where=str(self.model_path))
            if self.max_batch is None:
                self.max_batch = int(engine.get_tensor_profile_shape(inputs[0], 0)[2][0])
            shapes = {inputs[0]: (self.max_batch, *self.manifest.input.shape[1:]),
                      want[0]: (self.max_batch, self.manifest.ensemble_size, len(self.manifest.classes)),
                      want[1]: (self.max_batch, self.manifest.embedding_dim)}
            host, dev = {}, {}
            for name, shape in shapes.items():
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                host[name] = cuda.pagelocked_empty(shape, dtype)
                dev[name] = cuda.mem_alloc(host[name].nbytes)
            self._state = {"cuda": cuda, "ctx": ctx, "runtime": runtime, "engine": engine,
                           "context": context, "host": host, "device": dev,
                           "stream": cuda.Stream(), "input": inputs[0], "outputs": want}
        except BaseException:
            ctx.pop()
            ctx.detach()
            raise
        ctx.pop()

    def _deactivate(self) -> None:
        state, self._state = self._state, {}
        if not state:
            return
        state["ctx"].push()
        try:
            for alloc in state["device"].values():
                alloc.free()
            del state["context"], state["engine"], state["runtime"]
        finally:
            state["ctx"].pop()
            state["ctx"].detach()

    def _infer(self, stamps: NDArray[np.float32]) -> tuple[NDArray[Any], NDArray[Any]]:
        s = self._state
        cuda, context, stream = s["cuda"], s["context"], s["stream"]
        n = stamps.shape[0]
        name_in = s["input"]
        s["ctx"].push()
        try:
            if not context.set_input_shape(name_in, stamps.shape):
                raise EngineError(f"the plan's profile does not take a batch of {n}", where=str(self.model_path))
            host_in = s["host"][name_in][:n]
            host_in[...] = stamps
            cuda.memcpy_htod_async(s["device"][name_in], host_in, stream)
            for name, alloc in s["device"].items():
                context.set_tensor_address(name, int(alloc))
            if not context.execute_async_v3(stream.handle):
                raise EngineError("TensorRT execution failed", where=str(self.model_path))
            outs = []
            for name in s["outputs"]:
                host_out = s["host"][name][:n]
                cuda.memcpy_dtoh_async(host_out, s["device"][name], stream)
                outs.append(host_out)
            stream.synchronize()
        finally:
            s["ctx"].pop()
        return outs[0].copy(), outs[1].copy()
