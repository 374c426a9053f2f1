"""The sky: the field's persistent sources (stars, Sersic galaxies), transients and the background.

The scene of a field (positions, magnitudes, shapes) comes from the sequence seed only, so every
frame of a set shows the same stars and galaxies and the reference catalog is the same for all.
Renderers return stamps and their corners; the only frame-sized array made here is the sky
background. Nothing here draws noise or knows about the detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from twin.instrument import TwinConfig
from twin.psf import (
    F32,
    PsfParams,
    add_stamps,
    fft_convolve,
    moffat_from_offsets,
    moffat_stamps,
    psf_at,
    stamp_half_px,
)

_STARS, _GALAXIES, _TRANSIENTS, _CLUSTER = 1, 2, 3, 4
_GALAXY_HALVES = (8, 16, 24, 32, 48)


@dataclass(frozen=True)
class Sources:
    """Sources of one kind: 0-based pixel centres, magnitudes and (for galaxies) Sersic shapes."""

    x: NDArray[np.float64]
    y: NDArray[np.float64]
    mag: NDArray[np.float64]
    r_eff_px: NDArray[np.float64] | None = None
    sersic_n: NDArray[np.float64] | None = None
    axis_ratio: NDArray[np.float64] | None = None
    angle_rad: NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class Scene:
    """The persistent content of a field plus its transients."""

    stars: Sources
    galaxies: Sources
    transients: Sources


def scene_rng(seed: int, stream: int) -> np.random.Generator:
    """The generator of one part of the field's scene; depends on the sequence seed only."""
    return np.random.default_rng([seed, 0x5C3E, stream])


def flux_e(config: TwinConfig, mag: NDArray[np.float64]) -> NDArray[np.float64]:
    """Electrons collected in the exposure from a source of magnitude ``mag``."""
    return config.exposure_s * 10.0 ** (-0.4 * (np.asarray(mag, float) - config.zero_point_mag))


def sample_magnitudes(rng: np.random.Generator, n: int, mag_range: tuple[float, float], slope: float) -> NDArray[np.float64]:
    """Magnitudes with dN/dm proportional to 10^(slope m) on ``mag_range`` (inverse-CDF sampling)."""
    lo, hi = mag_range
    u = rng.uniform(0.0, 1.0, n)
    if slope == 0:
        return lo + u * (hi - lo)
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + u * (b - a)) / slope


def sample_weighted_magnitudes(rng: np.random.Generator, n: int, mag_range: tuple[float, float], slope: float,
                               weights: tuple[float, ...]) -> NDArray[np.float64]:
    """Magnitudes with dN/dm proportional to 10^(slope m) times the weight of each of the equal-width
    bins ``weights`` splits ``mag_range`` into (a measured luminosity function on a power law)."""
    if not weights:
        return sample_magnitudes(rng, n, mag_range, slope)
    lo, hi = mag_range
    edges = np.linspace(lo, hi, len(weights) + 1)
    mass = np.asarray(weights, float) * np.diff(_law_cdf(edges, lo, hi, slope))
    k = rng.choice(len(weights), size=n, p=mass / mass.sum())
    out = np.empty(n)
    u = rng.uniform(0.0, 1.0, n)
    for j in np.unique(k):
        pick = k == j
        a, b = edges[j], edges[j + 1]
        if slope == 0:
            out[pick] = a + u[pick] * (b - a)
        else:
            ea, eb = 10.0 ** (slope * a), 10.0 ** (slope * b)
            out[pick] = np.log10(ea + u[pick] * (eb - ea)) / slope
    return out


def _law_cdf(e: NDArray[np.float64], lo: float, hi: float, s: float) -> NDArray[np.float64]:
    e = np.clip(np.asarray(e, float), lo, hi)
    return (e - lo) / (hi - lo) if s == 0 else (10.0 ** (s * e) - 10.0 ** (s * lo)) / (10.0 ** (s * hi) - 10.0 ** (s * lo))


def expected_counts_per_bin(config: TwinConfig, edges: NDArray[np.float64]) -> NDArray[np.float64]:
    """Expected number of stars in each magnitude bin of ``edges`` under the configured law."""
    lo, hi = config.star_mag_range
    s = config.star_count_slope
    if config.star_mag_weights:
        fine = np.linspace(lo, hi, 64 * len(config.star_mag_weights) + 1)
        w = np.repeat(np.asarray(config.star_mag_weights, float), 64)
        mass = w * np.diff(_law_cdf(fine, lo, hi, s))
        cum = np.concatenate([[0.0], np.cumsum(mass) / mass.sum()])
        return config.n_stars * np.diff(np.interp(np.clip(np.asarray(edges, float), lo, hi), fine, cum))
    return config.n_stars * np.diff(_law_cdf(np.asarray(edges, float), lo, hi, s))


def _uniform_positions(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    ny, nx = shape
    return rng.uniform(-0.5, nx - 0.5, n), rng.uniform(-0.5, ny - 0.5, n)


def _add_cluster(config: TwinConfig, g: np.random.Generator, x: NDArray[np.float64], y: NDArray[np.float64],
                 mag: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Append cluster stars: projected Plummer profile, M(<R) = R^2 / (R^2 + a^2), inverted."""
    ny, nx = config.detector.shape_px
    n = config.cluster_n_stars
    u = g.uniform(0.0, 0.999, n)
    radius = config.cluster_core_px * np.sqrt(u / (1.0 - u))
    theta = g.uniform(0.0, 2 * np.pi, n)
    fx, fy = config.cluster_centre_frac
    cx = fx * (nx - 1) + radius * np.cos(theta)
    cy = fy * (ny - 1) + radius * np.sin(theta)
    inside = (cx > -0.5) & (cx < nx - 0.5) & (cy > -0.5) & (cy < ny - 0.5)
    cmag = sample_magnitudes(g, n, config.cluster_mag_range, config.star_count_slope)
    return (np.concatenate([x, cx[inside]]), np.concatenate([y, cy[inside]]),
            np.concatenate([mag, cmag[inside]]))


def draw_scene(config: TwinConfig, seed: int) -> Scene:
    """The field's stars, galaxies and transients for a sequence seed."""
    shape = config.detector.shape_px
    g = scene_rng(seed, _STARS)
    x, y = _uniform_positions(g, config.n_stars, shape)
    mag = sample_weighted_magnitudes(g, config.n_stars, config.star_mag_range, config.star_count_slope,
                                     config.star_mag_weights)
    if config.cluster_n_stars:
        x, y, mag = _add_cluster(config, scene_rng(seed, _CLUSTER), x, y, mag)
    stars = Sources(x, y, mag)

    g = scene_rng(seed, _GALAXIES)
    n = config.n_galaxies
    x, y = _uniform_positions(g, n, shape)
    lo, hi = config.galaxy_r_eff_arcsec
    galaxies = Sources(
        x, y, sample_magnitudes(g, n, config.galaxy_mag_range, 0.35),
        r_eff_px=np.exp(g.uniform(np.log(lo), np.log(hi), n)) / config.pixel_scale_arcsec,
        sersic_n=np.exp(g.uniform(np.log(0.7), np.log(4.0), n)),
        axis_ratio=g.uniform(0.3, 1.0, n), angle_rad=g.uniform(0.0, np.pi, n))

    g = scene_rng(seed, _TRANSIENTS)
    n = config.n_transients
    # keep transients off the edges so the node can cut a full stamp around each
    ny, nx = shape
    m = min(16, nx // 4, ny // 4)
    transients = Sources(g.uniform(m, nx - 1 - m, n), g.uniform(m, ny - 1 - m, n),
                         g.uniform(17.0, 20.0, n) + config.zero_point_mag - 25.0)
    return Scene(stars, galaxies, transients)


def sky_background_e(config: TwinConfig, rng: np.random.Generator) -> tuple[NDArray[np.float32], float]:
    """Sky electrons per pixel with a linear gradient in a random direction; also the gradient angle."""
    ny, nx = config.detector.shape_px
    phi = float(rng.uniform(0.0, 2 * np.pi))
    level = config.sky_e_per_s * config.exposure_s
    half = config.sky_gradient / 2.0
    u = np.linspace(-1.0, 1.0, nx, dtype=np.float64)
    v = np.linspace(-1.0, 1.0, ny, dtype=np.float64)
    col = (level * half * np.cos(phi) * u).astype(F32)
    row = (level * (1.0 + half * np.sin(phi) * v)).astype(F32)
    return np.add.outer(row, col).astype(F32, copy=False), phi


def sky_at(config: TwinConfig, phi: float, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Sky electrons per pixel at 0-based positions, consistent with ``sky_background_e``."""
    ny, nx = config.detector.shape_px
    u = 2.0 * np.asarray(x, float) / max(nx - 1, 1) - 1.0
    v = 2.0 * np.asarray(y, float) / max(ny - 1, 1) - 1.0
    half = config.sky_gradient / 2.0
    return config.sky_e_per_s * config.exposure_s * (1.0 + half * (np.cos(phi) * u + np.sin(phi) * v))


@dataclass(frozen=True)
class Rendered:
    """Stamps of N objects (electrons) with their lower-left frame corners."""

    stamps: NDArray[np.float32]
    iy0: NDArray[np.int64]
    ix0: NDArray[np.int64]
    order: NDArray[np.int64]  # which input object each stamp belongs to

    def add_to(self, image: NDArray[np.float32]) -> None:
        """Add every stamp into ``image`` in place."""
        add_stamps(image, self.stamps, self.iy0, self.ix0)


def _batches(halves: NDArray[np.int64], batch: int) -> list[tuple[NDArray[np.int64], int]]:
    """Indices grouped by stamp half-size, in batches small enough to keep the temporaries in cache."""
    out = []
    for half in np.unique(halves):
        idx = np.flatnonzero(halves == half)
        out += [(idx[i:i + batch], int(half)) for i in range(0, len(idx), batch)]
    return out


def render_point_sources(config: TwinConfig, x: NDArray[np.float64], y: NDArray[np.float64],
                         flux: NDArray[np.float64]) -> list[Rendered]:
    """PSF stamps of point sources, grouped by stamp size (bright stars get wider stamps)."""
    halves = stamp_half_px(config, flux)
    out = []
    for idx, half in _batches(halves, 1024):
        stamps = moffat_stamps(x[idx], y[idx], psf_at(config, x[idx], y[idx]), int(half))
        stamps *= flux[idx].astype(F32)[:, None, None]
        iy0 = np.rint(y[idx]).astype(np.int64) - half
        ix0 = np.rint(x[idx]).astype(np.int64) - half
        out.append(Rendered(stamps, iy0, ix0, idx))
    return out


def sersic_b(n: NDArray[np.float64]) -> NDArray[np.float64]:
    """b_n such that r_eff encloses half the light (Ciotti & Bertin 1999 expansion)."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def sersic_stamps(x: NDArray[np.float64], y: NDArray[np.float64], r_eff_px: NDArray[np.float64],
                  n: NDArray[np.float64], q: NDArray[np.float64], angle_rad: NDArray[np.float64],
                  half: int, oversample: int = 3) -> NDArray[np.float32]:
    """Pixel-integrated (by ``oversample``^2 sub-samples) unit-sum Sersic stamps, not yet PSF-convolved."""
    s = 2 * half + 1
    iy0 = np.rint(y).astype(np.int64) - half
    ix0 = np.rint(x).astype(np.int64) - half
    sub = (np.arange(s * oversample) + 0.5) / oversample - 0.5
    dx = (ix0[:, None] + sub[None, :] - x[:, None]).astype(F32)[:, None, :]
    dy = (iy0[:, None] + sub[None, :] - y[:, None]).astype(F32)[:, :, None]
    c = np.cos(angle_rad).astype(F32)[:, None, None]
    sn = np.sin(angle_rad).astype(F32)[:, None, None]
    qq = q.astype(F32)[:, None, None]
    u = c * dx + sn * dy
    v = c * dy - sn * dx
    r = np.sqrt(u * u * qq + v * v / qq) / r_eff_px.astype(F32)[:, None, None]
    nn = n.astype(F32)[:, None, None]
    img = np.exp(-sersic_b(n).astype(F32)[:, None, None] * (np.power(r, F32(1.0) / nn) - F32(1.0)))
    img = img.reshape(len(x), s, oversample, s, oversample).mean(axis=(2, 4), dtype=F32)
    img /= img.sum(axis=(1, 2), keepdims=True)
    return img


def centred_psf(psf: PsfParams, half: int) -> NDArray[np.float32]:
    """PSF stamps centred on the middle pixel of a (2 half + 1)^2 stamp, one per source in ``psf``."""
    grid = np.arange(-half, half + 1, dtype=F32)
    n = len(psf.fwhm_px)
    dy = np.broadcast_to(grid[None, :, None], (n, 2 * half + 1, 1))
    dx = np.broadcast_to(grid[None, None, :], (n, 1, 2 * half + 1))
    return moffat_from_offsets(dy, dx, psf)


def galaxy_half_px(config: TwinConfig, r_eff_px: NDArray[np.float64]) -> NDArray[np.int64]:
    """Stamp half-size for galaxies: several half-light radii plus the PSF wings, from a few fixed sizes."""
    need = 4.0 * r_eff_px + 3.0 * config.fwhm_px + config.defocus_px
    halves = np.asarray(_GALAXY_HALVES)
    return halves[np.minimum(np.searchsorted(halves, need), len(halves) - 1)]


def render_galaxies(config: TwinConfig, gal: Sources, flux: NDArray[np.float64]) -> list[Rendered]:
    """Sersic profiles convolved with the local PSF on their stamps, grouped by stamp size."""
    if len(gal) == 0:
        return []
    assert gal.r_eff_px is not None and gal.sersic_n is not None
    assert gal.axis_ratio is not None and gal.angle_rad is not None
    halves = galaxy_half_px(config, gal.r_eff_px)
    out = []
    for idx, half in _batches(halves, 256):
        # the cusp of small, concentrated profiles needs sub-sampling; large ones do not
        oversample = 3 if half <= 16 else 1
        intrinsic = sersic_stamps(gal.x[idx], gal.y[idx], gal.r_eff_px[idx], gal.sersic_n[idx],
                                  gal.axis_ratio[idx], gal.angle_rad[idx], int(half), oversample)
        kernel = centred_psf(psf_at(config, gal.x[idx], gal.y[idx]), int(half))
        stamps = fft_convolve(intrinsic, kernel)
        stamps *= (flux[idx] / stamps.sum(axis=(1, 2), dtype=np.float64)).astype(F32)[:, None, None]
        out.append(Rendered(stamps, np.rint(gal.y[idx]).astype(np.int64) - half,
                            np.rint(gal.x[idx]).astype(np.int64) - half, idx))
    return out
