"""Source detection on a calibrated frame: background, S/N threshold, centroids, flux, shape, flags.

The node and the engine's training set both call these functions, so that serving and training
find the same candidates. Everything here is a pure function of numpy arrays: no sockets, no
files, no logging, no clocks. Two backends do the background and the extraction, chosen by
:attr:`DetectSettings.backend`: ``"sep"`` (the reference and the default) and ``"fast"``
(:mod:`edge.fastdetect`, the same algorithms compiled with numba, free of the GIL and parallel).
sep's C status errors are turned into :class:`~edge.errors.DetectionError` in one place
(:func:`_sep_call`).

Conventions: pixel coordinates are 0-based numpy coordinates, ``x`` is the column and ``y`` the
row, pixel centres at integers (sep's convention as well). Images are in electrons (``_e``),
variances in electrons squared (``_e2``).

What each column of :class:`Candidates` is:

- ``x``, ``y``: the isophotal barycentre (first moments of the thresholded pixels, sep).
- ``x_err_px``, ``y_err_px``: square roots of sep's second-moment position variances
  (``errx2``, ``erry2``), computed from the per-pixel variance map over the isophotal footprint;
  not the windowed errors, which sep does not provide.
- ``flux_e``, ``flux_err_e``: SExtractor's AUTO flux: the sum of ``sub_e`` in an elliptical
  aperture of 2.5 Kron radii (at least a circle of radius ``min_aperture_radius_px``), with its
  error from the variance map. ``snr = flux_e / flux_err_e``.
- ``a_px``, ``b_px``, ``theta_rad``: isophotal second-moment ellipse (semi-axes RMS, position angle
  counter-clockwise from +x).
- ``peak_e``: the highest pixel of the object in ``sub_e``; ``npix``: isophotal area in pixels.
- ``flags``: sep's extraction and aperture flags in the low byte (``sep.OBJ_*``, ``sep.APER_*``)
  plus :data:`FLAG_NEAR_EDGE`, :data:`FLAG_MASKED`, :data:`FLAG_SATURATED` and
  :data:`FLAG_BAD_PHOTOMETRY` above it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import numpy as np
import sep
from numpy.typing import NDArray

from edge import diffuse
from edge.errors import DetectionError

__all__ = [
    "FLAG_BAD_PHOTOMETRY",
    "FLAG_DIFFUSE",
    "FLAG_MASKED",
    "FLAG_NEAR_EDGE",
    "FLAG_SATURATED",
    "Background",
    "Candidates",
    "DetectSettings",
    "detect",
    "subtract_background",
    "warm_up",
]

#: the stamp around the candidate (see engines.stamps) would reach outside the frame
FLAG_NEAR_EDGE = 1 << 8
#: a masked pixel lies within 1 px of the peak, or in the photometry aperture
FLAG_MASKED = 1 << 9
#: a saturated pixel (``saturated`` map given to :func:`detect`) lies within 1 px of the peak
FLAG_SATURATED = 1 << 10
#: the AUTO photometry failed (non-positive or non-finite error); flux and S/N are then 0
FLAG_BAD_PHOTOMETRY = 1 << 11
#: found by the diffuse pass on the binned frame (``diffuse_bin``; edge.diffuse), not at full resolution
FLAG_DIFFUSE = 1 << 12

_KRON_FACTOR = 2.5
_KRON_SEARCH = 6.0
_PIXSTACK = 3_000_000
_SUB_OBJECT_LIMIT = 8192
#: the detection backends ``[detect] backend`` may name
BACKENDS = ("sep", "fast")


@dataclass(frozen=True)
class DetectSettings:
    """How to find candidates; validated at construction."""

    #: threshold on the per-pixel S/N of the (matched-filtered) image, in sigma of the variance map
    threshold_snr: float = 5.0
    min_area_px: int = 3
    background_box_px: int = 64
    background_filter_px: int = 3
    deblend_nthresh: int = 32
    deblend_cont: float = 0.005
    #: a frame with more candidates keeps the highest-S/N ones and reports how many it dropped
    max_candidates: int = 20000
    #: convolve with sep's default 3x3 kernel as a matched filter before thresholding
    matched_filter: bool = True
    #: 0: off; k >= 2: a second pass on the k x k binned frame adds the extended objects of low
    #: surface brightness the first one misses (edge.diffuse), flagged FLAG_DIFFUSE
    diffuse_bin: int = 0
    #: FLAG_NEAR_EDGE when the 2*edge_margin_px box around the centre pixel (floor(x + 0.5),
    #: floor(y + 0.5)) leaves the frame; 16 matches a 32-pixel stamp of engines.stamps
    edge_margin_px: int = 16
    #: smallest radius of the AUTO aperture, as SExtractor's PHOT_AUTOPARAMS second value
    min_aperture_radius_px: float = 3.5
    #: "sep" (the reference) or "fast" (edge.fastdetect: compiled, GIL-free, same columns)
    backend: str = "sep"
    #: threads of the fast backend (sep is single-threaded); 1 where a worker process runs per core
    threads: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise DetectionError(f"backend={self.backend!r} is not a detection backend; use one of "
                                 f"{', '.join(repr(b) for b in BACKENDS)}", where="DetectSettings")
        checks = {
            "threshold_snr": self.threshold_snr > 0 and np.isfinite(self.threshold_snr),
            "min_area_px": self.min_area_px >= 1,
            "background_box_px": self.background_box_px >= 4,
            "background_filter_px": self.background_filter_px >= 1,
            "deblend_nthresh": self.deblend_nthresh >= 1,
            "deblend_cont": 0.0 <= self.deblend_cont <= 1.0,
            "max_candidates": self.max_candidates >= 1,
            "edge_margin_px": self.edge_margin_px >= 0,
            "min_aperture_radius_px": self.min_aperture_radius_px > 0,
            "threads": self.threads >= 1,
            "diffuse_bin": self.diffuse_bin == 0 or 2 <= self.diffuse_bin <= 16,
        }
        for name, ok in checks.items():
            if not ok:
                raise DetectionError(f"{name}={getattr(self, name)!r} is out of range; "
                                     "see edge.detect.DetectSettings for valid values",
                                     where="DetectSettings")


@dataclass(frozen=True, eq=False)
class Background:
    """A frame with its smooth background removed."""

    sub_e: NDArray[np.float32]          # image - background; 0 where the image was not finite
    background_e: NDArray[np.float32]   # sep's spline background map
    rms_e: float                        # sep's global background RMS


_C = TypeVar("_C", bound="Candidates")


@dataclass(frozen=True, eq=False)
class Candidates:
    """Detected candidates as column arrays of equal length (see the module docstring)."""

    x: NDArray[np.float64]
    y: NDArray[np.float64]
    x_err_px: NDArray[np.float64]
    y_err_px: NDArray[np.float64]
    flux_e: NDArray[np.float64]
    flux_err_e: NDArray[np.float64]
    snr: NDArray[np.float64]
    a_px: NDArray[np.float64]
    b_px: NDArray[np.float64]
    theta_rad: NDArray[np.float64]
    peak_e: NDArray[np.float64]
    npix: NDArray[np.int64]
    flags: NDArray[np.int64]
    #: candidates found but dropped because the frame had more than max_candidates
    n_truncated: int = 0

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def n(self) -> int:
        """Number of candidates kept."""
        return len(self)

    def select(self: _C, index: NDArray[Any]) -> _C:
        """A new Candidates holding the rows picked by a boolean mask or an index array."""
        cols = {f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "n_truncated"}
        return type(self)(**cols, n_truncated=self.n_truncated)


def _sep_call(what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call sep, turning its C status errors into DetectionError."""
    try:
        return func(*args, **kwargs)
    except Exception as exc:  # sep raises bare Exception/ValueError for C status codes
        hint = ""
        if "buffer full" in str(exc) or "limit" in str(exc):
            hint = "; raise threshold_snr or min_area_px, the frame is too crowded for sep's buffers"
        raise DetectionError(f"sep {what} failed: {exc}{hint}", where=what) from exc


def _check_image(name: str, image: NDArray[Any], shape: tuple[int, ...] | None = None) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise DetectionError(f"{name} must be a 2-D numpy array, got "
                             f"{getattr(image, 'shape', type(image).__name__)}", where=name)
    if min(image.shape) < 1:
        raise DetectionError(f"{name} is empty (shape {image.shape})", where=name)
    if shape is not None and image.shape != shape:
        raise DetectionError(f"{name} has shape {image.shape} but the image has {shape}", where=name)


def _as_mask(mask: NDArray[Any] | None, shape: tuple[int, int]) -> NDArray[np.bool_]:
    if mask is None:
        return np.zeros(shape, dtype=bool)
    _check_image("mask", mask, shape)
    return np.asarray(mask, dtype=bool)


def subtract_background(image_e: NDArray[Any], mask: NDArray[Any] | None,
                        settings: DetectSettings) -> Background:
    """Estimate sep's spline background (masked and non-finite pixels excluded) and remove it."""
    _check_image("image_e", image_e)
    image = np.ascontiguousarray(image_e, dtype=np.float32)
    bad = _as_mask(mask, image.shape)
    finite = None
    if not _all_finite(image):
        finite = np.isfinite(image)
        bad = bad | ~finite
        image = np.where(finite, image, np.float32(0.0))
    if (mask is not None or finite is not None) and bad.all():
        raise DetectionError("every pixel is masked or non-finite; nothing to estimate a "
                             "background from", where="image_e")
    box = min(settings.background_box_px, *image.shape)
    if settings.backend == "fast":
        from edge import fastdetect  # numba compiles on first use: only a node that asks pays

        background, sub, rms = fastdetect.background(image, bad, box, settings.background_filter_px,
                                                     settings.threads)
    else:
        bkg = _sep_call("Background", sep.Background, image, mask=bad, bw=box, bh=box,
                        fw=settings.background_filter_px, fh=settings.background_filter_px)
        background, rms = bkg.back(dtype=np.float32), float(bkg.globalrms)
        sub = image - background
    if finite is not None:
        sub[~finite] = 0.0
    return Background(sub_e=sub, background_e=background, rms_e=rms)


def detect(sub_e: NDArray[Any], variance_e2: NDArray[Any], mask: NDArray[Any] | None,
           settings: DetectSettings, *, saturated: NDArray[Any] | None = None) -> Candidates:
    """Find candidates in a background-subtracted frame, thresholding on S/N against ``variance_e2``.

    ``mask`` marks pixels to ignore (bad, saturated, non-finite); pixels whose variance is not
    finite and positive, or whose value is not finite, are ignored as well. ``saturated``
    (optional) marks saturated pixels for :data:`FLAG_SATURATED`.
    """
    _check_image("sub_e", sub_e)
    shape = sub_e.shape
    _check_image("variance_e2", variance_e2, shape)
    bad = _as_mask(mask, shape)
    sat = None if saturated is None else _as_mask(saturated, shape)
    sub = np.ascontiguousarray(sub_e, dtype=np.float32)
    var = np.asarray(variance_e2, dtype=np.float32)
    # full-frame checks are costly at 4096x4096; three reductions prove the common clean case
    if not (_all_finite(sub) and var.min() > 0 and np.isfinite(var.max())):
        usable = np.isfinite(sub) & np.isfinite(var) & (var > 0)
        bad = bad | ~usable
        sub = np.where(usable, sub, np.float32(0.0))
        var = np.where(usable, var, np.float32(1.0))
    var = np.ascontiguousarray(var)

    objects = _extract(sub, var, bad, settings)
    n_diffuse = 0
    if settings.diffuse_bin:
        objects, n_diffuse = diffuse.merged(objects, sub, var, bad, settings.diffuse_bin,
                                            lambda s, v, m: _extract(s, v, m, settings))
    n_found = len(objects["x"])
    if n_found == 0:
        return _empty()

    x = objects["x"].astype(np.float64)
    y = objects["y"].astype(np.float64)
    a = objects["a"].astype(np.float64)
    b = objects["b"].astype(np.float64)
    theta = objects["theta"].astype(np.float64)
    flags = objects["flag"].astype(np.int64)
    flags[n_found - n_diffuse:] |= FLAG_DIFFUSE

    if settings.backend == "fast":
        from edge import fastdetect

        flux, flux_err, aper_flags = fastdetect.auto_flux(
            sub, var, np.ascontiguousarray(bad), x, y, a, b, theta, settings.min_aperture_radius_px)
    else:
        flux, flux_err, aper_flags = _auto_flux(sub, var, bad, x, y, a, b, theta, settings)
    flags |= aper_flags
    ok = np.isfinite(flux) & np.isfinite(flux_err) & (flux_err > 0)
    flags[~ok] |= FLAG_BAD_PHOTOMETRY
    flux = np.where(ok, flux, 0.0)
    flux_err = np.where(ok, flux_err, 0.0)
    snr = np.divide(flux, flux_err, out=np.zeros_like(flux), where=ok)

    height, width = shape
    margin = settings.edge_margin_px
    # the same centre pixel as engines.stamps: the 2*margin box from centre - margin must fit in the frame
    cx, cy = np.floor(x + 0.5), np.floor(y + 0.5)
    near_edge = (cx < margin) | (cy < margin) | (cx + margin > width) | (cy + margin > height)
    flags[near_edge] |= FLAG_NEAR_EDGE
    xp = objects["xpeak"].astype(np.int64)
    yp = objects["ypeak"].astype(np.int64)
    flags[_any_near(bad, xp, yp)] |= FLAG_MASKED
    flags[(aper_flags & sep.APER_HASMASKED) != 0] |= FLAG_MASKED
    if sat is not None:
        flags[_any_near(sat, xp, yp)] |= FLAG_SATURATED

    candidates = Candidates(
        x=x, y=y,
        x_err_px=np.sqrt(np.maximum(objects["errx2"].astype(np.float64), 0.0)),
        y_err_px=np.sqrt(np.maximum(objects["erry2"].astype(np.float64), 0.0)),
        flux_e=flux, flux_err_e=flux_err, snr=snr, a_px=a, b_px=b, theta_rad=theta,
        peak_e=objects["peak"].astype(np.float64), npix=objects["npix"].astype(np.int64),
        flags=flags, n_truncated=0)
    if n_found <= settings.max_candidates:
        return candidates
    keep = np.sort(np.argsort(-snr, kind="stable")[: settings.max_candidates])
    return replace(candidates.select(keep), n_truncated=n_found - settings.max_candidates)


def warm_up(settings: DetectSettings) -> int:
    """Run the chosen backend once on a small frame holding one star; returns the candidates found.

    The fast backend compiles its loops on first use (or loads them from numba's cache): a node
    calls this while it starts, so its first real frame does not carry the compile.
    """
    size = 96
    yy, xx = np.mgrid[0:size, 0:size]
    star = 5000.0 * np.exp(-((xx - 47.3) ** 2 + (yy - 48.6) ** 2) / (2 * 1.5**2)) / (2 * np.pi * 1.5**2)
    rng = np.random.default_rng(0)
    image = (100.0 + star + rng.normal(0.0, 10.0, (size, size))).astype(np.float32)
    small = replace(settings, background_box_px=min(settings.background_box_px, 32), edge_margin_px=0)
    bkg = subtract_background(image, None, small)
    return detect(bkg.sub_e, np.full(image.shape, 100.0, np.float32), None, small).n


def _extract(sub: NDArray[np.float32], var: NDArray[np.float32], bad: NDArray[np.bool_],
             settings: DetectSettings) -> Any:
    """The objects of the chosen backend: sep's structured array, or the same columns from fastdetect."""
    kernel = sep.default_kernel if settings.matched_filter else None
    if settings.backend == "fast":
        from edge import fastdetect

        return fastdetect.extract(sub, var, np.ascontiguousarray(bad), settings.threshold_snr,
                                  settings.min_area_px, settings.deblend_nthresh,
                                  settings.deblend_cont, kernel, settings.threads)
    if sep.get_extract_pixstack() < _PIXSTACK:
        sep.set_extract_pixstack(_PIXSTACK)
    if sep.get_sub_object_limit() < _SUB_OBJECT_LIMIT:
        sep.set_sub_object_limit(_SUB_OBJECT_LIMIT)
    return _sep_call(
        "extract", sep.extract, sub, settings.threshold_snr, var=var, mask=bad,
        minarea=settings.min_area_px, deblend_nthresh=settings.deblend_nthresh,
        deblend_cont=settings.deblend_cont, filter_kernel=kernel, filter_type="matched")


def _auto_flux(sub: NDArray[np.float32], var: NDArray[np.float32], bad: NDArray[np.bool_],
               x: NDArray[np.float64], y: NDArray[np.float64], a: NDArray[np.float64],
               b: NDArray[np.float64], theta: NDArray[np.float64],
               settings: DetectSettings) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """SExtractor-style AUTO flux: 2.5 Kron radii, never smaller than a minimum circle."""
    # single-pixel objects have a or b near 0, which makes the Kron ellipse degenerate
    # and sep refuses non-finite axes, b > a or theta outside [-pi/2, pi/2] for the whole batch
    a_safe = np.where(np.isfinite(a), np.maximum(a, 0.5), 0.5)
    b_safe = np.minimum(np.where(np.isfinite(b), np.maximum(b, 0.5), 0.5), a_safe)
    theta = np.clip(np.where(np.isfinite(theta), theta, 0.0), -np.pi / 2, np.pi / 2)
    kron, kron_flag = _sep_call("kron_radius", sep.kron_radius, sub, x, y, a_safe, b_safe, theta,
                                _KRON_SEARCH, mask=bad)
    kron = np.where(np.isfinite(kron) & (kron > 0), kron, 0.0)
    flux, flux_err = np.zeros(x.shape, dtype=np.float64), np.zeros(x.shape, dtype=np.float64)
    aper_flags = kron_flag.astype(np.int64)
    use_circle = kron * np.sqrt(a_safe * b_safe) * _KRON_FACTOR < settings.min_aperture_radius_px
    ell = ~use_circle
    if ell.any():
        f, fe, fl = _sep_call("sum_ellipse", sep.sum_ellipse, sub, x[ell], y[ell], a_safe[ell],
                              b_safe[ell], theta[ell], _KRON_FACTOR * kron[ell], var=var, mask=bad,
                              subpix=1)
        flux[ell], flux_err[ell] = f, fe
        aper_flags[ell] |= fl.astype(np.int64)
    if use_circle.any():
        f, fe, fl = _sep_call("sum_circle", sep.sum_circle, sub, x[use_circle], y[use_circle],
                              settings.min_aperture_radius_px, var=var, mask=bad, subpix=1)
        flux[use_circle], flux_err[use_circle] = f, fe
        aper_flags[use_circle] |= fl.astype(np.int64)
    return flux, flux_err, aper_flags


def _all_finite(image: NDArray[np.float32]) -> bool:
    """True when no pixel is NaN or inf: one summing pass (an overflowing sum only costs the slow path)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.add.reduce(image, axis=None)))


def _any_near(image_mask: NDArray[np.bool_], xp: NDArray[np.int64], yp: NDArray[np.int64]) -> NDArray[np.bool_]:
    """True where any pixel of the 3x3 box around (xp, yp) is set in ``image_mask``."""
    height, width = image_mask.shape
    hit = np.zeros(xp.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            hit |= image_mask[np.clip(yp + dy, 0, height - 1), np.clip(xp + dx, 0, width - 1)]
    return hit


def _empty() -> Candidates:
    f, i = np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
    return Candidates(x=f, y=f, x_err_px=f, y_err_px=f, flux_e=f, flux_err_e=f, snr=f, a_px=f,
                      b_px=f, theta_rad=f, peak_e=f, npix=i, flags=i, n_truncated=0)
