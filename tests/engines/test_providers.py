"""The engine runtimes a node really has, and the refusal of a request they cannot honour."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import onnxruntime
import pytest
from structlog.testing import capture_logs

from edge.config import EngineSection, config_from_mapping
from edge.errors import EngineCompatibilityError
from edge.node.assemble import check_engine_runtime
from engines.runtime.providers import ORT_DISTRIBUTIONS, RuntimeReport, check_request, probe_runtime
from engines.runtime.trt import DeviceInfo, probe_device

CPU = ("CPUExecutionProvider",)
GPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ORIN = DeviceInfo(tensorrt_version="10.3.0.30", compute_capability="8.7", name="Orin")


def _skip_where_tensorrt_runs() -> None:
    if probe_device() is not None:
        pytest.skip("TensorRT, pycuda and a GPU are present: backend \"tensorrt\" is honoured here")


def _report(providers: tuple[str, ...] = CPU, wheels: tuple[str, ...] = ("onnxruntime",),
            device: DeviceInfo | None = None, absent: str = "the tensorrt module is not installed",
            version: str | None = "1.20.0") -> RuntimeReport:
    return RuntimeReport(onnxruntime_version=version, distributions=wheels, providers=providers,
                         device=device, tensorrt_absent="" if device else absent)


def test_this_environment_has_exactly_one_onnxruntime_wheel() -> None:
    """The environment the suite runs in holds one ONNX Runtime wheel, and the probe reports it as it is."""
    # every distribution on the path, read independently of the probe's lookup by name
    installed = sorted({(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
                       & set(ORT_DISTRIBUTIONS))
    assert len(installed) == 1, f"ONNX Runtime wheels installed together: {installed}"
    report = probe_runtime()
    assert report.distributions == tuple(installed)
    assert report.onnxruntime_version == onnxruntime.__version__
    assert report.providers == tuple(onnxruntime.get_available_providers())
    assert "CPUExecutionProvider" in report.providers
    assert not report.conflicting


def test_probe_says_why_there_is_no_tensorrt() -> None:
    """Without a device the report names the first missing piece: tensorrt, then pycuda, then a GPU."""
    ort = SimpleNamespace(__version__="1.20.0", get_available_providers=lambda: list(CPU))

    def finder(*present: str):
        return lambda name: object() if name in present else None

    def probe(*present: str) -> str:
        return probe_runtime(ort_module=ort, distributions=["onnxruntime"], find_spec=finder(*present),
                             probe_tensorrt=True, device=None).tensorrt_absent

    # probe_device finds nothing on this machine; the finder decides what "installed" means
    assert probe() == "the tensorrt module is not installed"
    assert probe("tensorrt") == "pycuda is not installed"
    assert probe("tensorrt", "pycuda") == "no CUDA GPU is visible to pycuda"
    with_device = probe_runtime(ort_module=ort, distributions=["onnxruntime"], device=ORIN)
    assert with_device.tensorrt_absent == "" and with_device.device == ORIN


@pytest.mark.parametrize(("report", "backend", "providers", "match"), [
    (_report(), "tensorrt", (), r"native TensorRT plans, but the tensorrt module is not installed"),
    (_report(absent="pycuda is not installed"), "tensorrt", (), "pycuda is not installed"),
    (_report(), "onnxruntime", ("CUDAExecutionProvider",),
     r"\['CUDAExecutionProvider'\] asked for.*offering \['CPUExecutionProvider'\].*onnxruntime-gpu"),
    (_report(), "auto", ("TensorrtExecutionProvider", "CPUExecutionProvider"),
     r"\['TensorrtExecutionProvider'\] asked for"),
    (_report(GPU, wheels=("onnxruntime", "onnxruntime-gpu")), "onnxruntime", ("CUDAExecutionProvider",),
     "both onnxruntime and onnxruntime-gpu are installed"),
    (_report((), wheels=(), version=None), "onnxruntime", (), "no ONNX Runtime is installed"),
    (_report((), wheels=(), version=None), "auto", (), "no ONNX Runtime is installed"),
    (_report(device=ORIN), "tensorrt", ("CUDAExecutionProvider",), "leave them empty"),
    (_report(), "auto", ("ROCMExecutionProvider",), r"\['ROCMExecutionProvider'\] asked for"),
])
def test_requests_this_environment_cannot_honour_are_refused(report: RuntimeReport, backend: str,
                                                             providers: tuple[str, ...], match: str) -> None:
    """TensorRT without its pieces, a GPU provider on a CPU-only or doubled ONNX Runtime, or no ONNX Runtime."""
    with pytest.raises(EngineCompatibilityError, match=match):
        check_request(report, backend, providers)


@pytest.mark.parametrize(("report", "backend", "providers"), [
    (_report(), "auto", ()),
    (_report(), "onnxruntime", ("CPUExecutionProvider",)),
    (_report(GPU, wheels=("onnxruntime-gpu",)), "onnxruntime", ("CUDAExecutionProvider",)),
    (_report(GPU, wheels=("onnxruntime-gpu",)), "auto", ("TensorrtExecutionProvider", "CPUExecutionProvider")),
    (_report(device=ORIN), "tensorrt", ()),
    # a native TensorRT node needs no ONNX Runtime
    (_report((), wheels=(), version=None, device=ORIN), "tensorrt", ()),
    (_report((), wheels=(), version=None, device=ORIN), "auto", ()),
    # two wheels with nothing GPU asked for: the CPU provider is in both, so the node runs (and warns)
    (_report(GPU, wheels=("onnxruntime", "onnxruntime-gpu")), "auto", ()),
])
def test_requests_this_environment_can_honour_pass(report: RuntimeReport, backend: str,
                                                   providers: tuple[str, ...]) -> None:
    check_request(report, backend, providers)


def test_node_start_logs_the_runtime_and_refuses_a_cuda_provider_on_cpu_onnxruntime() -> None:
    """The node's start-up check logs what ONNX Runtime offers; a CUDA request on this CPU build is refused."""
    _skip_where_tensorrt_runs()
    with capture_logs() as logs:
        report = check_engine_runtime(EngineSection())
    (event,) = [e for e in logs if e["event"] == "engine.runtime"]
    assert event["providers"] == list(onnxruntime.get_available_providers())
    assert event["onnxruntime"] == onnxruntime.__version__
    assert event["tensorrt_absent"] == report.tensorrt_absent != ""
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(EngineCompatibilityError, match="CUDAExecutionProvider"):
            check_engine_runtime(EngineSection(providers=("CUDAExecutionProvider", "CPUExecutionProvider")))
    with pytest.raises(EngineCompatibilityError, match="native TensorRT"):
        check_engine_runtime(EngineSection(backend="tensorrt"))


def test_config_refuses_unknown_providers_and_providers_with_native_tensorrt() -> None:
    with pytest.raises(ValueError, match="not among"):
        EngineSection(providers=("CUDA",))
    with pytest.raises(ValueError, match="leave them empty"):
        EngineSection(backend="tensorrt", providers=("CPUExecutionProvider",))
    config = config_from_mapping({"engine": {"providers": ["CPUExecutionProvider"]}})
    assert config.engine.providers == ("CPUExecutionProvider",)


@pytest.mark.slow
def test_process_command_refuses_tensorrt_here_with_exit_2(tmp_path: Path) -> None:
    """`astro-edge process` with backend "tensorrt" on a machine without TensorRT ends with a clear error."""
    _skip_where_tensorrt_runs()
    config = tmp_path / "node.toml"
    config.write_text('[engine]\nbackend = "tensorrt"\n', encoding="utf-8")
    fits = Path(__file__).resolve().parents[1] / "data" / "real" / "sep-ntt" / "image.fits"
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "process", str(fits), "--out", str(tmp_path / "out"),
                           "--config", str(config)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "native TensorRT plans" in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

