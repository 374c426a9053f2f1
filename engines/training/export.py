"""Export of a trained ensemble to ONNX (FP32, FP16) and INT8 QDQ quantization.

The FP32 graph has input ``stamps`` (N, 2, 32, 32) with a dynamic batch and outputs ``logits``
(N, K, C) and ``embedding`` (N, D). The INT8 file is in QDQ form (QuantizeLinear/DequantizeLinear
pairs, symmetric, per-channel weights) calibrated by onnxruntime.quantization on twin stamps: the
same file is what TensorRT takes for explicit INT8. Only :func:`export_onnx` needs torch, and it
imports it when called; the rest works on ONNX files with onnx and onnxruntime alone.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from numpy.typing import NDArray

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "INPUT_NAME",
    "INT8_WEIGHT_BITS",
    "OPSET",
    "OUTPUT_NAMES",
    "convert_fp16",
    "export_onnx",
    "quantize_int8",
    "run_onnx",
]

INPUT_NAME = "stamps"
OUTPUT_NAMES = ("logits", "embedding")
OPSET = 17


def export_onnx(model: nn.Module, path: Path, stamp_size_px: int = 32, in_channels: int | None = None) -> Path:
    """Write ``model`` (in eval mode) as an FP32 ONNX graph with a dynamic batch axis; the input
    has ``in_channels`` channels (default: what the model's spec reads, views x channels)."""
    import torch

    if in_channels is None:
        spec = getattr(model, "spec", None)
        in_channels = 2 if spec is None else spec.views * spec.in_channels
    model.eval()
    dummy = torch.zeros(2, in_channels, stamp_size_px, stamp_size_px)
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        # the torch.export-based exporter needs onnxscript, which the train extra does not carry;
        # the TorchScript exporter writes this plain conv graph at opset 17 exactly as wanted
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        torch.onnx.export(
            model, (dummy,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, "logits": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def convert_fp16(fp32_path: Path, out_path: Path) -> Path:
    """Write an FP16 copy of the graph whose input and outputs stay float32 (the engine contract)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    half = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(out_path))
    return Path(out_path)


#: bits of the INT8 weights (7: ONNX Runtime's reduce_range; see :func:`quantize_int8`)
INT8_WEIGHT_BITS = 7


class _StampReader:
    """onnxruntime calibration data reader over an array of stamps, in batches of one size.

    The percentile calibrator stacks every batch's outputs into one array, so a shorter last batch
    breaks it: beyond one batch, the last ``len(stamps) % batch`` stamps are left out.
    """

    def __init__(self, stamps: NDArray[np.float32], batch: int) -> None:
        n = len(stamps) if len(stamps) <= batch else len(stamps) - len(stamps) % batch
        self._batches: Iterator[NDArray[np.float32]] = iter(
            [np.ascontiguousarray(stamps[i:i + batch]) for i in range(0, n, batch)])

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(fp32_path: Path, out_path: Path, calibration_stamps: NDArray[np.float32],
                  batch: int = 256) -> Path:
    """Write a static INT8 QDQ graph calibrated on ``calibration_stamps`` (n, 2, 32, 32).

    Activations and weights are symmetric INT8 (what TensorRT's explicit quantization wants),
    weights per output channel. Each activation's range is the 99.999th percentile of its values
    over the given stamps (min/max lets one outlying stamp widen the step of every other). Weights use 7 of
    the 8 bits (:data:`INT8_WEIGHT_BITS`): on x86 CPUs without VNNI, ONNX Runtime multiplies
    unsigned activations by signed weights with an instruction that adds pairs of products in
    16 bits, and full-range weights overflow it (the shipped engines' logits were off by up to 10
    on an AVX2-only CPU, top-1 agreement 0.68). With 7-bit weights the sums fit, and every CPU
    computes what the graph says.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        # the percentile calibrator prints its progress; a command's stdout is its own output
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(prepared), str(out_path), _StampReader(np.asarray(calibration_stamps, np.float32), batch),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                per_channel=True, reduce_range=INT8_WEIGHT_BITS == 7, calibrate_method=CalibrationMethod.Percentile,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "CalibPercentile": 99.999},
            )
    return Path(out_path)


def run_onnx(path: Path, stamps: NDArray[np.float32], threads: int = 1,
             batch: int = 1024) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Run an ONNX file on the CPU: ``(logits (N, K, C), embedding (N, D))`` in float32."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logits, embedding = [], []
    for i in range(0, len(stamps), batch):
        lo, em = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(stamps[i:i + batch], np.float32)})
        logits.append(lo)
        embedding.append(em)
    return np.concatenate(logits).astype(np.float32), np.concatenate(embedding).astype(np.float32)
