"""ONNX export (FP32, FP16) and INT8 QDQ quantization of the stamp ensemble."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from engines.training.dataset import outlier_stamps
from engines.training.export import OPSET, convert_fp16, export_onnx, quantize_int8, run_onnx
from engines.training.model import ModelSpec
from engines.training.train import TrainSettings, fit_model, predict


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, np.ndarray, Path]:
    """A tiny ensemble trained for one epoch on a learnable rule (brightness tercile of the stamp)."""
    rng = np.random.default_rng(5)
    stamps = outlier_stamps(900, rng)
    brightness = stamps[:, 0].sum(axis=(1, 2))
    labels = np.digitize(brightness, np.quantile(brightness, [1 / 3, 2 / 3])).astype(np.int64)
    settings = TrainSettings(epochs=2, batch_size=64, oe_fraction=0.0,
                             spec=ModelSpec(n_classes=3, widths=(8, 16, 32), head_hidden=16, views=2))
    model = fit_model(stamps[:700], labels[:700], stamps[:0], settings)
    folder = tmp_path_factory.mktemp("export")
    return model, stamps[700:], export_onnx(model, folder / "fp32.onnx")


def test_onnx_output_equals_torch_output(trained: tuple[object, np.ndarray, Path]) -> None:
    """The FP32 ONNX graph reproduces the torch logits and embedding to float rounding."""
    model, stamps, path = trained
    torch_logits, torch_embedding = predict(model, stamps)
    logits, embedding = run_onnx(path, stamps)
    np.testing.assert_allclose(logits, torch_logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(embedding, torch_embedding, atol=1e-4, rtol=1e-4)


def test_onnx_graph_has_dynamic_batch_and_contract_names(trained: tuple[object, np.ndarray, Path]) -> None:
    """The graph takes any batch size on input 'stamps' and names its outputs 'logits' and 'embedding'."""
    _, stamps, path = trained
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["stamps"]
    assert [o.name for o in graph.graph.output] == ["logits", "embedding"]
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= OPSET
    for n in (1, 7):
        logits, embedding = run_onnx(path, stamps[:n])
        assert logits.shape[0] == embedding.shape[0] == n


def test_fp16_keeps_float32_interface_and_agrees(trained: tuple[object, np.ndarray, Path], tmp_path: Path) -> None:
    """The FP16 file still takes and returns float32 and its logits stay within 0.01 of FP32."""
    _, stamps, path = trained
    half = convert_fp16(path, tmp_path / "fp16.onnx")
    logits, embedding = run_onnx(half, stamps)
    ref, _ = run_onnx(path, stamps)
    assert logits.dtype == embedding.dtype == np.float32
    assert np.abs(logits - ref).max() < 0.01


def test_int8_file_is_qdq_and_agrees_with_fp32(trained: tuple[object, np.ndarray, Path], tmp_path: Path) -> None:
    """The INT8 file holds QuantizeLinear/DequantizeLinear pairs and keeps the FP32 top-1 class."""
    _, stamps, path = trained
    rng = np.random.default_rng(6)
    q = quantize_int8(path, tmp_path / "int8.onnx", outlier_stamps(200, rng))
    ops = [node.op_type for node in onnx.load(str(q)).graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3
    logits, _ = run_onnx(q, stamps)
    ref, _ = run_onnx(path, stamps)
    agree = (logits.mean(axis=1).argmax(axis=1) == ref.mean(axis=1).argmax(axis=1)).mean()
    assert agree >= 0.95
