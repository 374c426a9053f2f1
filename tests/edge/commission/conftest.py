"""A twin-made foreign instrument: another PSF, noise, gain and pixel scale than the engine was trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from twin import DetectorModel, TwinConfig, make_calibration_set, simulate_frame

#: the engine's training twin has 0.5 arcsec pixels, a 3 px Moffat of beta 3, gain 1.5 and 5 e- read noise
FOREIGN_DETECTOR = DetectorModel(shape_px=(400, 400), gain_e_per_adu=2.6, read_noise_e=8.0, bias_adu=900.0,
                                 full_well_e=90000.0, hot_pixel_fraction=2e-4, n_bad_columns=1, vignetting=0.2,
                                 seed=23, name="foreign-cam")
FOREIGN = TwinConfig(detector=FOREIGN_DETECTOR, pixel_scale_arcsec=1.2, psf_fwhm_arcsec=2.4, psf_beta=2.6,
                     exposure_s=60.0, sky_e_per_s=30.0, n_stars=260, n_galaxies=25, star_mag_range=(13.0, 21.5),
                     cosmic_ray_rate_per_s=1.0, streak_probability=0.0, filter="V")


def calibrated_twin(config: TwinConfig, index: int, seed: int) -> tuple[Any, Any, Any]:
    """A twin frame calibrated with its own truth, as a bundle would: (image_e, variance_e2, mask)."""
    from engines.training.dataset import calibrate_twin_frame

    image, var, mask = calibrate_twin_frame(simulate_frame(config, index, seed), config)
    return image, var, mask.astype(np.uint8)


@pytest.fixture(scope="session")
def foreign_night(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Raw FITS files of one night of the foreign camera: 4 biases, 4 flats and 4 science frames of
    one field (the gain in the headers is wrong by 60 %, as real headers can be)."""
    root = tmp_path_factory.mktemp("foreign")
    make_calibration_set(root / "cal", FOREIGN_DETECTOR, n_bias=4, n_dark=0, n_flat=4, flat_level_e=20000.0,
                         filters=("V",), seed=3)
    science = []
    # a denser field than FOREIGN's: the frame that calibrates the conformal set needs >= 200 detections
    field = FOREIGN.with_(n_stars=600, n_galaxies=40)
    for i in range(4):
        frame = simulate_frame(field, i, 77)
        path = root / f"science_{i}.fits"
        fits.PrimaryHDU(data=frame.raw_adu, header=frame.header).writeto(path)
        science.append(path)
    for path in [*root.glob("cal/*.fits"), *science]:
        with fits.open(path, mode="update") as hdul:
            hdul[0].header["GAIN"] = 1.6 * FOREIGN_DETECTOR.gain_e_per_adu
    return {"bias": sorted(root.glob("cal/bias_*.fits")), "flat": sorted(root.glob("cal/flat_*.fits")),
            "science": science, "root": root}


@pytest.fixture(scope="session")
def foreign_measured() -> list[Any]:
    """Two foreign-camera frames, measured."""
    from edge.commission.measure import measure_frame
    from edge.detect import DetectSettings

    out = []
    for i in range(2):
        image, var, mask = calibrated_twin(FOREIGN, i, 5)
        out.append(measure_frame(f"foreign-{i}", image, var, mask, FOREIGN.exposure_s, DetectSettings()))
    return out


def write(path: Path, data: Any, **header: Any) -> Path:
    """A primary-HDU FITS file with ``header``."""
    hdu = fits.PrimaryHDU(data)
    for key, value in header.items():
        hdu.header[key] = value
    hdu.writeto(path, overwrite=True)
    return path


@pytest.fixture(scope="session")
def foreign() -> Any:
    """The foreign instrument's config and a helper that calibrates one of its frames."""
    from types import SimpleNamespace

    return SimpleNamespace(config=FOREIGN, calibrated=calibrated_twin, write=write)
