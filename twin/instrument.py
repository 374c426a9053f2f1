"""The twin's configuration: the detector (fixed patterns from one seed) and the observation.

``DetectorModel`` describes one physical camera. Its fixed patterns (bias columns, flat field,
hot, dead and bad-column pixels, dark-current map) depend only on ``DetectorModel.seed``, so the
calibration frames and the light frames of the same detector agree pixel for pixel.
``TwinConfig`` adds the sky, the optics and the exposure. Both are frozen value objects; this
module draws no per-frame randomness and renders nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import TwinError

#: ``progress(stage, advance, total)``: ``advance`` more of ``total`` units of ``stage`` are done
#: (0 when the stage starts). Long functions take one to report to a shell; it only observes.
Progress = Callable[[str, int, int], None]

ORDINARY_LABELS: tuple[str, ...] = ("star", "galaxy", "cosmic_ray", "hot_pixel", "streak")
ANOMALY_FAMILIES: tuple[str, ...] = ("lens_arc", "comet", "lobster_psf", "close_double", "ghost")

# Streams of the detector's own generator, one per fixed pattern, so that changing how one
# pattern is drawn never changes another.
_BIAS_STREAM, _FLAT_STREAM, _HOT_STREAM, _DEAD_STREAM, _COLUMN_STREAM = range(5)


@dataclass(frozen=True)
class DetectorModel:
    """One camera: gain, noise, bias, dark, flat, defects; fixed patterns come from ``seed`` only."""

    shape_px: tuple[int, int] = (4096, 4096)  # (ny, nx)
    gain_e_per_adu: float = 1.5
    read_noise_e: float = 5.0
    bias_adu: float = 500.0
    bias_column_rms_adu: float = 2.0  # fixed column pattern
    dark_e_per_s: float = 0.02
    full_well_e: float = 60000.0  # saturation, excess charge bleeds along columns
    hot_pixel_fraction: float = 1e-4
    dead_pixel_fraction: float = 2e-5
    n_bad_columns: int = 2
    prnu_rms: float = 0.01  # pixel response non-uniformity
    vignetting: float = 0.1  # fractional response drop at the corners
    seed: int = 1
    hot_pixel_dark_e_per_s: tuple[float, float] = (5.0, 200.0)  # log-uniform range of hot pixels' dark rate
    name: str = "twin-cam"

    def __post_init__(self) -> None:
        ny, nx = self.shape_px
        if self.seed < 0:
            raise TwinError(f"seed must be >= 0, got {self.seed}", where="DetectorModel.seed")
        if ny < 16 or nx < 16:
            raise TwinError(f"detector shape {self.shape_px} is too small; use at least (16, 16)", where="DetectorModel.shape_px")
        if self.gain_e_per_adu <= 0 or self.read_noise_e < 0 or self.full_well_e <= 0:
            raise TwinError("gain and full well must be positive and read noise non-negative", where="DetectorModel")
        if not 0 <= self.hot_pixel_fraction < 0.1 or not 0 <= self.dead_pixel_fraction < 0.1:
            raise TwinError("hot and dead pixel fractions must lie in [0, 0.1)", where="DetectorModel")
        if not 0 <= self.n_bad_columns < nx:
            raise TwinError(f"n_bad_columns={self.n_bad_columns} must lie in [0, {nx})", where="DetectorModel")
        if not 0 <= self.vignetting < 1 or self.prnu_rms < 0:
            raise TwinError("vignetting must lie in [0, 1) and prnu_rms be non-negative", where="DetectorModel")
        if self.bias_adu + 8 * self.bias_column_rms_adu + self.full_well_e / self.gain_e_per_adu > 65535:
            raise TwinError("bias plus full well in ADU exceeds the 16-bit range; raise the gain or lower the full well",
                            where="DetectorModel")

    def hot_pixel_mask(self) -> NDArray[np.bool_]:
        """Truth: pixels with a high dark current (shape_px)."""
        return fixed_patterns(self).hot.copy()

    def dead_pixel_mask(self) -> NDArray[np.bool_]:
        """Truth: pixels with zero response, bad columns included (shape_px)."""
        return fixed_patterns(self).dead.copy()

    def bad_columns(self) -> NDArray[np.int64]:
        """Truth: the 0-based column indices of the dead columns."""
        return fixed_patterns(self).bad_columns.copy()

    def flat_field(self) -> NDArray[np.float32]:
        """Truth: relative response (vignetting x PRNU, 0 at dead pixels), mean 1 over live pixels."""
        return fixed_patterns(self).flat.copy()

    def bias_frame_adu(self) -> NDArray[np.float32]:
        """Truth: noise-free bias in ADU with its fixed column structure."""
        return fixed_patterns(self).bias_adu.copy()

    def dark_current_e_per_s(self) -> NDArray[np.float32]:
        """Truth: dark current per pixel in e/s (``dark_e_per_s`` everywhere, hot pixels far higher)."""
        return fixed_patterns(self).dark_e_per_s.copy()

    @property
    def saturate_adu(self) -> float:
        """The ADU level of a full well above the nominal bias."""
        return float(self.bias_adu + self.full_well_e / self.gain_e_per_adu)


@dataclass(frozen=True)
class FixedPatterns:
    """The detector's fixed patterns, read-only arrays of shape_px (bad_columns: column indices)."""

    hot: NDArray[np.bool_]
    dead: NDArray[np.bool_]
    bad_columns: NDArray[np.int64]
    flat: NDArray[np.float32]
    bias_adu: NDArray[np.float32]
    dark_e_per_s: NDArray[np.float32]


@lru_cache(maxsize=2)
def fixed_patterns(det: DetectorModel) -> FixedPatterns:
    """Fixed patterns of a detector, computed once per model and cached (about 1 s at 4096x4096).

    The arrays are shared and read-only; the public ``DetectorModel`` methods hand out copies.
    """
    ny, nx = det.shape_px
    n = ny * nx

    def stream(k: int) -> np.random.Generator:
        return np.random.default_rng([det.seed, k])

    g = stream(_BIAS_STREAM)
    columns = g.normal(0.0, det.bias_column_rms_adu, nx).astype(np.float32)
    bias = np.empty((ny, nx), np.float32)
    bias[...] = np.float32(det.bias_adu) + columns[None, :]

    g = stream(_FLAT_STREAM)
    yy = (np.arange(ny, dtype=np.float32) - (ny - 1) / 2) / ((ny - 1) / 2)
    xx = (np.arange(nx, dtype=np.float32) - (nx - 1) / 2) / ((nx - 1) / 2)
    flat = g.standard_normal((ny, nx), dtype=np.float32)
    flat *= np.float32(det.prnu_rms)
    flat += np.float32(1.0)
    # radial fall-off, r^2 normalised so the corners (r^2 = 2) lose exactly `vignetting`
    flat *= (1.0 - det.vignetting * (yy[:, None] ** 2 + xx[None, :] ** 2) / 2.0).astype(np.float32)

    g = stream(_HOT_STREAM)
    n_hot = int(round(det.hot_pixel_fraction * n))
    hot_idx = g.choice(n, size=n_hot, replace=False) if n_hot else np.zeros(0, np.int64)
    lo, hi = det.hot_pixel_dark_e_per_s
    hot_rate = np.exp(g.uniform(np.log(lo), np.log(hi), n_hot)).astype(np.float32)
    dark = np.full((ny, nx), det.dark_e_per_s, np.float32)
    dark.ravel()[hot_idx] = hot_rate
    hot = np.zeros((ny, nx), bool)
    hot.ravel()[hot_idx] = True

    g = stream(_DEAD_STREAM)
    n_dead = int(round(det.dead_pixel_fraction * n))
    dead = np.zeros((ny, nx), bool)
    if n_dead:
        dead.ravel()[g.choice(n, size=n_dead, replace=False)] = True
    g = stream(_COLUMN_STREAM)
    bad_columns = np.sort(g.choice(np.arange(8, nx - 8) if nx > 32 else np.arange(nx),
                                   size=det.n_bad_columns, replace=False)).astype(np.int64)
    dead[:, bad_columns] = True
    hot &= ~dead
    dark[dead] = det.dark_e_per_s
    flat /= np.float32(flat[~dead].mean())
    flat[dead] = 0.0
    for arr in (hot, dead, bad_columns, flat, bias, dark):
        arr.flags.writeable = False
    return FixedPatterns(hot=hot, dead=dead, bad_columns=bad_columns, flat=flat, bias_adu=bias, dark_e_per_s=dark)


@dataclass(frozen=True)
class TwinConfig:
    """Sky, optics, exposure and injections of one simulated observation; size via ``detector``."""

    detector: DetectorModel = field(default_factory=DetectorModel)
    pixel_scale_arcsec: float = 0.5
    psf_fwhm_arcsec: float = 1.5  # Moffat FWHM at the field centre, as sampled by the pixels
    psf_beta: float = 3.0
    psf_fwhm_variation: float = 0.1  # fractional FWHM growth at the corners
    psf_ellipticity: float = 0.05  # astigmatism at the corners, tangential
    defocus_px: float = 0.0  # ring radius of a defocused (donut) PSF; 0 = in focus
    exposure_s: float = 30.0
    sky_e_per_s: float = 5.0  # per pixel at the field centre
    sky_gradient: float = 0.05  # sky x (1 + gradient/2 (u cos phi + v sin phi)), u, v in [-1, 1], phi per frame
    zero_point_mag: float = 25.0  # magnitude that gives 1 e/s
    n_stars: int = 2000
    star_mag_range: tuple[float, float] = (14.0, 23.0)
    star_count_slope: float = 0.3  # d log10 N / d mag
    #: relative weights of equal-width magnitude bins spanning ``star_mag_range`` that multiply the
    #: power law (a fitted instrument's measured counts); empty: the power law alone
    star_mag_weights: tuple[float, ...] = ()
    cluster_n_stars: int = 0  # extra stars in a Plummer-profile cluster (a globular cluster field)
    cluster_core_px: float = 50.0  # Plummer radius
    cluster_centre_frac: tuple[float, float] = (0.5, 0.5)  # (x, y) as fractions of the frame
    cluster_mag_range: tuple[float, float] = (12.0, 19.0)
    n_galaxies: int = 500
    galaxy_mag_range: tuple[float, float] = (17.0, 22.0)
    galaxy_r_eff_arcsec: tuple[float, float] = (0.5, 3.0)  # log-uniform range of half-light radii
    cosmic_ray_rate_per_s: float = 0.1  # hits per second per million pixels
    streak_probability: float = 0.1  # chance of one satellite or debris trail per frame
    anomalies: tuple[str, ...] = ()  # families switched on; none in the training mix
    n_anomalies_per_family: int = 5
    n_transients: int = 0
    ra_deg: float = 250.4235
    dec_deg: float = 36.4613
    rotation_deg: float = 0.0
    filter: str = "r"
    date_obs: str = "2026-03-20T03:00:00"  # UTC start of frame 0
    cadence_s: float = 35.0  # start-to-start time between frames

    def __post_init__(self) -> None:
        unknown = [a for a in self.anomalies if a not in ANOMALY_FAMILIES]
        if unknown:
            raise TwinError(f"unknown anomaly families {unknown}; choose from {list(ANOMALY_FAMILIES)}",
                            where="TwinConfig.anomalies")
        if len(set(self.anomalies)) != len(self.anomalies):
            raise TwinError(f"anomaly families repeat in {self.anomalies}", where="TwinConfig.anomalies")
        for name in ("pixel_scale_arcsec", "psf_fwhm_arcsec", "exposure_s", "psf_beta"):
            if getattr(self, name) <= 0:
                raise TwinError(f"{name} must be positive, got {getattr(self, name)}", where=f"TwinConfig.{name}")
        if self.psf_beta <= 1.0:
            raise TwinError("psf_beta must exceed 1 for a Moffat of finite flux", where="TwinConfig.psf_beta")
        for name in ("n_stars", "cluster_n_stars", "n_galaxies", "n_anomalies_per_family", "n_transients"):
            if getattr(self, name) < 0:
                raise TwinError(f"{name} must be >= 0", where=f"TwinConfig.{name}")
        if self.sky_e_per_s < 0 or self.cosmic_ray_rate_per_s < 0 or not 0 <= self.streak_probability <= 1:
            raise TwinError("sky and cosmic-ray rates must be >= 0 and streak_probability in [0, 1]", where="TwinConfig")
        if not 0 <= self.psf_ellipticity < 0.5 or self.defocus_px < 0:
            raise TwinError("psf_ellipticity must lie in [0, 0.5) and defocus_px be >= 0", where="TwinConfig")
        w = np.asarray(self.star_mag_weights, float)
        if w.size and (not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0):
            raise TwinError("star_mag_weights must be finite, >= 0 and not all 0", where="TwinConfig.star_mag_weights")
        object.__setattr__(self, "star_mag_weights", tuple(float(v) for v in w))
        for name in ("star_mag_range", "cluster_mag_range", "galaxy_mag_range", "galaxy_r_eff_arcsec"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise TwinError(f"{name}={getattr(self, name)} must be an increasing pair", where=f"TwinConfig.{name}")

    @property
    def fwhm_px(self) -> float:
        """PSF FWHM at the field centre in pixels."""
        return self.psf_fwhm_arcsec / self.pixel_scale_arcsec

    def with_size(self, size_px: int) -> TwinConfig:
        """A copy with a square ``size_px`` detector and star and galaxy counts scaled to keep their density."""
        ny, nx = self.detector.shape_px
        area = size_px * size_px / (ny * nx)
        return self.with_(size=size_px, n_stars=int(round(self.n_stars * area)),
                          n_galaxies=int(round(self.n_galaxies * area)))

    def with_(self, **changes: Any) -> TwinConfig:
        """A copy with fields changed (``dataclasses.replace``); ``size=N`` sets an N x N detector."""
        size = changes.pop("size", None)
        if size is not None:
            det = changes.get("detector", self.detector)
            changes["detector"] = dataclasses.replace(det, shape_px=(int(size), int(size)))
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as exc:
            raise TwinError(str(exc), where="TwinConfig.with_") from exc


def dsi_m13_config() -> TwinConfig:
    """The configured instrument that mimics ``m13-raw``: Orion StarShoot DSI, 5 s, crowded field.

    Chosen so that a twin frame and M13_blue_0001.fits look alike to sep (docs/twin.md).
    """
    det = DetectorModel(shape_px=(1040, 1392), gain_e_per_adu=1.0, read_noise_e=22.8, bias_adu=499.0,
                        bias_column_rms_adu=0.5, dark_e_per_s=0.5, full_well_e=40000.0,
                        hot_pixel_fraction=1.5e-4, hot_pixel_dark_e_per_s=(15.0, 40.0), dead_pixel_fraction=0.0,
                        n_bad_columns=0, prnu_rms=0.01, vignetting=0.05, seed=13, name="dsi-twin")
    return TwinConfig(detector=det, pixel_scale_arcsec=1.6, psf_fwhm_arcsec=8.0, psf_beta=2.5,
                      exposure_s=5.0, sky_e_per_s=2.0, sky_gradient=0.02, zero_point_mag=17.5,
                      n_stars=300, star_mag_range=(9.5, 17.5), star_count_slope=0.3,
                      cluster_n_stars=6000, cluster_core_px=80.0, cluster_centre_frac=(0.48, 0.485),
                      cluster_mag_range=(10.5, 18.0), n_galaxies=10,
                      galaxy_mag_range=(12.0, 16.0), cosmic_ray_rate_per_s=0.1, streak_probability=0.0,
                      ra_deg=250.4235, dec_deg=36.4613, filter="blue")
