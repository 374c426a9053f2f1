"""Matched filter, threshold and connected components of :mod:`edge.fastdetect`.

The S/N map is sep's matched filter with a variance map: ``sum(k * image / var) /
sqrt(sum(k**2 / var))`` over the kernel ``k`` (normalised to sum |k| = 1), masked pixels counting
as image 0 and infinite variance; without the filter (a 1x1 kernel) it is ``image / sqrt(var)``.
Pixels above the threshold are grouped 8-connected, as sep does, through runs of pixels per row.
The filtered image (``k * image``), on which deblending and the moments work as in sep, is only
computed at the grouped pixels.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numpy.typing import NDArray

_BAND_ROWS = 32


# error_model="numpy": a zero divisor gives inf, not an exception, whose checks kept the loop
# from vectorising (4x slower); masked pixels' inf weights are replaced by 0, and the S/N is only
# divided where den > 0
@nb.njit(cache=True, nogil=True, error_model="numpy")
def threshold_rows(y0: int, y1: int, sub: NDArray[np.float32], var: NDArray[np.float32],
                   bad: NDArray[np.bool_], kernel: NDArray[np.float32], threshold: float,
                   out: NDArray[np.uint8]) -> None:
    """Rows y0 .. y1 of ``out``: 1 where the matched-filter S/N exceeds ``threshold``;
    ``kernel``: 3x3, normalised.

    A 1x1 kernel (no filter) is given as a 3x3 one with zeros around the centre.
    """
    height, width = sub.shape
    t = np.float32(threshold)
    # each row is worked out in a buffer of its own, then copied: written straight into ``out``
    # (an argument LLVM cannot tell apart from the inputs) the loop did not vectorise
    row = np.empty(width, dtype=np.uint8)
    k00, k01, k02 = kernel[0, 0], kernel[0, 1], kernel[0, 2]
    k10, k11, k12 = kernel[1, 0], kernel[1, 1], kernel[1, 2]
    k20, k21, k22 = kernel[2, 0], kernel[2, 1], kernel[2, 2]
    q00, q01, q02 = k00 * k00, k01 * k01, k02 * k02
    q10, q11, q12 = k10 * k10, k11 * k11, k12 * k12
    q20, q21, q22 = k20 * k20, k21 * k21, k22 * k22
    for b0 in range(y0, y1, _BAND_ROWS):
        b1 = min(y1, b0 + _BAND_ROWS)
        # image / var and 1 / var of the band with a zero border: pixels outside the frame and
        # masked pixels add nothing (sep: image 0, noise BIG)
        wv = np.zeros((b1 - b0 + 2, width + 2), dtype=np.float32)
        w = np.zeros((b1 - b0 + 2, width + 2), dtype=np.float32)
        for r in range(b1 - b0 + 2):
            yy = b0 - 1 + r
            if yy < 0 or yy >= height:
                continue
            srow, vrow, brow, wrow, vwrow = sub[yy], var[yy], bad[yy], w[r], wv[r]
            for x in range(width):
                inv = np.float32(1.0) / vrow[x]
                inv = np.float32(0.0) if brow[x] else inv
                wrow[x + 1] = inv
                vwrow[x + 1] = srow[x] * inv
        for y in range(b0, b1):
            r = y - b0
            a0, a1, a2 = wv[r], wv[r + 1], wv[r + 2]
            e0, e1, e2 = w[r], w[r + 1], w[r + 2]
            for x in range(width):
                num = (k00 * a0[x] + k01 * a0[x + 1] + k02 * a0[x + 2]
                       + k10 * a1[x] + k11 * a1[x + 1] + k12 * a1[x + 2]
                       + k20 * a2[x] + k21 * a2[x + 1] + k22 * a2[x + 2])
                den = (q00 * e0[x] + q01 * e0[x + 1] + q02 * e0[x + 2]
                       + q10 * e1[x] + q11 * e1[x + 1] + q12 * e1[x + 2]
                       + q20 * e2[x] + q21 * e2[x + 1] + q22 * e2[x + 2])
                row[x] = 1 if den > 0 and num / math.sqrt(den) > t else 0
            out[y, :] = row


@nb.njit(cache=True, nogil=True)  # ~10 ms a frame: threads would not pay their compile time
def filtered_values(sub: NDArray[np.float32], bad: NDArray[np.bool_], kernel: NDArray[np.float32],
                    xs: NDArray[np.int32], ys: NDArray[np.int32]) -> NDArray[np.float64]:
    """The filtered image (``kernel`` * image, masked pixels as 0) at the given pixels."""
    height, width = sub.shape
    kh, kw = kernel.shape
    ry, rx = kh // 2, kw // 2
    out = np.empty(xs.shape[0], dtype=np.float64)
    for p in range(xs.shape[0]):
        acc = np.float32(0.0)
        for j in range(kh):
            yy = ys[p] + j - ry
            if yy < 0 or yy >= height:
                continue
            for i in range(kw):
                xx = xs[p] + i - rx
                if 0 <= xx < width and not bad[yy, xx]:
                    acc += kernel[j, i] * sub[yy, xx]
        out[p] = acc
    return out


@nb.njit(cache=True, nogil=True)  # a scan of bytes: threads would not pay their compile time
def _runs(above_map: NDArray[np.uint8]) -> tuple[NDArray[np.int32], NDArray[np.int32], NDArray[np.int32], NDArray[np.int64]]:
    """Runs of set pixels: (row, first column, end column, index of each row's first run)."""
    height, width = above_map.shape
    counts = np.zeros(height + 1, dtype=np.int64)
    for y in range(height):
        n = 0
        inside = False
        for x in range(width):
            above = above_map[y, x] != 0
            if above and not inside:
                n += 1
            inside = above
        counts[y + 1] = n
    start = np.cumsum(counts)
    total = start[height]
    ry = np.empty(total, dtype=np.int32)
    rx0 = np.empty(total, dtype=np.int32)
    rx1 = np.empty(total, dtype=np.int32)
    for y in range(height):
        k = start[y]
        inside = False
        for x in range(width):
            above = above_map[y, x] != 0
            if above and not inside:
                ry[k] = y
                rx0[k] = x
            elif inside and not above:
                rx1[k] = x
                k += 1
            inside = above
        if inside:
            rx1[k] = width
    return ry, rx0, rx1, start


@nb.njit(cache=True, nogil=True)
def _find(parent: NDArray[np.int64], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@nb.njit(cache=True, nogil=True)
def components(above: NDArray[np.uint8], min_area: int) -> tuple[
        NDArray[np.int32], NDArray[np.int32], NDArray[np.int64]]:
    """8-connected groups of set pixels with at least ``min_area`` pixels.

    Returns the pixels' (x, y), grouped and row-major within a group, and the offsets of each
    group (``offsets[g]:offsets[g + 1]``).
    """
    height = above.shape[0]
    ry, rx0, rx1, start = _runs(above)
    nruns = ry.shape[0]
    parent = np.arange(nruns, dtype=np.int64)
    for y in range(1, height):
        a, a_end = start[y - 1], start[y]
        b, b_end = start[y], start[y + 1]
        while a < a_end and b < b_end:
            # 8-connected: runs touch when they overlap after widening one by a pixel each side
            if rx0[a] <= rx1[b] and rx0[b] <= rx1[a]:
                ra, rb = _find(parent, a), _find(parent, b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            if rx1[a] < rx1[b]:
                a += 1
            else:
                b += 1
    group = np.full(nruns, -1, dtype=np.int64)
    size = np.zeros(nruns, dtype=np.int64)
    for r in range(nruns):
        size[_find(parent, r)] += rx1[r] - rx0[r]
    ngroups = 0
    for r in range(nruns):
        if parent[r] == r and size[r] >= min_area:
            group[r] = ngroups
            ngroups += 1
    offsets = np.zeros(ngroups + 1, dtype=np.int64)
    for r in range(nruns):
        g = group[_find(parent, r)]
        if g >= 0:
            offsets[g + 1] += rx1[r] - rx0[r]
    offsets = np.cumsum(offsets)
    fill = offsets[:-1].copy()
    xs = np.empty(offsets[ngroups], dtype=np.int32)
    ys = np.empty(offsets[ngroups], dtype=np.int32)
    for r in range(nruns):
        g = group[_find(parent, r)]
        if g < 0:
            continue
        for x in range(rx0[r], rx1[r]):
            xs[fill[g]] = x
            ys[fill[g]] = ry[r]
            fill[g] += 1
    return xs, ys, offsets
