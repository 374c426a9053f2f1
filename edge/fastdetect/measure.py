"""Extraction driver of :mod:`edge.fastdetect`: groups, deblending and isophotal measurements.

Groups are deblended in threads (each is independent) and every object is measured as sep does:
the barycentre and second moments of the background-subtracted values over its isophotal pixels,
the ellipse (a, b, theta) from them, position variances (errx2, erry2) from the variance map,
the highest pixel, the pixel count and sep's OBJ_* flags.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numpy.typing import NDArray

from edge.fastdetect.chunks import in_chunks
from edge.fastdetect.deblend import OBJ_MERGED, OBJ_SINGU, OBJ_TRUNC, deblend

#: columns of the result table, in order
COLUMNS = ("x", "y", "x2", "y2", "xy", "errx2", "erry2", "a", "b", "theta", "peak", "npix",
           "xpeak", "ypeak", "flag")


@nb.njit(cache=True, nogil=True)
def _deblend_range(g0: int, g1: int, xs: NDArray[np.int32], ys: NDArray[np.int32],
                   offsets: NDArray[np.int64], cdv: NDArray[np.float64], var: NDArray[np.float32],
                   threshold: float, nthresh: int, contrast: float, min_area: int,
                   labels: NDArray[np.int64], nsub: NDArray[np.int64]) -> None:
    """Deblend groups g0 .. g1: each pixel's branch into ``labels``, each group's count into ``nsub``."""
    for g in range(g0, g1):
        a, b = offsets[g], offsets[g + 1]
        vmin = np.inf
        for i in range(a, b):
            vmin = min(vmin, float(var[ys[i], xs[i]]))
        # the base level: the S/N threshold in the group's lowest noise, as sep's per-pixel threshold
        base = threshold * math.sqrt(vmin) if vmin > 0.0 and np.isfinite(vmin) else threshold
        lab, n = deblend(xs[a:b], ys[a:b], cdv[a:b], base, nthresh, contrast, min_area)
        labels[a:b] = lab
        nsub[g] = n


@nb.njit(cache=True, nogil=True)  # ~10 ms a frame: threads would not pay their compile time
def _measure_all(xs: NDArray[np.int32], ys: NDArray[np.int32], offsets: NDArray[np.int64],
                 labels: NDArray[np.int64], nsub: NDArray[np.int64], cdv: NDArray[np.float64],
                 sub: NDArray[np.float32], var: NDArray[np.float32],
                 bad: NDArray[np.bool_]) -> NDArray[np.float64]:
    height, width = sub.shape
    ngroups = offsets.shape[0] - 1
    first = np.zeros(ngroups + 1, dtype=np.int64)
    for g in range(ngroups):
        first[g + 1] = first[g] + nsub[g]
    table = np.zeros((first[ngroups], len(COLUMNS)), dtype=np.float64)
    for g in range(ngroups):
        a, b = offsets[g], offsets[g + 1]
        m = nsub[g]
        for s in range(m):
            row = table[first[g] + s]
            flag = OBJ_MERGED if m > 1 else 0
            # weights: the filtered image, as sep; a deblended object keeps its branch's barycentre
            bx, by, _ = _barycentre(xs, ys, labels, a, b, s, s, cdv)
            ax, ay, at = _barycentre(xs, ys, labels, a, b, s, s + m if m > 1 else s, cdv)
            mx, my = (bx, by) if m > 1 else (ax, ay)
            total = at
            n = 0
            peak = -np.inf
            xpk = ypk = 0
            sxx = syy = sxy = 0.0
            for i in range(a, b):
                if labels[i] != s and labels[i] != s + m:
                    continue
                x, y = xs[i], ys[i]
                n += 1
                v = float(sub[y, x])
                if v > peak:
                    peak, xpk, ypk = v, x, y
                if x == 0 or y == 0 or x == width - 1 or y == height - 1:
                    flag |= OBJ_TRUNC
                w = cdv[i] if total > 0.0 else 1.0
                dx, dy = x - mx, y - my
                sxx += w * dx * dx
                syy += w * dy * dy
                sxy += w * dx * dy
            if total <= 0.0:
                total = float(n)
            x2, y2, xy = sxx / total, syy / total, sxy / total
            x0, y0 = mx, my
            mx = my = 0.0
            ex2 = ey2 = 0.0
            vsum = 0.0
            for i in range(a, b):
                if (labels[i] != s and labels[i] != s + m) or bad[ys[i], xs[i]]:
                    continue
                dx, dy = xs[i] - x0, ys[i] - y0
                vv = float(var[ys[i], xs[i]])
                vsum += vv
                ex2 += vv * dx * dx
                ey2 += vv * dy * dy
            norm = total * total
            ex2 /= norm
            ey2 /= norm
            if x2 * y2 - xy * xy < 0.00694:
                x2 += 0.0833333
                y2 += 0.0833333
                flag |= OBJ_SINGU
                vsum *= 0.08333 / norm
                if ex2 * ey2 < vsum * vsum:
                    ex2 += vsum
                    ey2 += vsum
            theta = math.atan2(2.0 * xy, x2 - y2) / 2.0 if abs(x2 - y2) > 0.0 else math.pi / 4.0
            t = math.sqrt(0.25 * (x2 - y2) ** 2 + xy * xy)
            row[0] = x0 + mx
            row[1] = y0 + my
            row[2], row[3], row[4] = x2, y2, xy
            row[5] = ex2
            row[6] = ey2
            row[7] = math.sqrt(max(0.5 * (x2 + y2) + t, 0.0))
            row[8] = math.sqrt(max(0.5 * (x2 + y2) - t, 0.0))
            row[9] = theta
            row[10] = peak
            row[11] = n
            row[12], row[13] = xpk, ypk
            row[14] = flag
    return table


@nb.njit(cache=True, nogil=True)
def _barycentre(xs: NDArray[np.int32], ys: NDArray[np.int32], labels: NDArray[np.int64], a: int,
                b: int, s: int, s2: int, cdv: NDArray[np.float64]) -> tuple[float, float, float]:
    """(x, y, weight) of the pixels labelled s or s2, weighted by the filtered image."""
    tv = sx = sy = 0.0
    n = 0
    ux = uy = 0.0
    for i in range(a, b):
        if labels[i] == s or labels[i] == s2:
            w = cdv[i]
            tv += w
            sx += w * xs[i]
            sy += w * ys[i]
            n += 1
            ux += xs[i]
            uy += ys[i]
    if tv > 0.0:
        return sx / tv, sy / tv, tv
    return ux / max(n, 1), uy / max(n, 1), tv


def measure(xs: NDArray[np.int32], ys: NDArray[np.int32], offsets: NDArray[np.int64],
            cdv: NDArray[np.float64], sub: NDArray[np.float32], var: NDArray[np.float32],
            bad: NDArray[np.bool_], threshold: float, nthresh: int, contrast: float,
            min_area: int, threads: int = 1) -> NDArray[np.float64]:
    """One row per object (columns :data:`COLUMNS`) from the grouped pixels of a frame.

    ``cdv`` is the filtered image at each grouped pixel; groups are deblended on ``threads`` threads.
    """
    labels = np.empty(xs.shape[0], dtype=np.int64)
    nsub = np.zeros(offsets.shape[0] - 1, dtype=np.int64)
    in_chunks(_deblend_range, offsets.shape[0] - 1, threads, xs, ys, offsets, cdv, var, threshold,
              nthresh, contrast, min_area, labels, nsub)
    return _measure_all(xs, ys, offsets, labels, nsub, cdv, sub, var, bad)
