"""Fixtures for calibration tests: small synthetic FITS calibration sets with known truth.

The simulated detector here is deliberately simple (Gaussian read noise, Poisson shot noise,
a column bias pattern, hot pixels, a dead column, PRNU) so that every number a test checks has a
known true value; the digital twin's richer sets are used in test_twin_truth.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from numpy.typing import NDArray


@dataclass(frozen=True)
class SyntheticDetector:
    """Truth of the synthetic detector the fixtures write frames for."""

    shape_px: tuple[int, int]
    gain_e_per_adu: float
    read_noise_e: float
    bias_adu: NDArray[np.float32]
    dark_e_per_s: NDArray[np.float32]
    flat: NDArray[np.float32]
    hot: NDArray[np.bool_]
    dead_column: int

    def expose_adu(self, signal_e: NDArray[np.floating] | float, exposure_s: float,
                   rng: np.random.Generator) -> NDArray[np.uint16]:
        """One raw uint16 frame: flat response, dark, Poisson shot, read noise, gain, bias."""
        mean_e = np.asarray(signal_e, np.float64) * self.flat + self.dark_e_per_s * exposure_s
        charge = rng.poisson(np.broadcast_to(mean_e, self.shape_px)).astype(np.float64)
        charge += rng.normal(0.0, self.read_noise_e, self.shape_px)
        adu = np.rint(charge / self.gain_e_per_adu + self.bias_adu)
        return np.clip(adu, 0, 65535).astype(np.uint16)


def make_detector(shape_px: tuple[int, int] = (192, 256), *, gain_e_per_adu: float = 2.0,
                  read_noise_e: float = 4.0, seed: int = 7) -> SyntheticDetector:
    """A detector with a column bias pattern, 0.2 % hot pixels, 1 % PRNU and one dead column."""
    g = np.random.default_rng(seed)
    ny, nx = shape_px
    bias = (300.0 + g.normal(0, 2.0, nx)[None, :] + np.zeros(shape_px)).astype(np.float32)
    dark = np.full(shape_px, 0.05, np.float32)
    hot = g.random(shape_px) < 0.002
    dark[hot] = g.uniform(5.0, 50.0, int(hot.sum()))
    flat = (1.0 + 0.01 * g.standard_normal(shape_px)).astype(np.float32)
    dead_column = nx // 3
    flat[:, dead_column] = 0.0
    hot[:, dead_column] = False
    dark[:, dead_column] = 0.05
    return SyntheticDetector(shape_px, gain_e_per_adu, read_noise_e, bias, dark, flat, hot, dead_column)


def write_fits(path: Path, data: NDArray[Any], **header: Any) -> Path:
    """Write ``data`` as a primary-HDU FITS file with the given header keys."""
    hdu = fits.PrimaryHDU(data)
    for key, value in header.items():
        hdu.header[key.replace("_", "-")] = value
    hdu.writeto(path, overwrite=True)
    return path


def write_calibration_set(folder: Path, det: SyntheticDetector, *, n_bias: int = 6, n_dark: int = 4,
                          n_flat: int = 6, dark_s: float = 120.0, flat_e: float = 15000.0, flat_s: float = 2.0,
                          filters: tuple[str, ...] = ("r",), seed: int = 11,
                          spellings: tuple[str, str, str] = ("Bias Frame", "Dark Frame", "Flat Field"),
                          extra: dict[str, Any] | None = None) -> list[Path]:
    """Write biases, darks and flats of ``det`` into ``folder`` with common IMAGETYP spellings."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    keys = {"GAIN": det.gain_e_per_adu, "RDNOISE": det.read_noise_e, **(extra or {})}
    out = []
    for i in range(n_bias):
        out.append(write_fits(folder / f"bias_{i:03d}.fits", det.expose_adu(0.0, 0.0, rng),
                              IMAGETYP=spellings[0], EXPTIME=0.0, **keys))
    for i in range(n_dark):
        out.append(write_fits(folder / f"dark_{i:03d}.fits", det.expose_adu(0.0, dark_s, rng),
                              IMAGETYP=spellings[1], EXPTIME=dark_s, **keys))
    for f in filters:
        for i in range(n_flat):
            out.append(write_fits(folder / f"flat_{f}_{i:03d}.fits", det.expose_adu(flat_e, flat_s, rng),
                                  IMAGETYP=spellings[2], EXPTIME=flat_s, FILTER=f, **keys))
    return out


@pytest.fixture(scope="session")
def detector() -> SyntheticDetector:
    """The synthetic detector shared by the calibration tests."""
    return make_detector()


@pytest.fixture(scope="session")
def calib_folder(tmp_path_factory: pytest.TempPathFactory, detector: SyntheticDetector) -> Path:
    """A folder with 6 biases, 4 darks and 6 r-band flats of the synthetic detector."""
    folder = tmp_path_factory.mktemp("calset")
    write_calibration_set(folder, detector)
    return folder


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory: pytest.TempPathFactory, calib_folder: Path) -> Path:
    """A bundle built from ``calib_folder``."""
    from calibration import build_bundle

    path = tmp_path_factory.mktemp("bundle") / "bundle.fits"
    build_bundle(calib_folder, path)
    return path


@pytest.fixture
def fits_writer(tmp_path: Path) -> Callable[..., Path]:
    """Write a small FITS file into the test's temporary folder: ``fits_writer(name, data, **header)``."""
    def _write(name: str, data: NDArray[Any], **header: Any) -> Path:
        return write_fits(tmp_path / name, data, **header)
    return _write


@pytest.fixture(scope="session")
def synth() -> SimpleNamespace:
    """The synthetic-detector helpers (make_detector, write_calibration_set, write_fits) for tests."""
    return SimpleNamespace(make_detector=make_detector, write_calibration_set=write_calibration_set,
                           write_fits=write_fits)
