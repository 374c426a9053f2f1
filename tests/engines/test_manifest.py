"""Tests for engines.manifest: the astro-edge-engine-1 manifest, its checks and its round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import EngineCompatibilityError, EngineIntegrityError
from engines.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    BuildInfo,
    EngineManifest,
    FileEntry,
    GoldenSpec,
    file_entry,
    load_manifest,
    read_manifest,
    write_manifest,
)
from engines.runtime import select_backend
from engines.runtime.trt import DeviceInfo, check_plan_compatible
from engines.scoring import ScoringConstants
from engines.stamps import NORMALISATION
from engines.testing import write_tiny_engine

CLASSES = ("star", "galaxy", "cosmic_ray", "hot_pixel", "streak", "bogus")
ORIN = DeviceInfo(tensorrt_version="10.3.0.30", compute_capability="8.7", name="Orin",
                  cpu_arch="aarch64", os="Linux", cuda_version="12.6", integrated=True)
#: the platform record of a plan built on ORIN
ORIN_PLATFORM = {"cpu_arch": "aarch64", "os": "Linux", "gpu_name": "Orin", "integrated": True,
                 "cuda_version": "12.6"}


def _scoring(dim: int = 3) -> ScoringConstants:
    rng = np.random.default_rng(7)
    return ScoringConstants(temperature=1.3, class_means=rng.normal(size=(len(CLASSES), dim)),
                            precision=np.eye(dim), entropy_weight=0.4,
                            conformal_scores=np.sort(rng.exponential(size=50)))


def _engine_folder(tmp_path: Path) -> EngineManifest:
    """An engine folder with a fake model, a fake plan and golden stamps, and its written manifest."""
    (tmp_path / "model_fp32.onnx").write_bytes(b"not really onnx, but hashed all the same")
    (tmp_path / "plans").mkdir(exist_ok=True)
    (tmp_path / "plans" / "model_fp16.plan").write_bytes(b"plan bytes")
    np.savez(tmp_path / "golden.npz", stamps=np.zeros((2, 2, 32, 32), np.float32))
    files = {
        "model_fp32.onnx": file_entry(tmp_path / "model_fp32.onnx", "fp32", "onnx"),
        "plans/model_fp16.plan": file_entry(tmp_path / "plans" / "model_fp16.plan", "fp16", "tensorrt-plan",
                                            tensorrt_version="10.3.0", compute_capability="8.7",
                                            batch_profile=(1, 64, 512), **ORIN_PLATFORM),
        "golden.npz": file_entry(tmp_path / "golden.npz", "none", "npz"),
    }
    manifest = EngineManifest(
        name="stampnet", version="1.0.0", classes=CLASSES, ensemble_size=4, embedding_dim=3,
        normalisation=NORMALISATION, scoring=_scoring(), files=files,
        training={"seed": 1, "command": "astro-edge engines train", "dataset_sizes": {"train": 10}},
        evaluation={"accuracy": 0.98},
        golden=GoldenSpec(file="golden.npz", tolerance={"int8": {"logits_max_abs": 0.5}}),
        build=BuildInfo(backend="onnxruntime", precision="fp32", file="model_fp32.onnx", device="x86 CPU",
                        figures={"stamps_per_s": 1000.0}, cpu_arch="x86_64", os="Linux"),
    )
    write_manifest(manifest, tmp_path)
    return manifest


def test_written_manifest_loads_back_identical(tmp_path: Path) -> None:
    """write_manifest then load_manifest gives the same fields, files, scoring and build record."""
    written = _engine_folder(tmp_path)
    loaded = load_manifest(tmp_path)
    assert loaded.to_dict() == written.to_dict()
    assert loaded.directory == tmp_path
    assert loaded.files["plans/model_fp16.plan"].batch_profile == (1, 64, 512)
    assert loaded.build is not None and (loaded.build.cpu_arch, loaded.build.os) == ("x86_64", "Linux")
    assert np.array_equal(loaded.scoring.class_means, written.scoring.class_means)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert data["format"] == MANIFEST_FORMAT
    assert data["input"] == {"name": "stamps", "shape": [-1, 2, 32, 32], "dtype": "float32"}
    assert loaded.output_shapes == {"logits": [-1, 4, 6], "embedding": [-1, 3]}


def test_plan_platform_record_is_written_and_read_back(tmp_path: Path) -> None:
    """A plan entry's platform record (CPU, OS, GPU name and kind, CUDA version) is written to the JSON
    and loads back unchanged; keys that are not set are not written."""
    _engine_folder(tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    plan = data["files"]["plans/model_fp16.plan"]
    assert {k: plan[k] for k in ORIN_PLATFORM} == ORIN_PLATFORM
    assert "cpu_arch" not in data["files"]["model_fp32.onnx"] and "integrated" not in data["files"]["golden.npz"]
    loaded = load_manifest(tmp_path).files["plans/model_fp16.plan"]
    assert (loaded.cpu_arch, loaded.os, loaded.gpu_name, loaded.integrated, loaded.cuda_version) == (
        "aarch64", "Linux", "Orin", True, "12.6")
    check_plan_compatible(loaded, ORIN)


def test_old_plan_entry_without_platform_loads_but_is_refused(tmp_path: Path) -> None:
    """A plan entry written before the platform was recorded still loads, but the check refuses it
    (auto falls back to ONNX Runtime, tensorrt says to rebuild)."""
    folder = write_tiny_engine(tmp_path, plans={"old.plan": {
        "precision": "fp16", "tensorrt_version": "10.3.0", "compute_capability": "8.7", "batch_profile": (1, 4, 8)}})
    plan = json.loads((folder / MANIFEST_NAME).read_text())["files"]["old.plan"]
    assert not set(plan) & {"cpu_arch", "os", "gpu_name", "integrated", "cuda_version"}
    manifest = load_manifest(folder)
    entry = manifest.files["old.plan"]
    assert entry.cpu_arch is None and entry.integrated is None and entry.cuda_version is None
    with pytest.raises(EngineCompatibilityError, match=r"lacks cpu_arch, os, integrated, cuda_version.*rebuilt"):
        check_plan_compatible(entry, ORIN, where="old.plan")
    assert select_backend(manifest, "auto", "auto", ORIN).backend == "onnxruntime"
    with pytest.raises(EngineCompatibilityError, match="must be rebuilt"):
        select_backend(manifest, "tensorrt", "fp16", ORIN)


def test_engine_id_names_model_version_and_file_hash(tmp_path: Path) -> None:
    """engine_id is name:version:first 12 hex digits of the file's sha256."""
    m = _engine_folder(tmp_path)
    assert m.engine_id("model_fp32.onnx") == f"stampnet:1.0.0:{m.files['model_fp32.onnx'].sha256[:12]}"
    assert m.engine_id("model_fp32.onnx") != m.engine_id("plans/model_fp16.plan")


def test_a_changed_file_fails_its_checksum(tmp_path: Path) -> None:
    """Replacing a model file with other bytes of the same size is an EngineIntegrityError naming the file."""
    _engine_folder(tmp_path)
    path = tmp_path / "model_fp32.onnx"
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(EngineIntegrityError, match="sha256.*model_fp32.onnx|model_fp32.onnx.*sha256"):
        load_manifest(tmp_path)
    read_manifest(tmp_path)  # parsing alone does not hash


def test_a_truncated_or_missing_file_is_refused(tmp_path: Path) -> None:
    """A truncated golden file and a deleted plan each raise EngineIntegrityError."""
    _engine_folder(tmp_path)
    (tmp_path / "golden.npz").write_bytes((tmp_path / "golden.npz").read_bytes()[:10])
    with pytest.raises(EngineIntegrityError, match="truncated"):
        load_manifest(tmp_path)
    _engine_folder(tmp_path)
    (tmp_path / "plans" / "model_fp16.plan").unlink()
    with pytest.raises(EngineIntegrityError, match="missing"):
        load_manifest(tmp_path)


def test_unknown_manifest_format_is_a_compatibility_error(tmp_path: Path) -> None:
    """A manifest of format astro-edge-engine-2 is refused as incompatible, not as corrupt."""
    _engine_folder(tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    data["format"] = "astro-edge-engine-2"
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(EngineCompatibilityError, match="astro-edge-engine-1"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("scoring"), "scoring"),
    (lambda d: d.update(ensemble_size="4"), "ensemble_size"),
    (lambda d: d.update(ensemble_size=True), "ensemble_size"),
    (lambda d: d["classes"].pop(), "classes"),
    (lambda d: d["files"]["model_fp32.onnx"].update(sha256="abc"), "sha256"),
    (lambda d: d["files"]["model_fp32.onnx"].update(precision="int4"), "precision"),
    (lambda d: d["files"]["plans/model_fp16.plan"].pop("tensorrt_version"), "tensorrt_version"),
    (lambda d: d["files"]["plans/model_fp16.plan"].update(integrated="yes"), "integrated"),
    (lambda d: d["files"]["plans/model_fp16.plan"].update(integrated=1), "integrated"),
    (lambda d: d["files"]["plans/model_fp16.plan"].update(cpu_arch=64), "cpu_arch"),
    (lambda d: d["files"]["plans/model_fp16.plan"].update(os=""), "'os'"),
    (lambda d: d["files"]["plans/model_fp16.plan"].update(gpu_name=["Orin"]), "gpu_name"),
    (lambda d: d["files"]["plans/model_fp16.plan"].update(cuda_version="12"), "cuda_version"),
    (lambda d: d["files"]["plans/model_fp16.plan"].update(cuda_version=12.6), "cuda_version"),
    (lambda d: d["build"].update(cuda_version="twelve"), "cuda_version"),
    (lambda d: d["build"].update(cpu_arch=False), "cpu_arch"),
    (lambda d: d["files"].update({"../outside.onnx": d["files"]["model_fp32.onnx"]}), "inside"),
    (lambda d: d["golden"].update(file="nowhere.npz"), "golden"),
    (lambda d: d["scoring"].update(temperature=-1.0), "temperature"),
])
def test_malformed_manifests_are_integrity_errors(tmp_path: Path, edit, match: str) -> None:
    """Each kind of broken content raises EngineIntegrityError with a message naming what is wrong."""
    _engine_folder(tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    edit(data)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(EngineIntegrityError, match=match):
        load_manifest(tmp_path)


def test_corrupt_json_and_absent_manifest_say_what_to_do(tmp_path: Path) -> None:
    """A truncated manifest.json and a folder without one raise EngineIntegrityError."""
    with pytest.raises(EngineIntegrityError, match="engine folder"):
        load_manifest(tmp_path)
    _engine_folder(tmp_path)
    text = (tmp_path / MANIFEST_NAME).read_text()
    (tmp_path / MANIFEST_NAME).write_text(text[: len(text) // 2])
    with pytest.raises(EngineIntegrityError, match="JSON"):
        load_manifest(tmp_path)


def test_stamp_recipe_mismatch_is_refused(tmp_path: Path) -> None:
    """An engine trained on another stamp normalisation is refused by check_normalisation."""
    m = _engine_folder(tmp_path)
    m.check_normalisation(NORMALISATION)
    with pytest.raises(EngineCompatibilityError, match="normalised"):
        m.check_normalisation("other-recipe-v0")


_hex = st.text("0123456789abcdef", min_size=64, max_size=64)


@settings(max_examples=50, deadline=None)
@given(sha=_hex, precision=st.sampled_from(["fp32", "fp16", "int8", "none"]),
       fmt=st.sampled_from(["onnx", "onnx-qdq", "npz", "markdown", "json"]),
       size=st.none() | st.integers(0, 2**40))
def test_file_entries_round_trip(sha: str, precision: str, fmt: str, size: int | None) -> None:
    """FileEntry.to_dict -> JSON -> from_dict gives back the same entry."""
    entry = FileEntry(sha256=sha, precision=precision, format=fmt, size_bytes=size)
    back = FileEntry.from_dict(json.loads(json.dumps(entry.to_dict())), "test")
    assert back == entry


@settings(max_examples=50, deadline=None)
@given(tv=st.tuples(st.integers(8, 12), st.integers(0, 20), st.integers(0, 9)).map(lambda t: ".".join(map(str, t))),
       cc=st.sampled_from(["7.2", "8.6", "8.7", "9.0"]), hw=st.sampled_from([None, "ampere_plus"]),
       profile=st.tuples(st.integers(1, 4), st.integers(4, 64), st.integers(64, 1024)),
       cpu_arch=st.sampled_from([None, "x86_64", "aarch64"]), os_name=st.sampled_from([None, "Linux", "Windows"]),
       gpu_name=st.none() | st.text(min_size=1, max_size=20).filter(str.strip),
       integrated=st.sampled_from([None, True, False]),
       cuda=st.none() | st.tuples(st.integers(10, 13), st.integers(0, 20)).map(lambda t: f"{t[0]}.{t[1]}"))
def test_plan_entries_round_trip(tv: str, cc: str, hw: str | None, profile: tuple[int, int, int],
                                 cpu_arch: str | None, os_name: str | None, gpu_name: str | None,
                                 integrated: bool | None, cuda: str | None) -> None:
    """A tensorrt-plan entry keeps its TensorRT version, compute capability, hardware level, profile
    and platform record (any part of which may be absent)."""
    entry = FileEntry(sha256="0" * 64, precision="int8", format="tensorrt-plan", tensorrt_version=tv,
                      compute_capability=cc, hardware_compatibility=hw, batch_profile=profile,
                      cpu_arch=cpu_arch, os=os_name, gpu_name=gpu_name, integrated=integrated,
                      cuda_version=cuda)
    assert FileEntry.from_dict(json.loads(json.dumps(entry.to_dict())), "test") == entry


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10)


@settings(max_examples=40, deadline=None)
@given(name=st.text(min_size=1, max_size=12), version=st.text(min_size=1, max_size=8),
       k=st.integers(1, 16), training=st.dictionaries(st.text(max_size=8), _json, max_size=4),
       evaluation=st.dictionaries(st.text(max_size=8), _json, max_size=4),
       tolerance=st.dictionaries(st.sampled_from(["fp32", "fp16", "int8"]),
                                 st.dictionaries(st.text(min_size=1, max_size=8),
                                                 st.floats(0, 10), max_size=3), max_size=3))
def test_whole_manifests_round_trip_through_json(name: str, version: str, k: int, training: dict,
                                                  evaluation: dict, tolerance: dict) -> None:
    """EngineManifest.to_dict -> JSON -> from_dict -> to_dict is the identity, provenance included."""
    files = {"m.onnx": FileEntry("a" * 64, "fp32", "onnx", size_bytes=10),
             "g.npz": FileEntry("b" * 64, "none", "npz")}
    manifest = EngineManifest(name=name, version=version, classes=CLASSES, ensemble_size=k, embedding_dim=3,
                              normalisation=NORMALISATION, scoring=_scoring(), files=files,
                              training=training, evaluation=evaluation,
                              golden=GoldenSpec(file="g.npz", tolerance=tolerance),
                              build=BuildInfo(backend="onnxruntime", precision="fp32", file="m.onnx",
                                              device="cpu", figures=evaluation, cpu_arch="aarch64",
                                              os="Linux", cuda_version="12.6"))
    text = json.dumps(manifest.to_dict())
    assert EngineManifest.from_dict(json.loads(text)).to_dict() == json.loads(text)
