"""A twin of the measured instrument: a TwinConfig made from the measurements, rendered, measured by
the same code as the real frames, corrected, and compared figure by figure.

The fit is a few rounds of "render, measure, scale": the PSF's FWHM by the ratio of the measured
FWHMs (the measurement's own bias cancels), the sky rate by the ratio of the sky variances, the
star counts by the ratio of counts in the well-populated flux bins. The distances that come out
(PSF FWHM, sky noise, counts per flux bin) are what the report prints.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge import detect as detect_stage
from edge.commission.measure import (
    FLUX_BIN_DEX,
    FrameMeasurement,
    counts_per_flux_bin,
    measure_frame,
)
from edge.commission.measure import summary as measure_summary

#: a flux bin enters the counts distance when the real frames hold at least this many in it (per frame)
MIN_BIN_COUNT = 50.0
#: a flux bin's weight is fitted when the real frames hold at least this many in it (per frame):
#: the sparser bright bins are fitted too, or their stars, measured a little fainter, fill the
#: brightest counted bin (on Lowell, 12 rounds of 8 frames: largest bin distance 8.8 % when only
#: counted bins were fitted, 6.6 % with bins of 25 or more, 12 % with bins of 10 or more)
FIT_MIN_BIN_COUNT = 25.0
#: the twin's star magnitudes reach this far below the faintest well-counted bin (the detection limit's tail)
FAINT_TAIL_MAG = 1.5
#: galaxies per star in the fitted twin (the real frames do not tell them apart before the engine does)
GALAXIES_PER_STAR = 0.1
ZERO_POINT_MAG = 25.0
#: exponent of each round's count correction (1: all of it at once)
DAMPING = 0.7


@dataclass(frozen=True)
class Instrument:
    """What the twin takes from the calibration step and the headers."""

    gain_e_per_adu: float
    read_noise_e: float
    bias_adu: float
    saturate_e: float
    pixel_scale_arcsec: float | None
    filter_name: str
    vignetting: float = 0.1
    cosmic_ray_rate_per_s: float = 0.1    # hits per second per million pixels


@dataclass(frozen=True)
class FittedTwin:
    """The fitted configuration, the measurements of its frames, and the distances to the real ones."""

    config: Any                              # twin.TwinConfig
    twin_frames: tuple[FrameMeasurement, ...]
    distances: dict[str, Any]
    rounds: int


def initial_config(real: Sequence[FrameMeasurement], inst: Instrument) -> Any:
    """The first guess: optics, sky and detector from the measurements, a power-law star field
    fitted to the counts against flux."""
    from twin import DetectorModel, TwinConfig

    s = measure_summary(real)
    exposure = float(s["exposure_s"])
    scale = inst.pixel_scale_arcsec or 1.0
    edges, counts = counts_per_flux_bin(real)
    slope, m_bright, m_faint, n_stars = _star_field(edges, counts, exposure, s["shape_px"])
    full_well = min(inst.saturate_e, (65535.0 - inst.bias_adu - 64.0) * inst.gain_e_per_adu)
    det = DetectorModel(shape_px=tuple(s["shape_px"]), gain_e_per_adu=inst.gain_e_per_adu,
                        read_noise_e=inst.read_noise_e, bias_adu=inst.bias_adu, bias_column_rms_adu=1.0,
                        full_well_e=max(full_well, 1000.0), vignetting=min(max(inst.vignetting, 0.0), 0.9),
                        seed=11, name="fitted-twin")
    return TwinConfig(
        detector=det, pixel_scale_arcsec=scale, psf_fwhm_arcsec=float(s["fwhm_px"]) * scale,
        psf_beta=max(1.5, float(s["beta"])), psf_fwhm_variation=max(0.0, float(s["fwhm_variation"])),
        psf_ellipticity=min(0.45, max(0.0, float(s["ellipticity"]))), exposure_s=exposure,
        sky_e_per_s=max(float(s["sky_e"]), 0.0) / exposure, sky_gradient=0.02, zero_point_mag=ZERO_POINT_MAG,
        n_stars=n_stars, star_mag_range=(m_bright, m_faint), star_count_slope=slope,
        n_galaxies=int(round(GALAXIES_PER_STAR * n_stars)), galaxy_mag_range=(m_bright + 2.0, m_faint),
        cosmic_ray_rate_per_s=inst.cosmic_ray_rate_per_s, streak_probability=0.0, filter=inst.filter_name or "r")


def _star_field(edges: NDArray[np.float64], counts: NDArray[np.float64], exposure_s: float,
                shape_px: Sequence[int]) -> tuple[float, float, float, int]:
    """(d log10 N / d mag, brightest mag, faintest mag, number of stars) of a power law through the
    bins brighter than the counts' peak (where detection is complete); the magnitude range lies on
    the flux bins' grid (:func:`mag_bins`), so that each flux bin has a weight of its own."""
    if counts.size == 0:
        return 0.3, 14.0, 23.0, 500
    mags = _bin_mags(edges, exposure_s)
    peak = int(np.argmax(counts))
    use = (np.arange(counts.size) >= peak) & (counts >= 3)
    if use.sum() >= 3:
        k, _ = np.polyfit(mags[use], np.log10(counts[use]), 1)
        slope = float(np.clip(k, 0.05, 0.6))
    else:
        slope = 0.3
    m_bright, m_faint = _mag_range(edges, exposure_s)
    bin_mag = 2.5 * FLUX_BIN_DEX

    def law(m: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(10.0 ** (slope * (m - m_faint)), float)

    grid = np.linspace(m_bright, m_faint, 400)
    total = float(np.sum(law(grid)) * (grid[1] - grid[0]))
    complete = counts[use].sum() if use.any() else counts.sum()
    model = float(np.sum(law(mags[use] if use.any() else mags)) * bin_mag)
    n = int(round(complete * total / max(model, 1e-9)))
    return slope, m_bright, m_faint, max(n, 10)


def _bin_mags(edges: NDArray[np.float64], exposure_s: float) -> NDArray[np.float64]:
    """The magnitude of each flux bin's centre."""
    centres = 0.5 * (edges[:-1] + edges[1:])
    return np.asarray(ZERO_POINT_MAG - 2.5 * (centres - math.log10(exposure_s)), float)


def _mag_range(edges: NDArray[np.float64], exposure_s: float) -> tuple[float, float]:
    """Brightest and faintest magnitude of the twin's stars: the flux bins' span and a faint tail of
    whole bins below it."""
    tail_bins = int(math.ceil(FAINT_TAIL_MAG / (2.5 * FLUX_BIN_DEX)))
    bright = ZERO_POINT_MAG - 2.5 * (float(edges[-1]) - math.log10(exposure_s))
    faint = ZERO_POINT_MAG - 2.5 * (float(edges[0]) - math.log10(exposure_s)) + tail_bins * 2.5 * FLUX_BIN_DEX
    return bright, faint


def _reweigh(config: Any, edges: NDArray[np.float64], counts_r: NDArray[np.float64],
             counts_t: NDArray[np.float64]) -> Any:
    """Scale each flux bin's magnitude-bin weight by real / twin counts (where the real frames count
    enough, by at most 2x a round), and the number of stars by the weights' new total."""
    n_flux = counts_r.size
    lo, hi = config.star_mag_range
    n_bins = int(round((hi - lo) / (2.5 * FLUX_BIN_DEX)))
    old = np.asarray(config.star_mag_weights or (1.0,) * n_bins, float)
    new = old.copy()
    for j in range(n_flux):
        i = n_flux - 1 - j   # flux bin j (faint to bright) is magnitude bin n_flux - 1 - j (bright to faint)
        if counts_r[j] >= FIT_MIN_BIN_COUNT and counts_t[j] > 0 and 0 <= i < new.size:
            # damped: a measured flux is not the true one, so a bin's change also moves its neighbours
            new[i] *= float(np.clip(counts_r[j] / counts_t[j], 0.5, 2.0)) ** DAMPING
    from twin.sky import expected_counts_per_bin

    edges_m = np.linspace(lo, hi, n_bins + 1)
    mass_old = expected_counts_per_bin(config, edges_m) / max(config.n_stars, 1)
    mass_new = mass_old * new / np.where(old > 0, old, 1.0)
    n_stars = max(10, int(round(config.n_stars * float(mass_new.sum()) / max(float(mass_old.sum()), 1e-12))))
    return dataclasses.replace(config, star_mag_weights=tuple(float(v) for v in new), n_stars=n_stars,
                               n_galaxies=int(round(GALAXIES_PER_STAR * n_stars)))


def render_and_measure(config: Any, n_frames: int, seed: int, settings: detect_stage.DetectSettings
                       ) -> list[FrameMeasurement]:
    """Render ``n_frames`` twin frames, each of a sky of its own, calibrate them with the twin's own
    truth as a bundle would, and measure them as the real frames were measured."""
    out = []
    for i in range(n_frames):
        # a scene of its own per frame (the twin draws a sequence's stars from its seed): counts per
        # bin then average over skies instead of repeating one sky's Poisson draw
        image_e, var_e2, mask = calibrated_twin_frame(config, 0, seed * 1000 + i)
        out.append(measure_frame(f"twin-{i}", image_e, var_e2, mask, config.exposure_s, settings,
                                 saturated=(mask & 2) > 0))
    return out


def calibrated_twin_frame(config: Any, index: int, seed: int) -> tuple[Any, Any, Any]:
    """A twin frame calibrated as the node calibrates the real camera's: the twin's own truth as the
    bundle, its pixels of less than half the mean response masked like the bundle's low-response
    ones, saturation as mask bit 2; (image_e, variance_e2, mask uint8)."""
    from calibration.masters import LOW_RESPONSE_BELOW
    from engines.training.dataset import calibrate_twin_frame
    from twin import simulate_frame

    frame = simulate_frame(config, index, seed)
    image_e, var_e2, bad = calibrate_twin_frame(frame, config)
    mask = (bad | (config.detector.flat_field() < LOW_RESPONSE_BELOW)).astype(np.uint8)
    mask[frame.raw_adu >= config.detector.saturate_adu - 1] |= 2
    image_e[mask != 0] = 0.0
    return image_e, var_e2, mask


def distances(real: Sequence[FrameMeasurement], twin: Sequence[FrameMeasurement]) -> dict[str, Any]:
    """Relative distances twin/real - 1: PSF FWHM, sky noise, and counts in every flux bin of both."""
    r, t = measure_summary(real), measure_summary(twin)
    edges_r, counts_r = counts_per_flux_bin(real)
    _, counts_t = _counts_on(edges_r, twin)
    bins = []
    for lo, cr, ct in zip(edges_r[:-1].tolist(), counts_r.tolist(), counts_t.tolist(), strict=True):
        bins.append({"log_flux_e": [round(lo, 3), round(lo + FLUX_BIN_DEX, 3)], "real_per_frame": round(cr, 2),
                     "twin_per_frame": round(ct, 2), "distance": round(ct / cr - 1.0, 4) if cr > 0 else None,
                     "counted": cr >= MIN_BIN_COUNT,
                     # the Poisson error of the ratio, from both sets' totals
                     "error": round(math.sqrt(1 / max(cr * len(real), 1) + 1 / max(ct * len(twin), 1)), 4)})
    counted = [b["distance"] for b in bins if b["counted"] and b["distance"] is not None]
    return {
        "fwhm_px": {"real": r["fwhm_px"], "twin": t["fwhm_px"], "distance": t["fwhm_px"] / r["fwhm_px"] - 1.0},
        "sky_noise_e": {"real": r["sky_noise_e"], "twin": t["sky_noise_e"],
                        "distance": t["sky_noise_e"] / r["sky_noise_e"] - 1.0},
        "beta": {"real": r["beta"], "twin": t["beta"], "distance": t["beta"] / r["beta"] - 1.0},
        "ellipticity": {"real": r["ellipticity"], "twin": t["ellipticity"]},
        "detections": {"real": r["detections"], "twin": t["detections"],
                       "distance": t["detections"] / max(r["detections"], 1) - 1.0},
        "counts_per_flux_bin": bins,
        "counts_max_distance": max((abs(d) for d in counted), default=None),
        "counts_median_distance": float(np.median(np.abs(counted))) if counted else None,
    }


def _counts_on(edges: NDArray[np.float64], frames: Sequence[FrameMeasurement]
               ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    values = np.concatenate([f.log_flux_e[(f.snr >= 5.0) & f.source] for f in frames])
    return edges, np.histogram(values, bins=edges)[0] / max(1, len(frames))


def fit_twin(real: Sequence[FrameMeasurement], inst: Instrument, settings: detect_stage.DetectSettings, *,
             rounds: int = 12, n_frames: int = 8, seed: int = 20261204,
             progress: Callable[[str, int, int], None] | None = None) -> FittedTwin:
    """Fit the twin to the real frames in ``rounds`` of render-measure-scale on ``n_frames`` twin
    frames; the last round's frames, twice as many, are measured afresh for the distances (with
    four and six, a flux bin of 50 sources a frame moved by 8-14 % between runs on its noise alone)."""
    config = initial_config(real, inst)
    r = measure_summary(real)
    edges_r, counts_r = counts_per_flux_bin(real)
    rn2 = inst.read_noise_e ** 2
    twin: list[FrameMeasurement] = []
    for k in range(rounds):
        if progress:
            progress("fitting the twin", 0 if k == 0 else 1, rounds)
        # one seed for the fitting rounds (its noise cannot pump the weights round to round), a
        # fresh one for the frames the distances come from
        last = k == rounds - 1
        twin = render_and_measure(config, n_frames * (1 + last), seed + last, settings)
        t = measure_summary(twin)
        if last:
            break
        fwhm = config.psf_fwhm_arcsec * r["fwhm_px"] / t["fwhm_px"]
        sky_ratio = max(r["sky_noise_e"] ** 2 - rn2, 1.0) / max(t["sky_noise_e"] ** 2 - rn2, 1.0)
        _, counts_t = _counts_on(edges_r, twin)
        config = _reweigh(dataclasses.replace(config, psf_fwhm_arcsec=fwhm,
                                              sky_e_per_s=config.sky_e_per_s * sky_ratio),
                          edges_r, counts_r, counts_t)
    if progress:
        progress("fitting the twin", 1, rounds)
    return FittedTwin(config=config, twin_frames=tuple(twin), distances=distances(real, twin), rounds=rounds)


def preset(config: Any) -> dict[str, Any]:
    """The fitted instrument as TrainSettings.instrument takes it (optics, sky, exposure, noise)."""
    det = config.detector
    return {"pixel_scale_arcsec": config.pixel_scale_arcsec, "psf_fwhm_arcsec": config.psf_fwhm_arcsec,
            "psf_beta": config.psf_beta, "psf_fwhm_variation": config.psf_fwhm_variation,
            "psf_ellipticity": config.psf_ellipticity, "exposure_s": config.exposure_s,
            "sky_e_per_s": config.sky_e_per_s, "zero_point_mag": config.zero_point_mag,
            "star_mag_range": list(config.star_mag_range), "star_count_slope": config.star_count_slope,
            "star_mag_weights": list(config.star_mag_weights),
            "galaxy_mag_range": list(config.galaxy_mag_range),
            "detector": {"gain_e_per_adu": det.gain_e_per_adu, "read_noise_e": det.read_noise_e,
                         "bias_adu": det.bias_adu, "full_well_e": det.full_well_e}}
