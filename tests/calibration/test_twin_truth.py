"""Calibration against the digital twin's truth: gain, read noise, hot pixels, calibrated frames.

These are the acceptance figures of the calibration issue, measured on a twin calibration set
of 256x256 pixels written by ``twin.make_calibration_set`` and on frames from
``twin.simulate_frame`` with the same detector.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from calibration import MASK_BAD, MASK_SATURATED, Calibrator, build_bundle
from twin import DetectorModel, TwinConfig, make_calibration_set, simulate_frame

DETECTOR = DetectorModel(shape_px=(256, 256), gain_e_per_adu=1.5, read_noise_e=5.0, hot_pixel_fraction=2e-3,
                         seed=3)


@pytest.fixture(scope="module")
def twin_bundle(tmp_path_factory: pytest.TempPathFactory):
    """(truth, masters, bundle path) for a twin calibration set of 10 biases, 5 darks, 10 r flats."""
    folder = tmp_path_factory.mktemp("twin_cal")
    truth = make_calibration_set(folder, DETECTOR, seed=5)
    path = folder.parent / "twin_bundle.fits"
    masters, _ = build_bundle(folder, path)
    return truth, masters, path


def test_twin_gain_within_2_percent_and_read_noise_within_5_percent(twin_bundle) -> None:
    """Photon transfer on the twin set recovers the detector's gain within 2 % and read noise within 5 %."""
    truth, masters, _ = twin_bundle
    assert masters.noise_source == "photon_transfer"
    assert abs(masters.gain_e_per_adu / truth.gain_e_per_adu - 1) < 0.02
    assert abs(masters.read_noise_e / truth.read_noise_e - 1) < 0.05


def test_twin_hot_pixels_are_found_with_few_false_flags(twin_bundle) -> None:
    """At least 99 % of the injected hot pixels are flagged, and under 0.1 % of normal pixels are."""
    truth, masters, _ = twin_bundle
    flagged = masters.bad_pixels != 0
    hot = truth.hot_pixels
    assert hot.sum() > 50
    assert flagged[hot].mean() >= 0.99
    normal = ~hot & ~truth.dead_pixels
    assert flagged[normal].mean() < 1e-3
    assert flagged[truth.dead_pixels].all()


def test_twin_frame_matches_noise_free_truth_within_its_variance(twin_bundle) -> None:
    """A calibrated twin frame's normalised residual against expected_e has unit variance within 5 %.

    Stars are kept fainter than the full well (magnitude 16 and fainter): a saturated pixel and
    its bleed trail are masked or outside any noise model, and are not what this test measures.
    """
    _, _, path = twin_bundle
    config = TwinConfig(detector=DETECTOR, n_stars=150, star_mag_range=(16.0, 23.0), n_galaxies=30,
                        streak_probability=0.0, exposure_s=30.0)
    with Calibrator.from_bundle(path) as cal:
        for index in range(2):
            frame = simulate_frame(config, index=index, seed=40 + index)
            f = cal.calibrate(frame.raw_adu, exposure_s=frame.header["EXPTIME"], header=frame.header)
            good = f.mask == 0
            z = (f.image_e - frame.expected_e) / np.sqrt(f.variance_e2)
            assert good.mean() > 0.99
            assert not (f.mask & MASK_SATURATED).any()
            assert (f.mask[DETECTOR.hot_pixel_mask()] & MASK_BAD).all()
            assert abs(float(z[good].var()) - 1.0) < 0.05
            sky = np.median(frame.expected_e)
            assert abs(float(np.median(f.image_e[good])) - sky) < 0.01 * sky


@pytest.mark.parametrize(("gain", "read_noise_e", "sky_e_per_s", "prnu", "tolerance"), [
    (1.5, 5.0, 5.0, 0.01, 0.03), (2.5, 8.0, 5.0, 0.01, 0.03), (1.0, 3.0, 2.0, 0.01, 0.03),
    (1.5, 5.0, 5.0, 0.0, 0.01)])
def test_sky_gain_of_a_twin_light_frame_matches_the_detector(gain: float, read_noise_e: float,
                                                             sky_e_per_s: float, prnu: float,
                                                             tolerance: float) -> None:
    """A light frame's own sky gives the detector's gain through stars, galaxies, cosmic rays and
    hot pixels: within 1 % with a perfect flat, within 3 % (and low) with the twin's 1 % PRNU, which
    adds (0.01 level)^2 to the sky's variance."""
    from calibration.frames import sky_gain

    det = DetectorModel(shape_px=(512, 512), gain_e_per_adu=gain, read_noise_e=read_noise_e, prnu_rms=prnu, seed=4)
    # the default field's source density (2500 sources on 1024x1024)
    config = dataclasses.replace(TwinConfig(detector=det), sky_e_per_s=sky_e_per_s, n_stars=500, n_galaxies=125)
    frame = simulate_frame(config, 0, 11)
    sky = sky_gain(frame.raw_adu.astype(np.float64) - det.bias_adu, read_noise_e / gain)
    assert sky is not None
    assert sky.gain_e_per_adu == pytest.approx(gain, rel=tolerance)
    if prnu > 0:
        assert sky.gain_e_per_adu < gain
    assert sky.gain_err_e_per_adu < 0.01 * gain
    assert sky.level_adu == pytest.approx(sky_e_per_s * config.exposure_s / gain, rel=0.05)


def test_sky_gain_without_sky_says_it_cannot_measure() -> None:
    """A frame whose sky is lost in the read noise gets None, not a wild gain."""
    from calibration.frames import sky_gain

    det = DetectorModel(shape_px=(256, 256), gain_e_per_adu=1.5, read_noise_e=20.0, seed=4)
    config = dataclasses.replace(TwinConfig(detector=det), sky_e_per_s=0.001, n_stars=0, n_galaxies=0)
    frame = simulate_frame(config, 0, 11)
    assert sky_gain(frame.raw_adu.astype(np.float64) - det.bias_adu, 20.0 / 1.5) is None
