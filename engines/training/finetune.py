"""Continue training an engine on labelled stamps and emit a new engine (``astro-edge engines finetune``).

The labels file is an ``.npz`` with ``stamps`` (n, 2, 32, 32) float32, made by
:func:`engines.stamps.cut_stamps` (e.g. from downlinked records), and ``label`` (n class names from
the engine's classes). The engine's own weights (``weights_fp32.npz`` in its folder) are the
starting point. A fixed-seed fifth of the labelled stamps is held out for evaluation; the rest is
mixed with a small replay set of twin frames (so that no class is forgotten and every class
keeps a Gaussian) and with outlier-exposure stamps. The new engine gets fresh scoring constants,
the full twin evaluation, the held-out figures and its own manifest (training provenance names the
engine it came from). Needs the ``train`` extra.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import ConfigError, EngineIntegrityError
from edge.log import get_logger

if TYPE_CHECKING:
    from twin.instrument import Progress

__all__ = ["finetune_engine", "read_labels"]

log = get_logger(__name__)

HELDOUT_FRACTION = 0.2


def read_labels(path: Path, classes: tuple[str, ...]) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Stamps and class indices from a labels file; every problem is a ConfigError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "stamps" not in data.files or "label" not in data.files:
                raise ConfigError(f"needs arrays 'stamps' and 'label', has {sorted(data.files)}", where=str(path))
            stamps = np.asarray(data["stamps"], np.float32)
            names = np.asarray(data["label"]).astype(str)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"cannot read the labels file as .npz: {exc}", where=str(path)) from exc
    if stamps.ndim != 4 or stamps.shape[1:] != (2, 32, 32):
        raise ConfigError(f"stamps must have shape (n, 2, 32, 32), got {stamps.shape}", where=str(path))
    if names.shape != (stamps.shape[0],):
        raise ConfigError(f"label must hold one name per stamp ({stamps.shape[0]}), got shape {names.shape}",
                          where=str(path))
    if not np.isfinite(stamps).all():
        raise ConfigError("stamps hold NaN or inf; cut them with engines.stamps.cut_stamps", where=str(path))
    unknown = sorted(set(names.tolist()) - set(classes))
    if unknown:
        raise ConfigError(f"labels {unknown} are not classes of this engine {list(classes)}", where=str(path))
    if stamps.shape[0] < 10:
        raise ConfigError(f"only {stamps.shape[0]} labelled stamps; fine-tuning needs at least 10", where=str(path))
    index = {c: i for i, c in enumerate(classes)}
    return stamps, np.array([index[n] for n in names], np.int64)


def finetune_engine(from_dir: Path, labels_path: Path, out_dir: Path, *, version: str | None = None,
                    epochs: int = 3, learning_rate: float = 5e-4, seed: int = 20261128, threads: int = 2,
                    replay_frames: int = 24, eval_frames: int = 16, command: str = "",
                    progress: Progress | None = None) -> Any:
    """Fine-tune the engine in ``from_dir`` on ``labels_path``; write and return the new manifest.

    ``progress`` is told of every frame simulated, optimiser step and packaging step, stage by stage.
    """
    from engines.manifest import load_manifest
    from engines.scoring import expected_calibration_error, score
    from engines.training.dataset import CLASSES, StampSet, concat
    from engines.training.train import (
        WEIGHTS_FILE,
        TrainSettings,
        fit_model,
        load_weights,
        make_twin_sets,
        package_engine,
        predict,
        provenance,
        set_sizes,
    )

    old = load_manifest(from_dir)
    if tuple(old.classes) != CLASSES:
        raise EngineIntegrityError(f"engine classes {old.classes} differ from this astro-edge's {CLASSES}",
                                   where=str(from_dir))
    if WEIGHTS_FILE not in old.files or "settings" not in old.training:
        raise EngineIntegrityError(f"the engine has no {WEIGHTS_FILE} or training settings to start from; "
                                   "only engines made by `engines train` can be fine-tuned", where=str(from_dir))
    stamps, labels = read_labels(labels_path, CLASSES)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    n_held = max(2, int(round(HELDOUT_FRACTION * len(labels))))
    held, fit = order[:n_held], order[n_held:]

    base = TrainSettings.from_dict(old.training["settings"])
    settings = replace(base, seed=seed, epochs=epochs, learning_rate=learning_rate, threads=threads,
                       n_train_frames=replay_frames, n_calib_frames=max(4, replay_frames // 3),
                       n_eval_frames=eval_frames)
    sets = make_twin_sets(settings, progress=progress)
    user = StampSet(stamps[fit], labels[fit], np.array([CLASSES[i] for i in labels[fit]]),
                    np.full(fit.size, np.nan), np.full(fit.size, -1, np.int64))
    train = concat([sets.train, user])
    sets = replace(sets, train=train)
    model = fit_model(train.stamps, train.labels, sets.oe_train, settings,
                      init_state=load_weights(old.path(WEIGHTS_FILE)),
                      on_epoch=lambda **kw: log.info("engines.finetune.epoch", **kw), progress=progress)
    written_version = version or f"{old.version}-ft"
    training = {**provenance(command or "astro-edge engines finetune", seed),
                "finetuned_from": {"name": old.name, "version": old.version,
                                   "engine_id": old.engine_id(WEIGHTS_FILE), "labels": str(labels_path),
                                   "n_labelled": int(len(labels)), "n_heldout": int(n_held)},
                "twin_config": sets.configs, "dataset_sizes": set_sizes(sets)}
    # held-out figures need the final scoring constants: package first, then score the held-out part
    manifest = package_engine(out_dir, model, settings, sets, name=old.name, version=written_version,
                              training=training, progress=progress,
                              stage="exporting and evaluating (scoring constants for the held-out part)")
    logits, embedding = predict(model, stamps[held])
    s = score(logits, embedding, manifest.scoring)
    heldout = {"from": f"{old.name} {old.version}", "labels": str(labels_path), "heldout_n": int(n_held),
               "heldout_accuracy": float((s.label_index == labels[held]).mean()),
               "heldout_ece": expected_calibration_error(s.probs, labels[held])}
    return package_engine(out_dir, model, settings, sets, name=old.name, version=written_version,
                          training=training, extra_evaluation={"finetune": heldout}, progress=progress,
                          stage="exporting and evaluating (the new engine)")
