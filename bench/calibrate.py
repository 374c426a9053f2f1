"""Benchmark: calibrate a 4096x4096 uint16 frame into float32 image + float32 variance + uint8 mask.

Reference, measured in the same run: numpy copies of the same bytes into preallocated buffers,
i.e. the raw frame (2 B/px) copied once and each output (image 4 B/px, variance 4 B/px, mask
1 B/px) copied once; 11 B/px read and 11 B/px written. The Calibrator reads the same 2 B/px of
raw and writes the same 9 B/px of outputs, plus its precomputed masters (offset, gain/flat,
1/flat, variance constant: 16 B/px, and the 1 B/px bad-pixel mask). The ratio is copy time over
calibration time, the Calibrator's bandwidth as a fraction of numpy's copy bandwidth for the
frame's own bytes. Target: >= 0.5. A second reference also copies the masters the Calibrator
streams, to show how close it runs to the memory system when everything it touches is counted.

    .venv/bin/python bench/calibrate.py [--size 4096] [--threads 1] [--repeat 15]

With ``--combine`` it instead times building one master from ten 1024x1024 frames with our
clipped combine against ``astropy.stats.sigma_clip`` (MAD, 4 sigma, up to 5 iterations) and
prints each master's noise over the ideal sigma^2 / n; the last line gives the time ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from calibration import Calibrator, Masters


def _masters(shape: tuple[int, int], rng: np.random.Generator) -> Masters:
    flat = (1.0 + 0.01 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    flat[:, 100] = 0.0
    bad = np.zeros(shape, np.uint8)
    bad[rng.random(shape) < 1e-4] = 1
    return Masters(
        bias_adu=(500.0 + rng.normal(0, 2, shape[1])[None, :] + np.zeros(shape)).astype(np.float32),
        bias_var_adu2=0.1,
        dark_adu_per_s=np.full(shape, 0.013, np.float32),
        dark_var_adu2_per_s2=np.full(shape, 1e-6, np.float32),
        flats={"r": flat}, flat_rel_var={"r": 5e-6}, bad_pixels=bad, gain_e_per_adu=1.5, read_noise_e=5.0,
        noise_source="photon_transfer", saturate_adu=40500.0, trimsec=None, biassec=None, raw_shape=shape,
        inputs=())


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare_combine() -> None:
    """Our clipped combine against astropy's sigma_clip on the same stack: time, noise, memory."""
    import tracemalloc

    from astropy.stats import sigma_clip

    from calibration.combine import sigma_clip_combine

    rng = np.random.default_rng(0)
    sigma, n = 4.0, 10
    stack = rng.normal(500.0, sigma, (n, 1024, 1024)).astype(np.float32)
    ideal = sigma ** 2 / n
    results = {}
    for name, fn in (("own", lambda: sigma_clip_combine(stack).mean),
                     ("astropy", lambda: np.asarray(sigma_clip(stack, sigma=4, maxiters=5, cenfunc="median",
                                                               stdfunc="mad_std", axis=0).mean(axis=0)))):
        tracemalloc.start()
        t0 = time.perf_counter()
        master = fn()
        dt = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        results[name] = dt
        print(f"{name:>8}: {dt:.2f} s, master noise / ideal = {float(master.var()) / ideal:.3f}, "
              f"peak {peak / 2**20:.0f} MiB")
    print(f"reference astropy sigma_clip {results['astropy']:.2f} s; own combine {results['own']:.2f} s; "
          f"speed ratio own/astropy = {results['astropy'] / results['own']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--combine", action="store_true", help="compare the master combine with astropy instead")
    args = parser.parse_args()
    if args.combine:
        compare_combine()
        return
    shape = (args.size, args.size)
    rng = np.random.default_rng(0)
    raw = rng.integers(600, 3000, shape).astype(np.uint16)
    with Calibrator(_masters(shape, rng), bundle_id="bench", threads=args.threads) as cal:
        out = cal.calibrate(raw, exposure_s=30.0, filter_name="r")
        cal.calibrate(raw, exposure_s=30.0, filter_name="r", out=out)  # warm: caches, pages

        def calibrate() -> None:
            cal.calibrate(raw, exposure_s=30.0, filter_name="r", out=out)

        raw_dst = np.empty_like(raw)
        src_img, src_var, src_mask = out.image_e.copy(), out.variance_e2.copy(), out.mask.copy()
        dst_img, dst_var, dst_mask = np.empty_like(src_img), np.empty_like(src_var), np.empty_like(src_mask)

        def copy() -> None:
            np.copyto(raw_dst, raw)
            np.copyto(dst_img, src_img)
            np.copyto(dst_var, src_var)
            np.copyto(dst_mask, src_mask)

        # the masters the Calibrator streams for this exposure and filter: offset, gain/flat,
        # variance constant, bad-pixel mask (13 B/px); a second reference copies them as well
        streamed = [cal._offset(30.0), cal._filter_terms("r", "bench").gain_over_flat,
                    cal._constant(30.0, "r", cal._filter_terms("r", "bench")), cal._bad]
        streamed_dst = [np.empty_like(a) for a in streamed]

        def copy_with_masters() -> None:
            copy()
            for src, dst in zip(streamed, streamed_dst, strict=True):
                np.copyto(dst, src)

        copy()
        copy_with_masters()
        # interleave so all see the same machine load
        t_cal, t_copy, t_copy_all = [], [], []
        for _ in range(args.repeat):
            t_cal.append(_best(calibrate, 1))
            t_copy.append(_best(copy, 1))
            t_copy_all.append(_best(copy_with_masters, 1))
    t_cal_s, t_copy_s = statistics.median(t_cal), statistics.median(t_copy)
    frame_bytes = raw.nbytes + out.image_e.nbytes + out.variance_e2.nbytes + out.mask.nbytes
    print(f"frame {shape[0]}x{shape[1]} uint16 -> float32 image + float32 variance + uint8 mask, "
          f"threads={args.threads}, {args.repeat} interleaved runs")
    print(f"calibrate: median {t_cal_s * 1e3:.1f} ms/frame (best {min(t_cal) * 1e3:.1f}), "
          f"{frame_bytes / t_cal_s / 1e9:.2f} GB/s of frame bytes")
    print(f"numpy copy of the same {frame_bytes / 2**20:.0f} MiB: median {t_copy_s * 1e3:.1f} ms "
          f"(best {min(t_copy) * 1e3:.1f}), {frame_bytes / t_copy_s / 1e9:.2f} GB/s")
    master_bytes = sum(a.nbytes for a in streamed)
    t_all_s = statistics.median(t_copy_all)
    print(f"numpy copy of those plus the {master_bytes / 2**20:.0f} MiB of masters it streams: median "
          f"{t_all_s * 1e3:.1f} ms; ratio counting the masters {t_all_s / t_cal_s:.2f}")
    print(f"best-run ratio (frame bytes) {min(t_copy) / min(t_cal):.2f}")
    print(f"reference numpy copy {t_copy_s * 1e3:.1f} ms; calibrate {t_cal_s * 1e3:.1f} ms; "
          f"bandwidth ratio calibrate/copy = {t_copy_s / t_cal_s:.2f} (target >= 0.5)")


if __name__ == "__main__":
    main()
