"""The instrument, measured from its calibrated science frames: PSF, sky, saturation, counts.

Pure numpy on calibrated frames (electrons, variance, mask), with the node's own detector and
PSF fit (``edge.detect``, ``edge.blend``), so a real frame and a twin frame are measured by the
same code and their figures can be compared (:mod:`edge.commission.twinfit`). Reads no file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge import blend
from edge import detect as detect_stage
from edge.errors import CalibrationInputError

#: edges of the log10(flux / e-) bins of the counts against flux
FLUX_BIN_DEX = 0.25
#: the PSF's FWHM is measured in a GRID x GRID split of the field (variation across the field)
GRID = 3
#: at least this many detections of S/N >= 10 make a frame one with stars
MIN_STARS = 20
#: the PSF from isolated stars of S/N >= 15 (the node's multiplicity stage asks 25; a sparse real
#: field of a small camera may hold only a handful of those)
PSF_SETTINGS = blend.BlendSettings(psf_snr_min=15.0)


@dataclass(frozen=True)
class FrameMeasurement:
    """What one calibrated frame says about the instrument; units in the names."""

    name: str
    exposure_s: float
    shape_px: tuple[int, int]
    sky_e: float                   # median background per pixel
    sky_noise_e: float             # robust per-pixel noise of the background-subtracted sky
    fwhm_px: float                 # Moffat FWHM of the frame's PSF (edge.blend.estimate_psf)
    beta: float
    ellipticity: float             # median 1 - b/a of the PSF stars
    fwhm_grid_px: tuple[tuple[float, ...], ...]  # FWHM in a GRID x GRID split (NaN: too few stars)
    psf_stars: int
    detections: int
    saturated_px: int
    log_flux_e: NDArray[np.float64] = field(repr=False)   # log10 flux of every detection
    snr: NDArray[np.float64] = field(repr=False)
    x_px: NDArray[np.float64] = field(repr=False)
    y_px: NDArray[np.float64] = field(repr=False)
    #: detections at least as large as the frame's point sources at their S/N: the sky's sources,
    #: not the cosmic rays and hot pixels, which are sharper than the PSF
    source: NDArray[np.bool_] = field(repr=False, default_factory=lambda: np.zeros(0, bool))

    @property
    def fwhm_variation(self) -> float:
        """Fractional FWHM growth from the field's centre cell to the mean of its corner cells."""
        g = np.asarray(self.fwhm_grid_px, float)
        corners = g[[0, 0, -1, -1], [0, -1, 0, -1]]
        centre = g[g.shape[0] // 2, g.shape[1] // 2]
        if not np.isfinite(centre) or not np.isfinite(corners).any():
            return 0.0
        return float(np.nanmean(corners) / centre - 1.0)


def measure_frame(name: str, image_e: NDArray[Any], variance_e2: NDArray[Any], mask: NDArray[Any] | None,
                  exposure_s: float, settings: detect_stage.DetectSettings,
                  saturated: NDArray[np.bool_] | None = None) -> FrameMeasurement:
    """Measure one calibrated frame; a typed error names the frame when it holds too few stars."""
    bkg = detect_stage.subtract_background(image_e, mask, settings)
    cands = detect_stage.detect(bkg.sub_e, variance_e2, mask, settings)
    bright = int(np.count_nonzero(np.nan_to_num(cands.snr) >= 10))
    if bright < MIN_STARS:
        raise CalibrationInputError(
            f"only {bright} detections of S/N >= 10 (at least {MIN_STARS} needed): the frame shows no star "
            "field to measure (a dark, a flat, a closed shutter or cloud?)", where=name)
    try:
        psf = blend.estimate_psf(bkg.sub_e, variance_e2, mask, cands, PSF_SETTINGS)
    except Exception as exc:  # noqa: BLE001 - the PSF fit raises several types; one message for the frame
        raise CalibrationInputError(f"the PSF cannot be measured ({exc})", where=name) from exc
    good = np.ones(image_e.shape, bool) if mask is None else (np.asarray(mask) == 0)
    sky = np.asarray(bkg.sub_e)[good][:: max(1, int(good.sum()) // 400_000)]
    med = float(np.median(sky))
    sky_noise = 1.4826 * float(np.median(np.abs(sky - med)))
    level = np.asarray(image_e, np.float64)[good] - np.asarray(bkg.sub_e, np.float64)[good]
    ell = _ellipticity(cands, psf.fwhm_px)
    return FrameMeasurement(
        name=name, exposure_s=float(exposure_s), shape_px=(int(image_e.shape[0]), int(image_e.shape[1])),
        sky_e=float(np.median(level)), sky_noise_e=sky_noise, fwhm_px=float(psf.fwhm_px), beta=float(psf.beta),
        ellipticity=ell, fwhm_grid_px=_fwhm_grid(bkg.sub_e, variance_e2, mask, cands, psf),
        psf_stars=int(psf.n_stars), detections=len(cands),
        saturated_px=int(np.count_nonzero(saturated)) if saturated is not None else 0,
        log_flux_e=np.log10(np.clip(np.nan_to_num(np.asarray(cands.flux_e, float)), 1e-3, None)),
        source=_not_sharp(cands),
        snr=np.nan_to_num(np.asarray(cands.snr, float)), x_px=np.asarray(cands.x, float),
        y_px=np.asarray(cands.y, float))


def _not_sharp(cands: detect_stage.Candidates) -> NDArray[np.bool_]:
    """Detections not sharper than the frame's typical detection at their S/N (3 robust sigmas)."""
    snr = np.nan_to_num(np.asarray(cands.snr, float))
    size = np.sqrt(np.clip(np.asarray(cands.a_px, float) * np.asarray(cands.b_px, float), 0, None))
    centre, spread = size_locus(snr, size, np.asarray(cands.flags) == 0)
    return ~(size < centre - 3.0 * spread)


def _ellipticity(cands: detect_stage.Candidates, fwhm_px: float) -> float:
    """Median 1 - b/a of isolated, unflagged detections of S/N 30-500 near the PSF's size."""
    a, b = np.asarray(cands.a_px, float), np.asarray(cands.b_px, float)
    snr = np.nan_to_num(np.asarray(cands.snr, float))
    ok = (snr >= 30) & (snr <= 500) & (np.asarray(cands.flags) == 0) & (a > 0) & (b > 0)
    ok &= a < fwhm_px  # a star's second-moment sigma is ~FWHM / 2.35; larger ones are galaxies
    if ok.sum() < 5:
        return 0.0
    return float(np.median(1.0 - b[ok] / a[ok]))


def _fwhm_grid(sub_e: NDArray[Any], variance_e2: NDArray[Any], mask: NDArray[Any] | None,
               cands: detect_stage.Candidates, psf: blend.FramePsf) -> tuple[tuple[float, ...], ...]:
    """The PSF's FWHM in each cell of a GRID x GRID split: a fit on the cell's stars alone."""
    ny, nx = sub_e.shape
    x, y = np.asarray(cands.x, float), np.asarray(cands.y, float)
    rows = []
    for j in range(GRID):
        row = []
        for i in range(GRID):
            inside = ((x >= i * nx / GRID) & (x < (i + 1) * nx / GRID)
                      & (y >= j * ny / GRID) & (y < (j + 1) * ny / GRID))
            try:
                cell = blend.estimate_psf(sub_e, variance_e2, mask, cands.select(inside), PSF_SETTINGS)
                row.append(round(float(cell.fwhm_px), 4))
            except Exception:  # noqa: BLE001 - a cell with too few stars has no FWHM of its own
                row.append(math.nan)
        rows.append(tuple(row))
    return tuple(rows)


def size_locus(snr: NDArray[np.float64], size: NDArray[np.float64], reference: NDArray[np.bool_]
                ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per detection: the median size sqrt(a b) of the ``reference`` detections of its S/N (bins of
    0.25 dex), and the robust spread of that size; NaN where a bin holds fewer than ten."""
    edges = np.arange(0.5, 3.75, 0.25)
    b = np.digitize(np.log10(np.clip(snr, 1.0, None)), edges)
    centre = np.full(edges.size + 1, np.nan)
    spread = np.full(edges.size + 1, np.nan)
    for q in range(edges.size + 1):
        sel = reference & (b == q)
        if sel.sum() >= 10:
            centre[q] = np.median(size[sel])
            spread[q] = max(1.4826 * float(np.median(np.abs(size[sel] - centre[q]))), 1e-3)
    return centre[b], spread[b]


def counts_per_flux_bin(frames: Sequence[FrameMeasurement], *, snr_min: float = 5.0
                        ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Bin edges (log10 e-) and the mean number of sources (detections not sharper than the PSF) of
    S/N >= ``snr_min`` per frame in each bin."""
    values = [f.log_flux_e[(f.snr >= snr_min) & f.source] for f in frames]
    every = np.concatenate(values) if values else np.zeros(0)
    if every.size == 0:
        return np.zeros(1), np.zeros(0)
    lo = math.floor(float(every.min()) / FLUX_BIN_DEX) * FLUX_BIN_DEX
    hi = math.ceil(float(every.max()) / FLUX_BIN_DEX + 1e-9) * FLUX_BIN_DEX
    edges = np.arange(lo, hi + FLUX_BIN_DEX / 2, FLUX_BIN_DEX)
    counts = np.histogram(every, bins=edges)[0] / max(1, len(frames))
    return edges, counts.astype(np.float64)


def summary(frames: Sequence[FrameMeasurement]) -> dict[str, Any]:
    """Medians over frames of every per-frame figure (the report's table and the twin's targets)."""
    def med(values: Sequence[float] | NDArray[np.float64]) -> float:
        v = np.asarray(values, float)
        return float(np.median(v[np.isfinite(v)])) if np.isfinite(v).any() else math.nan

    cells = np.asarray([f.fwhm_grid_px for f in frames], float)
    grid = np.array([[med(cells[:, j, i]) for i in range(cells.shape[2])] for j in range(cells.shape[1])])
    return {
        "frames": len(frames), "shape_px": list(frames[0].shape_px), "exposure_s": med([f.exposure_s for f in frames]),
        "sky_e": med([f.sky_e for f in frames]), "sky_noise_e": med([f.sky_noise_e for f in frames]),
        "sky_e_range": [float(min(f.sky_e for f in frames)), float(max(f.sky_e for f in frames))],
        "fwhm_px": med([f.fwhm_px for f in frames]), "beta": med([f.beta for f in frames]),
        "ellipticity": med([f.ellipticity for f in frames]),
        "fwhm_variation": med([f.fwhm_variation for f in frames]),
        "fwhm_grid_px": [[round(float(v), 3) for v in row] for row in grid.tolist()],
        "detections": med([f.detections for f in frames]), "saturated_px": med([f.saturated_px for f in frames]),
        "psf_stars": med([f.psf_stars for f in frames]),
    }
