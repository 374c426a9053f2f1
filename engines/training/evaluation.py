"""Measure an engine folder again on its fresh twin set (``astro-edge engines evaluate``).

The evaluation an engine ships with (manifest ``evaluation`` and the model card) is made when it is
trained. When the twin or the labelling of its candidates changes, the same engine files can be
measured again without training: :func:`reevaluate` rebuilds the evaluation set from the seed and
frame size recorded in the manifest (seed + 2, every anomaly family), runs every precision's model
file with ONNX Runtime, scores with the manifest's own constants and returns the figures; with
``write`` it replaces the manifest's evaluation (keeping the scoring fit, the real-frame table and
any fine-tuning figures, which do not depend on the evaluation set) and regenerates the model card.
The model files, and so the engine id, do not change. Needs the ``twin`` extra, not torch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.log import get_logger

if TYPE_CHECKING:
    from twin.instrument import Progress

__all__ = ["reevaluate"]

log = get_logger(__name__)

#: parts of a manifest's evaluation that do not depend on the evaluation set
_KEPT = ("scoring_fit", "real_data", "finetune")


def reevaluate(model_dir: Path | str, *, n_frames: int | None = None, seed: int | None = None,
               threads: int = 2, write: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """The evaluation figures of an engine folder on its fresh twin set; ``write`` stores them.

    ``seed`` draws the evaluation frames from another seed than the engine's own (seed + 2), for a
    measurement on frames nobody looked at while developing. ``progress`` is told of each
    evaluation frame simulated.
    """
    from engines import manifest
    from engines.training import export
    from engines.training.train import (
        CARD_FILE,
        MODEL_FILES,
        TrainSettings,
        evaluate_precisions,
        evaluation_set,
        per_family_counts,
        write_model_card,
    )

    m = manifest.load_manifest(model_dir)
    settings = TrainSettings.from_dict(m.training["settings"])
    test, _ = evaluation_set(settings, n_frames, seed=seed, progress=progress)
    files = {p: m.model_files(p, fmt)[0] for p, (_, fmt) in MODEL_FILES.items() if m.model_files(p, fmt)}

    def run(precision: str, stamps: Any) -> Any:
        return export.run_onnx(m.path(files[precision]), stamps, threads=threads)

    fit = m.evaluation.get("scoring_fit", {})
    evaluation = evaluate_precisions(run, test, m.scoring, tuple(m.classes), fit.get("budget_alpha"),
                                     float(fit.get("budget_unusual_min", 0.0)))
    if seed is not None:
        evaluation["evaluation_seed"] = seed
    evaluation.update({k: m.evaluation[k] for k in _KEPT if k in m.evaluation})
    log.info("engines.evaluate.done", engine=f"{m.name}:{m.version}", stamps=len(test),
             frames=settings.n_eval_frames if n_frames is None else n_frames)
    if write:
        sizes = dict(m.training.get("dataset_sizes", {}))
        sizes["evaluation"] = len(test)
        sizes["evaluation_per_family"] = per_family_counts(test)
        updated = replace(m, evaluation=evaluation, training={**m.training, "dataset_sizes": sizes})
        directory = Path(model_dir)
        manifest.write_manifest(updated, directory)
        write_model_card(directory, manifest.load_manifest(directory))
        entries = dict(updated.files)
        if CARD_FILE in entries:
            entries[CARD_FILE] = manifest.file_entry(directory / CARD_FILE, "none", "markdown")
        manifest.write_manifest(updated.with_files(entries), directory)
        manifest.load_manifest(directory)  # verify what was written
        log.info("engines.evaluate.written", model=str(directory))
    return evaluation
