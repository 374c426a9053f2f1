"""AUTO photometry of :mod:`edge.fastdetect`: Kron radius and elliptical or circular sums.

The same sums as sep's ``kron_radius``, ``sum_ellipse`` and ``sum_circle`` with ``subpix=1``
(a pixel counts when its centre lies inside the aperture), with the variance map as the error
and masked pixels left out and made up for by scaling with the aperture's unmasked fraction.
sep's APER_* flags say what happened.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numpy.typing import NDArray

APER_TRUNC = 0x0010
APER_HASMASKED = 0x0020
APER_ALLMASKED = 0x0040
APER_NONPOSITIVE = 0x0080
_KRON_FACTOR = 2.5
_KRON_SEARCH = 6.0


@nb.njit(cache=True, nogil=True)
def _box(x: float, y: float, rx: float, ry: float, width: int,
         height: int) -> tuple[int, int, int, int, int]:
    """(xmin, xmax, ymin, ymax, flag) of the pixels an aperture may touch, clipped to the frame."""
    flag = 0
    xmin = int(math.floor(x - rx + 0.5))
    xmax = int(math.floor(x + rx + 1.4999999))
    ymin = int(math.floor(y - ry + 0.5))
    ymax = int(math.floor(y + ry + 1.4999999))
    if xmin < 0:
        xmin, flag = 0, flag | APER_TRUNC
    if xmax > width:
        xmax, flag = width, flag | APER_TRUNC
    if ymin < 0:
        ymin, flag = 0, flag | APER_TRUNC
    if ymax > height:
        ymax, flag = height, flag | APER_TRUNC
    return xmin, xmax, ymin, ymax, flag


@nb.njit(cache=True, nogil=True)
def _ellipse_coeffs(a: float, b: float, theta: float) -> tuple[float, float, float]:
    c, s = math.cos(theta), math.sin(theta)
    return (c * c / (a * a) + s * s / (b * b), s * s / (a * a) + c * c / (b * b),
            2.0 * c * s * (1.0 / (a * a) - 1.0 / (b * b)))


@nb.njit(cache=True, nogil=True)
def _ellipse_extent(cxx: float, cyy: float, cxy: float, r: float) -> tuple[float, float]:
    dx = cxx - cxy * cxy / (4.0 * cyy)
    dy = cyy - cxy * cxy / (4.0 * cxx)
    return (r / math.sqrt(dx) if dx > 0.0 else 0.0), (r / math.sqrt(dy) if dy > 0.0 else 0.0)


@nb.njit(cache=True, nogil=True)
def _sum(sub: NDArray[np.float32], var: NDArray[np.float32], bad: NDArray[np.bool_], x: float,
         y: float, cxx: float, cyy: float, cxy: float, r: float, rx: float,
         ry: float) -> tuple[float, float, int]:
    """(flux, error, flags) of pixels whose centre has cxx dx^2 + cyy dy^2 + cxy dx dy < r^2."""
    height, width = sub.shape
    xmin, xmax, ymin, ymax, flag = _box(x, y, rx, ry, width, height)
    r2 = r * r
    tv = sig = 0.0
    area = masked = 0
    for iy in range(ymin, ymax):
        dy = iy - y
        for ix in range(xmin, xmax):
            dx = ix - x
            if cxx * dx * dx + cyy * dy * dy + cxy * dx * dy >= r2:
                continue
            area += 1
            if bad[iy, ix]:
                masked += 1
                continue
            tv += sub[iy, ix]
            sig += var[iy, ix]
    if masked > 0:
        flag |= APER_HASMASKED
        if masked == area:
            flag |= APER_ALLMASKED
        else:
            scale = area / (area - masked)
            tv *= scale
            sig *= scale
    return tv, math.sqrt(sig) if sig > 0.0 else 0.0, flag


@nb.njit(cache=True, nogil=True)
def _kron(sub: NDArray[np.float32], bad: NDArray[np.bool_], x: float, y: float, cxx: float,
          cyy: float, cxy: float) -> tuple[float, int]:
    """sep's first-moment radius within 6 a (in units of the isophotal ellipse), and its flags."""
    height, width = sub.shape
    rx, ry = _ellipse_extent(cxx, cyy, cxy, _KRON_SEARCH)
    xmin, xmax, ymin, ymax, flag = _box(x, y, rx, ry, width, height)
    r2 = _KRON_SEARCH * _KRON_SEARCH
    r1 = v1 = 0.0
    area = 0
    for iy in range(ymin, ymax):
        dy = iy - y
        for ix in range(xmin, xmax):
            dx = ix - x
            rpix2 = cxx * dx * dx + cyy * dy * dy + cxy * dx * dy
            if rpix2 > r2:
                continue
            if bad[iy, ix]:
                flag |= APER_HASMASKED
                continue
            v = float(sub[iy, ix])
            r1 += math.sqrt(rpix2) * v
            v1 += v
            area += 1
    if area == 0:
        return 0.0, flag | APER_ALLMASKED
    if r1 <= 0.0 or v1 <= 0.0:
        return 0.0, flag | APER_NONPOSITIVE
    return r1 / v1, flag


@nb.njit(cache=True, nogil=True)  # ~10 ms a frame: threads would not pay their compile time
def auto_flux(sub: NDArray[np.float32], var: NDArray[np.float32], bad: NDArray[np.bool_],
              x: NDArray[np.float64], y: NDArray[np.float64], a: NDArray[np.float64],
              b: NDArray[np.float64], theta: NDArray[np.float64],
              r_min: float) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """AUTO flux, its error and APER_* flags: 2.5 Kron radii, never smaller than a circle of ``r_min``."""
    n = x.shape[0]
    flux = np.zeros(n, dtype=np.float64)
    err = np.zeros(n, dtype=np.float64)
    flags = np.zeros(n, dtype=np.int64)
    for i in range(n):
        # single-pixel objects have a or b near 0: the same guards as edge.detect's sep path
        ai = max(a[i], 0.5) if np.isfinite(a[i]) else 0.5
        bi = min(max(b[i], 0.5) if np.isfinite(b[i]) else 0.5, ai)
        ti = min(max(theta[i] if np.isfinite(theta[i]) else 0.0, -math.pi / 2), math.pi / 2)
        cxx, cyy, cxy = _ellipse_coeffs(ai, bi, ti)
        kron, fl = _kron(sub, bad, x[i], y[i], cxx, cyy, cxy)
        if kron * math.sqrt(ai * bi) * _KRON_FACTOR < r_min:
            rr = r_min + 0.7072
            f, e, fl2 = _sum(sub, var, bad, x[i], y[i], 1.0, 1.0, 0.0, r_min, rr, rr)
        else:
            r = _KRON_FACTOR * kron
            rx, ry = _ellipse_extent(cxx, cyy, cxy, r)
            f, e, fl2 = _sum(sub, var, bad, x[i], y[i], cxx, cyy, cxy, r, rx, ry)
        flux[i], err[i], flags[i] = f, e, fl | fl2
    return flux, err, flags
