"""Multiplicity of a detection: one point source or two, measured with the frame's own PSF.

A close double (two point sources 0.5 to 1 FWHM apart) is, in pixels, an ordinary chance blend,
so the node does not call it an anomaly: it measures multiplicity (docs/downlink.md).

- :func:`estimate_psf`: an elliptical Moffat sampled at pixel centres, from the frame's bright,
  unflagged, isolated candidates, each fitted with free centre, flux, background and shape. The
  stars are the densest narrow range of fitted FWHM (galaxies and blends are wider, cosmic rays
  narrower); ``beta`` is their median; their moment matrices ``M = A^-1`` (px^2) are fitted over
  the frame on 1, u, v, u^2, uv, v^2 (30 stars or more), 1, u^2 + v^2 (12 or more) or 1 (u, v in
  [-1, 1]), outliers clipped; ``model_error`` is the share of a star's light left unexplained.
  Analytic rather than an empirical PSF image: a few tens of stars fix it, with no interpolation
  error at a FWHM of ~3 px. Too few stars raise :class:`~edge.errors.DetectionError`.
- :func:`measure_multiplicity`: one and two point sources of that PSF (free centres and fluxes, a
  background, nearby detections at their own positions with free fluxes) fitted to the pixels
  within ``fit_radius_fwhm`` of each candidate, weighted by ``1 / (variance + (model_error *
  data)^2)``, in one Levenberg-Marquardt loop over all candidates; :func:`is_blend` thresholds
  ``likelihood_ratio = chi2_one - chi2_two`` at :data:`LR_MIN`.

Masked, non-finite and non-positive-variance pixels are left out; a failed fit is NaN with
:data:`MULT_FAILED`, never a silent number. No torch, no I/O, no logging, no clocks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from edge.errors import DetectionError
from edge.fitting import Model, levenberg_marquardt

if TYPE_CHECKING:
    from edge.detect import Candidates

__all__ = ["LR_MIN", "MULT_EDGE", "MULT_FAILED", "MULT_MASKED", "MULT_NOT_CONVERGED", "BlendSettings",
           "FramePsf", "Multiplicity", "estimate_psf", "is_blend", "measure_multiplicity"]

F64 = NDArray[np.float64]
Image = NDArray[Any]
MULT_FAILED = 1          # no figures (NaN): position not finite, < 12 usable pixels, or a non-finite fit
MULT_NOT_CONVERGED = 2   # a fit's chi2 still fell by > 0.5 over its last 5 iterations; figures kept
MULT_MASKED = 4          # pixels of the fit region were masked, non-finite or of variance <= 0 (left out)
MULT_EDGE = 8            # the fit region reaches outside the frame
LR_MIN = 20.0            # default threshold of is_blend on likelihood_ratio (bench/blends.py)
_MIN_PIX, _CHUNK = 12, 1024   # usable pixels a fit needs; candidates fitted at once
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class BlendSettings:
    """How to estimate the PSF and fit one or two components; validated at construction."""

    psf_snr_min: float = 25.0           # PSF stars: unflagged, of at least this S/N,
    psf_isolation_fwhm: float = 3.0     # no other candidate within this many FWHM (from sep's sizes),
    psf_locus_width: float = 0.08       # fitted FWHM within this share of the stellar locus
    min_stars: int = 5
    max_stars: int = 150
    model_error_quantile: float = 0.9   # over the PSF stars, of their unexplained share of light
    fit_radius_fwhm: float = 1.2        # pixels within this many FWHM of the candidate enter the fits
    max_offset_fwhm: float = 1.0        # components stay within this of the candidate, in x and in y
    iterations: int = 20                # Levenberg-Marquardt steps (a fixed count, all candidates at once)
    n_starts: int = 2                   # start orientations of the pair, evenly over 180 degrees
    max_neighbours: int = 3             # other detections fitted too: the nearest this many
    neighbour_min_fwhm: float = 1.5     # of those at least this far (nearer is the companion's place)

    def __post_init__(self) -> None:
        lowest = {"psf_snr_min": 1e-9, "psf_locus_width": 1e-9, "min_stars": 1, "max_stars": self.min_stars,
                  "fit_radius_fwhm": 0.5, "max_offset_fwhm": 1e-9, "iterations": 1, "n_starts": 1}
        bad = [f"{k}={v!r}" for k, v in vars(self).items() if not lowest.get(k, 0) <= v < np.inf]
        if bad or self.model_error_quantile > 1:
            raise DetectionError(f"{', '.join(bad) or 'model_error_quantile > 1'} out of range; see "
                                 "edge.blend.BlendSettings", where="BlendSettings")


@dataclass(frozen=True, eq=False)
class FramePsf:
    """A frame's PSF: an elliptical Moffat of one ``beta`` whose moment matrix varies over the frame."""

    beta: float
    #: (3, n_terms) coefficients of Mxx, Myy, Mxy (px^2) on the field terms (see the module docstring)
    moments: F64
    shape_px: tuple[int, int]   # (ny, nx) of the frame
    n_stars: int                # stars the field was fitted to, after clipping
    fwhm_px: float              # their median FWHM (geometric mean of the axes)
    #: share of a star's light the model leaves unexplained; pixels get (model_error * data)^2 more variance
    model_error: float = 0.0

    def __post_init__(self) -> None:
        c = np.asarray(self.moments, float)
        if not (1.0 < self.beta < np.inf and c.shape in ((3, 1), (3, 2), (3, 6)) and np.isfinite(c).all()
                and self.fwhm_px > 0 and 0.0 <= self.model_error < 1.0):
            raise DetectionError(f"not a usable PSF: beta={self.beta}, moments shape {c.shape}, "
                                 f"fwhm_px={self.fwhm_px}, model_error={self.model_error}", where="FramePsf")

    def quadratic_form(self, x: Image, y: Image) -> tuple[F64, F64, F64]:
        """``A = M^-1`` at (x, y): the Moffat is ``(1 + axx dx^2 + 2 axy dx dy + ayy dy^2)^-beta``."""
        mxx, myy, mxy = self.moments @ _terms(self.shape_px, np.asarray(x, float), np.asarray(y, float),
                                              self.moments.shape[1])
        det = np.where((mxx * myy - mxy * mxy > 0) & (mxx > 0), mxx * myy - mxy * mxy, np.nan)   # NaN: fits fail
        return myy / det, mxx / det, -mxy / det

    def fwhm_at(self, x: Image, y: Image) -> F64:
        """FWHM (px, geometric mean of the axes) at positions (x, y)."""
        axx, ayy, axy = self.quadratic_form(x, y)
        return _moffat_fwhm(axx * ayy - axy * axy, self.beta)


@dataclass(frozen=True, eq=False)
class Multiplicity:
    """One- versus two-component fits of N candidates, as parallel arrays (NaN where failed)."""

    likelihood_ratio: F64     # chi2_one - chi2_two, >= 0
    separation_px: F64        # distance between the two fitted components
    flux_ratio: F64           # fainter / brighter component, in [0, 1]
    chi2_one: F64             # chi2 of the one-component fit
    n_pix: NDArray[np.int64]  # pixels that entered the fits
    flags: NDArray[np.int64]  # MULT_* bits


def is_blend(m: Multiplicity, lr_min: float = LR_MIN) -> NDArray[np.bool_]:
    """True where two components fit better than one by at least ``lr_min`` in chi2; never where failed."""
    return ((m.flags & MULT_FAILED) == 0) & (np.nan_to_num(m.likelihood_ratio, nan=-np.inf) >= lr_min)


def estimate_psf(sub_e: Image, variance_e2: Image, mask: Image | None, cands: Candidates,
                 settings: BlendSettings | None = None) -> FramePsf:
    """The frame's PSF from its bright isolated point sources (electrons, e^2); DetectionError with too few."""
    s = settings or BlendSettings()
    pick = _psf_stars(cands, s)
    _enough(pick.size, s, f"unflagged and isolated of S/N >= {s.psf_snr_min:g}")
    x, y, ab = cands.x[pick], cands.y[pick], cands.a_px[pick] * cands.b_px[pick]
    fwhm, _, _, ok = _fit_stars(sub_e, variance_e2, mask, x, y, float(np.median(np.sqrt(ab))) * _FWHM_PER_SIGMA, 3.0,
                                s.iterations)
    _enough(int(ok.sum()), s, "fitted")
    log_f, width = np.sort(np.log(fwhm[ok])), np.log1p(s.psf_locus_width)
    dense = np.searchsorted(log_f, log_f + width, "right") - np.searchsorted(log_f, log_f - width)
    ref = float(np.exp(log_f[np.argmax(dense)]))   # the densest narrow range of FWHM: the stars
    star = ok & (np.abs(np.log(np.where(ok, fwhm, 1.0) / ref)) <= width)
    _enough(int(star.sum()), s, "on the stellar locus")
    x, y = x[star], y[star]
    _, betas, _, ok = _fit_stars(sub_e, variance_e2, mask, x, y, ref, None, 2 * s.iterations)
    _enough(int(ok.sum()), s, "fitted with a free beta")
    beta = float(np.median(betas[ok]))
    fwhm, _, moments, keep = _fit_stars(sub_e, variance_e2, mask, x, y, ref, beta, s.iterations)
    for _ in range(5):   # clip stars whose size or shape stands out of the smooth field
        _enough(int(keep.sum()), s, "left after clipping")
        t = _terms(sub_e.shape, x, y, 6 if keep.sum() >= 30 else 2 if keep.sum() >= 12 else 1)
        coef = np.linalg.lstsq(t[:, keep].T, moments[:, keep].T, rcond=None)[0].T
        resid = np.abs(moments - coef @ t).sum(axis=0)
        clipped = keep & (resid <= 4.0 * 1.4826 * np.median(resid[keep]) + 1e-9)
        if clipped.sum() == keep.sum():
            break
        keep = clipped
    psf = FramePsf(beta=beta, moments=coef, shape_px=(int(sub_e.shape[0]), int(sub_e.shape[1])),
                   n_stars=int(keep.sum()), fwhm_px=float(np.median(fwhm[keep])))
    # chi2 beyond the noise per unit of (signal / noise)^2: the squared share of light left unexplained
    box = _Boxes.cut(sub_e, variance_e2, mask, x[keep], y[keep], s.fit_radius_fwhm * psf.fwhm_px, psf, 0.0)
    p, chi2, _ = _fit_points(box, psf.beta, s.max_offset_fwhm * psf.fwhm_px, None, s.iterations)
    p[:, -1] = 0.0
    signal = (box.weight * box.point_model(1, psf.beta)(p)[0] ** 2).sum(axis=1)
    excess = (chi2 - (box.n_pix - 4)) / signal
    error = np.quantile(excess[np.isfinite(excess)], s.model_error_quantile) if np.isfinite(excess).any() else 0.0
    return replace(psf, model_error=float(np.sqrt(np.clip(error, 0.0, 0.25))))


def measure_multiplicity(sub_e: Image, variance_e2: Image, mask: Image | None, x: Image, y: Image,
                         psf: FramePsf, settings: BlendSettings | None = None, *,
                         neighbours: tuple[Image, Image] | None = None) -> Multiplicity:
    """Fit one and two PSF components around each of N positions (px, 0-based, x = column).

    ``neighbours`` (x, y): the frame's detections, which may include the N. The nearest
    ``max_neighbours`` from ``neighbour_min_fwhm`` to the fit radius + 2 FWHM are fitted too, at
    their positions with free fluxes, so that a neighbour's light is not taken for a companion."""
    s = settings or BlendSettings()
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    if x.size > _CHUNK:   # bounded memory: the fits hold (N, pixels, parameters) arrays
        parts = [measure_multiplicity(sub_e, variance_e2, mask, x[i:i + _CHUNK], y[i:i + _CHUNK], psf, s,
                                      neighbours=neighbours) for i in range(0, x.size, _CHUNK)]
        return Multiplicity(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Multiplicity)))
    n, k = x.size, s.n_starts
    finite = np.isfinite(x) & np.isfinite(y)
    xs, ys = np.where(finite, x, 0.0), np.where(finite, y, 0.0)
    offset = s.max_offset_fwhm * psf.fwhm_px

    def boxes(bx: F64, by: F64) -> _Boxes:
        box = _Boxes.cut(sub_e, variance_e2, mask, bx, by, s.fit_radius_fwhm * psf.fwhm_px, psf, psf.model_error)
        return box.add_neighbours(psf, bx, by, neighbours, s) if neighbours is not None and s.max_neighbours else box

    box = boxes(xs, ys)
    one, chi2_one, settled_one = _fit_points(box, psf.beta, offset, None, s.iterations)
    angle = np.tile(np.pi * np.arange(k) / k, n)
    half = 0.3 * psf.fwhm_px * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    c = np.repeat(one, k, axis=0)
    start = np.column_stack([c[:, :2] + half, c[:, 2:3] / 2, c[:, :2] - half, c[:, 2:3] / 2, c[:, 3:]])
    two, chi2_two, settled_two = _fit_points(boxes(np.repeat(xs, k), np.repeat(ys, k)), psf.beta, offset,
                                             start, s.iterations)
    best = np.arange(n) * k + np.argmin(chi2_two.reshape(n, k), axis=1)
    two, chi2_two, settled_two = two[best], chi2_two[best], settled_two[best]

    lr = np.where(np.isfinite(chi2_two), chi2_one - np.where(np.isfinite(chi2_two), chi2_two, 0.0), np.nan)
    sep = np.hypot(two[:, 0] - two[:, 3], two[:, 1] - two[:, 4])
    bright, faint = np.maximum(two[:, 2], two[:, 5]), np.minimum(two[:, 2], two[:, 5])
    ratio = np.divide(faint, bright, out=np.full(n, np.nan), where=bright > 0)
    failed = ~finite | (box.n_pix < _MIN_PIX) | ~np.isfinite(lr) | ~np.isfinite(sep) | ~np.isfinite(ratio)
    flags = (np.where(failed, MULT_FAILED, np.where(settled_one & settled_two, 0, MULT_NOT_CONVERGED))
             + np.where(box.masked, MULT_MASKED, 0) + np.where(box.outside, MULT_EDGE, 0)).astype(np.int64)
    nan = np.where(failed, np.nan, 1.0)
    return Multiplicity(likelihood_ratio=np.maximum(np.nan_to_num(lr), 0.0) * nan, separation_px=sep * nan,
                        flux_ratio=ratio * nan, chi2_one=chi2_one * nan, n_pix=box.n_pix, flags=flags)


# -- internals ---------------------------------------------------------------------------------

def _enough(n: int, s: BlendSettings, what: str) -> None:
    if n < s.min_stars:
        raise DetectionError(f"{n} PSF stars {what} where {s.min_stars} are needed; multiplicity is "
                             "not measured on this frame", where="estimate_psf")


def _psf_stars(cands: Candidates, s: BlendSettings) -> NDArray[np.int64]:
    """Indices of bright, unflagged, round, isolated candidates, brightest first (at most max_stars)."""
    size = np.sqrt(np.asarray(cands.a_px, float) * np.asarray(cands.b_px, float))
    ok = (cands.flags == 0) & (cands.snr >= s.psf_snr_min) & np.isfinite(size) & (size > 0)
    ok &= np.isfinite(cands.x) & np.isfinite(cands.y) & (cands.b_px >= 0.6 * cands.a_px)   # no tracks
    if ok.sum() < s.min_stars:
        return np.flatnonzero(ok)
    pos, idx = np.column_stack([cands.x, cands.y]), np.flatnonzero(ok)
    radius = s.psf_isolation_fwhm * float(np.median(size[ok])) * _FWHM_PER_SIGMA
    idx = idx[cKDTree(pos[np.isfinite(pos).all(axis=1)]).query_ball_point(pos[idx], radius, return_length=True) == 1]
    return idx[np.argsort(-cands.snr[idx], kind="stable")][: s.max_stars]


def _fit_stars(sub: Image, var: Image, mask: Image | None, x: F64, y: F64, fwhm_px: float, beta: float | None,
               iterations: int) -> tuple[F64, F64, F64, NDArray[np.bool_]]:
    """Free-shape Moffat fits within 2 FWHM of each star: FWHM, beta, moments M (3, N), which are usable."""
    box = _Boxes.cut(sub, var, mask, x, y, 2.0 * fwhm_px, None, 0.0)
    a0 = (2.0 * np.sqrt(2.0 ** (1.0 / (beta or 3.0)) - 1.0) / fwhm_px) ** 2   # 1 / alpha^2
    n_par = 7 if beta is not None else 8
    start, lo, hi = (np.array(v[:n_par]) for v in ([0, 0, 1, 0, a0, a0, 0, 3.0], [-2, -2, 0, -0.1, a0 / 16, a0 / 16,
                                                   -4 * a0, 1.2], [2, 2, 10, 0.1, 16 * a0, 16 * a0, 4 * a0, 12.0]))
    p, chi2, settled = levenberg_marquardt(box.star_model(beta), np.tile(start, (len(x), 1)), box.data, box.weight,
                                          lo, hi, iterations)
    axx, ayy, axy, det = p[:, 4], p[:, 5], p[:, 6], p[:, 4] * p[:, 5] - p[:, 6] ** 2
    ok = settled & (det > 0) & (box.n_pix > _MIN_PIX)
    red = chi2 / np.maximum(box.n_pix - n_par, 1)
    ok &= red <= 3.0 * np.median(red[ok]) if ok.any() else ok
    det = np.where(det > 0, det, np.nan)
    b = p[:, 7] if beta is None else np.full(len(x), beta)
    return _moffat_fwhm(det, b), b, np.stack([ayy / det, axx / det, -axy / det]), ok


def _fit_points(box: _Boxes, beta: float, offset_px: float, start: F64 | None,
                iterations: int) -> tuple[F64, F64, NDArray[np.bool_]]:
    """Point sources (x, y, flux each), neighbours' fluxes, background (start None: one, all the light)."""
    if start is None:
        start = np.tile([0.0, 0.0, 1.0] + [0.0] * (box.n_neighbours + 1), (len(box.data), 1))
    n_comp = (start.shape[1] - 1 - box.n_neighbours) // 3
    lo = np.array([-offset_px, -offset_px, 0.0] * n_comp + [0.0] * box.n_neighbours + [-0.1])
    hi = np.array([offset_px, offset_px, 10.0] * n_comp + [1e3] * box.n_neighbours + [0.1])
    return levenberg_marquardt(box.point_model(n_comp, beta), start, box.data, box.weight, lo, hi, iterations)


def _terms(shape: tuple[int, ...], x: F64, y: F64, n_terms: int) -> F64:
    """Field terms (n_terms, N) in u, v scaled to [-1, 1]: 1; 1, u^2 + v^2; or 1, u, v, u^2, uv, v^2."""
    cy, cx = max((shape[0] - 1) / 2.0, 1.0), max((shape[1] - 1) / 2.0, 1.0)
    u, v, one = x / cx - 1.0, y / cy - 1.0, np.ones_like(x)
    return np.stack({1: [one], 2: [one, u * u + v * v], 6: [one, u, v, u * u, u * v, v * v]}[n_terms])


def _moffat(form: F64, beta: F64 | float, ex: F64, ey: F64) -> tuple[F64, F64, F64, F64]:
    """Unit-flux PSF of forms (N, 3) at offsets (N, ...) from its centre; also 1 / (1 + q) and A d."""
    axx, ayy, axy = (form[:, i].reshape((-1,) + (1,) * (ex.ndim - 1)) for i in range(3))
    gx, gy = axx * ex + axy * ey, ayy * ey + axy * ex
    t = 1.0 / np.maximum(1.0 + ex * gx + ey * gy, 1e-12)   # q < 0 only for an invalid (rejected) form
    return (beta - 1.0) / np.pi * np.sqrt(np.maximum(axx * ayy - axy * axy, 0.0)) * t ** beta, t, gx, gy


def _moffat_fwhm(det_a: F64, beta: F64 | float) -> F64:
    return np.asarray(2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0) * det_a ** -0.25, float)


@dataclass(eq=False)
class _Boxes:
    """The fit region around N positions as (N, S) pixel rows, data and weights scaled by a flux."""

    data: F64      # sub_e / scale, 0 where unused
    weight: F64    # scale^2 / variance where used, 0 elsewhere
    dx: F64        # pixel centre - position
    dy: F64
    n_pix: NDArray[np.int64]
    masked: NDArray[np.bool_]
    outside: NDArray[np.bool_]
    form: F64                   # (N, 3) axx, ayy, axy of the PSF at each position (0 without one)
    nb_prof: F64 | None = None  # (N, S, K) unit-flux PSF at each position's neighbours (0: none)
    n_neighbours: int = 0

    @classmethod
    def cut(cls, sub: Image, var: Image, mask: Image | None, x: F64, y: F64, radius_px: float,
            psf: FramePsf | None, model_error: float) -> _Boxes:
        ny, nx = sub.shape
        half = int(np.ceil(radius_px + 0.75))
        oy, ox = np.mgrid[-half:half + 1, -half:half + 1]
        disc = oy * oy + ox * ox <= (radius_px + 0.75) ** 2      # the region around any sub-pixel centre
        rows, cols = np.rint(y).astype(np.int64)[:, None] + oy[disc], np.rint(x).astype(np.int64)[:, None] + ox[disc]
        inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
        r, c = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
        d, v = np.asarray(sub[r, c], float), np.asarray(var[r, c], float)
        dx, dy = cols - x[:, None], rows - y[:, None]
        region = dx * dx + dy * dy <= radius_px * radius_px
        good = np.isfinite(d) & np.isfinite(v) & (v > 0)
        good &= True if mask is None else ~np.asarray(mask[r, c], bool)
        use = region & inside & good
        d = np.where(use, d, 0.0)
        w = np.where(use, 1.0 / np.where(use, v + (model_error * np.maximum(d, 0.0)) ** 2, 1.0), 0.0)
        scale = np.maximum(d.sum(axis=1), np.sqrt(np.where(use, v, 0.0).sum(axis=1)))
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        form = np.zeros((len(x), 3)) if psf is None else np.stack(psf.quadratic_form(x, y), axis=1)
        return cls(data=d / scale[:, None], weight=w * scale[:, None] ** 2, dx=dx, dy=dy, n_pix=use.sum(axis=1),
                   masked=(region & inside & ~good).any(axis=1), outside=(region & ~inside).any(axis=1),
                   form=form)

    def add_neighbours(self, psf: FramePsf, x: F64, y: F64, others: tuple[Image, Image], s: BlendSettings) -> _Boxes:
        """PSF profiles at the nearest other detections from neighbour_min_fwhm to radius + 2 FWHM."""
        k = s.max_neighbours
        pts = np.column_stack([np.asarray(a, float).ravel() for a in others])
        pts = np.vstack([pts[np.isfinite(pts).all(axis=1)], np.full((k + 4, 2), 1e12)])   # never near
        dist, idx = (a.reshape(len(x), k + 4) for a in cKDTree(pts).query(np.column_stack([x, y]), k=k + 4))
        dist[(dist < s.neighbour_min_fwhm * psf.fwhm_px) | (dist > (s.fit_radius_fwhm + 2.0) * psf.fwhm_px)] = np.inf
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]                        # nearest usable first
        use = np.isfinite(np.take_along_axis(dist, order, axis=1))
        near = pts[np.take_along_axis(idx, order, axis=1)]                           # (N, K, 2)
        prof = _moffat(self.form, psf.beta, self.dx[:, :, None] - (near[:, :, 0] - x[:, None])[:, None, :],
                       self.dy[:, :, None] - (near[:, :, 1] - y[:, None])[:, None, :])[0]
        return replace(self, nb_prof=np.where(use[:, None, :], prof, 0.0), n_neighbours=k)

    def point_model(self, n_comp: int, beta: float) -> Model:
        """Params (x, y, flux) per component, each neighbour's flux, then a background."""
        form, nb, first_nb = self.form, self.nb_prof, 3 * n_comp

        def model(p: F64) -> tuple[F64, F64, NDArray[np.bool_]]:
            total = np.repeat(p[:, -1:], self.data.shape[1], axis=1)
            jac = np.empty(self.data.shape + (p.shape[1],))
            jac[:, :, -1] = 1.0
            for c in range(n_comp):
                prof, t, gx, gy = _moffat(form, beta, self.dx - p[:, 3 * c:3 * c + 1], self.dy - p[:, 3 * c + 1:3 * c + 2])
                dq = 2.0 * beta * p[:, 3 * c + 2:3 * c + 3] * prof * t   # d model / d centre = dq * A d
                total += p[:, 3 * c + 2:3 * c + 3] * prof
                jac[:, :, 3 * c], jac[:, :, 3 * c + 1], jac[:, :, 3 * c + 2] = dq * gx, dq * gy, prof
            if nb is not None:
                total += (nb @ p[:, first_nb:-1, None])[:, :, 0]
                jac[:, :, first_nb:-1] = nb
            return total, jac, np.ones(len(p), bool)
        return model

    def star_model(self, beta: float | None) -> Model:
        """Params x, y, flux, background, axx, ayy, axy (and beta when ``beta`` is None), with the
        analytic Jacobian: one profile per step instead of one per parameter."""

        def model(p: F64) -> tuple[F64, F64, NDArray[np.bool_]]:
            b = p[:, 7:8] if beta is None else beta
            ex, ey = self.dx - p[:, :1], self.dy - p[:, 1:2]
            prof, t, gx, gy = _moffat(p[:, 4:7], b, ex, ey)
            axx, ayy, axy = p[:, 4:5], p[:, 5:6], p[:, 6:7]
            det = axx * ayy - axy * axy
            valid = (det[:, 0] > 0) & (p[:, 4] > 0)
            inv2det = np.where(det > 0, 0.5 / np.where(det > 0, det, 1.0), 0.0)
            flux = p[:, 2:3]
            fp, dq = flux * prof, 2.0 * b * flux * prof * t     # d model / d centre = dq * A e
            jac = np.empty(self.data.shape + (p.shape[1],))
            jac[:, :, 0], jac[:, :, 1], jac[:, :, 2], jac[:, :, 3] = dq * gx, dq * gy, prof, 1.0
            # the form enters through sqrt(det) and through q = e^T A e
            jac[:, :, 4] = fp * ayy * inv2det - 0.5 * dq * ex * ex
            jac[:, :, 5] = fp * axx * inv2det - 0.5 * dq * ey * ey
            jac[:, :, 6] = -2.0 * fp * axy * inv2det - dq * ex * ey
            if beta is None:
                jac[:, :, 7] = fp * (1.0 / (b - 1.0) + np.log(t))
            return fp + p[:, 3:4], jac, valid
        return model
