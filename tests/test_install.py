"""What ./build.sh setup installs on each kind of machine: never both ONNX Runtime wheels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
ORT_WHEELS = {"onnxruntime", "onnxruntime-gpu"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _build_sh(*args: str, extras_env: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ASTRO_EDGE_EXTRAS"}
    if extras_env is not None:
        env["ASTRO_EDGE_EXTRAS"] = extras_env
    return subprocess.run(["bash", str(ROOT / "build.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def _resolved_names(extras: str) -> list[str]:
    """Names of every requirement the core and these extras bring (extras of astro-edge followed)."""
    project = _project()
    optional = project["optional-dependencies"]
    names, todo, seen = [], [e for e in extras.split(",") if e], set()
    for line in project["dependencies"]:
        names.append(Requirement(line).name.lower())
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in optional, f"build.sh names the extra {extra!r}, which pyproject.toml lacks"
        for line in optional[extra]:
            req = Requirement(line)
            if req.name == project["name"]:
                todo.extend(req.extras)
            else:
                names.append(req.name.lower())
    return names


@pytest.mark.parametrize(("kind", "wheel"), [("cpu", "onnxruntime"), ("gpu", "onnxruntime-gpu"),
                                             ("jetson", "onnxruntime")])
def test_each_machine_kind_installs_exactly_one_onnxruntime_wheel(kind: str, wheel: str) -> None:
    """The requirement set build.sh installs on a CPU host, a GPU host and a Jetson holds one ORT wheel."""
    proc = _build_sh("extras", kind)
    assert proc.returncode == 0, proc.stderr
    names = _resolved_names(proc.stdout.strip())
    assert [n for n in names if n in ORT_WHEELS] == [wheel]


def test_a_jetson_with_a_system_onnxruntime_installs_none() -> None:
    """A Jetson whose system Python has an ONNX Runtime (seen through the venv) gets no second one."""
    proc = _build_sh("extras", "jetson", "system-ort")
    assert proc.returncode == 0, proc.stderr
    names = _resolved_names(proc.stdout.strip())
    assert not ORT_WHEELS & set(names)
    assert "pycuda" in names and "tensorrt" not in names   # TensorRT is JetPack's


def test_the_core_and_no_two_extras_bring_both_wheels() -> None:
    """The core depends on no ONNX Runtime; the extras with one are cpu and gpu, which build.sh never joins."""
    project = _project()
    assert not ORT_WHEELS & set(_resolved_names(""))
    bringing = {extra for extra in project["optional-dependencies"]
                if ORT_WHEELS & set(_resolved_names(extra)) - set(_resolved_names(""))}
    assert bringing == {"cpu", "gpu"}
    gpu_host_with_tensorrt = _build_sh("extras", extras_env="gpu,dev,twin,train,tensorrt")
    assert [n for n in _resolved_names(gpu_host_with_tensorrt.stdout.strip()) if n in ORT_WHEELS] == [
        "onnxruntime-gpu"]


def test_an_extras_override_naming_both_wheels_is_refused_and_one_naming_none_gets_the_machines() -> None:
    both = _build_sh("extras", extras_env="dev,cpu,gpu")
    assert both.returncode == 2
    assert "name both cpu (onnxruntime) and gpu (onnxruntime-gpu)" in both.stderr
    machine = _build_sh("extras").stdout.strip().split(",")
    own = [e for e in machine if e in ("cpu", "gpu")]
    plain = _build_sh("extras", extras_env="dev,twin")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip().split(",") == [*own, "dev", "twin"]


def _jetson_sandbox(tmp_path: Path, *, version: tuple[int, int, int] = (3, 10, 12), tensorrt: str | None = None,
                    onnxruntime: bool = False) -> tuple[Path, dict[str, str]]:
    """build.sh and pyproject.toml in a folder of their own, and a stand-in system Python of a Jetson.

    The stand-in answers ``--version`` and ``-c CODE`` the way JetPack's Python would: the given
    version, and TensorRT's bindings (or an ONNX Runtime) importable when asked for. Anything else
    (creating a venv) fails loudly, so a check that lets set-up through is seen, and the project's
    own .venv is never touched.
    """
    repo = tmp_path / "repo"
    repo.mkdir(parents=True)
    for name in ("build.sh", "pyproject.toml"):
        (repo / name).write_bytes((ROOT / name).read_bytes())
    fake = tmp_path / "fake-site"
    fake.mkdir()
    (fake / "_jetpack_prelude.py").write_text(f"import sys\nsys.version_info = {(*version, 'final', 0)!r}\n")
    if tensorrt is not None:
        (fake / "tensorrt").mkdir()
        (fake / "tensorrt" / "__init__.py").write_text(f"__version__ = {tensorrt!r}\n")
    if onnxruntime:
        (fake / "onnxruntime").mkdir()
        (fake / "onnxruntime" / "__init__.py").write_text("__version__ = '1.20.0'\n")
    python = tmp_path / "python3"
    python.write_text(f"""#!/bin/sh
export PYTHONPATH={fake}
if [ "$1" = "--version" ]; then echo "Python {'.'.join(map(str, version))}"; exit 0; fi
if [ "$1" = "-c" ]; then shift; code=$1; shift; exec {sys.executable} -S -c "import _jetpack_prelude
$code" "$@"; fi
echo "stand-in python: not expected here: $*" >&2
exit 99
""")
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "ASTRO_EDGE_EXTRAS"}
    env.update({"ASTRO_EDGE_MACHINE": "jetson", "PYTHON": str(python), "CUDA_HOME": str(tmp_path / "no-cuda"),
                "PATH": "/usr/bin:/bin"})
    return repo, env


def _setup(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(repo / "build.sh"), "setup"], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_jetson_setup_refuses_jetpack_5_and_6_0_and_says_what_is_missing(tmp_path: Path) -> None:
    """JetPack 5's Python 3.8, a Python without TensorRT, JetPack 6.0's TensorRT 8.6 and a board
    without nvcc each stop set-up with the reason, before any venv is made."""
    cases = [
        ({"version": (3, 8, 10), "tensorrt": "8.5.2.2"}, "JetPack 5 ships Python 3.8 and TensorRT 8.5"),
        ({}, "cannot import tensorrt: install JetPack's TensorRT Python bindings (sudo apt install python3-libnvinfer)"),
        ({"tensorrt": "8.6.2.3"}, "TensorRT 8.6.2.3 found; astro-edge's TensorRT backend is written for TensorRT 10"),
        ({"tensorrt": "10.3.0.30"}, "pycuda is built against this machine's CUDA, and no nvcc was found"),
    ]
    for i, (kwargs, message) in enumerate(cases):
        repo, env = _jetson_sandbox(tmp_path / str(i), **kwargs)
        proc = _setup(repo, env)
        assert proc.returncode == 1, proc.stderr
        assert message in proc.stderr
        assert not (repo / ".venv").exists()


def test_jetson_extras_use_the_system_onnxruntime_when_there_is_one(tmp_path: Path) -> None:
    repo, env = _jetson_sandbox(tmp_path / "with", tensorrt="10.3.0.30", onnxruntime=True)
    with_ort = subprocess.run(["bash", str(repo / "build.sh"), "extras"], capture_output=True, text=True,
                              env=env, timeout=60, check=False)
    assert with_ort.stdout.strip() == "jetson,dev,twin", with_ort.stderr
    repo, env = _jetson_sandbox(tmp_path / "without", tensorrt="10.3.0.30")
    without = subprocess.run(["bash", str(repo / "build.sh"), "extras"], capture_output=True, text=True,
                             env=env, timeout=60, check=False)
    assert without.stdout.strip() == "jetson,cpu,dev,twin", without.stderr
