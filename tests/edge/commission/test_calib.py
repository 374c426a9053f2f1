"""Commissioning's calibration step: the gain checked three ways, defects found in the science frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from calibration import read_bundle
from edge.commission.calib import build_commission_bundle, science_defects
from edge.errors import CalibrationInputError


def test_a_header_gain_the_sky_disagrees_with_is_not_used(foreign_night: dict[str, Any], foreign: Any,
                                                          tmp_path: Path) -> None:
    """The headers say a gain 60 % too high; photon transfer and the sky agree with each other, so the
    bundle carries the measured gain and says where it came from."""
    result = build_commission_bundle(foreign_night["bias"], [], foreign_night["flat"], foreign_night["science"],
                                     tmp_path / "b.fits")
    true_gain = foreign.config.detector.gain_e_per_adu
    noise = result.noise
    assert noise.header is not None and noise.header[0] == pytest.approx(1.6 * true_gain)
    assert noise.source in ("photon_transfer", "sky")
    assert noise.gain_e_per_adu == pytest.approx(true_gain, rel=0.06)
    assert "not" in noise.note
    masters, _ = read_bundle(tmp_path / "b.fits")
    assert masters.gain_e_per_adu == noise.gain_e_per_adu and masters.noise_source == noise.source


def test_science_frames_of_another_shape_are_refused_as_another_camera(foreign_night: dict[str, Any], foreign: Any,
                                                                       tmp_path: Path) -> None:
    """A science frame whose shape differs from the calibration frames' ends with a clear error."""
    odd = foreign.write(tmp_path / "odd.fits", np.zeros((100, 120), np.uint16) + 1000, EXPTIME=10.0)
    with pytest.raises(CalibrationInputError, match="mixed cameras"):
        build_commission_bundle(foreign_night["bias"], [], foreign_night["flat"], [odd], tmp_path / "b.fits")


def test_hot_pixels_and_a_bad_column_are_found_in_the_science_frames_and_stars_are_not() -> None:
    """A pixel far above its neighbours in every frame, alone, is hot; a sharp star (its neighbours lit)
    is not; a column offset in every frame is bad."""
    rng = np.random.default_rng(2)
    frames = []
    yy, xx = np.mgrid[0:80, 0:80]
    star = 4000.0 * np.exp(-((xx - 40.3) ** 2 + (yy - 30.6) ** 2) / (2 * 0.65 ** 2))
    for _ in range(5):
        img = rng.normal(1000.0, 10.0, (80, 80)) + star
        img[12, 17] += 500.0
        img[:, 60] += 40.0
        frames.append(img)
    hot, cols = science_defects(frames)
    assert hot[12, 17] and hot.sum() == 1
    assert list(cols) == [60]
