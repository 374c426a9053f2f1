"""Benchmark: edge.detect (background + detection + AUTO photometry + flags) against sep alone.

Both sides run on the same 4096x4096 calibrated frame (about 2000 Gaussian sources on a flat sky,
a variance map and a sparse bad-pixel mask) with the same background mesh, threshold, matched
filter and deblending. The reference is sep's background, its subtraction and sep.extract with the
per-pixel error map: what the node would do with sep and nothing else. Ours adds input checks,
AUTO flux with its error, flags and S/N truncation. The last line prints the frames/s ratio
ours / sep (1.0 means detect costs nothing beyond sep).

    .venv/bin/python bench/detect.py [--size 4096] [--sources 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import sep

from edge.detect import DetectSettings, detect, subtract_background


def make_frame(size: int, n_sources: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A calibrated frame in electrons, its variance and a mask of 0.01 % bad pixels."""
    rng = np.random.default_rng(seed)
    sky_e, read_e, sigma_px = 300.0, 5.0, 1.6
    model = np.full((size, size), sky_e, dtype=np.float32)
    yy, xx = np.mgrid[-8:9, -8:9]
    xs = rng.uniform(10, size - 10, n_sources)
    ys = rng.uniform(10, size - 10, n_sources)
    fluxes = 10 ** rng.uniform(3.0, 5.5, n_sources)
    for x0, y0, f in zip(xs, ys, fluxes, strict=True):
        ix, iy = int(x0), int(y0)
        dx, dy = x0 - ix, y0 - iy
        psf = np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * sigma_px**2))
        model[iy - 8:iy + 9, ix - 8:ix + 9] += (f / psf.sum() * psf).astype(np.float32)
    variance = model + np.float32(read_e**2)
    image = model + rng.standard_normal((size, size), dtype=np.float32) * np.sqrt(variance)
    mask = rng.uniform(size=(size, size)) < 1e-4
    return image, variance, mask


def run_sep(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, s: DetectSettings) -> int:
    bkg = sep.Background(image, mask=mask, bw=s.background_box_px, bh=s.background_box_px,
                         fw=s.background_filter_px, fh=s.background_filter_px)
    sub = image - bkg.back(dtype=np.float32)
    objects = sep.extract(sub, s.threshold_snr, var=variance, mask=mask, minarea=s.min_area_px,
                          deblend_nthresh=s.deblend_nthresh, deblend_cont=s.deblend_cont,
                          filter_kernel=sep.default_kernel, filter_type="matched")
    return len(objects)


def run_ours(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, s: DetectSettings) -> int:
    bkg = subtract_background(image, mask, s)
    return len(detect(bkg.sub_e, variance, mask, s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--sources", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    settings = DetectSettings()
    image, variance, mask = make_frame(args.size, args.sources, seed=4096)
    sep.set_extract_pixstack(3_000_000)
    sep.set_sub_object_limit(8192)
    times: dict[str, list[float]] = {"sep": [], "ours": []}
    counts = {}
    for _ in range(args.repeat):
        # interleaved, so drift in machine load hits both sides alike
        for name, fn in (("sep", run_sep), ("ours", run_ours)):
            start = time.perf_counter()
            counts[name] = fn(image, variance, mask, settings)
            times[name].append(time.perf_counter() - start)
    sep_s, ours_s = statistics.median(times["sep"]), statistics.median(times["ours"])
    print(f"frame {args.size}x{args.size}, {args.sources} injected sources, median of {args.repeat} runs")
    print(f"sep alone : {sep_s * 1e3:8.1f} ms/frame  {1 / sep_s:6.2f} frames/s  {counts['sep']} objects")
    print(f"edge.detect: {ours_s * 1e3:8.1f} ms/frame  {1 / ours_s:6.2f} frames/s  {counts['ours']} candidates")
    print(f"ratio edge.detect / sep frames/s = {sep_s / ours_s:.3f}")


if __name__ == "__main__":
    main()
