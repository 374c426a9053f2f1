"""Probe: would the detection's own shape help the anomaly score? AUROC per anomaly family of
(a) the shipped engine's conformal p-value and (b) a Mahalanobis distance of five shape features
(log a, log b/a, log npix, log peak/flux, log S/N) to the ordinary detections of the same
predicted class, fitted on one twin sequence and evaluated on another. Both in the same run;
the last line prints the mean AUROC of (b) over (a).

By default the sequences are demo-twin frames (one object of each family per field, seeds 101 and
202). With ``--engine-sets`` they are the engine's own held-out calibration frames (seed + 1, fit)
and evaluation frames (seed + 2, every family, labels by light as `engines evaluate` gives them),
and the probe also prints each family's recall at S/N >= 20 at alpha = 0.01 for the engine's
p-value, for a conformal p-value of the shape distance (per predicted class, on half of the
calibration candidates, the Gaussians fitted on the other half) and for the smaller of the two
p-values, itself made conformal on the calibration half, so that each flags about 1 % of the
ordinary candidates.

    .venv/bin/python bench/anomaly_shape.py [--frames 8] [--size 2048]
    .venv/bin/python bench/anomaly_shape.py --engine-sets [--frames 80]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from edge import detect as detect_stage  # noqa: E402
from edge.config import load_config  # noqa: E402
from edge.node.assemble import build_pipeline  # noqa: E402
from edge.testing import every_family_twin_config as twin_config  # noqa: E402
from engines.scoring import auroc, score  # noqa: E402
from engines.stamps import cut_stamps  # noqa: E402
from twin import ANOMALY_FAMILIES, simulate_frame  # noqa: E402


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
        out.append((shape_features(c), s.label_index, family, c.snr, s.anomaly_pvalue))
    return [np.concatenate(x) for x in zip(*out, strict=True)]


def shape_features(c) -> np.ndarray:
    """log a, log b/a, log npix, log peak/flux, log S/N of detected candidates."""
    return np.stack([np.log(c.a_px + 0.1), np.log((c.b_px + 0.1) / (c.a_px + 0.1)), np.log(c.npix + 1.0),
                     np.log(np.clip(c.peak_e, 1, None) / np.clip(c.flux_e, 1, None)),
                     np.log(np.clip(c.snr, 1, None))], 1)


def engine_set_detections(model, seed: int, n: int, anomalies: tuple[str, ...]):
    """Shape features, predicted class, family ("ordinary", a family, or "near" for the
    surroundings of one), S/N and engine p-value on the engine's own kind of twin frames."""
    from engines import export
    from engines.training.dataset import NEAR_PREFIX, UNKNOWN, candidates_from_frame, frame_seed
    from engines.training.train import training_twin_config

    config = training_twin_config(model.training["settings"]["frame_size_px"], anomalies=anomalies)
    every = model.training["settings"]["unmasked_every"] if not anomalies else 0
    out = []
    for i in range(n):
        frame = simulate_frame(config, i, frame_seed(seed, i), light_by_family=bool(anomalies))
        data, c = candidates_from_frame(frame, config, bundle=not (every and i % every == 0))
        family = np.where(data.labels != UNKNOWN, "ordinary", data.family)
        family = np.where(np.char.startswith(family, NEAR_PREFIX), "near", family)
        logits, embedding = export.run_onnx(model.path(model.model_files("fp32", "onnx")[0]), data.stamps)
        s = score(logits, embedding, model.scoring)
        out.append((shape_features(c), s.label_index, family, c.snr, s.anomaly_pvalue))
    return [np.concatenate(x) for x in zip(*out, strict=True)]


def engine_sets(frames: int | None) -> None:
    """The --engine-sets probe (see the module docstring)."""
    from engines.manifest import load_manifest
    from engines.scoring import conformal_pvalues

    def conformal(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return conformal_pvalues(scores, np.sort(reference))

    model = load_manifest(Path("engines/models/stampnet-v1"))
    st = model.training["settings"]
    n_cal = st["n_calib_frames"] if frames is None else frames
    n_eval = st["n_eval_frames"] if frames is None else frames
    f1, l1, fam1, _, pv1 = engine_set_detections(model, st["seed"] + 1, n_cal, ())
    f2, l2, fam2, snr2, pv2 = engine_set_detections(model, st["seed"] + 2, n_eval, ANOMALY_FAMILIES)
    fit = np.random.default_rng(0).random(len(l1)) < 0.5
    gauss = {}
    for k in np.unique(l1):
        x = f1[fit & (l1 == k)]
        if len(x) >= 20:
            gauss[k] = (x.mean(0), np.linalg.inv(np.cov(x.T) + 1e-3 * np.eye(x.shape[1])))

    def distance(f: np.ndarray, labels: np.ndarray) -> np.ndarray:
        d = np.full(len(f), np.inf)  # a predicted class too rare to fit is as strange as it gets
        for k, (mu, prec) in gauss.items():
            z = f[labels == k] - mu
            d[labels == k] = np.einsum("ij,jk,ik->i", z, prec, z)
        return d

    d1, d2 = distance(f1, l1), distance(f2, l2)
    held = ~fit
    ps1, ps2 = np.ones(len(d1)), np.ones(len(d2))
    for k in np.unique(np.concatenate([l1, l2])):
        ref = d1[held & (l1 == k)]
        if ref.size:
            ps1[l1 == k] = conformal(d1[l1 == k], ref)
            ps2[l2 == k] = conformal(d2[l2 == k], ref)
        else:
            ps1[l1 == k] = ps2[l2 == k] = 0.0
    low1, low2 = np.minimum(pv1, ps1), np.minimum(pv2, ps2)
    both = conformal(-low2, -low1[held])
    ordinary = fam2 == "ordinary"
    print(f"{ordinary.sum()} ordinary candidates; flagged at alpha = 0.01: engine "
          f"{np.mean(pv2[ordinary] < 0.01):.4f}, shape {np.mean(ps2[ordinary] < 0.01):.4f}, "
          f"smaller of both {np.mean(both[ordinary] < 0.01):.4f}")
    print("AUROC / recall at S/N >= 20, alpha = 0.01:")
    for fam in sorted(set(fam2) - {"ordinary", "near", "transient"}):
        m = fam2 == fam
        bright = m & (snr2 >= 20)
        cells = [f"{name} {auroc(-np.log(p[ordinary]), -np.log(p[m])):.3f} / {np.mean(p[bright] < 0.01):.3f}"
                 for name, p in (("engine", pv2), ("shape", ps2), ("both", both))]
        print(f"  {fam:<13} n={m.sum():3d}  " + "  ".join(cells))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=None,
                   help="frames per sequence (default: 8; with --engine-sets the engine's own counts)")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--engine-sets", action="store_true",
                   help="use the engine's calibration and evaluation frames (default --frames: the engine's)")
    args = p.parse_args()
    if args.engine_sets:
        engine_sets(args.frames)
        return
    args.frames = 8 if args.frames is None else args.frames
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
