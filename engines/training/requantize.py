"""Quantize an existing engine's INT8 file again, from its own FP32 graph and training settings.

Used when the quantizer changes (``engines.training.export.quantize_int8``) and an engine that was
already shipped must follow: the FP32 and FP16 files, the weights, the scoring constants and the
golden outputs stay as they are. The calibration stamps are the ones training drew (the same
calibration frames, seed + 1, and the same 2048 of their stamps, seed + 4). Every precision is
evaluated again on the engine's evaluation set (seed + 2) with the current evaluation, so that the
rows of the model card, written again from the manifest, compare like with like; the FP32 and FP16
figures change only where the evaluation itself has grown since the engine was made.

    python -m engines.training.requantize engines/models/stampnet-v3
"""

from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["requantize"]


def requantize(folder: Path | str, *, command: str = "", progress: Any = None) -> Any:
    """Write ``folder``'s INT8 file again with the current quantizer; returns the re-read manifest."""
    import onnxruntime

    from engines import manifest
    from engines.training import export
    from engines.training.dataset import class_labels
    from engines.training.train import (
        CARD_FILE,
        MODEL_FILES,
        N_INT8_CALIBRATION,
        UNKNOWN,
        TrainSettings,
        density_mix,
        evaluate_precisions,
        evaluation_set,
        write_model_card,
    )

    out = Path(folder)
    m = manifest.load_manifest(out)
    settings = TrainSettings.from_dict(m.training["settings"])
    seed = settings.seed
    calib = density_mix(settings, settings.unusual, settings.n_calib_frames, seed + 1, settings.unmasked_every,
                        "simulating calibration frames", progress)
    calib = calib.select(class_labels(calib, settings.classes) != UNKNOWN)
    cal_idx = np.random.default_rng(seed + 4).permutation(len(calib))[:N_INT8_CALIBRATION]
    int8_file = MODEL_FILES["int8"][0]
    export.quantize_int8(out / MODEL_FILES["fp32"][0], out / int8_file, calib.stamps[cal_idx])

    test, _ = evaluation_set(settings, progress=progress)
    fit = m.evaluation.get("scoring_fit", {})

    def run(precision: str, stamps: Any) -> Any:
        return export.run_onnx(out / MODEL_FILES[precision][0], stamps, threads=settings.threads)

    evaluation = {**m.evaluation, **evaluate_precisions(run, test, m.scoring, tuple(m.classes),
                                                        fit.get("budget_alpha"), fit.get("budget_unusual_min", 0.0))}
    history = list(m.training.get("requantized", []))
    history.append({"command": command,
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "onnxruntime": onnxruntime.__version__, "weights": export.INT8_WEIGHT_BITS})
    files = dict(m.files)
    files[int8_file] = manifest.file_entry(out / int8_file, "int8", MODEL_FILES["int8"][1])
    written = replace(m, files=files, evaluation=evaluation, training={**m.training, "requantized": history})
    manifest.write_manifest(written, out)
    write_model_card(out, manifest.load_manifest(out))
    files[CARD_FILE] = manifest.file_entry(out / CARD_FILE, "none", "markdown")
    manifest.write_manifest(written.with_files(files), out)
    return manifest.load_manifest(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engines.training.requantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="engine folders to quantize again, in place")
    args = parser.parse_args(argv)
    for folder in args.folders:
        m = requantize(folder, command=" ".join(["python -m engines.training.requantize", str(folder)]))
        int8 = m.evaluation["int8"]
        print(f"{folder}: INT8 top-1 agreement with FP32 {int8['top1_agreement_vs_fp32']:.4f}, "
              f"largest AUROC change {int8['auroc_max_diff_vs_fp32']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
