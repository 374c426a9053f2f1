"""Does the one- versus two-component PSF fit (edge.blend) find close doubles and leave single stars alone?

Twin frames of the training mix (engines.training.train.training_twin_config, 512x512, dense
fields: 1500 stars and 600 galaxies per Mpx, cosmic rays, a streak) with 16 close doubles each are
simulated, calibrated and detected exactly as the node does (engines.training.dataset
.candidates_from_frame); on each frame the PSF is estimated from its own candidates
(edge.blend.estimate_psf) and every candidate is measured (edge.blend.measure_multiplicity).

- positives: candidates whose family is ``close_double`` (labelled by the double's light);
- isolated single stars: candidates labelled ``star`` whose matched true star (nearest truth star
  within 2.5 px) has no other truth object (any star, galaxy, anomaly, transient, cosmic-ray track
  or streak, by distance to its segment; hot pixels are masked by the calibration and do not
  count) within 2 FWHM of its true position.

The threshold is set on frames of ``--tune-seed``: the run prints the likelihood ratio that flags
``--target`` of the isolated stars there, from which ``edge.blend.LR_MIN`` (20) was chosen as the
round value above, and the figures at ``LR_MIN`` (or ``--lr-min``) on those frames. The figures
that count are those of other frames, ``--seed``: by S/N, over a few thresholds, the recovered
separation and flux ratio against the truth, the PSF's FWHM against the twin's, and the time per
candidate. The last line gives recall and false flags at S/N >= 20 against the bar (recall >= 0.8
at <= 5 % of isolated stars flagged).

    .venv/bin/python bench/blends.py [--frames 40] [--tune-frames 20] [--seed 20261201]
                                     [--tune-seed 20261130] [--size 512] [--target 0.01]

About 20 seconds on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

ISOLATION_FWHM = 2.0
MATCH_PX = 2.5
SNR_BINS = ((20.0, 50.0), (50.0, 100.0), (100.0, 300.0), (300.0, np.inf))


def isolated_stars(cx: np.ndarray, cy: np.ndarray, family: np.ndarray, truth, fwhm_px: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Candidates labelled star whose true star has no other truth object within 2 FWHM."""
    label = np.asarray(truth["label"]).astype(str)
    rows = label != "hot_pixel"
    x0, y0 = np.asarray(truth["x0"], float)[rows], np.asarray(truth["y0"], float)[rows]
    x1, y1 = np.asarray(truth["x1"], float)[rows], np.asarray(truth["y1"], float)[rows]
    is_star = label[rows] == "star"
    sx, sy = np.asarray(truth["x"], float)[rows], np.asarray(truth["y"], float)[rows]
    out = np.zeros(len(cx), bool)
    for i in np.flatnonzero(family == "star"):
        d = np.where(is_star, np.hypot(sx - cx[i], sy - cy[i]), np.inf)
        j = int(np.argmin(d))
        if d[j] > MATCH_PX:
            continue
        dx, dy = x1 - x0, y1 - y0
        length2 = dx * dx + dy * dy
        t = np.clip(((sx[j] - x0) * dx + (sy[j] - y0) * dy) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
        dist = np.hypot(sx[j] - (x0 + t * dx), sy[j] - (y0 + t * dy))
        dist[j] = np.inf
        out[i] = dist.min() > ISOLATION_FWHM * fwhm_px
    return out


def measure_frames(config, seed: int, n_frames: int, settings=None) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Per candidate of ``n_frames`` twin frames: blend figures, S/N, truth masks and the true pair; timings."""
    from edge.blend import estimate_psf, measure_multiplicity
    from edge.detect import DetectSettings, subtract_background
    from edge.errors import DetectionError
    from engines.training.dataset import calibrate_twin_frame, candidates_from_frame, frame_seed
    from twin import simulate_frame
    from twin.anomalies import draw_anomalies
    from twin.sky import draw_scene

    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("lr", "sep", "ratio", "flags", "snr", "double", "isolated",
                                                         "star", "true_sep", "true_ratio")}
    n_cand, t_fit, t_psf, fwhm_err, no_psf = 0, 0.0, 0.0, [], 0
    for i in range(n_frames):
        fseed = frame_seed(seed, i)
        frame = simulate_frame(config, i, fseed, light_by_family=True)
        stamps, cands = candidates_from_frame(frame, config)
        image_e, variance_e2, mask = calibrate_twin_frame(frame, config)
        sub = subtract_background(image_e, mask, DetectSettings()).sub_e
        t0 = time.perf_counter()
        try:
            psf = estimate_psf(sub, variance_e2, mask, cands, settings)
        except DetectionError:
            no_psf += 1
            continue
        t1 = time.perf_counter()
        m = measure_multiplicity(sub, variance_e2, mask, cands.x, cands.y, psf, settings,
                                 neighbours=(cands.x, cands.y))
        t2 = time.perf_counter()
        t_psf, t_fit, n_cand = t_psf + t1 - t0, t_fit + t2 - t1, n_cand + len(cands)
        truth = frame.truth
        stars = np.asarray(truth["label"]).astype(str) == "star"
        fwhm_err.append(psf.fwhm_at(np.asarray(truth["x"])[stars], np.asarray(truth["y"])[stars])
                        / np.asarray(truth["fwhm_px"])[stars] - 1.0)
        # each double candidate's true pair: the nearest drawn double
        draw = next(d for d in draw_anomalies(config, fseed, draw_scene(config, fseed)) if d.family == "close_double")
        near = np.argmin(np.hypot(cands.x[:, None] - draw.x[None], cands.y[:, None] - draw.y[None]), axis=1)
        cols["true_sep"].append(draw.params["separation_px"][near])
        cols["true_ratio"].append(draw.params["flux_ratio"][near])
        for key, value in (("lr", m.likelihood_ratio), ("sep", m.separation_px), ("ratio", m.flux_ratio),
                           ("flags", m.flags), ("snr", np.asarray(cands.snr, float)),
                           ("double", stamps.family == "close_double"), ("star", stamps.family == "star"),
                           ("isolated", isolated_stars(cands.x, cands.y, stamps.family, truth, config.fwhm_px))):
            cols[key].append(value)
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["timing"] = np.array([n_cand, t_fit, t_psf, n_frames - no_psf, no_psf])
    out["fwhm_err"] = np.concatenate(fwhm_err) if fwhm_err else np.zeros(0)
    return out


def flagged(data: dict[str, np.ndarray], lr_min: float) -> np.ndarray:
    """edge.blend.is_blend on the stored columns."""
    from edge.blend import MULT_FAILED

    return ((data["flags"] & MULT_FAILED) == 0) & (np.nan_to_num(data["lr"], nan=-np.inf) >= lr_min)


def rates(data: dict[str, np.ndarray], lr_min: float, lo: float, hi: float) -> tuple[int, float, int, float]:
    """(n doubles, recall, n isolated stars, flagged share) at S/N in [lo, hi)."""
    band = (data["snr"] >= lo) & (data["snr"] < hi)
    hit = flagged(data, lr_min)
    pos, neg = band & data["double"], band & data["isolated"]
    return (int(pos.sum()), float(hit[pos].mean()) if pos.any() else float("nan"),
            int(neg.sum()), float(hit[neg].mean()) if neg.any() else float("nan"))


def main() -> int:
    from edge.blend import LR_MIN, MULT_FAILED
    from engines.training.train import training_twin_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=40, help="evaluation frames (default: 40)")
    parser.add_argument("--tune-frames", type=int, default=20, help="frames to tune the threshold on (default: 20)")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--tune-seed", type=int, default=20261130)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--target", type=float, default=0.01,
                        help="isolated stars' flagged share the tuned threshold aims at (default: 0.01)")
    parser.add_argument("--lr-min", type=float, default=LR_MIN, help=f"threshold evaluated (default: {LR_MIN})")
    args = parser.parse_args()

    started = time.perf_counter()
    config = dataclasses.replace(training_twin_config(args.size, anomalies=("close_double",)),
                                 n_anomalies_per_family=16)
    tune = measure_frames(config, args.tune_seed, args.tune_frames)
    stars = tune["isolated"] & (tune["snr"] >= 20)
    tuned = float(np.quantile(np.nan_to_num(tune["lr"][stars], nan=0.0), 1.0 - args.target))
    n_pos, rec, n_neg, ff = rates(tune, tuned, 20.0, np.inf)
    _, rec_default, _, ff_default = rates(tune, args.lr_min, 20.0, np.inf)
    print(f"tuning: {args.tune_frames} frames (seed {args.tune_seed}), S/N >= 20, {n_pos} doubles, {n_neg} isolated "
          f"stars: LR at the isolated stars' {1 - args.target:.0%} quantile {tuned:.1f} (recall there {rec:.3f}); "
          f"at LR >= {args.lr_min:g}: recall {rec_default:.3f}, flagged {ff_default:.3f}")

    data = measure_frames(config, args.seed, args.frames)
    n_cand, t_fit, t_psf, n_ok, no_psf = data["timing"]
    err = np.abs(data["fwhm_err"])
    print(f"evaluation: {args.frames} frames {args.size}x{args.size} (seed {args.seed}); PSF estimated on {int(n_ok)}, "
          f"{int(no_psf)} without; its FWHM at the true stars against the twin's: median |error| "
          f"{np.median(err):.1%}, 95 % {np.quantile(err, 0.95):.1%}; {int(n_cand)} candidates measured, "
          f"{t_fit / max(n_cand, 1) * 1e3:.3f} ms each, PSF {t_psf / max(n_ok, 1) * 1e3:.0f} ms per frame; "
          f"failed fits {int(((data['flags'] & MULT_FAILED) != 0).sum())}")
    print(f"{'S/N':<9} {'doubles':>7} {'recall':>7} {'isolated':>8} {'flagged':>8}   at LR >= {args.lr_min:g}")
    for lo, hi in SNR_BINS + ((20.0, np.inf),):
        n_pos, rec, n_neg, ff = rates(data, args.lr_min, lo, hi)
        name = f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">={lo:g}"
        print(f"{name:<9} {n_pos:>7} {rec:>7.3f} {n_neg:>8} {ff:>8.3f}")
    sweep = [(lr, *rates(data, lr, 20.0, np.inf)) for lr in (10.0, 15.0, 20.0, 30.0, 50.0, 100.0)]
    print("S/N >= 20, recall / flagged by threshold: " + ", ".join(f"LR {lr:g}: {r:.3f} / {f:.3f}" for lr, _, r, _, f in sweep))
    bright = data["snr"] >= 20
    found = data["double"] & bright & flagged(data, args.lr_min)
    sep_err = data["sep"][found] - data["true_sep"][found]
    ratio_err = data["ratio"][found] - data["true_ratio"][found]
    crowded = data["star"] & ~data["isolated"] & bright
    print(f"doubles found at S/N >= 20: separation - truth median {np.median(sep_err):+.2f} px, 90 % of |.| within "
          f"{np.quantile(np.abs(sep_err), 0.9):.2f} px; flux ratio - truth median {np.median(ratio_err):+.2f}, 90 % within "
          f"{np.quantile(np.abs(ratio_err), 0.9):.2f}; stars that are not isolated flagged {flagged(data, args.lr_min)[crowded].mean():.3f} "
          f"(n {crowded.sum()}); {time.perf_counter() - started:.0f} s")
    print("command: .venv/bin/python " + " ".join(sys.argv))
    n_pos, rec, n_neg, ff = rates(data, args.lr_min, 20.0, np.inf)
    print(f"S/N >= 20: recall {rec:.3f} (bar 0.8, ratio {rec / 0.8:.2f}), isolated stars flagged {ff:.3f} "
          f"(bar 0.05, ratio {ff / 0.05:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
