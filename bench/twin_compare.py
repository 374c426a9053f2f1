"""Side by side: the real raw frame m13-raw and a twin frame of the configured instrument dsi-m13.

Writes docs/img/twin_vs_m13.png (both whole frames, 2x2-binned) and docs/img/twin_vs_m13_zoom.png
(400x400 native pixels from the middle of each), at the same linear ADU stretch, and prints what
sep sees in both (background level and RMS, detections per Mpx). Also writes
docs/img/twin_gallery.png: one row per truth class of a default-instrument twin frame (GALLERY_ROWS),
four examples each spread over S/N, 49x49 px stamps with bias and flat removed (not the dark, so
hot pixels show), each with an asinh stretch from its median (black)
to the object's peak (white), softened at 3 sigma of its noise. The PNG writer is a small zlib
one, so the script needs nothing beyond numpy, astropy and sep.

    .venv/bin/python bench/twin_compare.py [--seed 0] [--out docs/img] [--real M13.fits]
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import sep
from astropy.io import fits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twin import ANOMALY_FAMILIES, DetectorModel, TwinConfig, dsi_m13_config, simulate_frame  # noqa: E402

#: the repository's copy of the real M13 frame (tests/data/real/README.md says where it comes from)
REAL = ROOT / "tests" / "data" / "real" / "m13-raw" / "M13_blue_0001.fits"
STRETCH_ADU = (470.0, 600.0)  # black and white levels for both frames


def write_png_gray(path: Path, image: np.ndarray) -> None:
    """Write an 8-bit greyscale PNG (filter 0 on every row)."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def stretch(adu: np.ndarray) -> np.ndarray:
    """Linear stretch of ADU to 0..255 between STRETCH_ADU."""
    lo, hi = STRETCH_ADU
    return (np.clip((adu.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def bin2(a: np.ndarray) -> np.ndarray:
    ny, nx = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return a[:ny, :nx].astype(np.float32).reshape(ny // 2, 2, nx // 2, 2).mean(axis=(1, 3))


def side_by_side(left: np.ndarray, right: np.ndarray, gap_px: int = 8) -> np.ndarray:
    gap = np.full((left.shape[0], gap_px), 255, np.uint8)
    return np.hstack([left, gap, right])


GALLERY_ROWS = ("star", "galaxy", "cosmic_ray", "hot_pixel", "streak", "transient", *ANOMALY_FAMILIES)


def gallery(seed: int, per_row: int = 4, half: int = 24, zoom: int = 2) -> np.ndarray:
    """Tiles of calibrated stamps, one row per class of GALLERY_ROWS (8-bit image)."""
    det = DetectorModel(shape_px=(1024, 1024))
    cfg = TwinConfig(detector=det, n_stars=125, n_galaxies=60, anomalies=ANOMALY_FAMILIES, n_anomalies_per_family=per_row,
                     n_transients=per_row, cosmic_ray_rate_per_s=3.0, streak_probability=1.0)
    flat = det.flat_field()
    images, truths = [], []
    for index in range(per_row):  # one streak per frame: several frames give a row of streaks
        frame = simulate_frame(cfg, index, seed)
        # bias and flat removed but not the dark, so that hot pixels stay visible
        e = (frame.raw_adu - det.bias_frame_adu()) * det.gain_e_per_adu
        images.append(np.pad(np.divide(e, flat, out=np.zeros_like(e), where=flat > 0), half, mode="median"))
        truths.append(frame.truth)
    side = (2 * half + 1) * zoom
    rows = []
    for name in GALLERY_ROWS:
        picks = []
        for k, t in enumerate(truths):
            sel = t[t["family"] == name]
            picks += [(float(r["snr_expected"]), k, float(r["x"]), float(r["y"])) for r in sel]
        picks.sort(reverse=True)
        # examples spread over the S/N range, from the bright end down to about the 90th brightest
        take = np.unique(np.linspace(0, min(len(picks), 90) - 1, per_row).astype(int)) if picks else []
        tiles = []
        for i in take:
            _, k, xf, yf = picks[i]
            x, y = int(round(xf)) + half, int(round(yf)) + half
            st = images[k][y - half:y + half + 1, x - half:x + half + 1]
            # asinh from the median (black) to the object's peak (white), softened at 3 sigma of the noise
            lo = np.median(st)
            sigma = max(1.4826 * np.median(np.abs(st - lo)), 1e-3)
            peak = st[half - 4:half + 5, half - 4:half + 5].max()
            v = np.arcsinh(np.clip(st - lo, 0, None) / (3 * sigma)) / np.arcsinh(max(peak - lo, 3 * sigma) / (3 * sigma))
            tiles.append(np.kron((np.clip(v, 0, 1) * 255).astype(np.uint8), np.ones((zoom, zoom), np.uint8)))
        while len(tiles) < per_row:
            tiles.append(np.zeros((side, side), np.uint8))
        gap = np.full((side, 4), 255, np.uint8)
        rows.append(np.hstack([p for tile in tiles for p in (tile, gap)][:-1]))
        rows.append(np.full((4, rows[-1].shape[1]), 255, np.uint8))
    return np.vstack(rows[:-1])


def sep_view(adu: np.ndarray) -> dict[str, float]:
    """Background level, RMS and detections per Mpx at 1.5, 2 and 3 sigma (minarea 5) as sep sees them."""
    d = np.ascontiguousarray(adu, dtype=np.float32)
    bkg = sep.Background(d)
    sub = d - bkg
    out = {"back_adu": float(bkg.globalback), "rms_adu": float(bkg.globalrms)}
    for th in (1.5, 2.0, 3.0):
        n = len(sep.extract(sub, th, err=bkg.globalrms, minarea=5))
        out[f"per_mpx_{th:g}sigma"] = n / d.size * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--real", type=Path, default=REAL,
                        help="the raw M13 frame (default tests/data/real/m13-raw/M13_blue_0001.fits)")
    args = parser.parse_args()
    real = fits.getdata(args.real)
    t0 = time.perf_counter()
    twin = simulate_frame(dsi_m13_config(), 0, args.seed).raw_adu
    sim_s = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    write_png_gray(args.out / "twin_vs_m13.png", side_by_side(stretch(bin2(real)), stretch(bin2(twin))))
    cy, cx = real.shape[0] // 2, real.shape[1] // 2
    crop = (slice(cy - 200, cy + 200), slice(cx - 200, cx + 200))
    write_png_gray(args.out / "twin_vs_m13_zoom.png", side_by_side(stretch(real[crop]), stretch(twin[crop])))
    write_png_gray(args.out / "twin_gallery.png", gallery(args.seed))
    r, t = sep_view(real), sep_view(twin)
    print(f"{'':22s}{'m13-raw':>12s}{'twin dsi-m13':>14s}")
    for key in r:
        print(f"{key:22s}{r[key]:12.2f}{t[key]:14.2f}")
    print(f"wrote {args.out / 'twin_vs_m13.png'} and {args.out / 'twin_vs_m13_zoom.png'} (stretch {STRETCH_ADU} ADU), "
          f"{args.out / 'twin_gallery.png'} (rows: {', '.join(GALLERY_ROWS)})")
    print(f"twin frame {twin.shape[1]}x{twin.shape[0]} simulated in {sim_s:.2f} s; "
          f"RMS ratio twin/real = {t['rms_adu'] / r['rms_adu']:.3f}")


if __name__ == "__main__":
    main()
