"""Fake-source injection: twin objects added to a real frame with its own PSF, gain, flat and noise.

Recall on real sky is measured by adding objects whose truth is known to real frames and letting
the node process them as it would any frame (``astro-edge rig inject``, docs/rig.md). Per frame:

1. :func:`measure_for_injection`: the node's background and detector (default settings) on the
   calibrated frame, then its PSF (:func:`edge.blend.estimate_psf`); too few stars is a
   :class:`~edge.errors.DetectionError` naming the frame.
2. :func:`place`: random positions, at least ``edge_px`` from the frame's edge, clear of masked and
   saturated pixels, and ``isolation_fwhm`` FWHM (plus the objects' own reach) from every
   detection and from each other.
3. Each object's total flux is set by :func:`flux_for_snr` so that its matched-filter S/N (its own
   profile as the weights, against the frame's variance map: read noise, sky, everything already
   there, and the object's own shot noise) is the one drawn log-uniform in [snr_min, snr_max]; a
   ghost is never drawn fainter than the twin means one (3 sigma of the sky per pixel over the
   pixels holding 80 % of its light), so its range starts at that floor when the floor is higher.
4. :func:`add_to_raw`: the electrons go back through the frame's response (``adu = e * flat /
   gain``) with Poisson noise, into the raw pixels, rounded and clipped to the raw dtype, so that
   the node calibrates and processes the result exactly like the original.

Truth rows have the twin's columns (:mod:`twin.truth`), ``x``, ``y`` in the calibrated frame's
pixels (what the node reports). Pure: the random generator comes in, no files, no logging.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table
from numpy.typing import NDArray

from calibration import CalibratedFrame, Calibrator
from calibration.frames import header_filter, parse_section
from edge.blend import BlendSettings, FramePsf, estimate_psf
from edge.commission.inject_shapes import INJECT_FAMILIES, LABELS, Draft, draft, render
from edge.detect import Candidates, DetectSettings, detect, subtract_background
from edge.errors import ConfigError, DetectionError
from twin.truth import TruthBuilder, empty_truth

__all__ = ["INJECT_FAMILIES", "InjectSettings", "Injection", "MeasuredFrame", "Response", "add_to_raw",
           "assign_families", "flux_for_snr", "frame_response", "inject_frame", "matched_snr",
           "measure_for_injection", "parse_families", "place"]


def _psf_blend_settings() -> BlendSettings:
    # PSF stars from S/N 15: the node's 25 (for multiplicity) leaves small real frames without a PSF
    return BlendSettings(psf_snr_min=15.0)


@dataclass(frozen=True)
class InjectSettings:
    """What to inject and where; validated at construction (ConfigError)."""

    families: tuple[str, ...] = INJECT_FAMILIES
    per_frame: int = 20                 # objects per frame, the families in turn
    snr_min: float = 20.0               # S/N drawn log-uniform in [snr_min, snr_max]
    snr_max: float = 200.0
    edge_px: float = 50.0               # no object centre nearer the frame's edge
    isolation_fwhm: float = 4.0         # FWHM between an object and any detection or other object
    max_tries: int = 200                # random positions tried per object before it is left out
    detect: DetectSettings = field(default_factory=DetectSettings)
    blend: BlendSettings = field(default_factory=_psf_blend_settings)

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in INJECT_FAMILIES]
        problems = [f"unknown families {unknown}; choose from {', '.join(INJECT_FAMILIES)} or all"] if unknown else []
        if not self.families:
            problems.append("no family given")
        if self.per_frame < 1:
            problems.append(f"per_frame={self.per_frame} must be >= 1")
        if not 0 < self.snr_min <= self.snr_max < np.inf:
            problems.append(f"S/N range [{self.snr_min}, {self.snr_max}] must satisfy 0 < min <= max")
        if self.edge_px < 0 or self.isolation_fwhm < 0 or self.max_tries < 1:
            problems.append("edge_px and isolation_fwhm must be >= 0 and max_tries >= 1")
        if problems:
            raise ConfigError("; ".join(problems), where="InjectSettings")


def parse_families(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma-separated list of families, in the given order; ConfigError naming the valid ones."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return INJECT_FAMILIES
    unknown = [n for n in names if n not in INJECT_FAMILIES]
    if unknown or not names:
        raise ConfigError(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown) or repr(text)}; "
                          f"use all or some of {','.join(INJECT_FAMILIES)}", where="--families")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True, eq=False)
class Response:
    """How electrons become raw ADU: ``raw[rows, cols]`` is the calibrated frame, ``adu = e * flat / gain``."""

    rows: slice
    cols: slice
    gain_e_per_adu: float
    flat: NDArray[np.float32] | None = None   # the master flat (calibrated shape); None: 1 everywhere

    def flat_at(self, rows: slice, cols: slice) -> NDArray[np.float64] | float:
        """The response over a part of the calibrated frame (1.0 without a flat)."""
        return 1.0 if self.flat is None else np.asarray(self.flat[rows, cols], np.float64)


def frame_response(calibrator: Calibrator, cal: CalibratedFrame, raw_shape: tuple[int, ...], *,
                   filter_name: str | None, header: Mapping[str, Any]) -> Response:
    """The response the calibrator divided out of this frame: its gain, the filter's flat and the trim."""
    full = (slice(0, int(raw_shape[0])), slice(0, int(raw_shape[1])))
    masters = calibrator.masters
    if masters is None:
        trim = full
        if tuple(raw_shape) != cal.shape and "TRIMSEC" in header:
            trim = parse_section(str(header["TRIMSEC"]), where="TRIMSEC")
        return Response(*trim, gain_e_per_adu=cal.gain_e_per_adu)
    trim = full if tuple(raw_shape) == masters.shape or masters.trimsec is None else parse_section(masters.trimsec)
    if filter_name is None:
        filter_name = header_filter(header)
    key = filter_name if filter_name is not None and filter_name in masters.flats else ""   # as the calibrator
    return Response(*trim, gain_e_per_adu=masters.gain_e_per_adu, flat=masters.flats.get(key))


@dataclass(frozen=True, eq=False)
class MeasuredFrame:
    """A calibrated frame as the node sees it: background-subtracted, its detections and its PSF."""

    cal: CalibratedFrame
    sub_e: NDArray[np.float32]
    cands: Candidates
    psf: FramePsf


def measure_for_injection(cal: CalibratedFrame, settings: InjectSettings, *, where: str) -> MeasuredFrame:
    """Background, detections and PSF of a calibrated frame; DetectionError naming ``where`` without a PSF."""
    bkg = subtract_background(cal.image_e, cal.mask, settings.detect)
    cands = detect(bkg.sub_e, cal.variance_e2, cal.mask, settings.detect)
    try:
        psf = estimate_psf(bkg.sub_e, cal.variance_e2, cal.mask, cands, settings.blend)
    except DetectionError as exc:
        reason = str(exc).split(";")[0].removeprefix("estimate_psf: ")
        raise DetectionError(f"the PSF cannot be measured: {reason} ({len(cands)} detections); objects are "
                             f"injected only into frames with at least {settings.blend.min_stars} isolated "
                             f"stars of S/N >= {settings.blend.psf_snr_min:g}", where=where) from exc
    return MeasuredFrame(cal=cal, sub_e=bkg.sub_e, cands=cands, psf=psf)


def assign_families(settings: InjectSettings, rng: np.random.Generator) -> list[str]:
    """``per_frame`` families, the chosen ones in turn from a random start (balanced over frames)."""
    k = len(settings.families)
    start = int(rng.integers(k))
    return [settings.families[(start + i) % k] for i in range(settings.per_frame)]


#: a pixel this many sigma above the background belongs to a source already in the frame
BUSY_SIGMA = 5.0


def place(drafts: list[Draft], frame: MeasuredFrame, settings: InjectSettings,
          rng: np.random.Generator) -> list[tuple[Draft, float, float]]:
    """Random centres (0-based px) for the drafts, largest first; a draft with no room is left out."""
    ny, nx = frame.cal.shape
    blocked = (frame.cal.mask != 0) | ~np.isfinite(frame.cal.variance_e2) | ~(frame.cal.variance_e2 > 0)
    # light of a source already there, beyond what its centroid and size say (the halo and bleed
    # of a saturated star, a large galaxy): an object is put on empty sky, where its S/N is the
    # one drawn
    with np.errstate(invalid="ignore"):
        blocked |= frame.sub_e > BUSY_SIGMA * np.sqrt(np.where(frame.cal.variance_e2 > 0, frame.cal.variance_e2, np.inf))
    c = frame.cands
    known = np.isfinite(c.x) & np.isfinite(c.y)
    det_x, det_y = c.x[known], c.y[known]
    det_reach = 2.0 * np.nan_to_num(c.a_px[known], nan=0.0)     # a detection's own extent, ~2 sigma
    placed: list[tuple[Draft, float, float]] = []
    for d in sorted(drafts, key=lambda d: -d.keep_out_px):
        margin = max(settings.edge_px, d.half_px + 1.0)
        if nx - 1 - 2 * margin < 0 or ny - 1 - 2 * margin < 0:
            continue
        for _ in range(settings.max_tries):
            x, y = float(rng.uniform(margin, nx - 1 - margin)), float(rng.uniform(margin, ny - 1 - margin))
            clear = settings.isolation_fwhm * float(frame.psf.fwhm_at(np.array([x]), np.array([y]))[0])
            if np.any(np.hypot(det_x - x, det_y - y) < clear + d.keep_out_px + det_reach):
                continue
            if any(np.hypot(px - x, py - y) < clear + d.keep_out_px + o.keep_out_px for o, px, py in placed):
                continue
            r = int(np.ceil(d.reach_px + 0.5 * clear))
            if blocked[max(int(y) - r, 0):int(y) + r + 2, max(int(x) - r, 0):int(x) + r + 2].any():
                continue
            placed.append((d, x, y))
            break
    return placed


def _usable(frame: MeasuredFrame, response: Response, rows: slice, cols: slice
            ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    var = np.asarray(frame.cal.variance_e2[rows, cols], np.float64)
    flat = np.broadcast_to(response.flat_at(rows, cols), var.shape)
    ok = np.isfinite(var) & (var > 0) & (frame.cal.mask[rows, cols] == 0) & (flat > 0)
    return np.where(ok, var, 1.0), np.where(ok, flat, 1.0), ok


def matched_snr(flux_e: float, profile: NDArray[Any], variance_e2: NDArray[Any], flat: NDArray[Any] | float,
                usable: NDArray[np.bool_]) -> float:
    """S/N of ``flux_e`` spread as the unit-sum ``profile``, weighted by it (the matched filter), against
    the frame's variance plus the object's own shot noise (``signal / flat`` e^2, the node's model)."""
    p = np.asarray(profile, np.float64)
    terms = np.where(usable, (flux_e * p) ** 2 / (variance_e2 + flux_e * p / flat), 0.0)
    return float(np.sqrt(terms.sum()))


def flux_for_snr(snr: float, profile: NDArray[Any], variance_e2: NDArray[Any], flat: NDArray[Any] | float,
                 usable: NDArray[np.bool_]) -> float:
    """The total flux (e) whose :func:`matched_snr` is ``snr``: a fixed-point iteration from the
    background-limited flux, which rises monotonically to it."""
    p = np.where(usable, np.asarray(profile, np.float64), 0.0)
    flux = 0.0
    for _ in range(200):
        new = snr / np.sqrt((p * p / (variance_e2 + flux * p / flat)).sum())
        if abs(new - flux) <= 1e-10 * new:
            return float(new)
        flux = float(new)
    return flux


def add_to_raw(raw: NDArray[Any], response: Response, electrons: list[tuple[NDArray[np.float64], int, int]],
               rng: np.random.Generator) -> NDArray[Any]:
    """A copy of ``raw`` with expected electrons (before the flat; stamps at calibrated-frame corners)
    added as Poisson photo-electrons through flat and gain; rounded and clipped to an integer dtype."""
    ny, nx = raw[response.rows, response.cols].shape
    delta = np.zeros((ny, nx))
    for mean_e, iy0, ix0 in electrons:
        rows, cols = slice(iy0, iy0 + mean_e.shape[0]), slice(ix0, ix0 + mean_e.shape[1])
        detected = rng.poisson(np.maximum(mean_e * response.flat_at(rows, cols), 0.0))
        delta[rows, cols] += detected / response.gain_e_per_adu
    out = np.array(raw, copy=True)
    view = out[response.rows, response.cols]
    total = view.astype(np.float64) + delta
    if out.dtype.kind in "ui":
        info = np.iinfo(out.dtype)
        total = np.clip(np.rint(total), info.min, info.max)
    view[...] = total.astype(out.dtype)
    return out


@dataclass(frozen=True, eq=False)
class Injection:
    """One frame's injection: the new raw pixels, the truth (twin columns) and the PSF they were drawn with."""

    raw: NDArray[Any]
    truth: Table
    psf: FramePsf
    n_requested: int
    n_detections: int


def family_floor_snr(d: Any, stamp: NDArray[Any], var: NDArray[Any], flat: NDArray[Any] | float,
                     ok: NDArray[np.bool_]) -> float:
    """The faintest S/N the twin means a family to have (0: none). A ghost stands at least 3 sigma
    of the sky's noise per pixel out of it across its annulus (twin.anomalies): here, over the
    pixels of the rendered ring that hold 80 % of its light. Fainter, it is no ghost, and no
    detector that thresholds pixels sees it."""
    if d.family != "ghost" or not ok.any():
        return 0.0
    light = np.sort(np.where(ok, np.asarray(stamp, np.float64), 0.0).ravel())[::-1]
    n80 = int(np.searchsorted(np.cumsum(light), 0.8 * light.sum())) + 1
    floor_e = 3.0 * float(np.sqrt(np.median(var[ok]))) * n80 / 0.8
    return matched_snr(floor_e, stamp, var, flat, ok) if floor_e > 0 else 0.0


def inject_frame(raw: NDArray[Any], frame: MeasuredFrame, response: Response, settings: InjectSettings,
                 rng: np.random.Generator, *, frame_index: int = 0) -> Injection:
    """Add ``settings.per_frame`` objects to one raw frame; the truth's ``frame`` is ``frame_index``."""
    drafts = draft(assign_families(settings, rng), frame.psf, frame.cal.shape, rng)
    placed = place(drafts, frame, settings, rng)
    truth = TruthBuilder(frame_index)
    electrons = []
    for d, x, y in placed:
        obj = render(d, x, y, frame.psf)
        rows = slice(obj.iy0, obj.iy0 + obj.stamp.shape[0])
        cols = slice(obj.ix0, obj.ix0 + obj.stamp.shape[1])
        var, flat, ok = _usable(frame, response, rows, cols)
        lo = max(settings.snr_min, family_floor_snr(d, obj.stamp, var, flat, ok))
        snr = float(np.exp(rng.uniform(np.log(lo), np.log(max(settings.snr_max, lo)))))
        flux = flux_for_snr(snr, obj.stamp, var, flat, ok)
        electrons.append((flux * obj.stamp.astype(np.float64), obj.iy0, obj.ix0))
        fwhm = float(frame.psf.fwhm_at(np.array([x]), np.array([y]))[0])
        x0, y0, x1, y1 = obj.ends
        truth.add(LABELS[d.family], d.family, [x], [y], [flux], snr_expected=[snr], fwhm_px=fwhm,
                  size_px=d.size_px, ends=([x0], [y0], [x1], [y1]))
    table = truth.table() if truth.groups else empty_truth()
    return Injection(raw=add_to_raw(raw, response, electrons, rng), truth=table, psf=frame.psf,
                     n_requested=settings.per_frame, n_detections=len(frame.cands))
