"""The configuration: fixed patterns of a detector, validation of bad values, presets."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import TwinError
from twin import DetectorModel, TwinConfig, dsi_m13_config, simulate_frame


def test_flat_field_has_mean_one_and_the_configured_vignetting() -> None:
    """The truth flat averages 1 over live pixels and its corners lose the configured fraction."""
    det = DetectorModel(shape_px=(512, 512), vignetting=0.2, prnu_rms=0.01)
    flat = det.flat_field()
    live = ~det.dead_pixel_mask()
    assert flat[live].mean() == pytest.approx(1.0, abs=1e-5)
    centre = np.median(flat[240:272, 240:272])
    corner = np.median(flat[:8, :8])
    assert 1 - corner / centre == pytest.approx(0.2, abs=0.01)
    assert np.all(flat[~live] == 0)
    assert np.std(flat[240:272, 240:272] / centre) == pytest.approx(0.01, rel=0.15)


def test_bad_columns_are_dead_and_hot_pixels_are_as_frequent_as_configured() -> None:
    """Bad columns are whole dead columns; the hot pixel count matches the fraction."""
    det = DetectorModel(shape_px=(1024, 1024), n_bad_columns=3, hot_pixel_fraction=2e-4)
    dead = det.dead_pixel_mask()
    cols = det.bad_columns()
    assert len(cols) == 3 and np.all(dead[:, cols])
    assert det.hot_pixel_mask().sum() == pytest.approx(2e-4 * 1024 * 1024, abs=3)
    assert not np.any(det.hot_pixel_mask() & dead)
    assert np.all(det.dark_current_e_per_s()[det.hot_pixel_mask()] >= det.hot_pixel_dark_e_per_s[0])


def test_bias_frame_has_the_configured_column_pattern() -> None:
    """The noise-free bias is constant down each column, scattered across columns by bias_column_rms_adu."""
    det = DetectorModel(shape_px=(64, 2048), bias_adu=300.0, bias_column_rms_adu=3.0)
    bias = det.bias_frame_adu()
    assert np.all(bias == bias[0])
    assert bias[0].mean() == pytest.approx(300.0, abs=0.3)
    assert bias[0].std() == pytest.approx(3.0, rel=0.1)


def test_returned_truth_arrays_are_copies() -> None:
    """Changing an array a DetectorModel returned does not change the model's next answer."""
    det = DetectorModel(shape_px=(64, 64))
    flat, hot = det.flat_field(), det.hot_pixel_mask()
    before = flat.copy()
    flat[:] = 5.0
    hot[:] = True
    assert np.array_equal(det.flat_field(), before) and not det.hot_pixel_mask().all()


@pytest.mark.parametrize("changes", [
    {"shape_px": (8, 8)}, {"gain_e_per_adu": 0.0}, {"read_noise_e": -1.0}, {"hot_pixel_fraction": 0.5},
    {"vignetting": 1.0}, {"n_bad_columns": 5000}, {"seed": -1}, {"full_well_e": 200000.0, "gain_e_per_adu": 1.0},
])
def test_impossible_detectors_are_refused(changes: dict) -> None:
    """Each impossible detector value raises a TwinError naming where it is."""
    with pytest.raises(TwinError, match="DetectorModel"):
        DetectorModel(**changes)


@pytest.mark.parametrize("changes", [
    {"psf_beta": 1.0}, {"exposure_s": 0.0}, {"n_stars": -1}, {"streak_probability": 2.0},
    {"star_mag_range": (20.0, 15.0)}, {"anomalies": ("comet", "comet")}, {"psf_ellipticity": 0.6},
])
def test_impossible_configurations_are_refused(changes: dict) -> None:
    """Each impossible configuration value raises a TwinError naming where it is."""
    with pytest.raises(TwinError, match="TwinConfig"):
        TwinConfig(**changes)


def test_with_changes_fields_and_size_and_refuses_unknown_ones() -> None:
    """with_ replaces fields, with_(size=N) gives an N x N detector, with_size keeps the density, typos fail."""
    cfg = TwinConfig()
    small = cfg.with_(size=256, exposure_s=10.0)
    assert small.detector.shape_px == (256, 256) and small.exposure_s == 10.0 and small.n_stars == cfg.n_stars
    assert small.detector.gain_e_per_adu == cfg.detector.gain_e_per_adu
    dense = cfg.with_size(1024)
    assert dense.n_stars == 125 and dense.n_galaxies == 31
    with pytest.raises(TwinError, match="n_star"):
        cfg.with_(n_star=3)


def test_negative_seed_or_index_is_refused() -> None:
    """simulate_frame refuses a negative frame index or seed with a TwinError."""
    cfg = TwinConfig().with_(size=32)
    with pytest.raises(TwinError, match="seed"):
        simulate_frame(cfg, 0, -3)
    with pytest.raises(TwinError, match="index"):
        simulate_frame(cfg, -1, 0)


def test_dsi_m13_preset_matches_the_real_camera_frame_format() -> None:
    """The dsi-m13 instrument has m13-raw's shape, exposure, and a pedestal near its 510 ADU."""
    cfg = dsi_m13_config()
    assert cfg.detector.shape_px == (1040, 1392) and cfg.exposure_s == 5.0
    assert 490 < cfg.detector.bias_adu < 520


def test_star_magnitude_weights_shape_the_counts_and_their_absence_changes_nothing() -> None:
    """Weights on the magnitude bins of star_mag_range multiply the power law (a measured luminosity
    function); without them the field is drawn exactly as before."""
    from twin.sky import draw_scene, expected_counts_per_bin

    base = TwinConfig(detector=DetectorModel(shape_px=(256, 256)), n_stars=20000, star_mag_range=(14.0, 22.0))
    weighted = base.with_(star_mag_weights=(1.0, 1.0, 4.0, 1.0))
    edges = np.linspace(14.0, 22.0, 5)
    counts = np.histogram(draw_scene(weighted, 3).stars.mag, bins=edges)[0]
    expected = expected_counts_per_bin(weighted, edges)
    assert expected.sum() == pytest.approx(20000)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected) + 1)
    plain = expected_counts_per_bin(base, edges)
    assert expected[2] / expected[1] == pytest.approx(4 * plain[2] / plain[1], rel=1e-6)
    again = base.with_(star_mag_weights=())
    np.testing.assert_array_equal(draw_scene(again, 3).stars.mag, draw_scene(base, 3).stars.mag)
    with pytest.raises(TwinError, match="star_mag_weights"):
        base.with_(star_mag_weights=(1.0, -1.0))
