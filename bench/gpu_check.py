"""GPU-side checks that need no TensorRT: what this machine offers, and what could not run here.

Run by bench/gpu_check.sh on whatever GPU machine is at hand (and harmless without one):

1. the engine runtimes as the node sees them at start (``engine.runtime``): the ONNX Runtime wheel
   and its execution providers, the native TensorRT device or why there is none;
2. the start-up refusals a node on this machine would give (a CUDA provider on a CPU-only ONNX
   Runtime, ``backend = "tensorrt"`` without TensorRT);
3. the GPU's platform facts read through CuPy or numba (name, compute capability, integrated or
   discrete, CUDA driver version, CPU architecture) and the plan check run against them: a plan
   recorded as built on this very platform is accepted, plans from a Jetson Orin, another GPU
   architecture, another CPU architecture and another TensorRT version are refused;
4. the engine's own network on the GPU through PyTorch (its FP32 weights, in FP32 and FP16)
   against the golden outputs the manifest carries, with the speed against ONNX Runtime on the CPU.

Each step prints its result; the last lines list what ran and what could not, and why. The exit
code is 1 only when a step that could run gave a wrong answer.

    .venv/bin/python bench/gpu_check.py [--model ENGINE_DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

from edge.errors import EngineCompatibilityError  # noqa: E402
from edge.node.assemble import default_engine_dir  # noqa: E402
from engines.runtime.providers import check_request, probe_runtime  # noqa: E402
from engines.runtime.trt import DeviceInfo, check_plan_compatible  # noqa: E402

ran: list[str] = []
skipped: list[str] = []
wrong: list[str] = []


def gpu_facts() -> dict[str, Any] | None:
    """The first GPU's platform facts through CuPy, else numba, else None."""
    try:
        cupy = importlib.import_module("cupy")
        props = cupy.cuda.runtime.getDeviceProperties(0)
        driver = int(cupy.cuda.runtime.driverGetVersion())
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return {"name": name, "compute_capability": f"{props['major']}.{props['minor']}",
                "integrated": bool(props.get("integrated", 0)),
                "cuda_version": f"{driver // 1000}.{driver % 1000 // 10}", "via": "cupy"}
    except Exception as exc:  # noqa: BLE001 - any failure means "not through CuPy"
        why = f"cupy: {type(exc).__name__}: {exc}"
    try:
        cuda = importlib.import_module("numba.cuda")
        if not cuda.is_available():
            raise RuntimeError("numba sees no CUDA GPU")
        dev = cuda.get_current_device()
        major, minor = dev.compute_capability
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        version = cuda.cudadrv.driver.driver.get_version()   # (major, minor)
        return {"name": name, "compute_capability": f"{major}.{minor}",
                "integrated": bool(getattr(dev, "INTEGRATED", 0)),
                "cuda_version": f"{version[0]}.{version[1]}", "via": "numba"}
    except Exception as exc:  # noqa: BLE001
        skipped.append(f"GPU platform facts ({why}; numba: {type(exc).__name__}: {exc})")
    return None


def step_runtime() -> None:
    report = probe_runtime()
    print("== engine runtimes, as the node logs them at start (engine.runtime)")
    for key, value in report.as_log().items():
        print(f"   {key}: {value}")
    ran.append("runtime probe")
    print("== start-up refusals on this machine")
    requests = [("onnxruntime", ("CUDAExecutionProvider",)), ("onnxruntime", ("TensorrtExecutionProvider",)),
                ("tensorrt", ())]
    for backend, providers in requests:
        try:
            check_request(report, backend, providers)
            print(f"   backend={backend} providers={list(providers)}: accepted")
        except EngineCompatibilityError as exc:
            print(f"   backend={backend} providers={list(providers)}: refused: {exc}")
    ran.append("start-up check")
    if "CUDAExecutionProvider" not in report.providers:
        skipped.append(f"ONNX Runtime CUDA and TensorRT execution providers ({report.describe()}: "
                       "install onnxruntime-gpu, the gpu extra)")
    if report.device is None:
        skipped.append(f"native TensorRT plans: build, parity, speed ({report.tensorrt_absent})")


def _plan_entry(device: DeviceInfo, **changes: Any) -> Any:
    from engines.manifest import FileEntry

    fields = {"tensorrt_version": device.tensorrt_version, "compute_capability": device.compute_capability,
              "cpu_arch": device.cpu_arch, "os": device.os, "gpu_name": device.name,
              "integrated": device.integrated, "cuda_version": device.cuda_version}
    fields.update(changes)
    return FileEntry(sha256="0" * 64, precision="int8", format="tensorrt-plan", **fields)


def step_plan_check(facts: dict[str, Any]) -> None:
    # no TensorRT here: the check compares recorded strings, so one release stands in for it
    trt_version = "10.3.0"
    device = DeviceInfo(tensorrt_version=trt_version, compute_capability=facts["compute_capability"],
                        name=facts["name"], cpu_arch=platform.machine(), os=platform.system(),
                        cuda_version=facts["cuda_version"], integrated=facts["integrated"])
    print(f"== plan check against this GPU ({facts['via']}): {dataclasses.asdict(device)} "
          f"(TensorRT version assumed {trt_version})")
    other_cc = "8.7" if device.compute_capability != "8.7" else "9.0"
    cases = [
        ("built on this platform", {}, True),
        ("built on a Jetson Orin", {"cpu_arch": "aarch64", "integrated": True, "compute_capability": "8.7",
                                    "gpu_name": "Orin"}, False),
        ("built for another GPU architecture", {"compute_capability": other_cc}, False),
        ("built on another CPU architecture", {"cpu_arch": "aarch64" if device.cpu_arch != "aarch64" else "x86_64"},
         False),
        ("built with another TensorRT", {"tensorrt_version": "10.7.0"}, False),
    ]
    for label, changes, accept in cases:
        entry = _plan_entry(device, **changes)
        try:
            check_plan_compatible(entry, device, where="plan")
            got, why = True, ""
        except EngineCompatibilityError as exc:
            got, why = False, str(exc)
        verdict = "ok" if got == accept else "WRONG"
        print(f"   {label}: {'accepted' if got else 'refused'} [{verdict}] {why}")
        if got != accept:
            wrong.append(f"plan check: {label}")
    ran.append("plan check on this GPU's facts")


def step_torch(model_dir: Path, facts: dict[str, Any], device: str = "cuda") -> None:
    try:
        torch = importlib.import_module("torch")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA GPU")
    except Exception as exc:  # noqa: BLE001
        skipped.append(f"the engine's network on the GPU through PyTorch ({type(exc).__name__}: {exc})")
        return
    from engines.check import compare_outputs, load_golden
    from engines.manifest import load_manifest
    from engines.runtime import OnnxRuntimeEngine
    from engines.training.model import StampEnsemble
    from engines.training.train import WEIGHTS_FILE, TrainSettings, load_weights

    manifest = load_manifest(model_dir)
    if WEIGHTS_FILE not in manifest.files or "settings" not in manifest.training:
        skipped.append(f"PyTorch on the GPU ({model_dir.name} ships no {WEIGHTS_FILE})")
        return
    golden = load_golden(manifest)
    model = StampEnsemble(TrainSettings.from_dict(manifest.training["settings"]).spec)
    model.load_state_dict(load_weights(manifest.path(WEIGHTS_FILE)))
    model = model.to(device).eval()
    stamps = torch.from_numpy(np.ascontiguousarray(golden["stamps"], np.float32)).to(device)
    where = facts["name"] if device == "cuda" else "the CPU (a dry run of the GPU step)"
    print(f"== {manifest.name} {manifest.version} on {where} through PyTorch {torch.__version__}")
    tolerance = manifest.golden.tolerance if manifest.golden else {}
    # TF32 would round FP32 convolutions to 10-bit mantissas: FP32 parity means FP32 arithmetic
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    for prec, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            logits, embedding = model(stamps)
        d_l, d_e, top1, ok = compare_outputs(logits.float().cpu().numpy(), embedding.float().cpu().numpy(),
                                             golden["logits"], golden["embedding"], tolerance.get(prec, {}))
        print(f"   {prec}: logits max |diff| {d_l:.2e}, embedding {d_e:.2e}, top-1 agreement {top1:.3f} "
              f"(tolerance {tolerance.get(prec, {})}) [{'ok' if ok else 'WRONG'}]")
        if not ok:
            wrong.append(f"PyTorch {prec} on the GPU against the golden outputs")
    batch = torch.from_numpy(np.resize(golden["stamps"], (512, *golden["stamps"].shape[1:])).astype(np.float32))
    batch = batch.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(3):
            model(batch)
        sync()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 1.0:
            model(batch)
            n += 1
        sync()
    gpu_rate = 512 * n / (time.perf_counter() - t0)
    from engines.build import time_engine

    rel = manifest.model_files("fp32", ("onnx",))[0]
    with OnnxRuntimeEngine(manifest, rel, "fp32", threads=1) as cpu_engine:
        cpu_rate = time_engine(cpu_engine, golden["stamps"], 512)
    print(f"   speed at batch 512: PyTorch FP32 on {device} {gpu_rate:.0f} stamps/s, ONNX Runtime FP32 on one "
          f"CPU thread {cpu_rate:.0f} stamps/s, ratio {gpu_rate / cpu_rate:.1f}x")
    ran.append(f"the engine's network on {device} (PyTorch FP32 and FP16 against the golden outputs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="engine folder (default: the shipped default)")
    parser.add_argument("--facts", default=None, help="stand-in GPU facts for a dry run where there is no GPU: "
                        "NAME,CC,INTEGRATED(0|1),CUDA, e.g. 'NVIDIA H200,9.0,0,12.8'; the PyTorch step then "
                        "runs on the CPU")
    args = parser.parse_args()
    model_dir = args.model or default_engine_dir()
    step_runtime()
    facts = gpu_facts()
    torch_device = "cuda"
    if args.facts:
        name, cc, integrated, cuda = args.facts.split(",")
        facts = {"name": name, "compute_capability": cc, "integrated": integrated == "1",
                 "cuda_version": cuda, "via": "--facts (a dry run, no GPU)"}
        torch_device = "cpu"
    if facts is not None:
        step_plan_check(facts)
        step_torch(model_dir, facts, torch_device)
    else:
        skipped.append("plan check on a real GPU's facts (no GPU)")
        skipped.append("the engine's network on the GPU (no GPU)")
    print("== ran: " + "; ".join(ran))
    for item in skipped:
        print(f"== could not run: {item}")
    for item in wrong:
        print(f"== WRONG: {item}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
