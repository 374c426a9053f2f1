"""How far is each anomaly family from the recall bar, and would another reading of the bar help?

The engine issue's bar is "recall of each family at S/N >= 20 is >= 0.9 at alpha = 0.01", counted
per candidate. This probe measures the shipped engine's recall on its own evaluation set (seed + 2,
the frames `engines evaluate` uses) under the readings a decision on that bar could choose from:

- alpha 0.01 (the bar) and 0.05 (five times the false flags);
- S/N >= 20 (the bar), >= 50 and >= 100;
- per candidate (the bar: each detection of a family's light) and per object (an object is found
  when any of its candidates is flagged; it counts at a S/N cut when its brightest candidate
  passes the cut). Candidates are given to the nearest truth object of their family in the frame.

It also prints the flagged fraction of ordinary candidates at each alpha, which is what a reading
with a larger alpha costs on the downlink.

    .venv/bin/python bench/anomaly_bars.py [--model engines/models/stampnet-v1] [--frames N]

Needs the twin extra, not torch. About a minute on two cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

FAMILIES = ("close_double", "comet", "ghost", "lens_arc", "lobster_psf")
ALPHAS = (0.01, 0.05)
SNR_CUTS = (20.0, 50.0, 100.0)


def object_ids(x, y, family, truth, frame_index: int):
    """Per candidate, an id of the nearest truth object of its own family (-1 for ordinary ones)."""
    import numpy as np

    ids = np.full(len(family), -1, np.int64)
    tfamily = np.asarray(truth["family"]).astype(str)
    tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    for j, name in enumerate(family):
        rows = np.flatnonzero(tfamily == name) if name in FAMILIES else np.zeros(0, np.int64)
        if rows.size:
            ids[j] = frame_index * 1_000_000 + rows[np.argmin(np.hypot(tx[rows] - x[j], ty[rows] - y[j]))]
    return ids


def main() -> int:
    import numpy as np

    from edge.cli.progress import track
    from engines.manifest import load_manifest
    from engines.scoring import score
    from engines.training import export
    from engines.training.dataset import UNKNOWN, candidates_from_frame, frame_seed
    from engines.training.train import TrainSettings, training_twin_config
    from twin import ANOMALY_FAMILIES, simulate_frame

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("engines/models/stampnet-v1"))
    parser.add_argument("--frames", type=int, default=None, help="evaluation frames (default: the engine's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    started = time.perf_counter()
    m = load_manifest(args.model)
    settings = TrainSettings.from_dict(m.training["settings"])
    config = training_twin_config(settings.frame_size_px, anomalies=ANOMALY_FAMILIES)
    n_frames = settings.n_eval_frames if args.frames is None else args.frames
    seed = settings.seed + 2
    parts = []
    for i in track(range(n_frames), "simulating evaluation frames"):
        frame = simulate_frame(config, i, frame_seed(seed, i), light_by_family=True)
        data, cands = candidates_from_frame(frame, config)
        parts.append((data.stamps, data.labels, data.family, data.snr,
                      object_ids(cands.x, cands.y, data.family, frame.truth, i)))
    stamps, labels, family, snr, obj = (np.concatenate(p) for p in zip(*parts, strict=True))
    logits, embedding = export.run_onnx(m.path(m.model_files("fp32", "onnx")[0]), stamps, threads=args.threads)
    pvalue = score(logits, embedding, m.scoring).anomaly_pvalue
    ordinary = labels != UNKNOWN

    print(f"engine {m.name}:{m.version}, {n_frames} evaluation frames (seed {seed}), {len(labels)} candidates")
    print("flagged ordinary: " + ", ".join(f"alpha {a}: {np.mean(pvalue[ordinary] < a):.4f}" for a in ALPHAS))
    print()
    print("| family | candidates / objects | " + " | ".join(
        f"S/N >= {s:g}, alpha {a}" for s in SNR_CUTS for a in ALPHAS) + " |")
    print("|---|---|" + "---|" * (len(SNR_CUTS) * len(ALPHAS)))
    for name in FAMILIES:
        mine = family == name
        objects = np.unique(obj[mine])
        cells = []
        for cut in SNR_CUTS:
            for a in ALPHAS:
                bright = mine & (snr >= cut)
                per_candidate = float(np.mean(pvalue[bright] < a)) if bright.any() else float("nan")
                found = counted = 0
                for o in objects:
                    rows = mine & (obj == o)
                    if snr[rows].max() >= cut:
                        counted += 1
                        found += bool(np.any(pvalue[rows] < a))
                per_object = found / counted if counted else float("nan")
                cells.append(f"{per_candidate:.2f} / {per_object:.2f}")
        print(f"| {name} | {int(mine.sum())} / {objects.size} | " + " | ".join(cells) + " |")
    print()
    print("cells: recall per candidate / per object")
    print(f"wall {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
