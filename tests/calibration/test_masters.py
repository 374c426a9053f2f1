"""Tests for calibration.masters: masters, bad-pixel mask and photon-transfer gain and read noise."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from calibration.frames import scan_folder
from calibration.masters import (
    BPM_BAD_COLUMN,
    BPM_DEAD,
    BPM_HOT,
    build_masters,
    photon_transfer,
)
from edge.errors import CalibrationInputError


@pytest.fixture(scope="module")
def masters(calib_folder: Path):
    """Masters built from the shared synthetic calibration set."""
    return build_masters(scan_folder(calib_folder))


def test_photon_transfer_recovers_gain_and_read_noise(masters, detector) -> None:
    """Gain from flat and bias pairs lies within 2 % and read noise within 5 % of the truth."""
    ptc = masters.photon_transfer
    assert masters.noise_source == "photon_transfer"
    assert ptc.n_flat_pairs == 3 and ptc.n_bias_pairs == 3
    assert abs(ptc.gain_e_per_adu / detector.gain_e_per_adu - 1) < 0.02
    assert abs(ptc.read_noise_e / detector.read_noise_e - 1) < 0.05


@pytest.mark.parametrize(("gain", "read_noise"), [(0.8, 3.0), (3.5, 9.0)])
def test_photon_transfer_follows_the_detector(gain: float, read_noise: float, rng: np.random.Generator, synth) -> None:
    """Other gains and read noises are recovered too, from pairs made in memory."""
    det = synth.make_detector((128, 128), gain_e_per_adu=gain, read_noise_e=read_noise, seed=3)
    b = [det.expose_adu(0.0, 0.0, rng).astype(np.float32) for _ in range(4)]
    f = [det.expose_adu(10000.0, 1.0, rng).astype(np.float32) for _ in range(4)]
    ptc = photon_transfer([(b[0], b[1]), (b[2], b[3])], [(f[0], f[1]), (f[2], f[3])], exclude=det.hot | (det.flat == 0))
    assert abs(ptc.gain_e_per_adu / gain - 1) < 0.02
    assert abs(ptc.read_noise_e / read_noise - 1) < 0.05


def test_hot_pixels_and_the_dead_column_are_flagged(masters, detector) -> None:
    """Every injected hot pixel is in the mask, the dead column is a bad column, and few others are flagged."""
    bpm = masters.bad_pixels
    assert ((bpm[detector.hot] & BPM_HOT) != 0).all()
    col = detector.dead_column
    assert ((bpm[:, col] & BPM_DEAD) != 0).all() and ((bpm[:, col] & BPM_BAD_COLUMN) != 0).all()
    truth = detector.hot.copy()
    truth[:, col] = True
    false_flags = np.count_nonzero((bpm != 0) & ~truth) / bpm.size
    assert false_flags < 1e-3


def test_masters_match_the_detector(masters, detector) -> None:
    """Master bias, dark rate and flat agree with the detector's truth within their noise."""
    live = (detector.flat > 0) & ~detector.hot
    assert np.abs(masters.bias_adu - detector.bias_adu)[live].mean() < 1.0
    dark_true_adu = detector.dark_e_per_s / detector.gain_e_per_adu
    assert abs(float(np.median(masters.dark_adu_per_s[live] - dark_true_adu[live]))) < 0.005
    flat = masters.flats["r"]
    assert float(flat[live].mean()) == pytest.approx(1.0, abs=2e-3)
    assert np.corrcoef(flat[live], detector.flat[live])[0, 1] > 0.8


def test_trusting_the_header_takes_gain_and_read_noise_from_it(calib_folder: Path) -> None:
    """With trust_header_gain the bundle carries the headers' GAIN/RDNOISE and measures nothing."""
    m = build_masters(scan_folder(calib_folder), trust_header_gain=True)
    assert m.noise_source == "header" and m.photon_transfer is None
    assert (m.gain_e_per_adu, m.read_noise_e) == (2.0, 4.0)


def test_dark_without_exptime_names_the_file(tmp_path: Path, synth) -> None:
    """A dark frame with no EXPTIME raises CalibrationInputError naming that file."""
    det = synth.make_detector((32, 32))
    rng = np.random.default_rng(1)
    for i in range(2):
        synth.write_fits(tmp_path / f"b{i}.fits", det.expose_adu(0.0, 0.0, rng), IMAGETYP="BIAS", EXPTIME=0.0)
    synth.write_fits(tmp_path / "d0.fits", det.expose_adu(0.0, 10.0, rng), IMAGETYP="DARK")
    with pytest.raises(CalibrationInputError, match=r"d0\.fits.*EXPTIME"):
        build_masters(scan_folder(tmp_path))


def test_frames_of_different_shapes_name_the_odd_file(tmp_path: Path, synth) -> None:
    """A frame whose shape differs from the others raises CalibrationInputError naming it."""
    synth.write_fits(tmp_path / "a.fits", np.full((32, 32), 300, np.uint16), IMAGETYP="BIAS", EXPTIME=0.0)
    synth.write_fits(tmp_path / "b.fits", np.full((32, 40), 300, np.uint16), IMAGETYP="BIAS", EXPTIME=0.0)
    with pytest.raises(CalibrationInputError, match=r"b\.fits.*32x40.*does not match"):
        build_masters(scan_folder(tmp_path))


def test_folder_without_biases_is_a_typed_error(tmp_path: Path, synth) -> None:
    """Flats without any bias frame raise CalibrationInputError saying a master bias is required."""
    det = synth.make_detector((32, 32))
    synth.write_calibration_set(tmp_path, det, n_bias=0, n_dark=0, n_flat=2)
    with pytest.raises(CalibrationInputError, match="master bias is required"):
        build_masters(scan_folder(tmp_path))


def test_no_pairs_and_no_header_noise_is_a_typed_error(tmp_path: Path, synth) -> None:
    """One bias and no flats, with no GAIN/RDNOISE keywords, cannot give a gain: a typed error says why."""
    synth.write_fits(tmp_path / "b.fits", np.full((32, 32), 300, np.uint16), IMAGETYP="zero", EXPTIME=0.0)
    with pytest.raises(CalibrationInputError, match="photon transfer needs"):
        build_masters(scan_folder(tmp_path))


def test_build_logs_the_frames_it_leaves_out(tmp_path: Path, synth) -> None:
    """A light frame in the calibration folder is left out of the masters and named in one log event."""
    from structlog.testing import capture_logs

    from calibration import build_bundle

    det = synth.make_detector((32, 32))
    synth.write_calibration_set(tmp_path / "cal", det, n_bias=2, n_dark=0, n_flat=2)
    rng = np.random.default_rng(2)
    synth.write_fits(tmp_path / "cal" / "m31_0001.fits", det.expose_adu(100.0, 5.0, rng), IMAGETYP="Light Frame",
                     EXPTIME=5.0)
    with capture_logs() as logs:
        masters, _ = build_bundle(tmp_path / "cal", tmp_path / "b.fits")
    skipped = [e for e in logs if e["event"] == "calib.frames_skipped"]
    assert len(skipped) == 1 and skipped[0]["files"] == ["m31_0001.fits"] and skipped[0]["count"] == 1
    assert "m31_0001.fits" not in {r.name for r in masters.inputs}


def test_photon_transfer_of_twilight_flats_at_falling_levels_keeps_the_gain(rng: np.random.Generator, synth) -> None:
    """Flats of one exposure at 6 % lower level each (twilight) under strong vignetting still give the gain:
    the pattern no longer cancels in F1 - F2 unless the second flat is scaled to the first."""
    det = synth.make_detector((128, 128), gain_e_per_adu=3.5, read_noise_e=5.0, seed=4)
    yy, xx = np.mgrid[0:128, 0:128] / 127.0 - 0.5
    vignetted = dataclasses.replace(det, flat=(det.flat * (1.0 - 1.6 * (xx ** 2 + yy ** 2))).astype(np.float32))
    b = [det.expose_adu(0.0, 0.0, rng).astype(np.float32) for _ in range(4)]
    f = [vignetted.expose_adu(20000.0 * 0.94 ** k, 1.0, rng).astype(np.float32) for k in range(4)]
    ptc = photon_transfer([(b[0], b[1]), (b[2], b[3])], [(f[0], f[1]), (f[2], f[3])], exclude=det.hot | (det.flat == 0))
    assert abs(ptc.gain_e_per_adu / 3.5 - 1) < 0.03


def test_a_single_flat_of_a_filter_makes_a_bundle_with_a_finite_flat_noise(tmp_path: Path, synth) -> None:
    """One flat of a filter (a real night may have one) gives a master whose relative variance is
    finite, so the bundle can be written and read."""
    from calibration import build_bundle, read_bundle

    det = synth.make_detector((64, 96))
    synth.write_calibration_set(tmp_path / "cal", det, n_dark=0, n_flat=1, filters=("V",))
    synth.write_calibration_set(tmp_path / "cal2", det, n_bias=0, n_dark=0, n_flat=2, filters=("R",), seed=5)
    for p in (tmp_path / "cal2").iterdir():
        p.rename(tmp_path / "cal" / p.name)
    masters, _ = build_bundle(tmp_path / "cal", tmp_path / "bundle.fits")
    assert 0 < masters.flat_rel_var["V"] < 1e-3
    assert np.isfinite(read_bundle(tmp_path / "bundle.fits")[0].flat_rel_var["V"])
