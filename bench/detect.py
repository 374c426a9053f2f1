"""Benchmark: edge.detect's two backends, "fast" (edge.fastdetect) against "sep", and sep alone.

Speed: both backends run on the same 4096x4096 calibrated frame (about 2000 Gaussian sources on a
flat sky, a variance map and a sparse bad-pixel mask) with the node's settings; each stage
(background, detect = extraction + AUTO photometry + flags) is timed, interleaved so that drift
in machine load hits both alike, with the fast backend on 1 and on 2 threads (``[detect]
threads``, the same process). sep alone (background, subtraction, sep.extract with the
per-pixel error map) is printed as the floor of the sep backend.

Quality (``--quality``): twin frames with truth, dense (the engine's training mix: 1500 stars and
600 galaxies per Mpx) and sparse (a tenth of it), calibrated as the node does. Per backend:
completeness of true stars by expected S/N (a candidate within 2.5 px), candidates that match no
truth object (false detections), true stars of S/N >= 20 without a candidate of their own (merged
into a neighbour), the centroid error of stars both backends find, and the AUTO flux of isolated
stars of S/N >= 20, fast against sep. The last line prints the one-core frames/s ratio fast / sep.

    .venv/bin/python bench/detect.py [--size 4096] [--sources 2000] [--repeat 5]
                                     [--quality] [--twin-size 4096] [--twin-frames 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import sep  # noqa: E402

from edge.detect import DetectSettings, detect, subtract_background  # noqa: E402

MATCH_PX = 2.5
EDGE_PX = 20
SNR_BINS = (5.0, 10.0, 20.0, 50.0, 100.0, np.inf)
ISOLATION_PX = 12.0


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


def timed_backend(image: np.ndarray, variance: np.ndarray, mask: np.ndarray,
                  s: DetectSettings) -> tuple[float, float, int]:
    """(background s, detect s, candidates) of one frame."""
    start = time.perf_counter()
    bkg = subtract_background(image, mask, s)
    mid = time.perf_counter()
    n = len(detect(bkg.sub_e, variance, mask, s))
    return mid - start, time.perf_counter() - mid, n


def speed(args: argparse.Namespace) -> float:
    image, variance, mask = make_frame(args.size, args.sources, seed=4096)
    base = DetectSettings()
    fast = replace(base, backend="fast")
    timed_backend(image, variance, mask, fast)  # numba compiles (or loads its cache) once
    fast2 = replace(fast, threads=2)
    rows: dict[str, list[tuple[float, float]]] = {}
    counts: dict[str, int] = {}
    for _ in range(args.repeat):
        start = time.perf_counter()
        counts["sep alone"] = run_sep(image, variance, mask, base)
        rows.setdefault("sep alone", []).append((0.0, time.perf_counter() - start))
        for name, settings in (("sep backend", base), ("fast, 1 thread(s)", fast),
                               ("fast, 2 thread(s)", fast2)):
            b, d, counts[name] = timed_backend(image, variance, mask, settings)
            rows.setdefault(name, []).append((b, d))
    print(f"\nspeed: frame {args.size}x{args.size}, {args.sources} injected sources, median of "
          f"{args.repeat} interleaved runs (ms)")
    print(f"  {'':<22}{'background':>11}{'detect':>9}{'total':>9}  candidates")
    total: dict[str, float] = {}
    for name, times in rows.items():
        b = statistics.median(t[0] for t in times)
        d = statistics.median(t[1] for t in times)
        total[name] = statistics.median(t[0] + t[1] for t in times)
        print(f"  {name:<22}{b * 1e3:11.1f}{d * 1e3:9.1f}{total[name] * 1e3:9.1f}  {counts[name]}")
        if name.startswith("fast"):
            sb = statistics.median(t[0] for t in rows["sep backend"])
            sd = statistics.median(t[1] for t in rows["sep backend"])
            print(f"  {'  ratio vs sep backend':<22}{sb / b:11.2f}{sd / d:9.2f}"
                  f"{total['sep backend'] / total[name]:9.2f}")
    return total["sep backend"] / total["fast, 1 thread(s)"]


def twin_frames(size: int, density: float, n: int, seed: int) -> list[tuple[Any, ...]]:
    from engines.training.dataset import calibrate_twin_frame, frame_seed
    from engines.training.train import training_twin_config
    from twin import simulate_frame

    config = training_twin_config(size, density=density)
    out = []
    for i in range(n):
        frame = simulate_frame(config, i, frame_seed(seed, i))
        out.append((*calibrate_twin_frame(frame, config, True), frame.truth))
    return out


def _nearest(cx: np.ndarray, cy: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index) of the nearest candidate to every (x, y)."""
    from scipy.spatial import cKDTree

    if cx.size == 0:
        return np.full(x.size, np.inf), np.zeros(x.size, dtype=int)
    d, j = cKDTree(np.c_[cx, cy]).query(np.c_[x, y])
    return np.asarray(d), np.asarray(j)


def _segment_distance(px: np.ndarray, py: np.ndarray, t: Any) -> np.ndarray:
    """Distance of each point to the nearest cosmic-ray track or streak of the truth."""
    tracks = t[np.isin(np.asarray(t["label"]), ("cosmic_ray", "streak"))]
    best = np.full(px.size, np.inf)
    for row in tracks:
        x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
        dx, dy = x1 - x0, y1 - y0
        u = np.clip(((px - x0) * dx + (py - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        best = np.minimum(best, np.hypot(px - (x0 + u * dx), py - (y0 + u * dy)))
    return best


def quality(args: argparse.Namespace) -> None:
    from scipy.spatial import cKDTree

    base = DetectSettings()
    backends = {"sep": base, "fast": replace(base, backend="fast")}
    for field, density in (("dense", 1.0), ("sparse", 0.1)):
        frames = twin_frames(args.twin_size, density, args.twin_frames, seed=1919)
        found = {b: np.zeros(len(SNR_BINS) - 1) for b in backends}
        n_bin = np.zeros(len(SNR_BINS) - 1)
        false = dict.fromkeys(backends, 0)
        n_cand = dict.fromkeys(backends, 0)
        cent: dict[str, list[float]] = {b: [] for b in backends}
        flux_ratio: list[float] = []
        for image, variance, mask, truth in frames:
            size = image.shape[0]
            t = truth
            tx, ty = np.asarray(t["x"], float), np.asarray(t["y"], float)
            star = np.asarray(t["label"]) == "star"
            inner = (tx >= EDGE_PX) & (tx < size - EDGE_PX) & (ty >= EDGE_PX) & (ty < size - EDGE_PX)
            snr = np.asarray(t["snr_expected"], float)
            sel = star & inner
            n_bin += np.histogram(snr[sel], bins=SNR_BINS)[0]
            reach = np.maximum(3.0, 2.0 * np.nan_to_num(np.asarray(t["size_px"], float)))
            cands = {}
            for b, s in backends.items():
                c = detect(subtract_background(image, mask, s).sub_e, variance, mask, s)
                cands[b] = c
                d, _ = _nearest(c.x, c.y, tx[sel], ty[sel])
                found[b] += np.histogram(snr[sel][d <= MATCH_PX], bins=SNR_BINS)[0]
                # a false detection: no truth object within its reach, no track within 4 px
                dt, jt = cKDTree(np.c_[tx, ty]).query(np.c_[c.x, c.y])
                lone = (dt > reach[jt]) & (_segment_distance(c.x, c.y, t) > 4.0)
                false[b] += int(lone.sum())
                n_cand[b] += len(c)
            # stars of S/N >= 20 both find: centroid error, and the flux of the isolated ones
            bright = sel & (snr >= 20)
            dsep, jsep = _nearest(cands["sep"].x, cands["sep"].y, tx[bright], ty[bright])
            dfast, jfast = _nearest(cands["fast"].x, cands["fast"].y, tx[bright], ty[bright])
            both = (dsep <= MATCH_PX) & (dfast <= MATCH_PX)
            cent["sep"].extend(dsep[both])
            cent["fast"].extend(dfast[both])
            neighbours = cKDTree(np.c_[tx, ty]).query(np.c_[tx[bright], ty[bright]], k=2)[0][:, 1]
            iso = both & (neighbours > ISOLATION_PX)
            fs, ff = cands["sep"].flux_e[jsep[iso]], cands["fast"].flux_e[jfast[iso]]
            flux_ratio.extend((ff / fs)[fs > 0])
        area_mpx = args.twin_frames * args.twin_size ** 2 / 1e6
        print(f"\nquality: {field} twin field, {args.twin_frames} frame(s) of {args.twin_size}x{args.twin_size}, "
              f"{int(n_bin.sum())} true stars >= {EDGE_PX} px from the edge")
        print("  completeness by expected S/N: " + "  ".join(
            f"[{lo:g},{hi:g}) n={int(n)}" for lo, hi, n in zip(SNR_BINS[:-1], SNR_BINS[1:], n_bin, strict=True)))
        for b in backends:
            comp = "  ".join(f"{f / max(n, 1):.4f}" for f, n in zip(found[b], n_bin, strict=True))
            hi = n_bin[2:].sum()
            merged = 1 - found[b][2:].sum() / max(hi, 1)
            print(f"  {b:<5} completeness {comp} | candidates {n_cand[b]}, false {false[b]} "
                  f"({false[b] / max(n_cand[b], 1):.2%}, {false[b] / area_mpx:.1f}/Mpx) | "
                  f"S/N>=20 merged {merged:.2%}")
        med = {b: float(np.median(cent[b])) if cent[b] else float("nan") for b in backends}
        rms = {b: float(np.sqrt(np.mean(np.square(cent[b])))) if cent[b] else float("nan") for b in backends}
        print(f"  centroid error, S/N>=20 stars both find ({len(cent['sep'])}): median sep {med['sep']:.4f} px, "
              f"fast {med['fast']:.4f} px (ratio {med['fast'] / med['sep']:.3f}); rms sep {rms['sep']:.4f}, "
              f"fast {rms['fast']:.4f} (ratio {rms['fast'] / rms['sep']:.3f})")
        r = np.asarray(flux_ratio)
        if r.size:
            print(f"  AUTO flux fast / sep, {r.size} isolated S/N>=20 stars: median {np.median(r):.5f}, "
                  f"within 1 %: {np.mean(np.abs(r - 1) <= 0.01):.2%}, worst {r[np.argmax(np.abs(r - 1))]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--sources", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quality", action="store_true", help="also score both backends on twin frames")
    parser.add_argument("--twin-size", type=int, default=4096)
    parser.add_argument("--twin-frames", type=int, default=1)
    args = parser.parse_args()
    sep.set_extract_pixstack(3_000_000)
    sep.set_sub_object_limit(8192)
    if args.quality:
        quality(args)
    ratio = speed(args)
    print(f"ratio fast / sep backend frames/s, one core = {ratio:.3f}")


if __name__ == "__main__":
    main()
