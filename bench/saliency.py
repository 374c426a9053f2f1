"""Does occlusion saliency point at the object? Streaks and cosmic rays on fresh twin frames.

The shipped default engine (engines/models/DEFAULT) explains stamps cut from twin frames of a seed
that none of its sets used (880001; the training mix of its own settings at density 1, with its
unusual families), exactly as the node cuts them. Records are the candidates that the twin's truth
labels ``streak`` or ``cosmic_ray`` (the family of the matched truth object), at S/N >= 10, at most
``--per-object`` of them per truth object, until each class has ``--records``.

Each record's saliency map is :func:`engines.explain.occlusion_saliency` for the class the engine
predicts, as ``Explainer.explain`` computes it (``--window``, ``--stride``, ``--context`` try
other settings). A record meets the criterion when its top 10 % of saliency pixels (102 of the
1024) fall on the object's truth pixels: at least half of the smaller of the two sets (top pixels,
truth pixels) lies in both. For a streak, whose truth pixels outnumber the top ones, that is "most
of the top pixels are on the streak"; for a one-pixel cosmic ray it is "the hit pixel is among the
top ones".

Truth pixels are exact, from the twin's noise-free light of the object's family
(``simulate_frame(light_by_family=True)``), restricted to the stamp: for a cosmic ray only the
pixels within 0.75 px of its own track (the twin deposits a ray's charge at the pixels its track
crosses; other rays in the stamp are not this record's object), for a streak the family's light
(the twin draws at most one streak a frame). A pixel is a truth pixel when the object's light there
is at least 20 % of the object's peak within the stamp, or at least 3 times the pixel's noise
(the square root of the calibrated frame's variance): its core, and all of it that stands out of
the noise.

The reference, run in the same process on the same records, is a random saliency map (uniform
noise) under the same criterion. The last line is the ratio of the shares.

    .venv/bin/python bench/saliency.py [--records 120] [--window 6] [--stride 2] [--no-context]

Needs the twin extra, not torch. About a minute and a half on two cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

FRESH_SEED = 880_001
CLASSES_MEASURED = ("streak", "cosmic_ray")
TOP_SHARE = 0.10
OVERLAP_MIN = 0.5
PEAK_FRACTION = 0.2
NOISE_SIGMAS = 3.0
CR_TRACK_PX = 0.75


def segment_distance(px, py, x0, y0, x1, y1):
    """Distance (px) of points (px, py) to the segment (x0, y0)-(x1, y1)."""
    import numpy as np

    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    t = np.clip(((px - x0) * dx + (py - y0) * dy) / (length2 if length2 > 0 else 1.0), 0.0, 1.0)
    return np.hypot(px - (x0 + t * dx), py - (y0 + t * dy))


def matched_row(x, y, family, truth) -> int:
    """Index in ``truth`` of the object of ``family`` whose segment lies nearest (x, y)."""
    import numpy as np

    rows = np.flatnonzero(np.asarray(truth["label"]).astype(str) == family)
    seg = [segment_distance(x, y, *(float(truth[k][i]) for k in ("x0", "y0", "x1", "y1"))) for i in rows]
    return int(rows[int(np.argmin(seg))])


def truth_pixels(x, y, family, ends, light, variance, fwhm_px):
    """The (32, 32) truth-pixel mask of the candidate at (x, y) of ``family`` whose object's
    segment is ``ends`` (x0, y0, x1, y1)."""
    import numpy as np

    from engines.stamps import STAMP_SIZE

    half = STAMP_SIZE // 2
    rows = np.floor(y + 0.5).astype(int) - half + np.arange(STAMP_SIZE)
    cols = np.floor(x + 0.5).astype(int) - half + np.arange(STAMP_SIZE)
    inside = ((rows >= 0) & (rows < light.shape[0]))[:, None] & ((cols >= 0) & (cols < light.shape[1]))[None, :]
    r = np.clip(rows, 0, light.shape[0] - 1)[:, None]
    c = np.clip(cols, 0, light.shape[1] - 1)[None, :]
    own = np.where(inside, light[r, c], 0.0).astype(np.float64)
    sigma = np.sqrt(np.maximum(variance[r, c], 1e-6))
    reach = CR_TRACK_PX if family == "cosmic_ray" else 6.0 * fwhm_px
    d = segment_distance(cols[None, :].astype(float), rows[:, None].astype(float), *ends)
    own = np.where(d <= reach, own, 0.0)
    peak = own.max()
    return (own > 0) & ((own >= PEAK_FRACTION * peak) | (own >= NOISE_SIGMAS * sigma))


def meets(saliency, truth) -> bool:
    """The criterion: half of the smaller of (top 10 % saliency pixels, truth pixels) is in both."""
    import numpy as np

    n_top = int(TOP_SHARE * saliency.size)
    top = np.zeros(saliency.size, bool)
    top[np.argsort(-saliency.ravel(), kind="stable")[:n_top]] = True
    t = truth.ravel()
    return bool(t.any()) and (top & t).sum() >= OVERLAP_MIN * min(n_top, int(t.sum()))


def main() -> int:
    import numpy as np

    from edge.node.assemble import default_engine_dir
    from engines.explain import (
        SALIENCY_CONTEXT,
        SALIENCY_STRIDE_PX,
        SALIENCY_WINDOW_PX,
        Explainer,
        occlusion_saliency,
    )
    from engines.training.dataset import calibrate_twin_frame, candidates_from_frame, frame_seed
    from engines.training.train import TrainSettings, training_twin_config
    from twin import simulate_frame

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=default_engine_dir())
    parser.add_argument("--records", type=int, default=120, help="records per class")
    parser.add_argument("--per-object", type=int, default=5, help="records per truth object at most")
    parser.add_argument("--max-frames", type=int, default=500)
    parser.add_argument("--window", type=int, default=SALIENCY_WINDOW_PX)
    parser.add_argument("--stride", type=int, default=SALIENCY_STRIDE_PX)
    parser.add_argument("--context", action=argparse.BooleanOptionalAction, default=SALIENCY_CONTEXT,
                        help="also occlude the context image's bins over the same frame pixels")
    parser.add_argument("--seed", type=int, default=FRESH_SEED)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()

    explainer = Explainer(args.model, threads=args.threads)
    m = explainer.manifest
    settings = TrainSettings.from_dict(m.training["settings"])
    assert args.seed not in m.training["twin_config"]["seeds"].values()
    config = training_twin_config(settings.frame_size_px, anomalies=settings.unusual,
                                  per_frame=settings.anomalies_per_frame,
                                  anomalies_follow_density=settings.anomalies_follow_density,
                                  instrument=settings.instrument)
    rng = np.random.default_rng(args.seed)
    hits: dict[str, list[bool]] = {c: [] for c in CLASSES_MEASURED}
    random_hits: dict[str, list[bool]] = {c: [] for c in CLASSES_MEASURED}
    correct = {c: 0 for c in CLASSES_MEASURED}
    frames = 0
    with explainer:
        for i in range(args.max_frames):
            if min(len(v) for v in hits.values()) >= args.records:
                break
            frame = simulate_frame(config, i, frame_seed(args.seed, i), light_by_family=True)
            frames += 1
            assert frame.light_e is not None
            data, cands = candidates_from_frame(frame, config, recipe=m.normalisation)
            _, variance, _ = calibrate_twin_frame(frame, config)
            truth = frame.truth[np.asarray(frame.truth["frame"]) == frame.index]
            used: dict[int, int] = {}
            for j in np.flatnonzero(np.isin(data.family, CLASSES_MEASURED) & (data.snr >= 10)):
                family = str(data.family[j])
                if len(hits[family]) >= args.records:
                    continue
                x, y = float(cands.x[j]), float(cands.y[j])
                row = matched_row(x, y, family, truth)
                # one truth object gives at most --per-object records: a streak's are much alike
                if used.get(row, 0) >= args.per_object:
                    continue
                used[row] = used.get(row, 0) + 1
                ends = tuple(float(truth[k][row]) for k in ("x0", "y0", "x1", "y1"))
                mask = truth_pixels(x, y, family, ends, frame.light_e[family], variance, config.fwhm_px)
                probs = explainer.probabilities(data.stamps[j:j + 1])[0]
                cls = int(probs.argmax())
                correct[family] += m.classes[cls] == family
                sal = occlusion_saliency(explainer.probabilities, data.stamps[j], cls, window_px=args.window,
                                         stride_px=args.stride, context=args.context)
                hits[family].append(meets(sal, mask))
                random_hits[family].append(meets(rng.random(sal.shape), mask))

    print(f"engine {explainer.engine_id}, twin seed {args.seed}, {frames} frames, S/N >= 10; "
          f"window {args.window} px, stride {args.stride} px, context {'on' if args.context else 'off'}")
    print(f"criterion: of the top {TOP_SHARE:.0%} saliency pixels and the truth pixels, at least "
          f"{OVERLAP_MIN:.0%} of the smaller set in both")
    print("| class | records | predicted as its class | occlusion saliency meets | random map meets |")
    print("|---|---|---|---|---|")
    for c in CLASSES_MEASURED:
        n = len(hits[c])
        print(f"| {c} | {n} | {correct[c] / max(n, 1):.3f} | {np.mean(hits[c]):.3f} | {np.mean(random_hits[c]):.3f} |")
    print(f"wall {time.perf_counter() - started:.0f} s")
    ours = np.mean([h for c in CLASSES_MEASURED for h in hits[c]])
    ref = np.mean([h for c in CLASSES_MEASURED for h in random_hits[c]])
    print(f"both classes: occlusion {ours:.3f}, random (reference, same run) {ref:.3f}, ratio {ours / max(ref, 1e-9):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
