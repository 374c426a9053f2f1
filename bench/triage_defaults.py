"""What each ``[triage]`` default flags of the ordinary detections, for an engine on demo-like frames.

The node's triage defaults (docs/node.md) are measured, not guessed: this script runs the node's
own calibration, detection, stamps, engine and scoring on twin frames of the demo's field
(``edge.testing.every_family_twin_config``: one object of every anomaly family and two transients
a frame), labels each candidate by the twin's truth, and prints, for the ordinary candidates,
the share each reason alone would send at the engine's defaults: ``uncertain`` (confidence below
``confidence_min``, epistemic part above ``epistemic_max_nats``), ``unknown`` (p-value at most
``alpha``) and ``unusual`` (called one of ``classes_of_interest``), with the quantiles that set
them; and for the anomaly families, the share sent for any of these reasons.

    .venv/bin/python bench/triage_defaults.py [--model engines/models/stampnet-v2] [--frames 12]
                                              [--size 2048] [--seed 777]

Needs the twin extra. About a minute on two cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def main() -> int:
    import numpy as np

    from edge.node.assemble import default_engine_dir
    from edge.testing import every_family_twin_config
    from edge.triage import TriagePolicy
    from engines.manifest import load_manifest
    from engines.runtime import load_engine
    from engines.scoring import score
    from engines.training.dataset import CLASSES, concat, frame_seed, stamps_from_frame
    from twin import simulate_frame

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="engine folder (default: the shipped engine)")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=777)
    args = parser.parse_args()

    folder = args.model or default_engine_dir()
    m = load_manifest(folder)
    config = every_family_twin_config(args.size)
    data = concat([stamps_from_frame(simulate_frame(config, i, frame_seed(args.seed, i), light_by_family=True),
                                     config, recipe=m.normalisation) for i in range(args.frames)],
                  channels=int(m.input.shape[1]))
    with load_engine(folder, backend="onnxruntime", precision="fp32") as engine:
        s = score(*engine.infer(data.stamps), m.scoring)
    policy = TriagePolicy()
    labels = np.asarray(m.classes, dtype=object)[s.label_index]
    ordinary = (data.labels >= 0) & (data.labels < len(CLASSES))
    uncertain = (s.confidence < policy.confidence_min) | (s.epistemic > policy.epistemic_max_nats)
    unknown = s.anomaly_pvalue <= policy.alpha
    unusual = np.isin(labels, np.asarray(policy.classes_of_interest, dtype=object))
    o = ordinary
    print(f"{m.name} {m.version}: {args.frames} frames of {args.size} px (seed {args.seed}), "
          f"{int(o.sum())} ordinary candidates")
    print(f"  uncertain: confidence < {policy.confidence_min}: {np.mean(s.confidence[o] < policy.confidence_min):.4f} "
          f"(1 % quantile {np.quantile(s.confidence[o], 0.01):.3f}); epistemic > {policy.epistemic_max_nats}: "
          f"{np.mean(s.epistemic[o] > policy.epistemic_max_nats):.4f} (99.5 % quantile "
          f"{np.quantile(s.epistemic[o], 0.995):.4f})")
    print(f"  unknown: p <= {policy.alpha}: {unknown[o].mean():.4f}")
    print(f"  unusual: called one of {list(policy.classes_of_interest)}: {unusual[o].mean():.4f} "
          f"(of them streaks: {np.mean(labels[o] == 'streak'):.4f})")
    print(f"  any of these: {(uncertain | unknown | unusual)[o].mean():.4f}")
    for fam in sorted(set(data.family[data.labels < 0].tolist())):
        sel = (data.family == fam) & (data.snr >= 20)
        if sel.any() and not fam.startswith("near_"):
            print(f"  {fam:<13} S/N >= 20: {int(sel.sum())} candidates, sent {(uncertain | unknown | unusual)[sel].mean():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
