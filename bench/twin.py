"""Seconds per simulated 4096x4096 frame with about 3000 sources, and how it scales with sources.

Prints the cold first frame (the detector's fixed patterns are computed once per model), the warm
per-frame time (median and fastest of repeats), the detector stage alone (flat, dark, noise, bleed,
ADU), a sweep over source counts, and on its last line the ratio of the fastest warm frame to a
same-run reference: numpy's Generator.poisson over the same 4096x4096 sky frame (the exact-Poisson
cost the twin avoids), also the fastest of repeats. Fastest-of-N is the figure least disturbed by
other jobs on a shared machine.

    .venv/bin/python bench/twin.py [--size 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twin import DetectorModel, TwinConfig, simulate_frame  # noqa: E402
from twin.detector import expose  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls, in seconds: the least disturbed by other jobs on the machine."""
    return min(all_times(fn, repeats))


def all_times(fn, repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    det = DetectorModel(shape_px=(args.size, args.size))
    config = TwinConfig(detector=det, n_stars=2500, n_galaxies=500)

    t0 = time.perf_counter()
    frame = simulate_frame(config, 0, 1)
    cold_s = time.perf_counter() - t0
    n_sources = int(np.isin(frame.truth["label"], ["star", "galaxy"]).sum())
    n_rows = len(frame.truth)
    frames = iter(range(1, 10 ** 6))
    warm = all_times(lambda: simulate_frame(config, next(frames), 1), args.repeats)
    warm_s = statistics.median(warm)
    rng = np.random.default_rng(0)
    detector_s = timed(lambda: expose(frame.expected_e, det, config.exposure_s, rng), args.repeats)
    print(f"frame {args.size}x{args.size}: {n_sources} stars+galaxies ({n_rows} truth rows incl. cosmic rays, "
          f"hot pixels, streaks)")
    print(f"  cold first frame (fixed patterns computed): {cold_s:.3f} s")
    print(f"  warm frame (frames 1..{args.repeats}): median {warm_s:.3f} s, min {min(warm):.3f} s")
    print(f"  detector stage alone (fastest):             {detector_s:.3f} s")

    print(f"scaling with source count (stars:galaxies = 5:1, warm, fastest of {args.repeats}):")
    print(f"  {'sources':>8s} {'s/frame':>8s} {'ms per 1000 sources above 0':>28s}")
    base_s = None
    for n in (0, 1000, 3000, 10000, 30000):
        cfg = config.with_(n_stars=n * 5 // 6, n_galaxies=n - n * 5 // 6)
        s = timed(lambda cfg=cfg: simulate_frame(cfg, 2, 1), args.repeats)
        base_s = s if base_s is None else base_s
        per_k = "" if n == 0 else f"{(s - base_s) / n * 1e6:.1f}"
        print(f"  {n:8d} {s:8.3f} {per_k:>28s}")

    sky = np.full(det.shape_px, config.sky_e_per_s * config.exposure_s, np.float32)
    ref_s = timed(lambda: rng.poisson(sky), args.repeats)
    copy_s = timed(lambda: sky.copy(), args.repeats)
    print(f"reference (fastest of {args.repeats}): numpy copy of the frame {copy_s:.3f} s; "
          f"Generator.poisson of the frame {ref_s:.3f} s")
    print(f"twin {args.size}x{args.size} with {n_sources} sources: {min(warm):.3f} s/frame (fastest of {args.repeats}); "
          f"reference Generator.poisson of the same frame: {ref_s:.3f} s; ratio {min(warm) / ref_s:.2f}")


if __name__ == "__main__":
    main()
