"""Anomaly families: morphologies a classifier trained on the ordinary mix has never seen.

Each family can be switched on alone (``TwinConfig.anomalies``) and none is in the default mix:

- ``lens_arc``: an elliptical lens galaxy with a lensed arc or Einstein ring around it;
- ``comet``: a diffuse head with a fanning tail;
- ``lobster_psf``: a point source seen through a lobster-eye X-ray optic (a cross-shaped PSF);
- ``close_double``: two point sources closer than a FWHM, blended into one elongated blob;
- ``ghost``: an out-of-focus donut of a bright star reflected through the optical centre.

Lensed systems, lobster-eye sources and doubles are sky objects and so belong to the field's
reference catalog; comets move and ghosts are optical, so they do not. Draws come from the
sequence seed (the same anomalies in every frame of a set); rendering is pure numpy on stamps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from twin.instrument import ANOMALY_FAMILIES, TwinConfig
from twin.psf import F32, fft_convolve, moffat_from_offsets, offsets, psf_at
from twin.sky import Rendered, Scene, centred_psf, flux_e, scene_rng, sersic_stamps

IN_REFERENCE_CATALOG: frozenset[str] = frozenset({"lens_arc", "lobster_psf", "close_double"})
_HALF_PX = {"lens_arc": 24, "comet": 32, "lobster_psf": 24, "close_double": 12, "ghost": 40}
_LOBSTER_ARM_PX = 2.0  # scale of the 1/(1 + |t|/scale)^1.2 fall-off along the cross's arms
_MAG_RANGE = {"lens_arc": (17.5, 19.5), "comet": (16.5, 18.5), "lobster_psf": (16.5, 18.5),
              "close_double": (17.0, 19.0)}


def half_px(family: str, config: TwinConfig) -> int:
    """Stamp half-size of a family: sizes are set for a 3 px FWHM and grow with the PSF."""
    return int(np.ceil(_HALF_PX[family] * max(1.0, (config.fwhm_px + config.defocus_px) / 3.0)))


@dataclass(frozen=True)
class AnomalyDraw:
    """The N objects of one family: centres (0-based px), magnitudes and shape parameters."""

    family: str
    x: NDArray[np.float64]
    y: NDArray[np.float64]
    mag: NDArray[np.float64]
    params: dict[str, NDArray[np.float64]]

    @property
    def size_px(self) -> NDArray[np.float64]:
        """The family's characteristic size: Einstein radius, tail length, separation, ring radius (px)."""
        key = {"lens_arc": "einstein_px", "comet": "tail_px", "close_double": "separation_px",
               "ghost": "radius_px"}.get(self.family)
        return self.params[key] if key else np.full(len(self.x), _LOBSTER_ARM_PX)


def draw_anomalies(config: TwinConfig, seed: int, scene: Scene) -> list[AnomalyDraw]:
    """Anomalies of every switched-on family, ``n_anomalies_per_family`` each."""
    ny, nx = config.detector.shape_px
    draws = []
    for family in config.anomalies:
        g = scene_rng(seed, 100 + ANOMALY_FAMILIES.index(family))
        n = config.n_anomalies_per_family
        m = min(half_px(family, config) + 2, nx // 4, ny // 4)
        x, y = g.uniform(m, nx - 1 - m, n), g.uniform(m, ny - 1 - m, n)
        params: dict[str, NDArray[np.float64]] = {"angle_rad": g.uniform(0, 2 * np.pi, n)}
        if family == "ghost":
            x, y, mag, extra = _ghost_draw(config, g, scene, n, x, y)
            params.update(extra)
        else:
            lo, hi = _MAG_RANGE[family]
            mag = g.uniform(lo, hi, n) + config.zero_point_mag - 25.0
        if family == "lens_arc":
            params["einstein_px"] = g.uniform(2.0, 3.5, n) * config.fwhm_px
            params["arc_halfwidth_rad"] = np.where(g.uniform(0, 1, n) < 0.25, np.inf, g.uniform(0.5, 1.4, n))
            params["arc_fraction"] = g.uniform(0.4, 0.6, n)
            params["lens_r_eff_px"] = g.uniform(0.6, 1.0, n) * config.fwhm_px
        elif family == "comet":
            params["coma_px"] = g.uniform(0.6, 1.2, n) * config.fwhm_px
            params["tail_px"] = g.uniform(3.0, 7.0, n) * config.fwhm_px
            params["tail_fraction"] = g.uniform(0.4, 0.7, n)
        elif family == "lobster_psf":
            params["spot_fraction"] = g.uniform(0.25, 0.4, n)
        elif family == "close_double":
            params["separation_px"] = g.uniform(0.5, 1.0, n) * config.fwhm_px
            params["flux_ratio"] = g.uniform(0.3, 1.0, n)
        draws.append(AnomalyDraw(family, x, y, mag, params))
    return draws


def _ghost_draw(config: TwinConfig, g: np.random.Generator, scene: Scene, n: int, x: NDArray[np.float64],
                y: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
                                                 dict[str, NDArray[np.float64]]]:
    ny, nx = config.detector.shape_px
    radius = g.uniform(4.0, 8.0, n) * config.fwhm_px
    # a ghost must stand out of the sky: at least ~3 sigma of sky noise per pixel across its annulus
    sky = config.sky_e_per_s * config.exposure_s + config.detector.read_noise_e ** 2
    floor_e = 3.0 * np.sqrt(sky) * 0.84 * np.pi * radius ** 2
    flux = floor_e * g.uniform(1.0, 2.0, n)
    stars = scene.stars
    bright = np.argsort(stars.mag)[:n]
    m = min(half_px("ghost", config) + 2, nx // 4, ny // 4)
    for i, k in enumerate(bright):
        # the reflection goes through the optical axis, slightly off so it never sits on the star
        x[i] = np.clip(nx - 1 - stars.x[k] + 0.05 * nx, m, nx - 1 - m)
        y[i] = np.clip(ny - 1 - stars.y[k] + 0.03 * ny, m, ny - 1 - m)
        flux[i] = max(flux[i], 0.02 * float(flux_e(config, stars.mag[k])))
    mag = config.zero_point_mag - 2.5 * np.log10(flux / config.exposure_s)
    return x, y, mag, {"radius_px": radius}


def render_anomalies(config: TwinConfig, draw: AnomalyDraw) -> Rendered:
    """PSF-convolved stamps (electrons) of one family's objects."""
    half = half_px(draw.family, config)
    x, y, p = draw.x, draw.y, draw.params
    flux = flux_e(config, draw.mag)
    psf = psf_at(config, x, y)
    dy, dx = offsets(x, y, half)
    if draw.family == "close_double":
        sep, ratio = p["separation_px"], p["flux_ratio"]
        c, s = np.cos(p["angle_rad"]), np.sin(p["angle_rad"])
        # place the pair so its flux-weighted centre is (x, y)
        w2 = ratio / (1 + ratio)
        shift = lambda d, a: (d * a).astype(F32)[:, None, None]  # noqa: E731
        first = moffat_from_offsets(dy + shift(sep * w2, s), dx + shift(sep * w2, c), psf)
        second = moffat_from_offsets(dy - shift(sep * (1 - w2), s), dx - shift(sep * (1 - w2), c), psf)
        stamps = (first * (1 - w2).astype(F32)[:, None, None] + second * w2.astype(F32)[:, None, None])
    else:
        intrinsic = _intrinsic(draw.family, config, x, y, p, dy, dx, half)
        intrinsic /= intrinsic.sum(axis=(1, 2), keepdims=True)
        stamps = fft_convolve(intrinsic, centred_psf(psf, half))
    stamps *= (flux / stamps.sum(axis=(1, 2), dtype=np.float64)).astype(F32)[:, None, None]
    return Rendered(stamps, np.rint(y).astype(np.int64) - half, np.rint(x).astype(np.int64) - half,
                    np.arange(len(x)))


def _intrinsic(family: str, config: TwinConfig, x: NDArray[np.float64], y: NDArray[np.float64],
               p: dict[str, NDArray[np.float64]], dy: NDArray[np.float32], dx: NDArray[np.float32],
               half: int) -> NDArray[np.float32]:
    """The object before the PSF, sampled on the stamp's pixel centres."""
    col = lambda a: np.asarray(a).astype(F32)[:, None, None]  # noqa: E731
    r = np.sqrt(dx * dx + dy * dy)
    phi = np.arctan2(dy, dx)
    c, s = col(np.cos(p["angle_rad"])), col(np.sin(p["angle_rad"]))
    u, v = c * dx + s * dy, c * dy - s * dx
    if family == "lens_arc":
        lens = sersic_stamps(x, y, p["lens_r_eff_px"], np.full(len(x), 4.0), np.full(len(x), 0.8),
                             p["angle_rad"], half, oversample=3)
        dphi = np.angle(np.exp(1j * (phi - col(p["angle_rad"])))).astype(F32)
        width = F32(0.35 * config.fwhm_px)
        arc = np.exp(-0.5 * ((r - col(p["einstein_px"])) / width) ** 2)
        arc *= np.exp(-0.5 * (dphi / col(p["arc_halfwidth_rad"])) ** 2)
        arc /= arc.sum(axis=(1, 2), keepdims=True)
        frac = col(p["arc_fraction"])
        return (lens * (1 - frac) + arc * frac).astype(F32)
    if family == "comet":
        coma = np.exp(-r / col(p["coma_px"])) / np.sqrt(r * r + F32(0.25))
        coma /= coma.sum(axis=(1, 2), keepdims=True)
        t = np.maximum(-u, 0.0)  # the tail points away along -u
        spread = F32(0.5) + F32(0.3) * t
        tail = np.where(u < 0, np.exp(-t / col(p["tail_px"])) * np.exp(-0.5 * (v / spread) ** 2) / spread, 0.0)
        tail /= tail.sum(axis=(1, 2), keepdims=True)
        frac = col(p["tail_fraction"])
        return (coma * (1 - frac) + tail * frac).astype(F32)
    if family == "lobster_psf":
        spot = np.exp(-0.5 * (r / F32(0.5)) ** 2)
        spot /= spot.sum(axis=(1, 2), keepdims=True)
        arm = F32(_LOBSTER_ARM_PX)
        arms = (np.exp(-0.5 * (v / F32(0.4)) ** 2) * np.power(1 + np.abs(u) / arm, F32(-1.2))
                + np.exp(-0.5 * (u / F32(0.4)) ** 2) * np.power(1 + np.abs(v) / arm, F32(-1.2)))
        arms /= arms.sum(axis=(1, 2), keepdims=True)
        frac = col(p["spot_fraction"])
        return (spot * frac + arms * (1 - frac)).astype(F32)
    if family == "ghost":
        radius = col(p["radius_px"])
        return ((r <= radius) & (r >= 0.4 * radius)).astype(F32)
    raise ValueError(f"no renderer for anomaly family {family!r}")
