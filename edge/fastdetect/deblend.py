"""Multi-threshold deblending and isophotal measurements of :mod:`edge.fastdetect`.

SExtractor's deblending, as sep does it: between the group's base level and its filtered peak,
``nthresh`` exponentially spaced levels build a tree of 8-connected branches of at least
``min_area`` pixels; a node whose branches each hold more than ``contrast`` of the group's
filtered flux (above their level) splits into them. The group's remaining pixels go to the most
probable branch under a Gaussian model of each (sep draws one at random in proportion to the
probabilities; here the most probable one is taken, so a frame always gives the same result).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numpy.typing import NDArray

OBJ_MERGED = 0x0001
OBJ_TRUNC = 0x0002
OBJ_SINGU = 0x0008


@nb.njit(cache=True, nogil=True)
def _root(parent: NDArray[np.int64], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@nb.njit(cache=True, nogil=True)
def _moments(px: NDArray[np.float64], py: NDArray[np.float64], w: NDArray[np.float64],
             pick: NDArray[np.bool_]) -> tuple[float, float, float, float, float, bool]:
    """(x, y, x2, y2, xy, singular) of the picked pixels weighted by ``w`` (unweighted if sum <= 0)."""
    tv = 0.0
    for i in range(px.shape[0]):
        if pick[i]:
            tv += w[i]
    unweighted = tv <= 0.0
    sx = sy = sxx = syy = sxy = 0.0
    total = 0.0
    x0 = y0 = -1.0
    for i in range(px.shape[0]):
        if not pick[i]:
            continue
        if x0 < 0:
            x0, y0 = px[i], py[i]
        v = 1.0 if unweighted else w[i]
        dx, dy = px[i] - x0, py[i] - y0
        total += v
        sx += v * dx
        sy += v * dy
        sxx += v * dx * dx
        syy += v * dy * dy
        sxy += v * dx * dy
    mx, my = sx / total, sy / total
    x2 = sxx / total - mx * mx
    y2 = syy / total - my * my
    xy = sxy / total - mx * my
    singular = False
    if x2 * y2 - xy * xy < 0.00694:
        x2 += 0.0833333
        y2 += 0.0833333
        singular = True
    return x0 + mx, y0 + my, x2, y2, xy, singular


@nb.njit(cache=True, nogil=True)
def deblend(xs: NDArray[np.int32], ys: NDArray[np.int32], cd: NDArray[np.float64], base: float,
            nthresh: int, contrast: float, min_area: int) -> tuple[NDArray[np.int64], int]:
    """The branch of each pixel of one group, and the number n of branches.

    ``cd`` is the filtered image. A pixel of branch b above its branch's level has label b, a
    pixel given to it afterwards b + n. The tree is built in one sweep from the brightest pixel
    down (a union-find that adds pixels in decreasing ``cd`` and takes a snapshot of the branches
    at each level), the same tree as thresholding the group level by level.
    """
    npix = xs.shape[0]
    labels = np.zeros(npix, dtype=np.int64)
    peak = cd.max()
    if nthresh < 2 or npix < 2 * min_area or peak <= 0.0:
        return labels, 1
    xmin, ymin = xs.min(), ys.min()
    bw = xs.max() - xmin + 1
    bh = ys.max() - ymin + 1
    submap = np.full((bh, bw), -1, dtype=np.int64)
    for i in range(npix):
        submap[ys[i] - ymin, xs[i] - xmin] = i
    around = np.empty(8, dtype=np.int64)   # a pixel's neighbours (_neighbours)
    levels = np.empty(nthresh, dtype=np.float64)
    for k in range(nthresh):
        levels[k] = base * (peak / base) ** (k / nthresh)
    order = np.argsort(-cd)
    parent = np.full(npix, -1, dtype=np.int64)  # -1: not added yet
    flux = np.zeros(npix, dtype=np.float64)
    size = np.zeros(npix, dtype=np.int64)
    roots = np.empty(npix, dtype=np.int64)
    nroots = 0
    # nodes, in the order the sweep makes them (children before parents); node 0 is the group
    cap = 64
    n_level = np.zeros(cap, dtype=np.int64)
    n_parent = np.zeros(cap, dtype=np.int64)
    n_flux = np.zeros(cap, dtype=np.float64)
    n_npix = np.zeros(cap, dtype=np.int64)
    n_rep = np.zeros(cap, dtype=np.int64)
    nnodes = 1
    n_flux[0] = cd.sum()
    n_npix[0] = npix
    node_of_root = np.full(npix, -1, dtype=np.int64)
    prev_first, prev_end = 1, 1  # the nodes of the level above
    q = 0
    for k in range(nthresh - 1, 0, -1):
        t = levels[k]
        while q < npix and cd[order[q]] > t:
            p = order[q]
            q += 1
            parent[p] = p
            flux[p] = cd[p]
            size[p] = 1
            roots[nroots] = p
            nroots += 1
            for m in range(_neighbours(submap, xs[p] - xmin, ys[p] - ymin, around)):
                j = around[m]
                if j < 0 or parent[j] < 0:
                    continue
                ra, rb = _root(parent, p), _root(parent, j)
                if ra != rb:
                    parent[rb] = ra
                    flux[ra] += flux[rb]
                    size[ra] += size[rb]
        # the branches at this level: components of at least min_area pixels
        m = 0
        first = nnodes
        for r in range(nroots):
            root = roots[r]
            if parent[root] != root:
                continue
            roots[m] = root
            m += 1
            node_of_root[root] = -1
            if size[root] < min_area:
                continue
            if nnodes == cap:
                cap *= 2
                n_level = _grow(n_level, cap)
                n_parent = _grow(n_parent, cap)
                n_flux = np.concatenate((n_flux, np.zeros(cap - n_flux.shape[0])))
                n_npix = _grow(n_npix, cap)
                n_rep = _grow(n_rep, cap)
            node_of_root[root] = nnodes
            n_level[nnodes] = k
            n_flux[nnodes] = flux[root]
            n_npix[nnodes] = size[root]
            n_rep[nnodes] = root
            nnodes += 1
        nroots = m
        for nd in range(prev_first, prev_end):
            n_parent[nd] = node_of_root[_root(parent, n_rep[nd])]
        prev_first, prev_end = first, nnodes
    for nd in range(prev_first, prev_end):
        n_parent[nd] = 0
    if nnodes == 1:
        return labels, 1
    # cut the branches: a node with two or more significant branches splits into them; the
    # sweep made children first, so a node is final when the loop reaches it
    value0 = n_flux[0] * contrast
    ok = np.ones(nnodes, dtype=np.bool_)
    significant = np.zeros(nnodes, dtype=np.bool_)
    nsig = np.zeros(nnodes, dtype=np.int64)
    for j in range(1, nnodes):
        if nsig[j] > 1:
            ok[j] = False
        significant[j] = n_flux[j] - levels[n_level[j]] * n_npix[j] > value0
        ok[n_parent[j]] &= ok[j]
        if significant[j]:
            nsig[n_parent[j]] += 1
    if nsig[0] > 1:
        ok[0] = False
    if ok[0]:
        return labels, 1
    # each kept branch takes the pixels connected to it above its level
    labels[:] = -1
    stack = np.empty(npix, dtype=np.int64)
    nb_ = 0
    for j in range(1, nnodes):
        if not (ok[j] and significant[j] and nsig[n_parent[j]] > 1):
            continue
        t = levels[n_level[j]]
        top = 0
        stack[0] = n_rep[j]
        labels[n_rep[j]] = nb_
        top = 1
        while top > 0:
            top -= 1
            p = stack[top]
            for m in range(_neighbours(submap, xs[p] - xmin, ys[p] - ymin, around)):
                i = around[m]
                if i >= 0 and labels[i] < 0 and cd[i] > t:
                    labels[i] = nb_
                    stack[top] = i
                    top += 1
        nb_ += 1
    return _gather(xs, ys, cd, nb_, base, labels)


@nb.njit(cache=True, nogil=True, inline="always")
def _neighbours(submap: NDArray[np.int64], x: int, y: int, out: NDArray[np.int64]) -> int:
    """The ``submap`` entries of the 8-connected neighbours of (x, y) inside it, into ``out``
    (-1 where a neighbour is no pixel of the group); returns how many were written."""
    bh, bw = submap.shape
    n = 0
    for dy in range(-1, 2):
        yy = y + dy
        if yy < 0 or yy >= bh:
            continue
        for dx in range(-1, 2):
            xx = x + dx
            if xx < 0 or xx >= bw or (dx == 0 and dy == 0):
                continue
            out[n] = submap[yy, xx]
            n += 1
    return n


@nb.njit(cache=True, nogil=True)
def _grow(a: NDArray[np.int64], cap: int) -> NDArray[np.int64]:
    b = np.zeros(cap, dtype=np.int64)
    b[: a.shape[0]] = a
    return b


@nb.njit(cache=True, nogil=True)
def _gather(xs: NDArray[np.int32], ys: NDArray[np.int32], cd: NDArray[np.float64], nb_: int,
            base: float, labels: NDArray[np.int64]) -> tuple[NDArray[np.int64], int]:
    """Every pixel not in a branch (label -1) goes to its most probable branch (label + n)."""
    npix = xs.shape[0]
    px = xs.astype(np.float64)
    py = ys.astype(np.float64)
    mx = np.empty(nb_)
    my = np.empty(nb_)
    cxx = np.empty(nb_)
    cyy = np.empty(nb_)
    cxy = np.empty(nb_)
    amp = np.empty(nb_)
    for b in range(nb_):
        pick = labels == b
        x, y, x2, y2, xy, _ = _moments(px, py, cd, pick)
        det = x2 * y2 - xy * xy
        mx[b], my[b] = x, y
        cxx[b], cyy[b], cxy[b] = y2 / det, x2 / det, -2.0 * xy / det
        t = math.sqrt(0.25 * (x2 - y2) ** 2 + xy * xy)
        a = math.sqrt(max(0.5 * (x2 + y2) + t, 1e-12))
        bb = math.sqrt(max(0.5 * (x2 + y2) - t, 1e-12))
        npk = pick.sum()
        fdpeak = cd[pick].max()
        dist = npk / (2.0 * math.pi * a * bb)
        amp[b] = base * math.exp(dist) if dist < 70.0 else 4.0 * fdpeak
        amp[b] = min(amp[b], 4.0 * fdpeak)
    for i in range(npix):
        if labels[i] >= 0:
            continue
        best = -1.0
        best_b = 0
        dmin = 1e31
        near_b = 0
        for b in range(nb_):
            dx, dy = px[i] - mx[b], py[i] - my[b]
            dist = 0.5 * (cxx[b] * dx * dx + cyy[b] * dy * dy + cxy[b] * dx * dy)
            p = amp[b] * math.exp(-dist) if dist < 70.0 else 0.0
            if p > best:
                best, best_b = p, b
            if dist < dmin:
                dmin, near_b = dist, b
        # gathered pixels are told apart (label + n): sep keeps a branch's own barycentre
        labels[i] = (best_b if best > 1e-31 else near_b) + nb_
    return labels, nb_
