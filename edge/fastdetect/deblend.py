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


@nb.njit(cache=True, nogil=True, inline="always")
def _link(parent: NDArray[np.int64], j: int, i: int, node: NDArray[np.int64],
          cd: NDArray[np.float64], t: float) -> None:
    """Join pixel i with neighbour j when j is in the group, still in a node and above the level."""
    if j >= 0 and node[j] >= 0 and cd[j] > t:
        ri, rj = _root(parent, i), _root(parent, j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)


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
    pixel given to it afterwards b + n.
    """
    npix = xs.shape[0]
    labels = np.zeros(npix, dtype=np.int64)
    peak = cd.max()
    if nthresh < 2 or npix < 2 * min_area or peak <= 0.0:
        return labels, 1
    xmin, ymin = xs.min(), ys.min()
    bw = xs.max() - xmin + 1
    submap = np.full((ys.max() - ymin + 1, bw), -1, dtype=np.int64)
    for i in range(npix):
        submap[ys[i] - ymin, xs[i] - xmin] = i
    # nodes of the tree in creation order (a child always after its parent); node[i] is pixel
    # i's node at the current level, -1 once it has dropped out; home[i] its highest node
    cap = 64
    n_level = np.zeros(cap, dtype=np.int64)
    n_parent = np.zeros(cap, dtype=np.int64)
    n_flux = np.zeros(cap, dtype=np.float64)
    n_npix = np.zeros(cap, dtype=np.int64)
    nnodes = 1
    n_flux[0] = cd.sum()
    n_npix[0] = npix
    levels = np.empty(nthresh, dtype=np.float64)
    levels[0] = base
    node = np.zeros(npix, dtype=np.int64)
    home = np.zeros(npix, dtype=np.int64)
    active = np.arange(npix)
    nactive = npix
    parent = np.empty(npix, dtype=np.int64)
    count = np.zeros(npix, dtype=np.int64)
    new_node = np.full(npix, -1, dtype=np.int64)
    for k in range(1, nthresh):
        t = base * (peak / base) ** (k / nthresh)
        levels[k] = t
        # keep the pixels still in a node and above this level
        m = 0
        for q in range(nactive):
            i = active[q]
            if node[i] >= 0 and cd[i] > t:
                active[m] = i
                m += 1
            else:
                node[i] = -1
        nactive = m
        if nactive < min_area:
            break
        for q in range(nactive):
            i = active[q]
            parent[i] = i
            count[i] = 0
        for q in range(nactive):
            i = active[q]
            # pixels of a group are row-major, so the neighbours seen earlier are enough
            x, y = xs[i] - xmin, ys[i] - ymin
            if x > 0:
                _link(parent, submap[y, x - 1], i, node, cd, t)
            if y > 0:
                if x > 0:
                    _link(parent, submap[y - 1, x - 1], i, node, cd, t)
                _link(parent, submap[y - 1, x], i, node, cd, t)
                if x + 1 < bw:
                    _link(parent, submap[y - 1, x + 1], i, node, cd, t)
        for q in range(nactive):
            count[_root(parent, active[q])] += 1
        for q in range(nactive):
            i = active[q]
            r = _root(parent, i)
            if count[r] < min_area:
                node[i] = -2  # dropped at this level: gone for the levels above
                continue
            if new_node[r] < 0:
                if nnodes == cap:
                    cap *= 2
                    n_level = _grow(n_level, cap)
                    n_parent = _grow(n_parent, cap)
                    n_flux = np.concatenate((n_flux, np.zeros(cap - n_flux.shape[0])))
                    n_npix = _grow(n_npix, cap)
                new_node[r] = nnodes
                n_level[nnodes] = k
                n_parent[nnodes] = node[i]
                n_flux[nnodes] = 0.0
                n_npix[nnodes] = 0
                nnodes += 1
        for q in range(nactive):
            i = active[q]
            if node[i] == -2:
                node[i] = -1
                continue
            nd = new_node[_root(parent, i)]
            node[i] = nd
            home[i] = nd
            n_flux[nd] += cd[i]
            n_npix[nd] += 1
        for q in range(nactive):
            new_node[active[q]] = -1
    if nnodes == 1:
        return labels, 1
    # cut the branches, top down: a node with two or more significant branches splits into them
    value0 = n_flux[0] * contrast
    ok = np.ones(nnodes, dtype=np.bool_)
    significant = np.zeros(nnodes, dtype=np.bool_)
    nsig = np.zeros(nnodes, dtype=np.int64)
    for j in range(nnodes - 1, -1, -1):
        # every child comes after its parent: a node is final once the loop reaches it
        if nsig[j] > 1:
            ok[j] = False
        if j == 0:
            break
        significant[j] = n_flux[j] - levels[n_level[j]] * n_npix[j] > value0
        ok[n_parent[j]] &= ok[j]
        if significant[j]:
            nsig[n_parent[j]] += 1
    if ok[0]:
        return labels, 1
    out = np.zeros(nnodes, dtype=np.bool_)
    for j in range(1, nnodes):
        out[j] = ok[j] and significant[j] and nsig[n_parent[j]] > 1
    return _gather(xs, ys, cd, home, n_parent, out, base, labels)


@nb.njit(cache=True, nogil=True)
def _grow(a: NDArray[np.int64], cap: int) -> NDArray[np.int64]:
    b = np.zeros(cap, dtype=np.int64)
    b[: a.shape[0]] = a
    return b


@nb.njit(cache=True, nogil=True)
def _gather(xs: NDArray[np.int32], ys: NDArray[np.int32], cd: NDArray[np.float64],
            home: NDArray[np.int64], n_parent: NDArray[np.int64], out: NDArray[np.bool_],
            base: float, labels: NDArray[np.int64]) -> tuple[NDArray[np.int64], int]:
    """Give each kept branch its pixels, and every other pixel to its most probable branch."""
    npix = xs.shape[0]
    branches = np.nonzero(out)[0]
    nb_ = branches.shape[0]
    branch_of = np.full(out.shape[0], -1, dtype=np.int64)
    for b in range(nb_):
        branch_of[branches[b]] = b
    # a pixel belongs to a kept branch when the branch is its highest node or an ancestor of it
    labels[:] = -1
    for i in range(npix):
        nd = home[i]
        while nd > 0:
            if branch_of[nd] >= 0:
                labels[i] = branch_of[nd]
                break
            nd = n_parent[nd]
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
