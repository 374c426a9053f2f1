"""``engines check``: parity of every backend and precision against the golden FP32 outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.errors import EngineError, EngineIntegrityError
from edge.node.assemble import default_engine_dir
from engines.check import check_engine, compare_outputs

#: the shipped engine (what --model defaults to)
DEFAULT_MODEL_DIR = default_engine_dir()


def test_compare_outputs_passes_within_tolerance_and_fails_beyond(rng: np.random.Generator) -> None:
    """Small differences pass; a flipped top-1 class or a logit shift beyond tolerance fails."""
    logits = rng.normal(size=(20, 4, 6)).astype(np.float32)
    embedding = rng.normal(size=(20, 8)).astype(np.float32)
    tol = {"logits_max_abs": 0.1, "embedding_max_abs": 0.1, "top1_agreement_min": 1.0}
    assert compare_outputs(logits + 0.01, embedding, logits, embedding, tol)[3]
    shifted = logits.copy()
    shifted[0, :, :] += 5.0 * np.eye(6)[logits[0].mean(axis=0).argmin()]
    d_logits, _, top1, passed = compare_outputs(shifted, embedding, logits, embedding, tol)
    assert not passed and d_logits >= 5.0 and top1 < 1.0


def test_compare_outputs_refuses_mismatched_shapes(rng: np.random.Generator) -> None:
    """Outputs of another shape than the golden ones are an engine error, not a silent pass."""
    logits = rng.normal(size=(4, 4, 6)).astype(np.float32)
    with pytest.raises(EngineError, match="shapes"):
        compare_outputs(logits[:, :2], np.zeros((4, 8)), logits, np.zeros((4, 8)), {})


def test_shipped_engine_passes_check_on_every_onnx_file() -> None:
    """Every ONNX file of the shipped engine reproduces the golden outputs within its tolerance."""
    results = check_engine(DEFAULT_MODEL_DIR)
    ran = {(r.backend, r.precision) for r in results if r.skipped is None}
    assert {("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8")} <= ran
    assert all(r.passed for r in results)


def test_check_command_exits_nonzero_when_a_file_drifts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """If golden outputs no longer match (here: the golden logits are shifted), check reports FAIL and exits 1."""
    folder = tmp_path / "engine"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    golden = dict(np.load(folder / "golden.npz"))
    golden["logits"] = golden["logits"] + 3.0
    np.savez_compressed(folder / "golden.npz", **golden)
    manifest = json.loads((folder / "manifest.json").read_text())
    from engines.manifest import sha256_file

    manifest["files"]["golden.npz"]["sha256"] = sha256_file(folder / "golden.npz")
    manifest["files"]["golden.npz"]["size_bytes"] = (folder / "golden.npz").stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert main(["engines", "check", "--model", str(folder), "--threads", "1"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_check_refuses_a_corrupt_engine_file(tmp_path: Path) -> None:
    """A model file that does not match its sha256 stops the check with an integrity error."""
    folder = tmp_path / "engine"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    with open(folder / "model_int8.onnx", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(EngineIntegrityError, match="sha256"):
        check_engine(folder)


def test_check_through_the_command_line_passes_on_the_shipped_engine(capsys: pytest.CaptureFixture[str]) -> None:
    """`astro-edge engines check` exits 0 and prints one passing line per ONNX file of the shipped engine."""
    from edge.cli import main

    assert main(["engines", "check"]) == 0
    out = capsys.readouterr().out
    assert out.count(" pass") == 3 and "FAIL" not in out
