"""Outlier exposure from ordinary twin objects, deformed inside their own frames (training only).

The blob shapes of :func:`engines.training.dataset.outlier_stamps` teach the engine that a random
multi-blob stamp is no known class. They are far from anything ordinary, so they do not teach
what lies just beside the ordinary classes: a point source whose image is not the PSF, a galaxy
whose light does not follow a smooth elliptical profile. :func:`deformed_stamps` makes such
stamps from the twin's own stars and galaxies, in place in a twin frame, so that sky, neighbours,
noise, calibration, detection and stamp cutting are exactly those of every other candidate:

- a star is drawn again with its PSF stretched along a random axis by a factor of
  ``STRETCH`` = 1.2 to 2.0 (the same flux; the frame's PSF at its position, only deformed);
- a galaxy's rendered light (its Sersic profile convolved with the PSF) is bent along a random
  axis (``v -> v + b u^2``) or swirled (rotated by an angle that falls off with radius).

Only objects bright enough to show their shape (``MIN_FLUX_SKY_SIGMAS``) and away from the frame
edge are deformed; the candidate the node's detection finds within ``MATCH_PX`` of a deformed
object's centre gives the stamp. None of this draws an anomaly family of ``twin.anomalies``; the
deformations are generic ones (an affine stretch, a bend, a swirl), chosen to cover "ordinary
class, wrong shape". Training code only: the node and the runtime never import this module.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from edge.detect import DetectSettings, detect, subtract_background
from edge.errors import ConfigError
from engines.stamps import CONTEXT_NORMALISATION, RECIPES, STAMP_SIZE, cut_for

if TYPE_CHECKING:
    from twin.instrument import Progress

__all__ = ["STRETCH", "deformed_stamps", "stretch_stars", "warp_galaxies"]

#: range of the factor by which a star's PSF is stretched along a random axis
STRETCH = (1.2, 2.0)
#: range of the bend coefficient b (1/px) of ``v -> v + b u^2``, either sign
BEND = (0.08, 0.3)
#: range of the swirl's central angle (rad) and of its fall-off radius (px)
SWIRL_ANGLE = (1.0, 3.0)
SWIRL_RADIUS_PX = (2.0, 6.0)
#: an object is deformed only when its flux is at least this many sky sigmas over a 36 px area
MIN_FLUX_SKY_SIGMAS = 15.0
#: objects brighter than this (electrons) saturate and are left alone
MAX_FLUX_E = 3e5
#: deformed objects stay this far (px) from the frame edge; a star is redrawn in a box of at least
#: this half-size (px), and of the twin's own box for it where that is larger
MARGIN_PX = 22
STAR_HALF_PX = 20
#: a candidate within this distance (px) of a deformed object's centre is its stamp
MATCH_PX = 3.0


def _pick(x: NDArray[np.float64], y: NDArray[np.float64], flux: NDArray[np.float64], n: int,
          min_flux: float, shape: tuple[int, int], rng: np.random.Generator) -> NDArray[np.int64]:
    """Up to ``n`` random indices of objects bright enough, not saturated, away from the edge."""
    ny, nx = shape
    ok = np.flatnonzero((x > MARGIN_PX) & (x < nx - 1 - MARGIN_PX) & (y > MARGIN_PX) & (y < ny - 1 - MARGIN_PX)
                        & (flux > min_flux) & (flux < MAX_FLUX_E))
    return np.sort(rng.choice(ok, size=min(n, ok.size), replace=False))


def stretch_stars(config: Any, stars: Any, idx: NDArray[np.int64], expected_e: NDArray[np.float32],
                  rng: np.random.Generator) -> None:
    """Replace stars ``idx`` in ``expected_e`` by their PSF stretched along a random axis (in place)."""
    from twin.psf import add_stamps, moffat_from_offsets, offsets, psf_at, stamp_half_px
    from twin.sky import flux_e, render_point_sources

    if idx.size == 0:
        return
    f32 = np.float32
    x, y = stars.x[idx], stars.y[idx]
    flux_e_star = flux_e(config, stars.mag[idx])
    flux = flux_e_star.astype(f32)[:, None, None]
    psf = psf_at(config, x, y)
    # at least the box the twin drew each star in, so that none of its wing is left behind
    half = max(STAR_HALF_PX, int(stamp_half_px(config, flux_e_star).max()))
    dy, dx = np.broadcast_arrays(*offsets(x, y, half))
    factor = rng.uniform(*STRETCH, idx.size).astype(f32)[:, None, None]
    phi = rng.uniform(0.0, np.pi, idx.size)
    c, s = np.cos(phi).astype(f32)[:, None, None], np.sin(phi).astype(f32)[:, None, None]
    # the stretched image at offset d is the PSF at the offset the stretch maps onto d
    u, v = (c * dx + s * dy) / factor, -s * dx + c * dy
    stretched = moffat_from_offsets(s * u + c * v, c * u - s * v, psf) * flux
    # take away each star exactly as the twin drew it (its own box and normalisation), then add
    for group in render_point_sources(config, x, y, flux_e_star):
        add_stamps(expected_e, -group.stamps, group.iy0, group.ix0)
    add_stamps(expected_e, stretched, np.rint(y).astype(np.int64) - half, np.rint(x).astype(np.int64) - half)


def warp_galaxies(config: Any, galaxies: Any, idx: NDArray[np.int64], expected_e: NDArray[np.float32],
                  rng: np.random.Generator) -> None:
    """Replace galaxies ``idx`` in ``expected_e`` by their light bent or swirled (in place)."""
    from scipy.ndimage import map_coordinates

    from twin.psf import add_stamps
    from twin.sky import Sources, flux_e, render_galaxies

    if idx.size == 0:
        return
    g = galaxies
    chosen = Sources(g.x[idx], g.y[idx], g.mag[idx], g.r_eff_px[idx], g.sersic_n[idx], g.axis_ratio[idx],
                     g.angle_rad[idx])
    for group in render_galaxies(config, chosen, flux_e(config, chosen.mag)):
        side = group.stamps.shape[1]
        half = side // 2
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) - half
        for j, stamp in enumerate(group.stamps):
            phi = rng.uniform(0.0, 2 * np.pi)
            c, s = np.cos(phi), np.sin(phi)
            u, v = c * xx + s * yy, -s * xx + c * yy
            if rng.random() < 0.5:
                u2, v2 = u, v + rng.uniform(*BEND) * rng.choice([-1.0, 1.0]) * u * u
            else:
                r = np.sqrt(u * u + v * v)
                angle = rng.uniform(*SWIRL_ANGLE) * np.exp(-r / rng.uniform(*SWIRL_RADIUS_PX))
                u2, v2 = u * np.cos(angle) - v * np.sin(angle), u * np.sin(angle) + v * np.cos(angle)
            warped = map_coordinates(stamp, [s * u2 + c * v2 + half, c * u2 - s * v2 + half], order=1,
                                     mode="constant").astype(np.float32)
            total = float(warped.sum())
            if total <= 0.0:
                continue
            warped *= np.float32(float(stamp.sum()) / total)
            add_stamps(expected_e, (warped - stamp)[None], group.iy0[j:j + 1], group.ix0[j:j + 1])


def deformed_stamps(config: Any, n: int, seed: int, per_frame: int = 30,
                    settings: DetectSettings | None = None, *, recipe: str = CONTEXT_NORMALISATION,
                    progress: Progress | None = None,
                    stage: str = "deforming stars and galaxies") -> NDArray[np.float32]:
    """``n`` stamps (n, channels, 32, 32) of the named ``recipe`` (engines.stamps.RECIPES) of
    deformed stars and galaxies, from as many twin frames as it takes.

    Each frame is its own scene (:func:`engines.training.dataset.frame_seed`); in each, up to
    ``per_frame / 2`` stars are stretched and as many galaxies bent or swirled, then the frame is
    exposed, calibrated and searched as the node does. The same arguments give the same stamps.
    ``progress`` is told of the stamps found (``n`` in all), under the name ``stage``.
    """
    from engines.training.dataset import calibrate_twin_frame, frame_seed
    from twin import simulate_frame
    from twin.detector import expose
    from twin.sky import draw_scene, flux_e

    if n <= 0:
        return np.zeros((0, RECIPES[recipe], STAMP_SIZE, STAMP_SIZE), np.float32)
    settings = settings or DetectSettings()
    rng = np.random.default_rng(seed)
    sky_e = config.sky_e_per_s * config.exposure_s
    min_flux = MIN_FLUX_SKY_SIGMAS * np.sqrt(sky_e * 36.0)
    out: list[NDArray[np.float32]] = []
    have, index = 0, 0
    if progress is not None:
        progress(stage, 0, n)
    while have < n:
        if (index >= 20 and have == 0) or index > 50 + 10 * n:
            raise ConfigError(f"the twin frames hold too few bright stars and galaxies to deform {n} "
                              f"(found {have} in {index} frames); use larger or denser frames",
                              where="deformed_stamps")
        frame_seed_i = frame_seed(seed, index)
        frame = simulate_frame(config, index, frame_seed_i)
        scene = draw_scene(config, frame_seed_i)
        index += 1
        expected = frame.expected_e.copy()
        stars, galaxies = scene.stars, scene.galaxies
        si = _pick(stars.x, stars.y, flux_e(config, stars.mag), per_frame // 2, min_flux, expected.shape, rng)
        gi = _pick(galaxies.x, galaxies.y, flux_e(config, galaxies.mag), per_frame // 2, min_flux,
                   expected.shape, rng)
        stretch_stars(config, stars, si, expected, rng)
        warp_galaxies(config, galaxies, gi, expected, rng)
        tx = np.concatenate([stars.x[si], galaxies.x[gi]])
        ty = np.concatenate([stars.y[si], galaxies.y[gi]])
        raw, _ = expose(expected, config.detector, config.exposure_s, rng)
        image_e, variance_e2, mask = calibrate_twin_frame(SimpleNamespace(raw_adu=raw), config, True)
        background = subtract_background(image_e, mask, settings)
        cands = detect(background.sub_e, variance_e2, mask, settings)
        if len(cands.x) == 0 or tx.size == 0:
            continue
        d2 = (cands.x[None, :] - tx[:, None]) ** 2 + (cands.y[None, :] - ty[:, None]) ** 2
        nearest = d2.argmin(axis=1)
        found = np.unique(nearest[d2[np.arange(tx.size), nearest] < MATCH_PX ** 2])
        stamps = cut_for(recipe, background.sub_e, variance_e2, mask, cands.x[found], cands.y[found])
        out.append(stamps)
        if progress is not None:
            progress(stage, min(len(stamps), n - have), n)
        have += len(stamps)
    return np.concatenate(out)[:n]
