"""Tests for calibration.apply: the Calibrator on synthetic truth and on the real SAAO frame."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from calibration import (
    MASK_BAD,
    MASK_NONFINITE,
    MASK_SATURATED,
    CalibratedFrame,
    Calibrator,
    Masters,
    build_bundle,
)
from edge.errors import CalibrationInputError, MissingMasterError

SKY_E = 300.0
EXPOSURE_S = 60.0


@pytest.fixture(scope="module")
def calibrator(bundle_path: Path):
    """A single-threaded Calibrator on the shared synthetic bundle."""
    with Calibrator.from_bundle(bundle_path) as cal:
        yield cal


@pytest.fixture(scope="module")
def light(detector) -> np.ndarray:
    """A raw uint16 light frame of the synthetic detector: flat sky, one bright star."""
    rng = np.random.default_rng(5)
    signal = np.full(detector.shape_px, SKY_E)
    signal[100:103, 50:53] += 20000.0
    return detector.expose_adu(signal, EXPOSURE_S, rng)


def _truth(detector) -> np.ndarray:
    t = np.full(detector.shape_px, SKY_E)
    t[100:103, 50:53] += 20000.0
    return t


def test_calibrated_frame_matches_truth_within_its_variance(calibrator, light, detector) -> None:
    """(image_e - truth) / sqrt(variance) has unit variance within 5 % over unmasked pixels; the level is right.

    The normalised residual's mean sits slightly below 0 (about -1 / (2 sqrt(signal))) because the
    shot-noise term uses the measured signal, so the level is checked in electrons instead.
    """
    f = calibrator.calibrate(light, exposure_s=EXPOSURE_S, filter_name="r")
    good = f.mask == 0
    residual = f.image_e - _truth(detector)
    z = residual / np.sqrt(f.variance_e2)
    assert good.mean() > 0.99
    assert abs(float(residual[good].mean())) < 0.005 * SKY_E
    assert abs(float(z[good].var()) - 1.0) < 0.05
    assert f.noise_model == "bundle" and f.bundle_id is not None
    assert f.image_e.dtype == np.float32 and f.variance_e2.dtype == np.float32 and f.mask.dtype == np.uint8


def test_mask_flags_bad_pixels_saturation_and_nothing_else(calibrator, light, detector) -> None:
    """Hot pixels and the dead column carry bit 1, a pixel at the ADC ceiling bit 2, and no others are set."""
    raw = light.copy()
    raw[10, 10] = 65535
    f = calibrator.calibrate(raw, exposure_s=EXPOSURE_S, filter_name="r")
    assert (f.mask[detector.hot] & MASK_BAD).all()
    assert (f.mask[:, detector.dead_column] & MASK_BAD).all()
    assert f.mask[10, 10] & MASK_SATURATED
    assert not (f.mask & MASK_NONFINITE).any()
    assert np.isinf(f.variance_e2[:, detector.dead_column]).all()
    assert (f.image_e[:, detector.dead_column] == 0).all()


@pytest.mark.parametrize("dtype", [">u2", "<u2", "<i4", ">i4", "<u4", "<i8"])
def test_any_integer_dtype_and_byte_order_gives_the_same_result(calibrator, light, dtype: str) -> None:
    """uint16 in either byte order and wider signed or unsigned integers calibrate identically."""
    ref = calibrator.calibrate(light, exposure_s=EXPOSURE_S, filter_name="r")
    ref = CalibratedFrame(ref.image_e.copy(), ref.variance_e2.copy(), ref.mask.copy())
    f = calibrator.calibrate(light.astype(dtype), exposure_s=EXPOSURE_S, filter_name="r")
    np.testing.assert_array_equal(f.image_e, ref.image_e)
    np.testing.assert_array_equal(f.variance_e2, ref.variance_e2)
    np.testing.assert_array_equal(f.mask, ref.mask)


def test_threads_give_identical_outputs(bundle_path: Path, calibrator, light) -> None:
    """Splitting rows over three threads changes no pixel of the output."""
    one = calibrator.calibrate(light, exposure_s=EXPOSURE_S, filter_name="r")
    one = CalibratedFrame(one.image_e.copy(), one.variance_e2.copy(), one.mask.copy())
    with Calibrator.from_bundle(bundle_path, threads=3) as cal3:
        three = cal3.calibrate(light, exposure_s=EXPOSURE_S, filter_name="r")
    np.testing.assert_array_equal(three.image_e, one.image_e)
    np.testing.assert_array_equal(three.variance_e2, one.variance_e2)
    np.testing.assert_array_equal(three.mask, one.mask)


def _flat_masters(shape: tuple[int, int]) -> Masters:
    """Masters of a perfect detector of ``shape``, made in memory."""
    return Masters(
        bias_adu=np.full(shape, 100.0, np.float32), bias_var_adu2=0.1,
        dark_adu_per_s=np.zeros(shape, np.float32), dark_var_adu2_per_s2=np.zeros(shape, np.float32),
        flats={"r": np.ones(shape, np.float32)}, flat_rel_var={"r": 1e-6}, bad_pixels=np.zeros(shape, np.uint8),
        gain_e_per_adu=2.0, read_noise_e=4.0, noise_source="header", saturate_adu=65535.0,
        trimsec=None, biassec=None, raw_shape=shape, inputs=())


@pytest.mark.parametrize("threads", [1, 2])
def test_reused_output_buffers_are_filled_in_place_without_new_allocations(threads: int, rng) -> None:
    """Passing ``out`` back returns the same arrays, and a warm call allocates no frame-sized array.

    The only allocations left are numpy's fixed-size casting buffers (tens of KiB), far below
    the 768 KiB mask or 3 MiB image of this frame.
    """
    shape = (768, 1024)
    raw = rng.integers(100, 5000, shape).astype(">u2")
    with Calibrator(_flat_masters(shape), bundle_id="mem", threads=threads) as cal:
        out = cal.calibrate(raw, exposure_s=EXPOSURE_S, filter_name="r")
        ids = (id(out.image_e), id(out.variance_e2), id(out.mask))
        cal.calibrate(raw, exposure_s=EXPOSURE_S, filter_name="r", out=out)
        tracemalloc.start()
        try:
            again = cal.calibrate(raw, exposure_s=EXPOSURE_S, filter_name="r", out=out)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (id(again.image_e), id(again.variance_e2), id(again.mask)) == ids
    assert peak < 256 * 1024
    np.testing.assert_allclose(again.image_e, (raw.astype(np.float64) - 100.0) * 2.0, rtol=1e-6)


def test_other_exposure_times_scale_the_dark(calibrator, detector) -> None:
    """A 600 s frame is calibrated with 10x the dark of a 60 s frame: both match truth on average."""
    rng = np.random.default_rng(9)
    for exposure in (60.0, 600.0):
        raw = detector.expose_adu(np.full(detector.shape_px, SKY_E), exposure, rng)
        f = calibrator.calibrate(raw, exposure_s=exposure, filter_name="r")
        good = f.mask == 0
        assert abs(float(np.mean(f.image_e[good])) - SKY_E) < 1.0


def test_missing_flat_for_the_filter_is_a_missing_master_error(calibrator, light) -> None:
    """A frame in a filter the bundle has no flat for raises MissingMasterError naming the filter."""
    with pytest.raises(MissingMasterError, match=r"filter 'Halpha'.*flats: 'r'"):
        calibrator.calibrate(light, exposure_s=EXPOSURE_S, filter_name="Halpha")


def test_filter_comes_from_the_header_when_not_given(calibrator, light) -> None:
    """Without filter_name the header's FILTER picks the flat, and the header names the frame in errors."""
    f = calibrator.calibrate(light, exposure_s=EXPOSURE_S, header={"FILTER": "r"})
    assert f.noise_model == "bundle"
    with pytest.raises(MissingMasterError, match=r"night1_0042\.fits"):
        calibrator.calibrate(light, exposure_s=EXPOSURE_S, header={"FILTER": "g", "FILENAME": "night1_0042.fits"})


@pytest.mark.parametrize("shape", [(192, 255), (100, 256)])
def test_frame_of_the_wrong_shape_is_a_typed_error(calibrator, shape) -> None:
    """A frame matching neither the trimmed nor the raw shape raises CalibrationInputError with both shapes."""
    with pytest.raises(CalibrationInputError, match=r"matches neither.*192x256"):
        calibrator.calibrate(np.zeros(shape, np.uint16), exposure_s=1.0, filter_name="r")


@pytest.mark.parametrize("exposure", [float("nan"), -1.0, None, "thirty"])
def test_frame_without_a_usable_exposure_is_a_typed_error(calibrator, light, exposure) -> None:
    """A NaN, negative or missing exposure time raises CalibrationInputError asking for EXPTIME."""
    with pytest.raises(CalibrationInputError, match="EXPTIME"):
        calibrator.calibrate(light, exposure_s=exposure, filter_name="r")


def test_wrong_out_buffer_is_a_typed_error(calibrator, light) -> None:
    """An ``out`` of another shape raises CalibrationInputError instead of writing out of bounds."""
    with pytest.raises(CalibrationInputError, match="out.image_e"):
        calibrator.calibrate(light, exposure_s=EXPOSURE_S, filter_name="r", out=CalibratedFrame.empty((10, 10)))


def test_nan_pixels_in_a_float_frame_are_flagged_not_propagated(calibrator, light) -> None:
    """NaN and inf in a float input get mask bit 4, image 0 and infinite variance; other pixels are untouched."""
    raw = light.astype(np.float64)
    raw[5, 6] = np.nan
    raw[7, 8] = np.inf
    f = calibrator.calibrate(raw, exposure_s=EXPOSURE_S, filter_name="r")
    assert f.mask[5, 6] & MASK_NONFINITE and f.mask[7, 8] & MASK_NONFINITE
    assert f.image_e[5, 6] == 0 and np.isinf(f.variance_e2[7, 8])
    assert np.count_nonzero(f.mask & MASK_NONFINITE) == 2
    assert np.isfinite(f.image_e).all()


def _with_overscan(adu: np.ndarray, level_adu: float, rng: np.random.Generator, width: int = 8) -> np.ndarray:
    """Prepend an overscan strip at ``level_adu`` and shift the image by the same drift."""
    ny, nx = adu.shape
    out = np.empty((ny, nx + width), np.uint16)
    out[:, :width] = np.rint(rng.normal(100.0 + level_adu, 2.0, (ny, width)))
    out[:, width:] = np.clip(adu.astype(np.int64) + int(level_adu), 0, 65535)
    return out


def test_overscan_drift_between_frames_is_removed(tmp_path: Path, synth) -> None:
    """Calibration frames and a light with different overscan levels (and a hit in its strip) calibrate to the truth."""
    det = synth.make_detector((96, 128), seed=21)
    rng = np.random.default_rng(4)
    folder = tmp_path / "cal"
    folder.mkdir()
    keys = {"BIASSEC": "[1:8,1:96]", "TRIMSEC": "[9:136,1:96]"}
    for i in range(4):
        synth.write_fits(folder / f"b{i}.fits", _with_overscan(det.expose_adu(0.0, 0.0, rng), 40.0 * i, rng),
                         IMAGETYP="BIAS", EXPTIME=0.0, **keys)
        synth.write_fits(folder / f"f{i}.fits", _with_overscan(det.expose_adu(12000.0, 1.0, rng), 25.0 * i, rng),
                         IMAGETYP="FLAT", EXPTIME=1.0, FILTER="r", **keys)
    bundle = tmp_path / "b.fits"
    masters, _ = build_bundle(folder, bundle)
    assert masters.shape == (96, 128) and masters.raw_shape == (96, 136)
    assert abs(masters.gain_e_per_adu / det.gain_e_per_adu - 1) < 0.03
    raw = _with_overscan(det.expose_adu(np.full(det.shape_px, SKY_E), 0.0, rng), 137.0, rng)
    raw[40, 2] = 30000  # a cosmic ray in the overscan strip must not move the level
    with Calibrator.from_bundle(bundle) as cal:
        f = cal.calibrate(raw, exposure_s=0.0, filter_name="r")
    good = f.mask == 0
    assert f.image_e.shape == (96, 128)
    assert abs(float(f.image_e[good].mean()) - SKY_E) < 2.0


def test_saao_without_bundle_uses_header_gain_and_overscan(real_data: Path) -> None:
    """The real SAAO frame, with no bundle, is overscan-subtracted, trimmed to TRIMSEC and noise-modelled from GAIN/RDNOISE."""
    with fits.open(real_data / "saao-raw" / "a8280271.fits") as hdul:
        raw, header = hdul[0].data, hdul[0].header
    with Calibrator.without_bundle() as cal:
        f = cal.calibrate(raw, exposure_s=header["EXPTIME"], header=header)
    assert f.noise_model == "header" and f.bundle_id is None
    assert (f.gain_e_per_adu, f.read_noise_e) == (1.9, 5.0)
    assert f.image_e.shape == (520, 512)
    level = raw[:, 3:13].astype(np.float64).mean()
    expected = (raw[:, 16:528].astype(np.float64) - level) * 1.9
    np.testing.assert_allclose(f.image_e, expected, rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(f.variance_e2, 25.0 + np.maximum(expected, 0), rtol=1e-5)


def test_without_header_noise_the_background_noise_is_estimated(rng: np.random.Generator) -> None:
    """A float frame with no GAIN/RDNOISE gets its background noise measured: within 5 % of the truth."""
    sigma = 12.0
    image = 400.0 + 0.01 * np.arange(256)[None, :] + rng.normal(0.0, sigma, (256, 256))
    image[120:130, 120:130] += 5000.0
    with Calibrator.without_bundle() as cal:
        f = cal.calibrate(image.astype(np.float32), exposure_s=30.0)
    assert f.noise_model == "estimated" and f.gain_e_per_adu == 1.0
    assert abs(f.read_noise_e / sigma - 1) < 0.05
    background = np.ones(image.shape, bool)
    background[115:135, 115:135] = False
    assert abs(float(np.median(f.variance_e2[background])) / sigma ** 2 - 1) < 0.1
    assert f.variance_e2[125, 125] > 5000.0


def test_real_m13_frame_without_header_noise_agrees_with_sep_background(real_data: Path) -> None:
    """On the raw M13 frame (no GAIN/RDNOISE) the estimated background level and noise agree with sep's within 10 %."""
    import sep

    with fits.open(real_data / "m13-raw" / "M13_blue_0001.fits") as hdul:
        raw, header = hdul[0].data, hdul[0].header
    with Calibrator.without_bundle() as cal:
        f = cal.calibrate(raw, exposure_s=header["EXPTIME"], header=header)
    peer = sep.Background(raw.astype(np.float32))
    assert f.noise_model == "estimated" and f.gain_e_per_adu == 1.0
    assert abs(f.read_noise_e / peer.globalrms - 1) < 0.10
    background = np.abs(f.image_e - peer.globalback) < 3 * peer.globalrms
    assert background.mean() > 0.8
    assert abs(float(np.median(f.variance_e2[background])) / peer.globalrms ** 2 - 1) < 0.2
    assert not f.mask.any()
