"""Fixtures of the twin's tests: small configurations and frames, and the measurements they need."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import structlog
from numpy.typing import NDArray

from twin import DetectorModel, TwinConfig, TwinFrame, simulate_frame


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Undo the logging set-up of ``astro-edge`` runs, which bind the (pytest-captured) stderr of their test."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def small_config() -> TwinConfig:
    """A 512x512 detector at the default density of stars and galaxies, with streaks always on."""
    return TwinConfig(detector=DetectorModel(shape_px=(512, 512)), n_stars=200, n_galaxies=40,
                      streak_probability=1.0, cosmic_ray_rate_per_s=2.0)


@pytest.fixture(scope="session")
def small_frame(small_config: TwinConfig) -> TwinFrame:
    """Frame 0 of sequence seed 7 of ``small_config``."""
    return simulate_frame(small_config, 0, 7)


@pytest.fixture(scope="session")
def calibrate():
    """The function that calibrates a twin frame with its detector's truth (``calibrate_with_truth``)."""
    return calibrate_with_truth


@pytest.fixture(scope="session")
def fwhm_of():
    """The Moffat-fit FWHM measurement (``moffat_fwhm``)."""
    return moffat_fwhm


def calibrate_with_truth(frame: TwinFrame, config: TwinConfig) -> NDArray[np.float64]:
    """Electrons before flat response, from the raw ADU and the detector's own truth patterns."""
    det = config.detector
    flat = det.flat_field().astype(float)
    e = (frame.raw_adu.astype(float) - det.bias_frame_adu()) * det.gain_e_per_adu
    e -= det.dark_current_e_per_s() * config.exposure_s
    return np.divide(e, flat, out=np.zeros_like(e), where=flat > 0)


def moffat_fwhm(image: NDArray[np.float64], x: float, y: float, half: int = 8) -> float:
    """FWHM (px) of a Moffat with free beta fitted around the known centre (x, y) of a star.

    For each beta on a grid, I^(-1/beta) is linear in r^2; the beta with the least residual in
    intensity wins. Uses the pixels above a tenth of the peak.
    """
    ix, iy = int(round(x)), int(round(y))
    stamp = image[iy - half:iy + half + 1, ix - half:ix + half + 1]
    yy, xx = np.mgrid[iy - half:iy + half + 1, ix - half:ix + half + 1]
    r2 = ((xx - x) ** 2 + (yy - y) ** 2).ravel()
    v = stamp.ravel()
    use = v > 0.1 * v.max()
    best = (np.inf, np.nan)
    for beta in np.arange(1.5, 8.0, 0.05):
        t = v[use] ** (-1.0 / beta)
        a = np.vstack([np.ones(use.sum()), r2[use]]).T
        (c0, c1), *_ = np.linalg.lstsq(a, t, rcond=None)
        if c0 <= 0 or c1 <= 0:
            continue
        alpha2 = c0 / c1
        model = c0 ** (-beta) * (1 + r2[use] / alpha2) ** (-beta)
        resid = float(np.sum((model - v[use]) ** 2))
        if resid < best[0]:
            best = (resid, 2 * np.sqrt(alpha2) * np.sqrt(2 ** (1 / beta) - 1))
    return float(best[1])
