"""Can a confidence threshold on the unusual calls keep the joint budget without losing the families?

The budget of docs/engines.md counts the ordinary candidates sent as unusual (called one of the
engine's unusual classes) or unknown (p-value at most the budget's alpha). When the unusual calls
alone take more than the budget, a lower alpha cannot help; the one lever left is to send an
unusual call only when its probability is at least a threshold. This script scores the engine's
evaluation frames (``engines.training.train.evaluation_set`` of the engine's own settings, on
``--seed``) and prints, for each threshold, the ordinary candidates called unusual, the joint
flagged fraction at the engine's budget alpha, and each unusual family's share sent at
S/N >= 20 under that operating point, with the bars of the issue beside them.

    .venv/bin/python bench/budget_threshold.py [--model engines/models/stampnet-v3] [--frames 180]
                                              [--seed 20261203] [--thresholds 0,0.5,0.6,0.7,0.8,0.9]

About a minute on two cores (180 frames).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

#: the issue's recall bars for the families sent under one budget
BARS = {"comet": 0.80, "ghost": 0.95, "lens_arc": 0.90, "lobster_psf": 0.95}
#: the joint budget: ordinary candidates sent as unusual or unknown
BUDGET = 0.01


def main() -> int:

    from edge.node.assemble import default_engine_dir
    from engines.manifest import load_manifest
    from engines.runtime import load_engine
    from engines.scoring import score
    from engines.training.dataset import CLASSES
    from engines.training.train import TrainSettings, evaluation_set

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="engine folder (default: the node's default engine)")
    parser.add_argument("--frames", type=int, default=180)
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--thresholds", default="0,0.5,0.6,0.7,0.8,0.9")
    args = parser.parse_args()

    folder = args.model or default_engine_dir()
    m = load_manifest(folder)
    settings = TrainSettings.from_dict(m.training["settings"])
    alpha = float(m.evaluation["scoring_fit"]["budget_alpha"])
    test, _ = evaluation_set(settings, args.frames, seed=args.seed)
    with load_engine(folder, backend="onnxruntime", precision="fp32") as engine:
        s = score(*engine.infer(test.stamps), m.scoring)
    ordinary = (test.labels >= 0) & (test.labels < len(CLASSES))
    called = s.label_index >= len(CLASSES)
    unknown = s.anomaly_pvalue <= alpha
    print(f"{m.name} {m.version}: {args.frames} frames of seed {args.seed}, {int(ordinary.sum())} ordinary "
          f"candidates; budget alpha {alpha} (the engine's), budget {BUDGET}")
    print("threshold  ordinary as unusual  joint   " + "  ".join(f"{f} (bar {b})" for f, b in BARS.items()))
    for tau in (float(t) for t in args.thresholds.split(",") if t):
        unusual = called & (s.confidence >= tau)
        joint = unusual | unknown
        sent = {f: float(joint[(test.family == f) & (test.snr >= 20)].mean()) for f in BARS}
        ok = joint[ordinary].mean() <= BUDGET and all(sent[f] >= b for f, b in BARS.items())
        print(f"{tau:9.2f}  {unusual[ordinary].mean():19.4f}  {joint[ordinary].mean():.4f}  "
              + "  ".join(f"{sent[f]:.3f}{'' if sent[f] >= b else ' (below)'}" for f, b in BARS.items())
              + ("   every bar met" if ok else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
