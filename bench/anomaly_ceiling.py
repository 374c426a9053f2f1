"""What could the engine's stamps tell, at best? A supervised probe that is shown the anomaly families.

The shipped engine never sees an anomaly family: its anomaly score has to find them as "not like
anything ordinary". This probe asks the opposite question, as an upper reference: the same
architecture (engines.training.model, shared trunk, 4 heads), the same 32x32 stamps from the node's own
detection, but trained *with* labelled anomalies: 11 classes (the 6 ordinary ones and the 5
families) on twin frames with every family switched on (seed 555000) plus frames with 16 close
doubles each (seed 556000), because close doubles need many examples. Its anomaly score is the
summed probability of the 5 family classes; the threshold is the 99 % quantile of that score on
the ordinary candidates of the engine's held-out calibration frames (seed + 1), so that about
1 % of ordinary detections are flagged, as alpha = 0.01 does for the engine.

It prints, for the engine's own evaluation set (seed + 2, the frames `engines evaluate` uses),
each family's AUROC against every ordinary candidate and its recall at S/N >= 20 at that
threshold, beside the shipped engine's figures from its manifest. A family the supervised probe
cannot find is beyond these stamps and this network size; a family it finds and the engine does
not is a matter of the training signal (what the engine is taught to call "unlike the ordinary").

    .venv/bin/python bench/anomaly_ceiling.py [--train-frames 200] [--double-frames 200] [--epochs 14]
                                              [--stamp-size 32] [--widths 16,32,64]

Needs the train extra (torch). About 5 minutes on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

FAMILIES = ("close_double", "comet", "ghost", "lens_arc", "lobster_psf")
SEED_ALL_FAMILIES = 555000
SEED_DOUBLES = 556000


def main() -> int:
    import numpy as np

    from edge.cli.progress import Bars
    from engines.manifest import load_manifest
    from engines.scoring import auroc
    from engines.training.dataset import CLASSES, UNKNOWN, StampSet, concat, twin_stamp_set
    from engines.training.model import ModelSpec
    from engines.training.train import (
        TrainSettings,
        fit_model,
        predict,
        training_twin_config,
    )
    from twin import ANOMALY_FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("engines/models/stampnet-v1"),
                        help="engine whose evaluation set and figures to compare with")
    parser.add_argument("--train-frames", type=int, default=200, help="frames with every family (default: 200)")
    parser.add_argument("--double-frames", type=int, default=200,
                        help="extra frames with 16 close doubles each (default: 200)")
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--widths", default="16,32,64", help="channels of the three blocks (default: the engine's 16,32,64)")
    parser.add_argument("--stamp-size", type=int, default=32,
                        help="stamp side in px for the probe (default: the node's 32; the engine's figures stay 32 px)")
    args = parser.parse_args()

    started = time.perf_counter()
    m = load_manifest(args.model)
    settings = TrainSettings.from_dict(m.training["settings"])
    size = settings.frame_size_px
    every = training_twin_config(size, anomalies=ANOMALY_FAMILIES)
    doubles = dataclasses.replace(training_twin_config(size, anomalies=("close_double",)), n_anomalies_per_family=16)
    side = args.stamp_size
    bars = Bars()   # on stderr, when it is a terminal
    train = concat([twin_stamp_set(every, args.train_frames, SEED_ALL_FAMILIES, stamp_size=side,
                                   progress=bars, stage="simulating training frames"),
                    twin_stamp_set(doubles, args.double_frames, SEED_DOUBLES, stamp_size=side,
                                   progress=bars, stage="simulating close-double frames")])
    calib = twin_stamp_set(training_twin_config(size), settings.n_calib_frames, settings.seed + 1, stamp_size=side,
                           progress=bars, stage="simulating calibration frames")
    test = twin_stamp_set(every, settings.n_eval_frames, settings.seed + 2, stamp_size=side,
                          progress=bars, stage="simulating evaluation frames")

    def eleven(data: StampSet) -> np.ndarray:
        y = data.labels.copy()
        for i, fam in enumerate(FAMILIES):
            y[data.family == fam] = len(CLASSES) + i
        return y

    y = eleven(train)
    keep = y != UNKNOWN  # near_<family> candidates and transients stay out
    print(f"training stamps per class: {dict(zip(CLASSES + FAMILIES, np.bincount(y[keep], minlength=11).tolist(), strict=True))} "
          f"({time.perf_counter() - started:.0f} s)")
    probe = TrainSettings(seed=settings.seed, epochs=args.epochs, threads=args.threads, oe_fraction=0.0,
                          spec=ModelSpec(n_classes=len(CLASSES) + len(FAMILIES), stamp_size_px=side,
                                         widths=tuple(int(w) for w in args.widths.split(","))))
    model = fit_model(train.stamps[keep], y[keep], np.zeros((0, 2, side, side), np.float32), probe,
                      progress=bars)
    bars.close()

    def anomaly_probability(stamps: np.ndarray) -> np.ndarray:
        logits, _ = predict(model, stamps)
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p = (p / p.sum(axis=-1, keepdims=True)).mean(axis=1)
        return p[:, len(CLASSES):].sum(axis=1)

    threshold = float(np.quantile(anomaly_probability(calib.stamps[calib.labels != UNKNOWN]), 0.99))
    score = anomaly_probability(test.stamps)
    known = test.labels != UNKNOWN
    print(f"trained in {time.perf_counter() - started:.0f} s; flagged ordinary on the evaluation set: "
          f"{float((score[known] > threshold).mean()):.4f}")
    shipped = m.evaluation["fp32"]["families"]
    print(f"{'family':<13} {'AUROC probe':>11} {'recall probe':>12} {'AUROC engine':>12} {'recall engine':>13}")
    for fam in FAMILIES:
        sel = test.family == fam
        strong = sel & (test.snr >= 20)
        print(f"{fam:<13} {auroc(score[known], score[sel]):>11.3f} {float((score[strong] > threshold).mean()):>12.3f} "
              f"{shipped[fam]['auroc']:>12.3f} {shipped[fam]['recall_snr20_at_alpha']:>13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
