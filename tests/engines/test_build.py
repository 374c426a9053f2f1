"""``engines build``: measure each precision, pick the fastest that passes the gate, record it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.errors import ConfigError, EngineCompatibilityError
from edge.node.assemble import default_engine_dir
from engines.build import build_engine, choose_precision
from engines.manifest import load_manifest
from engines.runtime.trt import probe_device

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
