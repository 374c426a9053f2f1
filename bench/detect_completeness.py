"""How many clearly visible stars does the node's detection miss in a dense twin field?

For each twin frame of the engine's training mix (512x512, 1500 stars and 600 galaxies per Mpx,
calibrated as the node does), every true star with expected S/N >= 20 at least 20 px from the
edge should give a candidate within 2.5 px of its position. This probe counts the ones that do
not, with the node's detection settings (`edge.detect.DetectSettings()`, sep's 3x3 matched
filter on) and with variants: no matched filter, and finer deblending. A missed star is not lost
light: its pixels went into a neighbour's candidate, whose centroid lies elsewhere. The count of
candidates per variant says what each setting finds overall.

Then, on the shipped engine's evaluation set (its seed + 2, every anomaly family), it builds the
candidates with the node's default detection and without the matched filter, scores both with
the engine as it is (trained on the default's candidates), and prints the candidates of each
family and the engine's figures (`engines.training.train.evaluate`).

    .venv/bin/python bench/detect_completeness.py [--frames 10] [--seed 4242] [--eval-frames 80]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

MATCH_PX = 2.5
MIN_SNR = 20.0
EDGE_PX = 20


def main() -> int:
    import numpy as np

    from edge.cli.progress import track
    from edge.detect import DetectSettings, detect, subtract_background
    from engines.training.dataset import calibrate_twin_frame, frame_seed
    from engines.training.train import training_twin_config
    from twin import simulate_frame

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels (default: 512)")
    parser.add_argument("--model", type=Path, default=Path("engines/models/stampnet-v1"))
    parser.add_argument("--eval-frames", type=int, default=80, help="evaluation frames to score (0: skip)")
    args = parser.parse_args()

    variants = {
        "node default (matched filter)": DetectSettings(),
        "no matched filter": DetectSettings(matched_filter=False),
        "matched filter, deblend 64 levels, contrast 1e-4": DetectSettings(deblend_nthresh=64, deblend_cont=1e-4),
    }
    missed = dict.fromkeys(variants, 0)
    found = dict.fromkeys(variants, 0)
    n_stars = 0
    config = training_twin_config(args.size)
    for i in track(range(args.frames), "detecting on twin frames"):
        frame = simulate_frame(config, i, frame_seed(args.seed, i))
        image_e, variance_e2, mask = calibrate_twin_frame(frame, config, True)
        t = frame.truth[frame.truth["label"] == "star"]
        x, y = np.asarray(t["x"]), np.asarray(t["y"])
        keep = ((np.asarray(t["snr_expected"]) >= MIN_SNR) & (x >= EDGE_PX) & (x < args.size - EDGE_PX)
                & (y >= EDGE_PX) & (y < args.size - EDGE_PX))
        x, y = x[keep], y[keep]
        n_stars += x.size
        for name, settings in variants.items():
            background = subtract_background(image_e, mask, settings)
            cands = detect(background.sub_e, variance_e2, mask, settings)
            found[name] += len(cands.x)
            if x.size and len(cands.x):
                d2 = (cands.x[None, :] - x[:, None]) ** 2 + (cands.y[None, :] - y[:, None]) ** 2
                missed[name] += int((d2.min(axis=1) > MATCH_PX ** 2).sum())
            else:
                missed[name] += x.size
    print(f"{args.frames} frames of {args.size}x{args.size}, {n_stars} stars with expected S/N >= {MIN_SNR:g} "
          f"at least {EDGE_PX} px from the edge")
    for name in variants:
        print(f"  {name:<50} missed {missed[name]:>4} ({missed[name] / max(n_stars, 1):6.1%}), "
              f"candidates {found[name]}")
    if args.eval_frames > 0:
        families(args.model, args.eval_frames, variants)
    return 0


def families(model: Path, n_frames: int, variants: dict[str, Any]) -> None:
    """The engine's evaluation set built with each detection, scored by the engine as it is."""
    from edge.cli.progress import Bars
    from engines.manifest import load_manifest
    from engines.training.dataset import twin_stamp_set
    from engines.training.export import run_onnx
    from engines.training.train import TrainSettings, evaluate, training_twin_config
    from twin import ANOMALY_FAMILIES

    m = load_manifest(model)
    settings = TrainSettings.from_dict(m.training["settings"])
    config = training_twin_config(settings.frame_size_px, anomalies=ANOMALY_FAMILIES)
    print(f"\n{m.name} {m.version} on its evaluation set ({n_frames} frames, seed {settings.seed + 2})")
    for name in ("node default (matched filter)", "no matched filter"):
        with Bars() as bars:
            test = twin_stamp_set(config, n_frames, settings.seed + 2, settings=variants[name], progress=bars,
                                  stage=f"simulating evaluation frames, {name}")
        f = evaluate(run_onnx(m.path("model_fp32.onnx"), test.stamps, threads=2), test, m.scoring)
        print(f"  {name}: {len(test)} candidates, accuracy S/N>=10 {f['accuracy_snr10']:.4f}, "
              f"ECE {f['ece_snr10']:.4f}, flagged ordinary {f['flagged_ordinary_at_alpha']:.4f}")
        for fam, v in f["families"].items():
            print(f"    {fam:<13} candidates {v['n']:>4}  AUROC {v['auroc']:.3f}  "
                  f"recall S/N>=20 {v['recall_snr20_at_alpha']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
