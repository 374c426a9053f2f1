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
from engines.scoring import ScoringConstants
from engines.stamps import NORMALISATION

CLASSES = ("star", "galaxy", "cosmic_ray", "hot_pixel", "streak", "bogus")


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
                                            batch_profile=(1, 64, 512)),
        "golden.npz": file_entry(tmp_path / "golden.npz", "none", "npz"),
    }
    manifest = EngineManifest(
        name="stampnet", version="1.0.0", classes=CLASSES, ensemble_size=4, embedding_dim=3,
        normalisation=NORMALISATION, scoring=_scoring(), files=files,
        training={"seed": 1, "command": "astro-edge engines train", "dataset_sizes": {"train": 10}},
        evaluation={"accuracy": 0.98},
        golden=GoldenSpec(file="golden.npz", tolerance={"int8": {"logits_max_abs": 0.5}}),
        build=BuildInfo(backend="onnxruntime", precision="fp32", file="model_fp32.onnx", device="x86 CPU",
                        figures={"stamps_per_s": 1000.0}),
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
    assert np.array_equal(loaded.scoring.class_means, written.scoring.class_means)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert data["format"] == MANIFEST_FORMAT
    assert data["input"] == {"name": "stamps", "shape": [-1, 2, 32, 32], "dtype": "float32"}
    assert loaded.output_shapes == {"logits": [-1, 4, 6], "embedding": [-1, 3]}


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
       profile=st.tuples(st.integers(1, 4), st.integers(4, 64), st.integers(64, 1024)))
def test_plan_entries_round_trip(tv: str, cc: str, hw: str | None, profile: tuple[int, int, int]) -> None:
    """A tensorrt-plan entry keeps its TensorRT version, compute capability, hardware level and profile."""
    entry = FileEntry(sha256="0" * 64, precision="int8", format="tensorrt-plan", tensorrt_version=tv,
                      compute_capability=cc, hardware_compatibility=hw, batch_profile=profile)
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
                                              device="cpu", figures=evaluation))
    text = json.dumps(manifest.to_dict())
    assert EngineManifest.from_dict(json.loads(text)).to_dict() == json.loads(text)
