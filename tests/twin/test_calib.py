"""Calibration-frame sets: photon transfer recovers gain and read noise; masters match the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from twin import CalibrationTruth, DetectorModel, TwinConfig, make_calibration_set, simulate_frame

DETECTOR = DetectorModel(shape_px=(256, 256), seed=11)


@pytest.fixture(scope="module")
def calib_set(tmp_path_factory: pytest.TempPathFactory) -> CalibrationTruth:
    """A small bias/dark/flat set of a 256x256 detector, in two filters."""
    out = tmp_path_factory.mktemp("calib")
    return make_calibration_set(out, DETECTOR, n_bias=4, n_dark=3, dark_exptime_s=300.0, n_flat=2,
                                filters=("r", "g"), seed=5)


def _read(files: list[Path], prefix: str) -> list[np.ndarray]:
    return [fits.getdata(p).astype(float) for p in files if p.name.startswith(prefix)]


def test_photon_transfer_recovers_gain_and_read_noise(calib_set: CalibrationTruth) -> None:
    """Janesick's two-bias, two-flat photon transfer gives the model's gain and read noise within 3 %."""
    b1, b2 = _read(calib_set.files, "bias_")[:2]
    f1, f2 = _read(calib_set.files, "flat_r_")
    live = ~calib_set.dead_pixels & ~calib_set.hot_pixels
    var_b = np.var((b1 - b2)[live])
    var_f = np.var((f1 - f2)[live])
    gain = ((f1 + f2)[live].mean() - (b1 + b2)[live].mean()) / (var_f - var_b)
    read_noise_e = gain * np.sqrt(var_b / 2)
    assert gain == pytest.approx(DETECTOR.gain_e_per_adu, rel=0.03)
    assert read_noise_e == pytest.approx(DETECTOR.read_noise_e, rel=0.03)


def test_master_bias_dark_and_flat_match_the_detector_truth(calib_set: CalibrationTruth) -> None:
    """Means of the stacks recover the bias columns, the dark current, the hot pixels and the flat."""
    bias = np.mean(_read(calib_set.files, "bias_"), axis=0)
    noise_adu = DETECTOR.read_noise_e / DETECTOR.gain_e_per_adu / 2  # four frames averaged
    assert np.std(bias - calib_set.bias_adu) == pytest.approx(noise_adu, rel=0.1)
    assert np.corrcoef(bias.mean(axis=0), calib_set.bias_adu.mean(axis=0))[0, 1] > 0.95
    dark_e = (np.mean(_read(calib_set.files, "dark_"), axis=0) - bias) * DETECTOR.gain_e_per_adu / 300.0
    live = ~calib_set.dead_pixels & ~calib_set.hot_pixels
    assert np.median(dark_e[live]) == pytest.approx(calib_set.dark_e_per_s, abs=0.01)
    found_hot = dark_e > 1.0
    assert np.array_equal(found_hot & ~calib_set.dead_pixels, calib_set.hot_pixels)
    flat = np.mean(_read(calib_set.files, "flat_g_"), axis=0) - bias
    flat /= flat[live].mean()
    assert np.all(flat[calib_set.dead_pixels] < 0.05)
    assert np.corrcoef(flat[live], calib_set.flat[live])[0, 1] > 0.9


def test_calibration_frames_carry_camera_headers(calib_set: CalibrationTruth) -> None:
    """Every file says its IMAGETYP, EXPTIME, GAIN and RDNOISE; flats say their FILTER; data are uint16."""
    kinds = {"bias_": ("BIAS", 0.0), "dark_": ("DARK", 300.0), "flat_r_": ("FLAT", None), "flat_g_": ("FLAT", None)}
    assert len(calib_set.files) == 4 + 3 + 2 * 2
    for path in calib_set.files:
        with fits.open(path) as hdul:
            h = hdul[0].header
            assert hdul[0].data.dtype == np.uint16 or (h["BITPIX"] == 16 and h["BZERO"] == 32768)
        prefix = next(k for k in kinds if path.name.startswith(k))
        imagetyp, exptime = kinds[prefix]
        assert h["IMAGETYP"] == imagetyp
        if exptime is not None:
            assert h["EXPTIME"] == exptime
        assert h["GAIN"] == DETECTOR.gain_e_per_adu and h["RDNOISE"] == DETECTOR.read_noise_e
        if imagetyp == "FLAT":
            assert h["FILTER"] == prefix.split("_")[1]


def test_light_frames_calibrated_with_the_truth_give_expected_electrons(calibrate) -> None:
    """(raw - bias) x gain - dark, divided by the flat, equals expected_e apart from shot and read noise."""
    cfg = TwinConfig(detector=DETECTOR, n_stars=100, n_galaxies=20)
    frame = simulate_frame(cfg, 0, 1)
    e = calibrate(frame, cfg)
    det = cfg.detector
    flat = det.flat_field()
    live = (flat > 0) & ~det.hot_pixel_mask() & (frame.raw_adu < det.saturate_adu - 10)
    sigma = np.sqrt(frame.expected_e * flat + det.dark_current_e_per_s() * cfg.exposure_s
                    + det.read_noise_e ** 2) / np.where(flat > 0, flat, 1)
    z = ((e - frame.expected_e) / sigma)[live]
    assert abs(z.mean()) < 0.02
    assert z.std() == pytest.approx(1.0, abs=0.03)


def test_fixed_patterns_are_shared_by_calibration_and_light_frames_of_one_seed(calib_set: CalibrationTruth) -> None:
    """The truth of a calibration set is the detector model's own patterns, which depend on its seed alone."""
    same = DetectorModel(shape_px=(256, 256), seed=11, gain_e_per_adu=2.0, read_noise_e=3.0)
    assert np.array_equal(same.hot_pixel_mask(), calib_set.hot_pixels)
    assert np.array_equal(same.dead_pixel_mask(), calib_set.dead_pixels)
    assert np.array_equal(same.flat_field(), calib_set.flat)
    other = DetectorModel(shape_px=(256, 256), seed=12)
    assert not np.array_equal(other.hot_pixel_mask(), calib_set.hot_pixels)
