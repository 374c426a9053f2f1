"""``engines finetune``: labelled stamps in, a new engine with its own manifest and evaluation out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.errors import ConfigError
from edge.node.assemble import default_engine_dir
from engines.manifest import load_manifest
from engines.training.dataset import CLASSES, UNKNOWN, twin_stamp_set
from engines.training.finetune import finetune_engine, read_labels
from engines.training.train import WEIGHTS_FILE, training_twin_config

#: the shipped engine (what --model defaults to)
DEFAULT_MODEL_DIR = default_engine_dir()


def test_labels_file_problems_are_named(tmp_path: Path) -> None:
    """A labels file with a wrong shape or an unknown class name is refused with the reason."""
    bad_shape = tmp_path / "shape.npz"
    np.savez(bad_shape, stamps=np.zeros((20, 1, 32, 32), np.float32), label=np.array(["star"] * 20))
    with pytest.raises(ConfigError, match="shape"):
        read_labels(bad_shape, CLASSES)
    bad_name = tmp_path / "name.npz"
    np.savez(bad_name, stamps=np.zeros((20, 2, 32, 32), np.float32), label=np.array(["star"] * 19 + ["quasar"]))
    with pytest.raises(ConfigError, match="quasar"):
        read_labels(bad_name, CLASSES)
    with pytest.raises(ConfigError, match="npz"):
        read_labels(tmp_path / "missing.npz", CLASSES)


@pytest.mark.slow
def test_finetune_writes_a_new_verified_engine(tmp_path: Path) -> None:
    """Fine-tuning the shipped engine on labelled twin stamps yields a new engine with its own manifest, provenance and held-out figures."""
    data = twin_stamp_set(training_twin_config(512), 3, seed=424242)
    data = data.select(data.labels != UNKNOWN)
    labels = tmp_path / "labels.npz"
    np.savez_compressed(labels, stamps=data.stamps, label=np.array([CLASSES[i] for i in data.labels]))
    new = finetune_engine(DEFAULT_MODEL_DIR, labels, tmp_path / "ft", epochs=1, threads=1,
                          replay_frames=12, eval_frames=3)
    old = load_manifest(DEFAULT_MODEL_DIR)
    again = load_manifest(tmp_path / "ft")
    assert again.to_dict() == new.to_dict()
    assert again.version == f"{old.version}-ft"
    assert again.engine_id(WEIGHTS_FILE) != old.engine_id(WEIGHTS_FILE)
    assert again.training["finetuned_from"]["version"] == old.version
    ft = again.evaluation["finetune"]
    assert ft["heldout_n"] == round(0.2 * len(data))
    assert ft["heldout_accuracy"] > 0.8
    assert "## Fine-tuning" in again.path("MODEL_CARD.md").read_text()


def test_finetune_command_with_a_missing_labels_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`astro-edge engines finetune` with a labels file that does not exist stops with exit code 2 and names it."""
    from edge.cli import main

    code = main(["engines", "finetune", "--from", str(DEFAULT_MODEL_DIR / "manifest.json"),
                 "--labels", str(tmp_path / "none.npz"), "--out", str(tmp_path / "ft")])
    assert code == 2
    assert "none.npz" in capsys.readouterr().err
