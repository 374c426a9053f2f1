"""The background mesh of :mod:`edge.fastdetect`: SExtractor's mode estimator, median filter, spline.

The same estimator as sep (and SExtractor): per box, a 2-sigma clipped mean and sigma, then a
histogram whose clipped mode (2.5 median - 1.5 mean, or the median when the two disagree) is the
box's background (the median interpolated from the cumulative histogram, see :func:`_mode`); boxes with fewer than half their pixels usable are filled from the nearest good
boxes; the mesh is median filtered; the map is a bicubic spline through the box centres. Pure
functions of arrays, compiled with numba; no Python objects inside the loops.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numpy.typing import NDArray

from edge.fastdetect.chunks import in_chunks

_BIG = 1e30
_NSIGMA = 5.0
_MAX_LEVELS = 4096
_MIN_GOOD_FRACTION = 0.5


#: sums may be reordered (vectorised): the image is finite here, and sep's sums are doubles too;
#: the loops use error_model="numpy" (no division checks, which keep loops from vectorising)
_FAST_SUMS = {"reassoc", "contract", "nsz"}


@nb.njit(cache=True, nogil=True, fastmath=_FAST_SUMS, error_model="numpy")
def _box_stats(image: NDArray[np.float32], bad: NDArray[np.bool_], y0: int, y1: int, x0: int,
               x1: int) -> tuple[float, float]:
    """(background, sigma) of one box, or (-BIG, -BIG) when too few pixels are usable."""
    nf = 0.0
    s = 0.0
    s2 = 0.0
    for y in range(y0, y1):
        row, brow = image[y, x0:x1], bad[y, x0:x1]
        for x in range(x1 - x0):
            # arithmetic, not branches, so that the loop vectorises
            good = 1.0 - np.float64(brow[x])
            v = float(row[x]) * good
            s += v
            s2 += v * v
            nf += good
    n = int(nf)
    if n < (x1 - x0) * (y1 - y0) * _MIN_GOOD_FRACTION or n == 0:
        return -_BIG, -_BIG
    mean = s / n
    var = s2 / n - mean * mean
    sigma = math.sqrt(var) if var > 0.0 else 0.0
    lcut = np.float32(mean - 2.0 * sigma)
    hcut = np.float32(mean + 2.0 * sigma)
    nf = 0.0
    s = 0.0
    s2 = 0.0
    for y in range(y0, y1):
        row, brow = image[y, x0:x1], bad[y, x0:x1]
        for x in range(x1 - x0):
            v32 = row[x]
            keep = np.float64((v32 <= hcut) & (v32 >= lcut) & (not brow[x]))
            v = float(v32) * keep
            s += v
            s2 += v * v
            nf += keep
    n = int(nf)
    if n == 0:
        return -_BIG, -_BIG
    mean = s / n
    var = s2 / n - mean * mean
    sigma = math.sqrt(var) if var > 0.0 else 0.0
    step = math.sqrt(2.0 / math.pi) * _NSIGMA / 4.0
    nlevels = min(int(step * n + 1), _MAX_LEVELS)
    qscale = 2.0 * _NSIGMA * sigma / nlevels if sigma > 0.0 else 1.0
    qzero = mean - _NSIGMA * sigma
    histo = np.zeros(nlevels + 1, dtype=np.int64)
    cste = np.float32(0.499999 - qzero / qscale)
    inv_q = np.float32(1.0 / qscale)  # sep divides; a product moves a value by a bin at most once in ~1e7
    top = np.float32(nlevels)
    bins = np.empty(x1 - x0, dtype=np.int32)
    for y in range(y0, y1):
        row, brow = image[y, x0:x1], bad[y, x0:x1]
        # the bins first (a vector loop), then the counts: C's truncation toward zero as in sep;
        # out-of-range and masked pixels go to the spare bin
        for x in range(x1 - x0):
            f = row[x] * inv_q + cste
            f = f if f > np.float32(-1.0) and f < top and not brow[x] else top
            bins[x] = np.int32(f)
        for x in range(x1 - x0):
            histo[bins[x]] += 1
    return _mode(histo, nlevels, mean, sigma, qzero, qscale)


@nb.njit(cache=True, nogil=True)
def _mode(histo: NDArray[np.int64], nlevels: int, mean0: float, sigma0: float, qzero: float,
          qscale: float) -> tuple[float, float]:
    """SExtractor's clipped mode of a histogram (sep's backguess).

    The same 3-sigma clipping iterations as sep; the median of each iteration is interpolated
    from the cumulative histogram (bin i spans i - 0.5 .. i + 0.5), where sep walks in from both
    ends: the two agree to a fraction of a bin (a few thousandths of sigma).
    """
    # prefix sums of the counts and their first two moments: each clipping iteration is then a
    # few lookups and a binary search. Integers (exact: a box's pixel count times 4096^2 stays
    # far inside int64 and a double) kept in registers: a sum read back from the array it was
    # just stored in waits on that store every bin, which made this loop a third of the box
    # statistics
    cnt = np.empty(nlevels + 1, dtype=np.int64)
    m1 = np.empty(nlevels + 1, dtype=np.int64)
    m2 = np.empty(nlevels + 1, dtype=np.int64)
    c = 0
    a = 0
    b = 0
    cnt[0] = m1[0] = m2[0] = 0
    for i in range(nlevels):
        h = histo[i]
        c += h
        a += h * i
        b += h * i * i
        cnt[i + 1] = c
        m1[i + 1] = a
        m2[i + 1] = b
    lcut = 0
    hcut = nlevels - 1
    sig = 10.0 * (nlevels - 1)
    sig1 = 1.0
    mea = mean0
    med = mean0
    it = 100
    while it > 0 and sig >= 0.1 and abs(sig / sig1 - 1.0) > 1e-4:
        it -= 1
        sig1 = sig
        total = float(cnt[hcut + 1] - cnt[lcut])
        mea = float(m1[hcut + 1] - m1[lcut])
        sig = float(m2[hcut + 1] - m2[lcut])
        med = 0.0
        if total > 0:
            # the first bin where the cumulative count reaches half the clipped total
            target = cnt[lcut] + 0.5 * total
            lo, hi = lcut, hcut
            while lo < hi:
                mid = (lo + hi) // 2
                if cnt[mid + 1] >= target:
                    hi = mid
                else:
                    lo = mid + 1
            med = lo - 0.5 + (target - cnt[lo]) / float(cnt[lo + 1] - cnt[lo])
            mea /= total
            sig = sig / total - mea * mea
        sig = math.sqrt(sig) if sig > 0.0 else 0.0
        t = med - 3.0 * sig
        lcut = int(t + 0.5) if t > 0.0 else 0
        t = med + 3.0 * sig
        hcut = (int(t + 0.5) if t > 0.0 else int(t - 0.5)) if t < nlevels - 1 else nlevels - 1
    if abs(sig) > 0.0:
        if abs((mea - med) / sig) < 0.3:
            back = qzero + (2.5 * med - 1.5 * mea) * qscale
        else:
            back = qzero + med * qscale
    else:
        back = qzero + mea * qscale
    return back, sig * qscale


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _mesh_rows(j0: int, j1: int, image: NDArray[np.float32], bad: NDArray[np.bool_], bw: int,
               bh: int, back: NDArray[np.float32], sigma: NDArray[np.float32]) -> None:
    """Background and sigma of the boxes in rows j0 .. j1 of the mesh."""
    height, width = image.shape
    nx = back.shape[1]
    for j in range(j0, j1):
        for i in range(nx):
            back[j, i], sigma[j, i] = _box_stats(image, bad, j * bh, min((j + 1) * bh, height),
                                                 i * bw, min((i + 1) * bw, width))


@nb.njit(cache=True, nogil=True)
def _filter_mesh(back: NDArray[np.float32], sigma: NDArray[np.float32], fw: int,
                 fh: int) -> tuple[NDArray[np.float32], NDArray[np.float32], float]:
    """Fill bad boxes from the nearest good ones, median filter, and the global RMS (sep's filterback)."""
    ny, nx = back.shape
    b2 = back.copy()
    s2 = sigma.copy()
    for py in range(ny):
        for px in range(nx):
            if back[py, px] > -_BIG:
                continue
            d2min = _BIG
            val = 0.0
            sval = 0.0
            nmin = 0
            for y in range(ny):
                for x in range(nx):
                    if back[y, x] > -_BIG:
                        d2 = float((x - px) * (x - px) + (y - py) * (y - py))
                        if d2 < d2min:
                            val, sval, nmin, d2min = back[y, x], sigma[y, x], 1, d2
                        elif d2 == d2min:
                            val += back[y, x]
                            sval += sigma[y, x]
                            nmin += 1
            b2[py, px] = val / nmin if nmin else 0.0
            s2[py, px] = sval / nmin if nmin else 1.0
    npx, npy = fw // 2, fh // 2
    outb = np.empty_like(b2)
    outs = np.empty_like(s2)
    for py in range(ny):
        ry = min(npy, ny - py - 1, py)
        for px in range(nx):
            rx = min(npx, nx - px - 1, px)
            outb[py, px] = np.median(b2[py - ry:py + ry + 1, px - rx:px + rx + 1])
            outs[py, px] = np.median(s2[py - ry:py + ry + 1, px - rx:px + rx + 1])
    globalrms = float(np.median(outs))
    if globalrms <= 0.0:
        positive = outs.ravel()[outs.ravel() > 0.0]
        globalrms = float(np.median(positive)) if positive.size else 1.0
    return outb, outs, globalrms


@nb.njit(cache=True, nogil=True)
def _second_derivatives(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Natural cubic spline second derivatives of equally spaced nodes (sep's makebackspline)."""
    n = values.shape[0]
    d = np.zeros(n, dtype=np.float64)
    if n < 3:
        return d
    u = np.zeros(n, dtype=np.float64)
    for i in range(1, n - 1):
        temp = -1.0 / (d[i - 1] + 4.0)
        d[i] = temp
        u[i] = temp * (u[i - 1] - 6.0 * (values[i + 1] + values[i - 1] - 2.0 * values[i]))
    d[n - 1] = 0.0
    for i in range(n - 2, 0, -1):
        d[i] = (d[i] * d[i + 1] + u[i]) / 6.0
    return d


@nb.njit(cache=True, nogil=True)
def _x_layout(width: int, bw: int, nx: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """For every column: the node left of it and its offset from that node (sep's walk along a row)."""
    lo_of = np.zeros(width, dtype=np.int64)
    dx_of = np.zeros(width, dtype=np.float64)
    xstep = 1.0 / bw
    changepoint = bw // 2
    dx = (xstep - 1.0) / 2.0
    dx0 = ((bw + 1) % 2) * xstep / 2.0
    lo = 0
    xi = 0
    i = 0
    for x in range(width):
        if i == changepoint and 0 < xi < nx - 1:
            lo += 1
            dx = dx0
        lo_of[x] = lo
        dx_of[x] = dx
        if i == bw:
            xi += 1
            i = 0
        i += 1
        dx += xstep
    return lo_of, dx_of


@nb.njit(cache=True, nogil=True)
def _spline_setup(mesh: NDArray[np.float32], width: int, bw: int) -> tuple[
        NDArray[np.float64], NDArray[np.float64], NDArray[np.int64], NDArray[np.float32],
        NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]:
    """What every row of the spline shares: the nodes, their second derivatives along y, and for
    each column its left node and cubic weights (sep's back(), laid out once)."""
    ny, nx = mesh.shape
    m = mesh.astype(np.float64)
    dy_nodes = np.zeros((ny, nx), dtype=np.float64)
    for i in range(nx):
        dy_nodes[:, i] = _second_derivatives(m[:, i])
    if nx < 2:
        lo_of = np.zeros(width, dtype=np.int64)
        dx_of = np.zeros(width, dtype=np.float64)
    else:
        lo_of, dx_of = _x_layout(width, bw, nx)
    # the cubic weights of each column: value(x) = c0 n[lo] + c1 n[lo+1] + c2 d[lo] + c3 d[lo+1]
    c0 = (1.0 - dx_of).astype(np.float32)
    c1 = dx_of.astype(np.float32)
    c2 = ((1.0 - dx_of) * ((1.0 - dx_of) ** 2 - 1.0)).astype(np.float32)
    c3 = (dx_of * (dx_of * dx_of - 1.0)).astype(np.float32)
    # columns that share their left node, so that each run is a plain vector loop
    starts = [0]
    for x in range(1, width):
        if lo_of[x] != lo_of[x - 1]:
            starts.append(x)
    starts.append(width)
    seg_start = np.array(starts, dtype=np.int64)
    return m, dy_nodes, lo_of, c0, c1, c2, c3, seg_start


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _spline_rows(y0: int, y1: int, m: NDArray[np.float64], dy_nodes: NDArray[np.float64],
                 lo_of: NDArray[np.int64], c0: NDArray[np.float32], c1: NDArray[np.float32],
                 c2: NDArray[np.float32], c3: NDArray[np.float32], seg_start: NDArray[np.int64],
                 bh: int, image: NDArray[np.float32], out: NDArray[np.float32],
                 sub: NDArray[np.float32]) -> None:
    """Rows y0 .. y1 of the background (``out``) and of the image minus it (``sub``)."""
    ny, nx = m.shape
    width = image.shape[1]
    for y in range(y0, y1):
        node = np.empty(nx + 1, dtype=np.float64)
        if ny > 1:
            dy = y / bh - 0.5
            yl = int(dy)
            dy -= yl
            if yl < 0:
                yl = 0
                dy -= 1.0
            elif yl >= ny - 1:
                yl = ny - 2
                dy += 1.0
            cdy = 1.0 - dy
            dy3 = dy * dy * dy - dy
            cdy3 = cdy * cdy * cdy - cdy
            for i in range(nx):
                node[i] = (cdy * m[yl, i] + dy * m[yl + 1, i] + cdy3 * dy_nodes[yl, i]
                           + dy3 * dy_nodes[yl + 1, i])
        else:
            node[:nx] = m[0, :]
        node[nx] = node[nx - 1]
        if nx < 2:
            out[y, :] = node[0]
            sub[y, :] = image[y, :] - np.float32(node[0])
            continue
        # with one row of boxes sep has no second derivatives along x: linear between nodes
        dnode = np.zeros(nx + 1, dtype=np.float64)
        if ny > 1:
            dnode[:nx] = _second_derivatives(node[:nx])
        orow, srow, irow = out[y], sub[y], image[y]
        for seg in range(seg_start.shape[0] - 1):
            lo = lo_of[seg_start[seg]]
            n0, n1 = np.float32(node[lo]), np.float32(node[lo + 1])
            d0, d1 = np.float32(dnode[lo]), np.float32(dnode[lo + 1])
            for x in range(seg_start[seg], seg_start[seg + 1]):
                orow[x] = c0[x] * n0 + c1[x] * n1 + c2[x] * d0 + c3[x] * d1
        # a loop apiece: with fewer arrays in a loop LLVM can prove them apart and vectorise it
        for x in range(width):
            srow[x] = irow[x] - orow[x]


def background(image: NDArray[np.float32], bad: NDArray[np.bool_], box_px: int, filter_px: int,
               threads: int = 1) -> tuple[NDArray[np.float32], NDArray[np.float32], float]:
    """The spline background map of ``image`` (``bad`` pixels excluded), the image minus it, and
    the global RMS; boxes and rows on ``threads`` threads."""
    height, width = image.shape
    nx, ny = (width - 1) // box_px + 1, (height - 1) // box_px + 1
    back = np.empty((ny, nx), dtype=np.float32)
    sigma = np.empty((ny, nx), dtype=np.float32)
    in_chunks(_mesh_rows, ny, threads, image, bad, box_px, box_px, back, sigma)
    back, _, globalrms = _filter_mesh(back, sigma, filter_px, filter_px)
    # frame-sized outputs come from numpy, which asks for huge pages: first touch of 64 MB of
    # fresh 4 KiB pages costs more than the spline itself
    background_map = np.empty(image.shape, dtype=np.float32)
    sub = np.empty(image.shape, dtype=np.float32)
    layout = _spline_setup(back, width, box_px)
    in_chunks(_spline_rows, height, threads, *layout, box_px, image, background_map, sub)
    return background_map, sub, globalrms
