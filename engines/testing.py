"""Test helpers for users of the engines: a tiny, deterministic engine folder.

``write_tiny_engine(folder)`` writes a real ONNX model (a flatten and two matrix products with
fixed weights) and a verified manifest, so code that loads and runs engines (a node, a rig, a
test suite) can be exercised end to end without a trained model. Its labels mean nothing; its
arithmetic is known (:func:`tiny_reference`). Needs the ``onnx`` package (``dev`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engines.manifest import BuildInfo, EngineManifest, GoldenSpec, file_entry, write_manifest
from engines.scoring import ScoringConstants
from engines.stamps import NORMALISATION, STAMP_SIZE

CLASSES = ("star", "galaxy", "cosmic_ray", "hot_pixel", "streak", "bogus")
K, C, D = 4, len(CLASSES), 8
FLAT = 2 * STAMP_SIZE * STAMP_SIZE


def tiny_weights() -> tuple[np.ndarray, np.ndarray]:
    """The fixed weights of the tiny model: (FLAT, K*C) for logits, (FLAT, D) for the embedding."""
    rng = np.random.default_rng(11)
    return (rng.normal(scale=0.05, size=(FLAT, K * C)).astype(np.float32),
            rng.normal(scale=0.05, size=(FLAT, D)).astype(np.float32))


def tiny_reference(stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the tiny model computes, in float64 numpy: logits (N, K, C) and embedding (N, D)."""
    w_logits, w_emb = tiny_weights()
    flat = stamps.reshape(stamps.shape[0], FLAT).astype(np.float64)
    return (flat @ w_logits).reshape(-1, K, C), flat @ w_emb


def write_tiny_onnx(path: Path) -> None:
    """stamps (N, 2, 32, 32) -> Flatten -> MatMul -> Reshape as logits (N, K, C); MatMul as embedding (N, D)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w_logits, w_emb = tiny_weights()
    nodes = [
        helper.make_node("Flatten", ["stamps"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w_logits"], ["logits_flat"]),
        helper.make_node("Reshape", ["logits_flat", "logits_shape"], ["logits"]),
        helper.make_node("MatMul", ["flat", "w_emb"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("stamps", TensorProto.FLOAT, ["N", 2, STAMP_SIZE, STAMP_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", K, C]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", D])],
        initializer=[numpy_helper.from_array(w_logits, "w_logits"),
                     numpy_helper.from_array(w_emb, "w_emb"),
                     numpy_helper.from_array(np.array([-1, K, C], np.int64), "logits_shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def tiny_scoring() -> ScoringConstants:
    """Scoring constants for the tiny model (unit Gaussians at the origin, ten conformal scores)."""
    return ScoringConstants(temperature=1.0, class_means=np.zeros((C, D)), precision=np.eye(D),
                            entropy_weight=0.0, conformal_scores=np.arange(10.0))


def write_tiny_engine(folder: Path, *, plans: dict[str, dict[str, Any]] | None = None,
                      build: BuildInfo | None = None, ensemble_size: int = K,
                      name: str = "tiny", version: str = "0.1") -> Path:
    """An engine folder with the tiny ONNX as fp32, a stand-in QDQ file, golden stamps and optional stand-in plans."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_onnx(folder / "model_fp32.onnx")
    (folder / "model_int8_qdq.onnx").write_bytes((folder / "model_fp32.onnx").read_bytes())
    files = {"model_fp32.onnx": file_entry(folder / "model_fp32.onnx", "fp32", "onnx"),
             "model_int8_qdq.onnx": file_entry(folder / "model_int8_qdq.onnx", "int8", "onnx-qdq")}
    for rel, fields in (plans or {}).items():
        fields = dict(fields)
        (folder / rel).write_bytes(b"FAKEPLAN" + rel.encode())
        precision = fields.pop("precision")
        files[rel] = file_entry(folder / rel, precision, "tensorrt-plan", **fields)
    stamps = np.random.default_rng(5).normal(size=(16, 2, STAMP_SIZE, STAMP_SIZE)).astype(np.float32)
    logits, embedding = tiny_reference(stamps)
    np.savez(folder / "golden.npz", stamps=stamps, logits=logits.astype(np.float32),
             embedding=embedding.astype(np.float32))
    files["golden.npz"] = file_entry(folder / "golden.npz", "none", "npz")
    limits = {"logits_max_abs": 1e-3, "embedding_max_abs": 1e-3, "top1_agreement_min": 1.0}
    golden = GoldenSpec(file="golden.npz", tolerance={"fp32": dict(limits), "int8": dict(limits)})
    manifest = EngineManifest(name=name, version=version, classes=CLASSES, ensemble_size=ensemble_size,
                              embedding_dim=D, normalisation=NORMALISATION,
                              scoring=tiny_scoring(), files=files, build=build, golden=golden)
    write_manifest(manifest, folder)
    return folder
