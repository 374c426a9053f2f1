"""``engines build``: measure each precision, pick the fastest that passes the gate, record it."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import pytest

import engines.runtime
import engines.runtime.trt
from edge.errors import ConfigError, EngineCompatibilityError
from edge.node.assemble import default_engine_dir
from engines.build import BATCH_SWEEP, build_engine, choose_batch, choose_precision
from engines.manifest import EngineManifest, load_manifest
from engines.runtime import OnnxRuntimeEngine
from engines.runtime.trt import (
    BuiltPlan,
    DeviceInfo,
    TrtBuildSettings,
    check_plan_compatible,
    probe_device,
)
from engines.testing import write_tiny_engine

#: the shipped engine (what --model defaults to)
DEFAULT_MODEL_DIR = default_engine_dir()


def test_auto_picks_the_fastest_precision_that_passes() -> None:
    """A faster precision that fails the accuracy gate is never chosen over a slower one that passes."""
    figures = {"fp32": {"stamps_per_s": 1000.0, "passed": True},
               "fp16": {"stamps_per_s": 900.0, "passed": True},
               "int8": {"stamps_per_s": 3000.0, "passed": False}}
    assert choose_precision(figures) == "fp32"
    figures["int8"]["passed"] = True
    assert choose_precision(figures) == "int8"


def test_a_named_precision_must_pass_the_gate() -> None:
    """Asking for a precision that failed the gate is refused with a clear error."""
    figures = {"fp32": {"stamps_per_s": 1000.0, "passed": True}, "int8": {"stamps_per_s": 3000.0, "passed": False}}
    assert choose_precision(figures, "fp32") == "fp32"
    with pytest.raises(EngineCompatibilityError, match="accuracy gate"):
        choose_precision(figures, "int8")
    with pytest.raises(EngineCompatibilityError, match="not measured"):
        choose_precision(figures, "fp16")


def test_nothing_passing_is_an_error() -> None:
    """With no precision passing, build refuses rather than ship a broken engine."""
    with pytest.raises(EngineCompatibilityError, match="no precision"):
        choose_precision({"fp32": {"stamps_per_s": 10.0, "passed": False}})


def test_the_smallest_batch_about_as_fast_as_the_fastest_is_kept() -> None:
    """A batch within 5 % of the fastest rate is as good and holds less memory and latency; a
    clearly faster larger batch wins; nothing measured is an error."""
    assert choose_batch({16: 900.0, 64: 990.0, 256: 1000.0, 512: 1010.0}) == 64
    assert choose_batch({16: 100.0, 64: 400.0, 256: 1000.0, 512: 900.0}) == 256
    with pytest.raises(EngineCompatibilityError, match="batch"):
        choose_batch({})


def test_build_on_cpu_records_choice_and_figures(tmp_path: Path) -> None:
    """Building the shipped engine for ONNX Runtime writes a verified copy whose build record holds every precision's figures."""
    written = build_engine(DEFAULT_MODEL_DIR, tmp_path / "built", backend="onnxruntime", batch=64)
    again = load_manifest(tmp_path / "built")
    assert again.build is not None and again.build.backend == "onnxruntime"
    measured = again.build.figures["precisions"]
    assert set(measured) == {"fp32", "fp16", "int8"}
    assert all(f["stamps_per_s"] > 0 for f in measured.values())
    passed = {p: f for p, f in measured.items() if f["passed"]}
    assert again.build.precision == max(passed, key=lambda p: passed[p]["stamps_per_s"])
    assert written.build.file in again.files
    assert (again.build.cpu_arch, again.build.os, again.build.cuda_version) == (
        platform.machine(), platform.system(), None)
    # the chosen precision timed at every batch size, and the batch the node will run recorded
    sweep = {int(b): rate for b, rate in again.build.figures["batch_sweep"].items()}
    assert sorted(sweep) == list(BATCH_SWEEP) and all(rate > 0 for rate in sweep.values())
    assert again.build.figures["batch"] == choose_batch(sweep)


def test_tensorrt_build_records_where_each_plan_was_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TensorRT build writes the device's platform into the plan's entry and the build record, and
    the entry it writes passes the load-time check on that device."""
    jetson = DeviceInfo("10.3.0.30", "8.7", "Orin", cpu_arch="aarch64", os="Linux", cuda_version="12.6",
                        integrated=True)

    def stand_in_build_plan(onnx_path: Path, plan_path: Path, settings: TrtBuildSettings, *,
                            cache_dir: Path, device: DeviceInfo) -> BuiltPlan:
        plan_path.write_bytes(b"FAKEPLAN")
        return BuiltPlan(path=plan_path, device=device, settings=settings, build_s=0.5,
                         timing_cache=cache_dir / "timing.cache", timing_cache_reused=False)

    def onnx_in_place_of_the_plan(manifest: EngineManifest, file: str, precision: str, *,
                                  device: DeviceInfo) -> Any:
        return OnnxRuntimeEngine(manifest, "model_fp32.onnx", "fp32")

    # no GPU here: the device, the builder and the plan's runtime are stand-ins at their seams
    monkeypatch.setattr(engines.runtime.trt, "probe_device", lambda: jetson)
    monkeypatch.setattr(engines.runtime.trt, "build_plan", stand_in_build_plan)
    monkeypatch.setattr(engines.runtime, "TensorRTEngine", onnx_in_place_of_the_plan)
    built = build_engine(write_tiny_engine(tmp_path / "tiny"), backend="tensorrt", precision="fp32", batch=8)
    entry = built.files["plan_fp32_sm87.engine"]
    assert (entry.cpu_arch, entry.os, entry.gpu_name, entry.integrated, entry.cuda_version) == (
        "aarch64", "Linux", "Orin", True, "12.6")
    assert built.build is not None and built.build.file == "plan_fp32_sm87.engine"
    assert (built.build.cpu_arch, built.build.os, built.build.cuda_version) == ("aarch64", "Linux", "12.6")
    check_plan_compatible(entry, jetson)


@pytest.mark.skipif(probe_device() is not None, reason="TensorRT and a GPU are present; this covers their absence")
def test_tensorrt_without_a_gpu_is_refused(tmp_path: Path) -> None:
    """Asking for TensorRT where there is none says so instead of falling back silently."""
    with pytest.raises(EngineCompatibilityError, match="TensorRT"):
        build_engine(DEFAULT_MODEL_DIR, tmp_path / "built", backend="tensorrt")


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    """An unknown precision or a zero batch is a config error naming the option."""
    with pytest.raises(ConfigError, match="--precision"):
        build_engine(DEFAULT_MODEL_DIR, tmp_path / "b", precision="int4")
    with pytest.raises(ConfigError, match="--batch"):
        build_engine(DEFAULT_MODEL_DIR, tmp_path / "b", batch=0)


def test_a_node_runs_the_batch_its_engine_build_measured(tmp_path: Path) -> None:
    """[engine] batch_size 0 takes the build record's batch when the record is for the backend
    that runs; a size in the config wins; without a record for this backend, the default of the
    provider (32 on ONNX Runtime's CPU provider, which is all this machine has)."""
    from edge.node.assemble import DEFAULT_CPU_BATCH_SIZE, open_engine
    from engines.manifest import BuildInfo

    def record(backend: str) -> BuildInfo:
        return BuildInfo(backend=backend, precision="fp32", file="model_fp32.onnx", device="test CPU",
                         figures={"batch": 32, "batch_sweep": {"16": 10.0, "32": 11.0}})

    measured = write_tiny_engine(tmp_path / "measured", build=record("onnxruntime"))
    with open_engine(measured, backend="onnxruntime") as engine:
        assert engine.max_batch == 32
    with open_engine(measured, backend="onnxruntime", batch_size=8) as engine:
        assert engine.max_batch == 8
    for name, build in (("unmeasured", None), ("other-backend", record("tensorrt"))):
        with open_engine(write_tiny_engine(tmp_path / name, build=build), backend="onnxruntime") as engine:
            assert engine.providers == ["CPUExecutionProvider"]
            assert engine.max_batch == DEFAULT_CPU_BATCH_SIZE
