"""Probe: would the detection's own shape help the anomaly score? AUROC per anomaly family of
(a) the shipped engine's conformal p-value and (b) a Mahalanobis distance of five shape features
(log a, log b/a, log npix, log peak/flux, log S/N) to the ordinary detections of the same
predicted class, fitted on one twin sequence and evaluated on another. Both in the same run;
the last line prints the mean AUROC of (b) over (a).

    .venv/bin/python bench/anomaly_shape.py [--frames 8] [--size 2048]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from edge import detect as detect_stage  # noqa: E402
from edge.config import load_config  # noqa: E402
from edge.node import build_pipeline  # noqa: E402
from edge.node_demo import twin_config  # noqa: E402
from edge.stamps import cut_stamps  # noqa: E402
from engines.scoring import auroc, score  # noqa: E402
from twin import simulate_frame  # noqa: E402


def detections(pipeline, config, seed: int, n: int):
    """Shape features, predicted class, truth family ("ordinary" when none), S/N, engine p-value."""
    out = []
    for i in range(n):
        tf = simulate_frame(config, i, seed)
        header = {k: tf.header[k] for k in tf.header if k not in ("COMMENT", "HISTORY", "")}
        cal = pipeline.calibrator.calibrate(tf.raw_adu, exposure_s=float(header["EXPTIME"]), header=header)
        bkg = detect_stage.subtract_background(cal.image_e, cal.mask, pipeline.detect_settings)
        c = detect_stage.detect(bkg.sub_e, cal.variance_e2, cal.mask, pipeline.detect_settings)
        s = score(*pipeline.engine.infer(cut_stamps(bkg.sub_e, cal.variance_e2, cal.mask, c.x, c.y)),
                  pipeline.engine.manifest.scoring)
        t = tf.truth
        special = np.isin(np.asarray(t["label"]).astype(str), ("anomaly", "transient"))
        fam = np.asarray(t["family"]).astype(str)[special]
        d = np.hypot(c.x[:, None] - np.asarray(t["x"])[special], c.y[:, None] - np.asarray(t["y"])[special])
        near = d <= np.maximum(3.0, np.asarray(t["size_px"], float)[special])
        family = np.where(near.any(1), fam[np.argmax(near, 1)] if fam.size else "ordinary", "ordinary")
        feats = np.stack([np.log(c.a_px + 0.1), np.log((c.b_px + 0.1) / (c.a_px + 0.1)), np.log(c.npix + 1.0),
                          np.log(np.clip(c.peak_e, 1, None) / np.clip(c.flux_e, 1, None)),
                          np.log(np.clip(c.snr, 1, None))], 1)
        out.append((feats, s.label_index, family, c.snr, s.anomaly_pvalue))
    return [np.concatenate(x) for x in zip(*out, strict=True)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=2048)
    args = p.parse_args()
    pipeline = build_pipeline(load_config(None))
    config = twin_config(args.size)
    f1, l1, fam1, _, _ = detections(pipeline, config, 101, args.frames)
    f2, l2, fam2, snr2, pv2 = detections(pipeline, config, 202, args.frames)
    gauss = {}
    for k in np.unique(l1):
        x = f1[(fam1 == "ordinary") & (l1 == k)]
        if len(x) >= 20:
            gauss[k] = (x.mean(0), np.linalg.inv(np.cov(x.T) + 1e-3 * np.eye(x.shape[1])))
    dist = np.full(len(f2), 50.0)
    for k, (mu, prec) in gauss.items():
        m = l2 == k
        z = f2[m] - mu
        dist[m] = np.einsum("ij,jk,ik->i", z, prec, z)
    ordinary = fam2 == "ordinary"
    engine, shape = [], []
    print(f"{ordinary.sum()} ordinary detections; anomalies at S/N >= 20:")
    for fam in sorted(set(fam2) - {"ordinary", "transient"}):
        m = (fam2 == fam) & (snr2 >= 20)
        if m.sum() == 0:
            continue
        a_engine = auroc(-np.log(pv2[ordinary]), -np.log(pv2[m]))
        a_shape = auroc(dist[ordinary], dist[m])
        engine.append(a_engine)
        shape.append(a_shape)
        print(f"  {fam:<13} n={m.sum():3d}  AUROC engine {a_engine:.3f}  shape {a_shape:.3f}")
    print(f"mean AUROC engine {np.mean(engine):.3f}; shape {np.mean(shape):.3f}; "
          f"ratio shape/engine = {np.mean(shape) / np.mean(engine):.2f}")


if __name__ == "__main__":
    main()
