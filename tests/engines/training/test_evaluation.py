"""``astro-edge engines evaluate``: an engine measured again on its fresh twin set, files untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge.node.assemble import default_engine_dir
from engines.manifest import load_manifest
from engines.training.evaluation import reevaluate
from twin import ANOMALY_FAMILIES

#: the shipped engine (what --model defaults to)
DEFAULT_MODEL_DIR = default_engine_dir()


def test_reevaluate_writes_new_figures_and_keeps_the_engine(tmp_path: Path) -> None:
    """With --write the manifest's evaluation and the model card are replaced by the new figures;
    the model files, the engine id, the scoring constants and the real-frame table stay."""
    folder = tmp_path / "engine"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    before = load_manifest(folder)
    figures = reevaluate(folder, n_frames=3, threads=1, write=True)
    after = load_manifest(folder)   # verifies every sha256, the regenerated card's included
    assert after.engine_id("model_fp32.onnx") == before.engine_id("model_fp32.onnx")
    assert {k: e.sha256 for k, e in after.files.items() if k.endswith(".onnx")} == \
        {k: e.sha256 for k, e in before.files.items() if k.endswith(".onnx")}
    assert after.scoring.to_dict() == before.scoring.to_dict()
    assert after.evaluation["real_data"] == before.evaluation["real_data"]
    assert after.evaluation["fp32"] == json.loads(json.dumps(figures["fp32"]))
    assert set(after.evaluation["fp32"]["families"]) <= set(ANOMALY_FAMILIES)
    assert after.training["dataset_sizes"]["evaluation"] < before.training["dataset_sizes"]["evaluation"]
    card = (folder / "MODEL_CARD.md").read_text()
    for fam, f in after.evaluation["fp32"]["families"].items():
        assert f"| {fam} | {'yes' if f['taught'] else 'no'} | {f['n_snr20']} |" in card


def test_evaluate_command_prints_figures_without_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --write the command prints each precision and family and changes no file."""
    from edge.cli import main

    folder = tmp_path / "engine"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    manifest_before = (folder / "manifest.json").read_bytes()
    assert main(["engines", "evaluate", "--model", str(folder), "--frames", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "fp32: accuracy S/N>=10" in out and "int8:" in out
    assert "AUROC" in out
    assert (folder / "manifest.json").read_bytes() == manifest_before
    assert main(["engines", "evaluate", "--model", str(folder), "--frames", "0"]) == 2
    assert "--frames 0 must be at least 1" in capsys.readouterr().err
