"""Tests for engines.runtime: the Engine interface on ONNX Runtime, backend and provider selection,
and the TensorRT backend's GPU-free logic run against stand-in tensorrt and pycuda modules."""

from __future__ import annotations

import itertools
import json
import platform
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge.errors import ConfigError, EngineCompatibilityError, EngineError, EngineIntegrityError
from engines.manifest import (
    BuildInfo,
    FileEntry,
    file_entry,
    load_manifest,
    write_manifest,
)
from engines.runtime import (
    DeviceInfo,
    OnnxRuntimeEngine,
    TensorRTEngine,
    load_engine,
    select_backend,
    select_providers,
)
from engines.runtime.trt import (
    TrtBuildSettings,
    build_plan,
    check_plan_compatible,
    probe_device,
    source_onnx_for,
    timing_cache_path,
    version_key,
)
from engines.testing import FLAT, C, D, K, tiny_reference, tiny_scoring, write_tiny_engine

#: a Jetson Orin (JetPack 6): aarch64, integrated GPU of compute capability 8.7
ORIN = DeviceInfo(tensorrt_version="10.3.0.30", compute_capability="8.7", name="Orin",
                  cpu_arch="aarch64", os="Linux", cuda_version="12.6", integrated=True)
#: an x86 workstation with a discrete Ampere card
A4000 = DeviceInfo(tensorrt_version="10.3.0.30", compute_capability="8.6", name="NVIDIA RTX A4000",
                   cpu_arch="x86_64", os="Linux", cuda_version="12.6", integrated=False)
#: an aarch64 server with a discrete GPU (not a Jetson)
ARM_SERVER = replace(A4000, cpu_arch="aarch64", name="NVIDIA RTX A6000")
#: an x86 server with a discrete Turing card (compute capability 7.5, before Ampere)
T4 = replace(A4000, compute_capability="7.5", name="Tesla T4")
REBUILD = "rebuild it here with `astro-edge engines build --backend tensorrt`"
_reference = tiny_reference
_scoring = tiny_scoring


def _folder(tmp_path: Path, *, plans: dict[str, dict[str, Any]] | None = None,
            build: BuildInfo | None = None, ensemble_size: int = K) -> Path:
    """An engine folder with the tiny ONNX as fp32, a stand-in QDQ file and optional stand-in plans."""
    return write_tiny_engine(tmp_path, plans=plans, build=build, ensemble_size=ensemble_size)


def _plan_fields(built_on: DeviceInfo, **overrides: Any) -> dict[str, Any]:
    """The manifest fields of a plan built on ``built_on``, as BuiltPlan.file_fields records them."""
    return {"tensorrt_version": built_on.tensorrt_version, "compute_capability": built_on.compute_capability,
            "cpu_arch": built_on.cpu_arch, "os": built_on.os, "gpu_name": built_on.name or None,
            "integrated": built_on.integrated, "cuda_version": built_on.cuda_version, **overrides}


def _plan(precision: str, built_on: DeviceInfo = ORIN, **overrides: Any) -> dict[str, Any]:
    """write_tiny_engine's description of a stand-in plan built on ``built_on``."""
    return {"precision": precision, "batch_profile": (1, 4, 8), **_plan_fields(built_on, **overrides)}


def _entry(built_on: DeviceInfo = ORIN, **overrides: Any) -> FileEntry:
    """An in-memory tensorrt-plan entry for a plan built on ``built_on``."""
    return FileEntry("0" * 64, "fp16", "tensorrt-plan", **_plan_fields(built_on, **overrides))


# --------------------------------------------------------------------------- ONNX Runtime


def test_onnxruntime_engine_matches_the_model_arithmetic(tmp_path: Path, rng: np.random.Generator) -> None:
    """The CPU engine returns float32 logits (N, K, C) and embedding (N, D) equal to the model's maths."""
    stamps = rng.normal(size=(37, 2, 32, 32)).astype(np.float32)
    with load_engine(_folder(tmp_path), backend="onnxruntime", threads=2) as engine:
        assert isinstance(engine, OnnxRuntimeEngine) and engine.is_active
        assert engine.providers == ["CPUExecutionProvider"]
        assert engine._session.get_session_options().intra_op_num_threads == 2
        logits, emb = engine.infer(stamps)
    want_logits, want_emb = _reference(stamps)
    assert logits.dtype == np.float32 and emb.dtype == np.float32
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(emb, want_emb, rtol=1e-4, atol=1e-4)
    assert not engine.is_active


def test_engine_refuses_inference_when_inactive_or_fed_wrong_shapes(tmp_path: Path) -> None:
    """infer before activate, and stamps of the wrong shape, raise EngineError; an empty batch is fine."""
    engine = load_engine(_folder(tmp_path), backend="onnxruntime")
    with pytest.raises(EngineError, match="not active"):
        engine.infer(np.zeros((1, 2, 32, 32), np.float32))
    with engine:
        with pytest.raises(EngineError, match="shape"):
            engine.infer(np.zeros((1, 2, 16, 16), np.float32))
        logits, emb = engine.infer(np.zeros((0, 2, 32, 32), np.float32))
        assert logits.shape == (0, K, C) and emb.shape == (0, D)


def test_engine_id_names_the_file_it_runs(tmp_path: Path) -> None:
    """engine_id carries the manifest name, version and the run file's sha256 prefix."""
    engine = load_engine(_folder(tmp_path), backend="onnxruntime")
    assert engine.engine_id == f"tiny:0.1:{engine.manifest.files['model_fp32.onnx'].sha256[:12]}"


def test_model_disagreeing_with_its_manifest_is_caught_at_inference(tmp_path: Path) -> None:
    """A manifest promising K = 3 members for a 4-member model gives an EngineError, not silent garbage."""
    with pytest.raises(EngineError, match="promises"), \
            load_engine(_folder(tmp_path, ensemble_size=3), backend="onnxruntime") as engine:
        engine.infer(np.zeros((2, 2, 32, 32), np.float32))


def test_corrupt_model_bytes_with_a_matching_hash_are_an_integrity_error(tmp_path: Path) -> None:
    """A file that passes its sha256 but is not ONNX fails at activate with EngineIntegrityError."""
    folder = _folder(tmp_path)
    (folder / "model_fp32.onnx").write_bytes(b"garbage")
    data = json.loads((folder / "manifest.json").read_text())
    data["files"]["model_fp32.onnx"] = file_entry(folder / "model_fp32.onnx", "fp32", "onnx").to_dict()
    (folder / "manifest.json").write_text(json.dumps(data))
    engine = load_engine(folder, backend="onnxruntime")
    with pytest.raises(EngineIntegrityError, match="ONNX Runtime cannot load"):
        engine.activate()


def test_providers_are_ordered_tensorrt_cuda_cpu_when_present() -> None:
    """Whatever order onnxruntime lists them in, TensorRT EP comes first, then CUDA EP, then CPU EP."""
    all_three = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert [p for p, _ in select_providers(all_three)] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert [p for p, _ in select_providers(["AzureExecutionProvider", "CPUExecutionProvider"])] == [
        "CPUExecutionProvider"]
    assert [p for p, _ in select_providers(all_three, allowed=["CPUExecutionProvider"])] == [
        "CPUExecutionProvider"]
    with pytest.raises(EngineCompatibilityError, match="unknown"):
        select_providers(all_three, allowed=["RocmExecutionProvider"])
    with pytest.raises(EngineCompatibilityError, match="available"):
        select_providers(["CPUExecutionProvider"], allowed=["CUDAExecutionProvider"])


def test_tensorrt_provider_gets_profile_precision_and_reused_cache(tmp_path: Path) -> None:
    """TensorRT EP options carry the batch profile, the INT8 flag for a QDQ model, and the cache folder."""
    (opts,) = [o for p, o in select_providers(["TensorrtExecutionProvider"], precision="int8",
                                               batch_profile=(1, 64, 512), cache_dir=tmp_path)]
    assert opts["trt_int8_enable"] is True and opts["trt_fp16_enable"] is False
    assert opts["trt_profile_min_shapes"] == "stamps:1x2x32x32"
    assert opts["trt_profile_opt_shapes"] == "stamps:64x2x32x32"
    assert opts["trt_profile_max_shapes"] == "stamps:512x2x32x32"
    assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"] == str(tmp_path)
    assert opts["trt_timing_cache_enable"] and opts["trt_timing_cache_path"] == str(tmp_path)


# --------------------------------------------------------------------------- backend selection


def test_auto_falls_back_to_onnxruntime_without_a_device(tmp_path: Path) -> None:
    """With no GPU, auto picks ONNX Runtime FP32 even when the folder holds plans."""
    folder = _folder(tmp_path, plans={"fp16.plan": _plan("fp16")})
    engine = load_engine(folder, trt_module=_FakeTrt(), cuda_module=_FakeCuda(n_devices=0))
    assert engine.backend == "onnxruntime" and engine.precision == "fp32"


def test_auto_takes_a_compatible_plan_and_honours_the_build_record(tmp_path: Path) -> None:
    """On a matching device auto picks the plan named by the build record, else int8 before fp16 before fp32."""
    plans = {"fp16.plan": _plan("fp16"), "int8.plan": _plan("int8"), "fp32.plan": _plan("fp32")}
    folder = _folder(tmp_path, plans=dict(plans))
    m = load_manifest(folder)
    assert select_backend(m, "auto", "auto", ORIN).file == "int8.plan"
    assert select_backend(m, "auto", "fp32", ORIN).file == "fp32.plan"
    built = m.with_files(m.files, BuildInfo(backend="tensorrt", precision="fp16", file="fp16.plan",
                                            device="Orin", tensorrt_version="10.3.0", compute_capability="8.7"))
    assert select_backend(built, "auto", "auto", ORIN).file == "fp16.plan"


def test_onnxruntime_precision_picks_the_matching_file(tmp_path: Path) -> None:
    """int8 on ONNX Runtime runs the QDQ file; fp16 without an FP16 file is refused with what exists."""
    m = load_manifest(_folder(tmp_path))
    assert select_backend(m, "onnxruntime", "int8").file == "model_int8_qdq.onnx"
    assert select_backend(m, "onnxruntime", "auto").precision == "fp32"
    with pytest.raises(EngineCompatibilityError, match="no fp16 ONNX"):
        select_backend(m, "onnxruntime", "fp16")
    with pytest.raises(ConfigError, match="backend"):
        select_backend(m, "tflite")
    with pytest.raises(ConfigError, match="precision"):
        select_backend(m, "auto", "int4")


def test_tensorrt_on_another_version_or_gpu_is_refused_and_auto_falls_back(tmp_path: Path) -> None:
    """A plan from TensorRT 10.0.1 or for compute capability 7.2 is refused for tensorrt; auto uses ONNX Runtime."""
    m = load_manifest(_folder(tmp_path, plans={"old.plan": _plan("fp16", tensorrt_version="10.0.1")}))
    with pytest.raises(EngineCompatibilityError, match=r"TensorRT 10\.0\.1.*10\.3\.0\.30.*rebuild"):
        select_backend(m, "tensorrt", "fp16", ORIN)
    assert select_backend(m, "auto", "auto", ORIN).backend == "onnxruntime"
    xavier = replace(ORIN, compute_capability="7.2", name="Xavier")
    m2 = load_manifest(_folder(tmp_path, plans={"orin.plan": _plan("fp16")}))
    with pytest.raises(EngineCompatibilityError, match="compute capability 8.7.*7.2"):
        select_backend(m2, "tensorrt", "auto", xavier)
    with pytest.raises(EngineCompatibilityError, match="missing"):
        select_backend(m2, "tensorrt", "auto", None)


def test_plan_compatibility_accepts_what_tensorrt_can_load() -> None:
    """On the platform it was built on a plan passes though the TensorRT build number and the CUDA
    minor version differ; an ampere_plus plan passes on any discrete GPU of compute capability >= 8.0."""
    check_plan_compatible(_entry(ORIN), ORIN)
    check_plan_compatible(_entry(ORIN, tensorrt_version="10.3.0.26"), ORIN)
    check_plan_compatible(_entry(ORIN, cuda_version="12.2"), ORIN)
    check_plan_compatible(_entry(ORIN, gpu_name="Jetson AGX Orin 64GB"), ORIN)
    portable = _entry(A4000, hardware_compatibility="ampere_plus")
    for cc in ("8.0", "8.6", "8.9", "9.0"):
        check_plan_compatible(portable, replace(A4000, compute_capability=cc, name=f"sm {cc} card"))
    assert version_key("10.3.0.26") == (10, 3, 0) and version_key("10") == (10, 0, 0)
    with pytest.raises(EngineIntegrityError):
        version_key("ten")


#: (plan built on, fields that differ from that device, the device it is loaded on, the refusal's
#: reason naming the plan's side then the device's)
_MISMATCHES = {
    "no platform record": (ORIN, {"cpu_arch": None, "os": None, "gpu_name": None, "integrated": None,
                                  "cuda_version": None}, ORIN,
                           r"lacks cpu_arch, os, integrated, cuda_version: .* must be rebuilt; "
                           r"plan built on unknown architecture unknown OS, GPU \(sm 8\.7\)"),
    "another OS": (ORIN, {"os": "Windows"}, ORIN, r"another OS: Windows, this device runs Linux"),
    "x86 ampere_plus plan on a Jetson": (A4000, {"hardware_compatibility": "ampere_plus"}, ORIN,
                                         r"another CPU architecture: x86_64, this device is aarch64"),
    "discrete plan on an integrated GPU": (ARM_SERVER, {}, ORIN,
                                           r"built on a discrete GPU, this device has an integrated GPU"),
    "Jetson plan on a discrete GPU": (ORIN, {"compute_capability": "8.6"}, ARM_SERVER,
                                      r"built on an integrated GPU, this device has a discrete GPU"),
    "another TensorRT": (ORIN, {"tensorrt_version": "10.0.1"}, ORIN,
                         r"TensorRT 10\.0\.1, this device has 10\.3\.0\.30"),
    "another CUDA major": (ORIN, {"cuda_version": "11.4"}, ORIN,
                           r"CUDA 11\.4, this device has CUDA 12\.6, another major version"),
    "another compute capability, no level": (ORIN, {"compute_capability": "7.2"}, ORIN,
                                             r"compute capability 7\.2 without a hardware-compatibility "
                                             r"level, this GPU has 8\.7"),
    "ampere_plus on a pre-Ampere GPU": (A4000, {"hardware_compatibility": "ampere_plus"}, T4,
                                        r"ampere_plus, which needs compute capability 8\.0 or newer; "
                                        r"this GPU has 7\.5"),
    "ampere_plus on an integrated GPU": (ORIN, {"hardware_compatibility": "ampere_plus"}, ORIN,
                                         r"ampere_plus, which TensorRT does not support on integrated "
                                         r"\(Jetson\) GPUs"),
}


@pytest.mark.parametrize("built_on, differs, device, reason", _MISMATCHES.values(), ids=_MISMATCHES)
def test_mismatched_plan_is_refused_naming_both_sides_before_tensorrt_sees_it(
        tmp_path: Path, built_on: DeviceInfo, differs: dict[str, Any], device: DeviceInfo, reason: str) -> None:
    """Each kind of mismatch refuses activation with a message naming where the plan was built and
    what this device is; the stand-in TensorRT runtime never deserializes the bytes."""
    folder = _folder(tmp_path, plans={"p.plan": _plan("fp16", built_on, **differs)})
    fake_trt, fake_cuda = _FakeTrt(), _FakeCuda()
    _CUDA.append(fake_cuda)  # so that a plan wrongly let through activates instead of crashing
    engine = TensorRTEngine(load_manifest(folder), "p.plan", "fp16", device=device,
                            trt_module=fake_trt, cuda_module=fake_cuda)
    with pytest.raises(EngineCompatibilityError, match=reason) as refused:
        engine.activate()
    message = str(refused.value)
    fields = _plan_fields(built_on, **differs)
    if fields["cpu_arch"] is not None:
        assert f"plan built on {fields['cpu_arch']} {fields['os']}, {fields['gpu_name']} (" in message
    assert f"this device: {device.cpu_arch} {device.os}, {device.name} (" in message
    assert f"TensorRT {device.tensorrt_version}, CUDA {device.cuda_version}; {REBUILD}" in message
    assert fake_trt.deserialized == [] and fake_cuda.pushes == 0 and not engine.is_active


def test_refusals_come_in_the_documented_order() -> None:
    """A plan differing in everything is refused for its OS, then, as each difference is removed, for
    its CPU architecture, GPU kind, TensorRT version, CUDA major version and compute capability."""
    plan = {"os": "Windows", "cpu_arch": "x86_64", "integrated": False, "tensorrt_version": "10.0.1",
            "cuda_version": "11.8", "compute_capability": "7.5", "gpu_name": "Tesla T4"}
    steps = [("os", "Linux", "for another OS"), ("cpu_arch", "aarch64", "for another CPU architecture"),
             ("integrated", True, "on a discrete GPU"), ("tensorrt_version", "10.3.0", "with TensorRT"),
             ("cuda_version", "12.2", "with CUDA"), ("compute_capability", "8.7", "for compute capability")]
    for key, fixed, reason in steps:
        with pytest.raises(EngineCompatibilityError, match=f"^plan: the plan was built {reason}"):
            check_plan_compatible(_entry(ORIN, **plan), ORIN)
        plan[key] = fixed
    check_plan_compatible(_entry(ORIN, **plan), ORIN)


def test_a_device_of_unknown_platform_accepts_no_plan() -> None:
    """A hand-made DeviceInfo without CPU architecture, OS or CUDA version is refused every plan."""
    with pytest.raises(EngineCompatibilityError, match="cpu_arch, os, cuda_version is unknown.*probe_device"):
        check_plan_compatible(_entry(ORIN), DeviceInfo("10.3.0.30", "8.7", "Orin", integrated=True))


# --------------------------------------------------------------------------- TensorRT build logic


def test_build_settings_give_profile_shapes_and_flags() -> None:
    """The optimisation profile spans min/opt/max batch; INT8 sets INT8 and FP16, FP32 sets none."""
    s = TrtBuildSettings(precision="int8", min_batch=1, opt_batch=64, max_batch=512)
    assert s.profile_shapes((2, 32, 32)) == ((1, 2, 32, 32), (64, 2, 32, 32), (512, 2, 32, 32))
    assert s.builder_flags() == ("INT8", "FP16")
    assert TrtBuildSettings(precision="fp32").builder_flags() == ()
    assert TrtBuildSettings(precision="fp16").builder_flags() == ("FP16",)
    with pytest.raises(EngineCompatibilityError, match="batch profile"):
        TrtBuildSettings(precision="fp16", min_batch=8, opt_batch=4)
    with pytest.raises(EngineCompatibilityError, match="precision"):
        TrtBuildSettings(precision="int4")


def test_int8_plans_are_built_from_the_qdq_file(tmp_path: Path) -> None:
    """INT8 builds take the QDQ ONNX (explicit quantization); FP16 and FP32 take the FP32 ONNX."""
    m = load_manifest(_folder(tmp_path))
    assert source_onnx_for(m, "int8") == "model_int8_qdq.onnx"
    assert source_onnx_for(m, "fp16") == "model_fp32.onnx"
    assert source_onnx_for(m, "fp32") == "model_fp32.onnx"


def test_timing_cache_file_is_per_tensorrt_version_and_gpu(tmp_path: Path) -> None:
    """Different TensorRT versions or compute capabilities never share a timing cache file."""
    a = timing_cache_path(tmp_path, DeviceInfo("10.3.0.30", "8.7"))
    assert a == tmp_path / "timing-trt10.3.0-sm87.cache"
    assert a == timing_cache_path(tmp_path, DeviceInfo("10.3.0.26", "8.7"))
    assert a != timing_cache_path(tmp_path, DeviceInfo("10.4.0", "8.7"))
    assert a != timing_cache_path(tmp_path, DeviceInfo("10.3.0", "8.9"))


class _FakeTrt:
    """A stand-in for the tensorrt module that records what the builder was told."""

    __version__ = "10.3.0.30"

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    BuilderFlag = SimpleNamespace(FP16="FP16", INT8="INT8")
    MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    HardwareCompatibilityLevel = SimpleNamespace(AMPERE_PLUS="AMPERE_PLUS")
    TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    def __init__(self, parse_ok: bool = True, build_ok: bool = True) -> None:
        self.record: dict[str, Any] = {"flags": [], "cache_in": []}
        self.parse_ok, self.build_ok = parse_ok, build_ok
        self.deserialized: list[bytes] = []
        fake = self

        class Cache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return self.data + b"+tactics"

        class Config:
            hardware_compatibility_level = None

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.record["workspace"] = (pool, size)

            def set_flag(self, flag: str) -> None:
                fake.record["flags"].append(flag)

            def add_optimization_profile(self, profile: Any) -> None:
                fake.record["profile"] = profile.shapes

            def create_timing_cache(self, data: bytes) -> Cache:
                fake.record["cache_in"].append(bytes(data))
                return Cache(bytes(data))

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
                self.cache = cache
                fake.record["ignore_mismatch"] = ignore_mismatch
                return True

            def get_timing_cache(self) -> Cache:
                return self.cache

        class Profile:
            def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
                self.shapes = {name: (lo, opt, hi)}

        class Builder:
            def __init__(self, logger: Any) -> None:
                pass

            def create_network(self, flags: int) -> str:
                fake.record["network_flags"] = flags
                return "network"

            def create_builder_config(self) -> Config:
                fake.config = Config()
                return fake.config

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: str, config: Config) -> bytes | None:
                return b"FAKEPLAN-built" if fake.build_ok else None

        class OnnxParser:
            num_errors = 1

            def __init__(self, network: str, logger: Any) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                fake.record["onnx"] = path
                return fake.parse_ok

            def get_error(self, i: int) -> str:
                return "Unsupported operator Foo"

        class Runtime:
            def __init__(self, logger: Any) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes) -> Any:
                fake.deserialized.append(data)
                return _FakeCudaEngine() if data.startswith(b"FAKEPLAN") else None

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime

    @staticmethod
    def nptype(dtype: str) -> type:
        return np.float32


def test_build_plan_configures_the_builder_and_reuses_the_timing_cache(tmp_path: Path) -> None:
    """Two builds: the second is fed the timing cache the first wrote; flags, profile and workspace are set."""
    fake = _FakeTrt()
    onnx_path = tmp_path / "model_int8_qdq.onnx"
    onnx_path.write_bytes(b"qdq")
    settings = TrtBuildSettings(precision="int8", opt_batch=64, max_batch=512, workspace_bytes=1 << 28,
                                hardware_compatibility="ampere_plus")
    first = build_plan(onnx_path, tmp_path / "a.plan", settings, cache_dir=tmp_path / "cache",
                       device=A4000, trt_module=fake)
    assert not first.timing_cache_reused
    assert first.timing_cache.read_bytes() == b"+tactics"
    second = build_plan(onnx_path, tmp_path / "b.plan", settings, cache_dir=tmp_path / "cache",
                        device=A4000, trt_module=fake)
    assert second.timing_cache_reused
    assert fake.record["cache_in"] == [b"", b"+tactics"]
    assert fake.record["flags"] == ["INT8", "FP16", "INT8", "FP16"]
    assert fake.record["profile"] == {"stamps": ((1, 2, 32, 32), (64, 2, 32, 32), (512, 2, 32, 32))}
    assert fake.record["workspace"] == ("WORKSPACE", 1 << 28)
    assert fake.record["ignore_mismatch"] is False
    assert fake.config.hardware_compatibility_level == "AMPERE_PLUS"
    assert (tmp_path / "b.plan").read_bytes() == b"FAKEPLAN-built"
    assert second.file_fields() == {"tensorrt_version": "10.3.0.30", "compute_capability": "8.6",
                                    "hardware_compatibility": "ampere_plus", "batch_profile": (1, 64, 512),
                                    "cpu_arch": "x86_64", "os": "Linux", "gpu_name": "NVIDIA RTX A4000",
                                    "integrated": False, "cuda_version": "12.6"}
    # what the build records, the check accepts on the card that built it and refuses on a Jetson
    entry = file_entry(second.path, "int8", "tensorrt-plan", **second.file_fields())
    check_plan_compatible(entry, A4000)
    check_plan_compatible(entry, replace(A4000, compute_capability="8.9", name="NVIDIA L4"))
    with pytest.raises(EngineCompatibilityError, match="CPU architecture"):
        check_plan_compatible(entry, ORIN)


def test_ampere_plus_is_not_built_where_tensorrt_does_not_support_it(tmp_path: Path) -> None:
    """An ampere_plus build on an integrated (Jetson) GPU or a pre-Ampere GPU is refused before TensorRT parses anything."""
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"x")
    fake = _FakeTrt()
    settings = TrtBuildSettings(precision="fp16", hardware_compatibility="ampere_plus")
    for device, kind in ((ORIN, "integrated, sm 8.7"), (T4, "discrete, sm 7.5")):
        with pytest.raises(EngineCompatibilityError, match=f"ampere_plus needs a discrete GPU.*{kind}"):
            build_plan(onnx_path, tmp_path / "p.plan", settings, cache_dir=tmp_path, device=device,
                       trt_module=fake)
    assert "onnx" not in fake.record and not (tmp_path / "p.plan").exists()


def test_build_plan_reports_parser_and_builder_failures(tmp_path: Path) -> None:
    """An unparsable ONNX is an EngineIntegrityError quoting TensorRT; a failed build is an EngineError."""
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"x")
    settings = TrtBuildSettings(precision="fp16")
    with pytest.raises(EngineIntegrityError, match="Unsupported operator Foo"):
        build_plan(onnx_path, tmp_path / "p.plan", settings, cache_dir=tmp_path, device=ORIN,
                   trt_module=_FakeTrt(parse_ok=False))
    with pytest.raises(EngineError, match="failed to build"):
        build_plan(onnx_path, tmp_path / "p.plan", settings, cache_dir=tmp_path, device=ORIN,
                   trt_module=_FakeTrt(build_ok=False))
    assert not (tmp_path / "p.plan").exists()


# --------------------------------------------------------------------------- TensorRT engine with stand-ins


class _FakeCuda:
    """A stand-in for pycuda.driver: device memory is a dict of byte arrays keyed by address."""

    device_attribute = SimpleNamespace(INTEGRATED="INTEGRATED")

    def __init__(self, cc: tuple[int, int] = (8, 7), n_devices: int = 1, integrated: bool = True,
                 driver_version: int = 12060, name: str = "Fake Orin") -> None:
        self.driver_version = driver_version
        self.memory: dict[int, np.ndarray] = {}
        self.freed: list[int] = []
        self._addresses = itertools.count(0x1000, 0x1000)
        self.pushes = 0
        fake = self

        class Context:
            def push(self) -> None:
                fake.pushes += 1

            def pop(self) -> None:
                fake.pushes -= 1

            def detach(self) -> None:
                fake.detached = True

        class Device:
            def __init__(self, i: int) -> None:
                pass

            @staticmethod
            def count() -> int:
                return n_devices

            def compute_capability(self) -> tuple[int, int]:
                return cc

            def name(self) -> str:
                return name

            def get_attribute(self, attribute: str) -> int:
                return {"INTEGRATED": int(integrated)}[attribute]

            def retain_primary_context(self) -> Context:
                return Context()

        class Alloc:
            def __init__(self, nbytes: int) -> None:
                self.address = next(fake._addresses)
                fake.memory[self.address] = np.zeros(nbytes, np.uint8)

            def __int__(self) -> int:
                return self.address

            def free(self) -> None:
                fake.freed.append(self.address)

        self.Device, self.mem_alloc = Device, Alloc
        self.Stream = lambda: SimpleNamespace(handle=7, synchronize=lambda: None)

    def init(self) -> None:
        pass

    def get_driver_version(self) -> int:
        return self.driver_version

    @staticmethod
    def pagelocked_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype)

    def memcpy_htod_async(self, dev: Any, host: np.ndarray, stream: Any) -> None:
        raw = np.ascontiguousarray(host).view(np.uint8).reshape(-1)
        self.memory[int(dev)][: raw.size] = raw

    def memcpy_dtoh_async(self, host: np.ndarray, dev: Any, stream: Any) -> None:
        raw = self.memory[int(dev)][: host.nbytes]
        host[...] = raw.view(host.dtype).reshape(host.shape)


_CUDA: list[_FakeCuda] = []


def _stand_in_device(**cuda: Any) -> DeviceInfo:
    """What probe_device reports through the stand-in modules: this host's CPU and OS, a fake GPU."""
    device = probe_device(trt_module=_FakeTrt(), cuda_module=_FakeCuda(**cuda))
    assert device is not None
    return device


def test_probe_device_records_the_platform() -> None:
    """probe_device reports this host's CPU architecture and OS, the GPU's name and kind, and the
    CUDA driver version as major.minor; None without a GPU."""
    assert _stand_in_device() == DeviceInfo(
        tensorrt_version="10.3.0.30", compute_capability="8.7", name="Fake Orin", cpu_arch=platform.machine(),
        os=platform.system(), cuda_version="12.6", integrated=True)
    card = _stand_in_device(cc=(8, 6), integrated=False, driver_version=13000, name="Fake A4000")
    assert (card.compute_capability, card.integrated, card.cuda_version, card.name) == (
        "8.6", False, "13.0", "Fake A4000")
    assert _stand_in_device(driver_version=11040).cuda_version == "11.4"
    assert probe_device(trt_module=_FakeTrt(), cuda_module=_FakeCuda(n_devices=0)) is None


class _FakeCudaEngine:
    """A stand-in ICudaEngine whose context computes the tiny model's arithmetic on fake device memory."""

    names = ["stamps", "logits", "embedding"]
    num_io_tensors = 3

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "stamps" else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [(1, 2, 32, 32), (4, 2, 32, 32), (8, 2, 32, 32)]

    def create_execution_context(self) -> Any:
        cuda = _CUDA[-1]
        ctx = SimpleNamespace(shape=None, addr={}, batches=[])

        def set_input_shape(name: str, shape: tuple[int, ...]) -> bool:
            ctx.shape = tuple(shape)
            return shape[0] <= 8

        def set_tensor_address(name: str, address: int) -> None:
            ctx.addr[name] = address

        def execute_async_v3(stream: int) -> bool:
            n = ctx.shape[0]
            ctx.batches.append(n)
            stamps = cuda.memory[ctx.addr["stamps"]][: n * FLAT * 4].view(np.float32).reshape(n, 2, 32, 32)
            logits, emb = _reference(stamps)
            for name, value in (("logits", logits), ("embedding", emb)):
                raw = value.astype(np.float32).reshape(-1).view(np.uint8)
                cuda.memory[ctx.addr[name]][: raw.size] = raw
            return True

        ctx.set_input_shape, ctx.set_tensor_address = set_input_shape, set_tensor_address
        ctx.execute_async_v3 = execute_async_v3
        self.context = ctx
        return ctx


def test_tensorrt_engine_runs_a_plan_in_profile_sized_chunks(tmp_path: Path, rng: np.random.Generator) -> None:
    """20 stamps through a plan whose profile max is 8 run as 8 + 8 + 4 and match the model; buffers are freed."""
    folder = _folder(tmp_path, plans={"fp16.plan": _plan("fp16", _stand_in_device())})
    fake_trt, fake_cuda = _FakeTrt(), _FakeCuda()
    _CUDA.append(fake_cuda)
    stamps = rng.normal(size=(20, 2, 32, 32)).astype(np.float32)
    engine = load_engine(folder, backend="tensorrt", trt_module=fake_trt, cuda_module=fake_cuda)
    assert isinstance(engine, TensorRTEngine) and engine.max_batch == 8
    with engine:
        logits, emb = engine.infer(stamps)
        batches = engine._state["context"].batches
    assert batches == [8, 8, 4]
    want_logits, want_emb = _reference(stamps)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(emb, want_emb, rtol=1e-5, atol=1e-5)
    assert len(fake_cuda.freed) == 3 and fake_cuda.pushes == 0


def test_tensorrt_engine_refuses_a_mismatched_plan_before_deserializing(tmp_path: Path) -> None:
    """A plan recorded for TensorRT 10.0.1 is refused at activate (device probed through the
    stand-ins, or given) and its bytes never reach TensorRT."""
    here = _stand_in_device()
    folder = _folder(tmp_path, plans={"old.plan": _plan("fp16", here, tensorrt_version="10.0.1")})
    m = load_manifest(folder)
    fake_trt, fake_cuda = _FakeTrt(), _FakeCuda()
    engine = TensorRTEngine(m, "old.plan", "fp16", trt_module=fake_trt, cuda_module=fake_cuda)
    with pytest.raises(EngineCompatibilityError, match="10.0.1"):
        engine.activate()
    assert fake_trt.deserialized == [] and not engine.is_active
    wrong_gpu = TensorRTEngine(m, "old.plan", "fp16",
                               device=replace(here, tensorrt_version="10.0.1", compute_capability="7.2"),
                               trt_module=fake_trt, cuda_module=fake_cuda)
    with pytest.raises(EngineCompatibilityError, match="compute capability"):
        wrong_gpu.activate()
    assert fake_trt.deserialized == []


def test_plan_tensorrt_cannot_read_is_a_compatibility_error(tmp_path: Path) -> None:
    """When TensorRT returns no engine for the bytes, activate raises EngineCompatibilityError and releases the context."""
    folder = _folder(tmp_path, plans={"fp16.plan": _plan("fp16", _stand_in_device())})
    (folder / "fp16.plan").write_bytes(b"JUNKJUNK" + b"fp16.plan")  # same size, so rehash
    data = json.loads((folder / "manifest.json").read_text())
    data["files"]["fp16.plan"]["sha256"] = file_entry(folder / "fp16.plan", "fp16", "json").sha256
    (folder / "manifest.json").write_text(json.dumps(data))
    fake_cuda = _FakeCuda()
    engine = load_engine(folder, backend="tensorrt", trt_module=_FakeTrt(), cuda_module=fake_cuda)
    with pytest.raises(EngineCompatibilityError, match="deserialize"):
        engine.activate()
    assert fake_cuda.pushes == 0


# --------------------------------------------------------------------------- real GPU


@pytest.mark.gpu
def test_tensorrt_plan_matches_onnxruntime_on_a_real_gpu(tmp_path: Path, rng: np.random.Generator) -> None:
    """On a GPU with TensorRT and pycuda, a built FP32 plan gives the ONNX Runtime CPU outputs."""
    device = probe_device()
    if device is None:
        pytest.skip("needs an NVIDIA GPU with TensorRT 10 and pycuda; none is present here")
    folder = _folder(tmp_path)
    built = build_plan(folder / "model_fp32.onnx", folder / "fp32.plan",
                       TrtBuildSettings(precision="fp32", opt_batch=16, max_batch=64),
                       cache_dir=tmp_path / "cache", device=device)
    m = load_manifest(folder)
    files = dict(m.files)
    files["fp32.plan"] = file_entry(built.path, "fp32", "tensorrt-plan", **built.file_fields())
    write_manifest(m.with_files(files), folder)
    stamps = rng.normal(size=(100, 2, 32, 32)).astype(np.float32)
    with load_engine(folder, backend="tensorrt", precision="fp32") as engine:
        logits, emb = engine.infer(stamps)
    want_logits, want_emb = _reference(stamps)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(emb, want_emb, rtol=1e-3, atol=1e-3)
