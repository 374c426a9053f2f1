"""Artifacts: cosmic-ray hits and tracks (never PSF-convolved) and satellite or debris streaks.

Cosmic rays deposit charge straight into the pixels they cross, so they are sharper than any
source the optics can make. Streaks are the PSF dragged along a line: the Moffat's line-spread
profile across the trail, a smooth taper at its ends. Pure numpy; the per-frame generator is an
argument; frame-sized arrays are only written into, never allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from twin.instrument import TwinConfig
from twin.psf import F32, line_spread

_CR_MEDIAN_E = 1500.0
_CR_STEP_PX = 0.2


@dataclass(frozen=True)
class Deposits:
    """Objects drawn straight into the frame: per object its in-frame charge, centroid, ends, size."""

    flux_e: NDArray[np.float64]
    x: NDArray[np.float64]
    y: NDArray[np.float64]
    ends: tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]
    length_px: NDArray[np.float64]
    noise_area_px: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.flux_e)


def _empty() -> Deposits:
    z = np.zeros(0)
    return Deposits(z, z, z, (z, z, z, z), z, z)


def _accumulate(image: NDArray[np.float32], owner: NDArray[np.int64], iy: NDArray[np.int64],
                ix: NDArray[np.int64], value: NDArray[np.float64], n_obj: int) -> tuple[NDArray[np.float64], ...]:
    """Add values at (iy, ix) into ``image``; return per-object sum, centroid x, y and noise area."""
    ny, nx = image.shape
    keep = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    owner, iy, ix, value = owner[keep], iy[keep], ix[keep], value[keep]
    pix = iy * nx + ix
    key = owner * (ny * nx) + pix
    ukey, inv = np.unique(key, return_inverse=True)
    per_key = np.bincount(inv.ravel(), weights=value, minlength=len(ukey))
    upix = ukey % (ny * nx)
    uown = ukey // (ny * nx)
    np.add.at(image.ravel(), upix, per_key.astype(F32))
    s1 = np.bincount(uown, weights=per_key, minlength=n_obj)
    s2 = np.bincount(uown, weights=per_key ** 2, minlength=n_obj)
    sx = np.bincount(uown, weights=per_key * (upix % nx), minlength=n_obj)
    sy = np.bincount(uown, weights=per_key * (upix // nx), minlength=n_obj)
    safe = np.maximum(s1, 1e-300)
    return (s1.astype(np.float64), sx / safe, sy / safe,
            np.where(s2 > 0, s1 * s1 / np.maximum(s2, 1e-300), 1.0).astype(np.float64))


def add_cosmic_rays(image: NDArray[np.float32], config: TwinConfig, rng: np.random.Generator) -> Deposits:
    """Add cosmic-ray hits (about half single pixels, the rest straight tracks) into ``image`` (e)."""
    ny, nx = image.shape
    mean_n = config.cosmic_ray_rate_per_s * config.exposure_s * ny * nx / 1e6
    n = int(rng.poisson(mean_n))
    if n == 0:
        return _empty()
    x0 = rng.uniform(-0.5, nx - 0.5, n)
    y0 = rng.uniform(-0.5, ny - 0.5, n)
    track = rng.uniform(0, 1, n) < 0.5
    length = np.where(track, np.minimum(rng.exponential(8.0, n) + 2.0, 60.0), 0.0)
    theta = rng.uniform(0, 2 * np.pi, n)
    energy = _CR_MEDIAN_E * np.exp(rng.normal(0.0, 0.6, n)) * np.where(track, 1.0 + length / 4.0, 1.0)
    x1 = x0 + length * np.cos(theta)
    y1 = y0 + length * np.sin(theta)
    steps = np.maximum(1, np.ceil(length / _CR_STEP_PX).astype(np.int64))
    owner = np.repeat(np.arange(n), steps)
    frac = (np.arange(owner.size) - np.repeat(np.cumsum(steps) - steps, steps) + 0.5) / np.repeat(steps, steps)
    px = x0[owner] + frac * (x1 - x0)[owner]
    py = y0[owner] + frac * (y1 - y0)[owner]
    # ionisation fluctuates along the track (a gamma-distributed share per step)
    share = rng.gamma(4.0, 0.25, owner.size)
    value = energy[owner] / steps[owner] * share
    flux, cx, cy, nea = _accumulate(image, owner, np.rint(py).astype(np.int64), np.rint(px).astype(np.int64),
                                    value, n)
    inside = flux > 0
    return Deposits(flux[inside], cx[inside], cy[inside],
                    (x0[inside], y0[inside], x1[inside], y1[inside]), length[inside], nea[inside])


def clip_segment(x0: float, y0: float, x1: float, y1: float, shape: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """The part of a segment inside the frame's pixel area (Liang-Barsky), or None."""
    ny, nx = shape
    dx, dy = x1 - x0, y1 - y0
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, x0 + 0.5), (dx, nx - 0.5 - x0), (-dy, y0 + 0.5), (dy, ny - 0.5 - y0)):
        if p == 0:
            if q < 0:
                return None
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
    if t0 >= t1:
        return None
    return x0 + t0 * dx, y0 + t0 * dy, x0 + t1 * dx, y0 + t1 * dy


def add_streak(image: NDArray[np.float32], config: TwinConfig, x0: float, y0: float, x1: float, y1: float,
               flux_per_px_e: float) -> Deposits:
    """Add one PSF-convolved trail from (x0, y0) to (x1, y1) carrying ``flux_per_px_e`` per pixel of length."""
    ny, nx = image.shape
    clipped = clip_segment(x0, y0, x1, y1, (ny, nx))
    if clipped is None:
        return _empty()
    fwhm = config.fwhm_px
    half_w = int(np.ceil(6.0 * fwhm + config.defocus_px))
    length = float(np.hypot(x1 - x0, y1 - y0))
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    sigma = fwhm / 2.355
    steep = abs(uy) > abs(ux)
    # walk along the major axis, one column (or row) at a time, painting a band across the line
    if steep:
        lo, hi = sorted((clipped[1], clipped[3]))
        along = np.arange(max(int(np.floor(lo)) - half_w, 0), min(int(np.ceil(hi)) + half_w, ny - 1) + 1)
        centre = x0 + (along - y0) * ux / uy
        across = np.rint(centre)[:, None].astype(np.int64) + np.arange(-half_w, half_w + 1)[None, :]
        py, px = np.broadcast_to(along[:, None], across.shape), across
    else:
        lo, hi = sorted((clipped[0], clipped[2]))
        along = np.arange(max(int(np.floor(lo)) - half_w, 0), min(int(np.ceil(hi)) + half_w, nx - 1) + 1)
        centre = y0 + (along - x0) * uy / ux
        across = np.rint(centre)[:, None].astype(np.int64) + np.arange(-half_w, half_w + 1)[None, :]
        px, py = np.broadcast_to(along[:, None], across.shape), across
    keep = (py >= 0) & (py < ny) & (px >= 0) & (px < nx)
    px, py = px[keep], py[keep]
    rx, ry = px - x0, py - y0
    t = rx * ux + ry * uy
    d = (ry * ux - rx * uy).astype(F32)
    # logistic stand-in for the Gaussian CDF: a smooth end where the trail starts and stops
    taper = 1.0 / (1.0 + np.exp(-1.702 * t / sigma)) / (1.0 + np.exp(-1.702 * (length - t) / sigma))
    value = (flux_per_px_e * line_spread(d, fwhm, config.psf_beta) * taper).astype(F32)
    image[py, px] += value
    s1 = float(value.sum(dtype=np.float64))
    s2 = float(np.square(value, dtype=np.float64).sum())
    cx0, cy0, cx1, cy1 = clipped
    return Deposits(np.array([s1]), np.array([(cx0 + cx1) / 2]), np.array([(cy0 + cy1) / 2]),
                    (np.array([cx0]), np.array([cy0]), np.array([cx1]), np.array([cy1])),
                    np.array([float(np.hypot(cx1 - cx0, cy1 - cy0))]),
                    np.array([s1 * s1 / s2 if s2 > 0 else 1.0]))


def add_streaks(image: NDArray[np.float32], config: TwinConfig, rng: np.random.Generator) -> Deposits:
    """With ``streak_probability``, add one satellite (crosses the frame) or debris (short) trail."""
    if rng.uniform() >= config.streak_probability:
        return _empty()
    ny, nx = image.shape
    cx, cy = rng.uniform(0.1 * nx, 0.9 * nx), rng.uniform(0.1 * ny, 0.9 * ny)
    theta = rng.uniform(0, np.pi)
    satellite = rng.uniform() < 0.7
    half_len = 2.0 * max(nx, ny) if satellite else rng.uniform(0.05, 0.25) * max(nx, ny)
    flux_per_px = float(np.exp(rng.uniform(np.log(30.0), np.log(1500.0))))
    dx, dy = half_len * np.cos(theta), half_len * np.sin(theta)
    return add_streak(image, config, cx - dx, cy - dy, cx + dx, cy + dy, flux_per_px)
