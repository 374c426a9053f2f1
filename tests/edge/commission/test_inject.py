"""Fake-source injection into real frames (``astro-edge rig inject``): flux, place, S/N, files, seeds,
errors, and the end-to-end measurement of recall with ``process`` and ``rig score``."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from calibration import Calibrator
from edge.cli import main
from edge.commission.inject import (
    INJECT_FAMILIES,
    InjectSettings,
    flux_for_snr,
    frame_response,
    inject_frame,
    matched_snr,
    measure_for_injection,
    parse_families,
)
from edge.commission.inject_files import inject_files
from edge.commission.inject_shapes import point_half_px
from edge.detect import Candidates, DetectSettings, detect, subtract_background
from edge.errors import ConfigError, DetectionError
from edge.node.process import read_frame
from firmware_bridge.rig import match_and_score


@pytest.fixture(scope="module")
def ntt(real_data: Path) -> Path:
    """The real sep-ntt frame (256 x 256 float, ESO NTT): enough stars for a PSF, no calibration."""
    return real_data / "sep-ntt" / "image.fits"


@pytest.fixture(scope="module")
def twin_camera(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 320 x 320 twin camera: its calibration bundle and one raw light frame (uint16, TAN WCS) on disk."""
    from calibration import build_bundle
    from twin import DetectorModel, TwinConfig, make_calibration_set, simulate_frame

    folder = tmp_path_factory.mktemp("twin-camera")
    config = dataclasses.replace(TwinConfig(detector=DetectorModel(shape_px=(320, 320))), n_stars=250,
                                 n_galaxies=10, cosmic_ray_rate_per_s=0.0, streak_probability=0.0)
    make_calibration_set(folder / "cal", config.detector, n_bias=4, n_dark=2, n_flat=4)
    build_bundle(folder / "cal", folder / "bundle.fits")
    frame = simulate_frame(config, 0, 3)
    fits.PrimaryHDU(data=frame.raw_adu, header=frame.header).writeto(folder / "twin_0000.fits")
    return {"bundle": folder / "bundle.fits", "frame": folder / "twin_0000.fits", "config": config}


def node_view(path: Path, bundle: Path | None = None) -> tuple[Candidates, Any]:
    """The node's own detections on a file, and its calibrated frame (process's reader, calibrator, detector)."""
    frame = read_frame(path, 0)
    calibrator = Calibrator.from_bundle(bundle) if bundle else Calibrator.without_bundle()
    cal = calibrator.calibrate(frame.pixels, exposure_s=frame.exposure_s, filter_name=frame.filter_name,
                               header=frame.header)
    settings = DetectSettings()
    bkg = subtract_background(cal.image_e, cal.mask, settings)
    return detect(bkg.sub_e, cal.variance_e2, cal.mask, settings), cal


def nearest(cands: Candidates, x: float, y: float) -> tuple[float, int]:
    d = np.hypot(cands.x - x, cands.y - y)
    return float(d.min()), int(np.argmin(d))


def raw_pixels(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # sep-ntt's ESO-LOG cards
        with fits.open(path, memmap=False) as hdul:
            return np.asarray(hdul[0].data, np.float64)


def test_families_parse_all_and_reject_unknown_names_listing_the_valid_ones() -> None:
    """``all`` is every family (each twin anomaly family, transient, streak, star); an unknown name says which are valid."""
    assert parse_families("all") == INJECT_FAMILIES
    assert set(INJECT_FAMILIES) == {"star", "transient", "streak", "lens_arc", "comet", "lobster_psf",
                                    "close_double", "ghost"}
    assert parse_families("star, comet,star") == ("star", "comet")
    with pytest.raises(ConfigError, match="quasar.*star,transient,streak,lens_arc"):
        parse_families("star,quasar")


@hypothesis_settings(max_examples=40, deadline=None)
@given(snr=st.floats(1.0, 5000.0), sky_e2=st.floats(1.0, 1e5), fwhm_px=st.floats(1.0, 8.0))
def test_flux_for_snr_gives_the_flux_whose_matched_snr_is_asked(snr: float, sky_e2: float, fwhm_px: float) -> None:
    """The flux found for an S/N has exactly that matched-filter S/N, shot noise of the source included."""
    from twin.psf import PsfParams, moffat_stamps

    psf = PsfParams(np.array([fwhm_px]), np.array([0.1]), np.array([0.3]), 2.5, 0.0)
    profile = moffat_stamps(np.array([20.3]), np.array([19.8]), psf, 20)[0].astype(np.float64)
    variance = np.full(profile.shape, sky_e2)
    flat = np.full(profile.shape, 0.9)
    usable = np.ones(profile.shape, bool)
    usable[3, :] = False                    # a masked row counts for nothing
    flux = flux_for_snr(snr, profile, variance, flat, usable)
    assert matched_snr(flux, profile, variance, flat, usable) == pytest.approx(snr, rel=1e-8)
    assert flux >= snr * np.sqrt(sky_e2 / (profile[usable] ** 2).sum()) * (1 - 1e-12)


def test_injected_flux_is_in_the_raw_pixels_object_by_object(ntt: Path, tmp_path: Path) -> None:
    """Output minus input, summed over a star's stamp, is its truth flux within Poisson noise, and
    no pixel outside the stamp changes."""
    original = raw_pixels(ntt)
    for seed in (1, 2, 3):
        settings = InjectSettings(families=("star",), per_frame=1, snr_min=20, snr_max=200)
        report = inject_files([ntt], tmp_path / str(seed), settings, seed=seed)
        (row,) = Table.read(report.truth)
        diff = raw_pixels(tmp_path / str(seed) / "image_inj.fits") - original   # gain 1: the frame's own units
        h = point_half_px(row["fwhm_px"])
        iy, ix = int(np.rint(row["y"])), int(np.rint(row["x"]))
        box = diff[iy - h:iy + h + 1, ix - h:ix + h + 1].copy()
        assert abs(box.sum() - row["flux_e"]) < 5 * np.sqrt(row["flux_e"])
        diff[iy - h:iy + h + 1, ix - h:ix + h + 1] = 0.0
        assert not diff.any()


def test_every_family_adds_its_truth_flux_through_gain_and_flat(twin_camera: dict[str, Any], tmp_path: Path) -> None:
    """With a bundle, every family's electrons reach the raw pixels as e * flat / gain: their sum is the truth's."""
    from calibration import read_bundle

    settings = InjectSettings(families=INJECT_FAMILIES, per_frame=8, snr_min=30, snr_max=100, edge_px=40)
    report = inject_files([twin_camera["frame"]], tmp_path, settings, seed=2, calibration=twin_camera["bundle"])
    truth = Table.read(report.truth)
    assert len(truth) >= 6 and {"star", "transient", "streak", "anomaly"} & set(truth["label"])
    assert set(truth["family"]) <= set(INJECT_FAMILIES)
    masters, _ = read_bundle(twin_camera["bundle"])
    flat = masters.flats["r"].astype(np.float64)
    diff_adu = raw_pixels(tmp_path / "twin_0000_inj.fits") - raw_pixels(twin_camera["frame"])
    electrons = np.where(flat > 0.5, diff_adu * masters.gain_e_per_adu / np.where(flat > 0.5, flat, 1.0), 0.0)
    total = truth["flux_e"].sum()
    rounding = np.sqrt((diff_adu != 0).sum() / 12.0) * masters.gain_e_per_adu / 0.8
    assert abs(electrons.sum() - total) < 5 * np.sqrt(total) + 5 * rounding


def test_point_sources_land_where_the_truth_says_and_their_snr_tracks_it(twin_camera: dict[str, Any],
                                                                            tmp_path: Path) -> None:
    """On a calibrated twin camera the node finds each injected star within 1.5 px of its truth position,
    with an S/N within 25 % of the truth's in the median (its AUTO aperture stays below the matched
    filter, by more at low S/N) and its AUTO flux near the truth flux."""
    settings = InjectSettings(families=("star", "transient"), per_frame=10, snr_min=40, snr_max=200)
    inject_files([twin_camera["frame"]], tmp_path, settings, seed=4, calibration=twin_camera["bundle"])
    truth = Table.read(tmp_path / "truth.ecsv")
    cands, _ = node_view(tmp_path / "twin_0000_inj.fits", twin_camera["bundle"])
    ratio, flux = [], []
    for row in truth:
        d, i = nearest(cands, row["x"], row["y"])
        assert d < 1.5, f"{row['family']} at ({row['x']:.1f}, {row['y']:.1f}) found {d:.1f} px away"
        ratio.append(cands.snr[i] / row["snr_expected"])
        flux.append(cands.flux_e[i] / row["flux_e"])
    assert len(ratio) >= 8
    # an undetected faint twin star under an injected one can lift a single S/N
    assert 0.75 <= np.median(ratio) <= 1.0 and np.mean((np.asarray(ratio) > 0.6) & (np.asarray(ratio) < 1.1)) >= 0.9
    assert 0.85 <= np.median(flux) <= 1.05


def test_injected_stars_in_a_real_frame_are_found_with_a_consistent_snr(ntt: Path, tmp_path: Path) -> None:
    """On the real NTT frame the node finds the injected stars within 1.5 px (a few may blend with the
    sky's undetected sources), and their S/N keeps one proportion to the truth S/N (within 25 % of
    the median; the wide-winged PSF puts that median well below 1 for the AUTO aperture)."""
    settings = InjectSettings(families=("star",), per_frame=10, snr_min=40, snr_max=200)
    inject_files([ntt], tmp_path, settings, seed=5)
    truth = Table.read(tmp_path / "truth.ecsv")
    assert len(truth) >= 8
    cands, _ = node_view(tmp_path / "image_inj.fits")
    found = [nearest(cands, row["x"], row["y"]) for row in truth]
    dist = np.array([d for d, _ in found])
    assert np.mean(dist < 1.5) >= 0.8 and np.median(dist) < 0.5
    ratio = np.array([cands.snr[i] / row["snr_expected"] for (d, i), row in zip(found, truth, strict=True) if d < 1.5])
    med = float(np.median(ratio))
    assert 0.45 <= med <= 0.9
    assert np.mean(np.abs(ratio / med - 1.0) < 0.25) >= 0.8


def test_the_output_frame_keeps_dtype_shape_header_and_wcs(twin_camera: dict[str, Any], ntt: Path,
                                                          tmp_path: Path) -> None:
    """The injected frame has the input's pixel dtype, shape, HDU layout and header (WCS included),
    plus INJSEED, INJN, INJFAM and a HISTORY line."""
    from astropy.wcs import WCS

    settings = InjectSettings(families=("star", "comet"), per_frame=4)
    inject_files([twin_camera["frame"], ntt], tmp_path, settings, seed=7, calibration=None)
    for src, out in ((twin_camera["frame"], tmp_path / "twin_0000_inj.fits"), (ntt, tmp_path / "image_inj.fits")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(src) as a, fits.open(out) as b:
                assert len(a) == len(b)
                assert b[0].data.dtype.newbyteorder("=") == a[0].data.dtype.newbyteorder("=")
                assert b[0].data.shape == a[0].data.shape
                ha, hb = a[0].header, b[0].header
                assert hb["INJSEED"] == 7 and hb["INJN"] >= 1 and set(hb["INJFAM"].split(",")) <= {"star", "comet"}
                assert any("rig inject" in str(h) for h in hb["HISTORY"])
                skip = {"INJSEED", "INJN", "INJFAM", "HISTORY", "BITPIX", "BZERO", "BSCALE", "COMMENT", ""}
                assert {k: ha[k] for k in ha if k not in skip} == {k: hb[k] for k in hb if k not in skip}
    with fits.open(twin_camera["frame"]) as a, fits.open(tmp_path / "twin_0000_inj.fits") as b:
        assert b[0].data.dtype == np.uint16 and b[0].header["BZERO"] == 32768
        assert WCS(a[0].header).to_header() == WCS(b[0].header).to_header()


def test_a_seed_reproduces_the_output_bit_for_bit(ntt: Path, tmp_path: Path) -> None:
    """The same seed gives identical frames and truth; another seed gives other pixels."""
    settings = InjectSettings(families=INJECT_FAMILIES, per_frame=6)
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        inject_files([ntt], tmp_path / name, settings, seed=seed)
    read = lambda d, f: (tmp_path / d / f).read_bytes()  # noqa: E731
    assert read("a", "image_inj.fits") == read("b", "image_inj.fits")
    assert read("a", "truth.ecsv") == read("b", "truth.ecsv")
    assert read("a", "image_inj.fits") != read("c", "image_inj.fits")


def test_a_frame_without_enough_stars_fails_with_its_name_and_the_others_go_on(ntt: Path, real_data: Path,
                                                                            tmp_path: Path) -> None:
    """The sparse M13 frame cannot give a PSF: its error names it, the NTT frame is still injected."""
    m13 = real_data / "m13-raw" / "M13_blue_0001.fits"
    frame = read_frame(m13, 0)
    cal = Calibrator.without_bundle().calibrate(frame.pixels, exposure_s=frame.exposure_s, header=frame.header)
    with pytest.raises(DetectionError, match="M13_blue_0001.fits.*PSF cannot be measured"):
        measure_for_injection(cal, InjectSettings(), where=str(m13))
    report = inject_files([m13, ntt], tmp_path, InjectSettings(families=("star",), per_frame=3), seed=0)
    assert report.frames == 1 and len(report.failed) == 1 and "M13_blue_0001.fits" in report.failed[0]
    assert not (tmp_path / "M13_blue_0001_inj.fits").exists()
    summary = json.loads((tmp_path / "inject.json").read_text())
    assert summary["failed"][0]["file"] == str(m13) and summary["frames"][0]["psf"]["n_stars"] >= 5


def test_objects_keep_off_edges_masked_pixels_detections_and_each_other(ntt: Path) -> None:
    """Every object sits 50 px or more inside the frame, and 4 FWHM or more from the frame's
    detections and from the other objects."""
    frame = read_frame(ntt, 0)
    calibrator = Calibrator.without_bundle()
    cal = calibrator.calibrate(frame.pixels, exposure_s=frame.exposure_s, header=frame.header)
    settings = InjectSettings(families=("star", "transient"), per_frame=12)
    measured = measure_for_injection(cal, settings, where="ntt")
    response = frame_response(calibrator, cal, frame.pixels.shape, filter_name=None, header=frame.header)
    inj = inject_frame(frame.pixels, measured, response, settings, np.random.default_rng(3))
    x, y = np.asarray(inj.truth["x"]), np.asarray(inj.truth["y"])
    assert len(x) >= 8
    assert x.min() >= 50 and y.min() >= 50 and x.max() <= 255 - 50 and y.max() <= 255 - 50
    four = 4 * measured.psf.fwhm_px * 0.99
    c = measured.cands
    assert np.hypot(x[:, None] - c.x[None, :], y[:, None] - c.y[None, :]).min() >= four
    pair = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :]) + np.eye(len(x)) * 1e9
    assert pair.min() >= four
    assert inj.raw.dtype == frame.pixels.dtype and inj.truth["frame"].tolist() == [0] * len(x)


def test_unknown_family_exits_2_with_one_line_naming_the_valid_ones(ntt: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``rig inject --families star,quasar`` ends with exit code 2 and one line listing the families."""
    rc = main(["--log-level", "error", "rig", "inject", str(ntt), "--families", "star,quasar", "--per-frame", "3",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    line = [e for e in err if e.startswith("astro-edge rig:")]
    assert len(line) == 1 and "quasar" in line[0] and "lobster_psf" in line[0] and "all" in line[0]
    assert not (tmp_path / "o").exists()


def test_score_matches_records_by_series_and_counts_recall_above_an_snr() -> None:
    """A record of a truth series matches that series' truth whatever its frame number; ``snr_min``
    leaves fainter truth out of the recall figures."""
    records = [{"frame": 7, "x": 10.0, "y": 10.0, "series_id": "file-b"},
               {"frame": 0, "x": 50.0, "y": 50.0, "series_id": "live-series"}]
    args = (np.array([0, 1, 0]), np.array([10.0, 10.0, 50.0]), np.array([10.0, 10.0, 50.0]),
            ["star", "transient", "star"], ["star", "transient", "star"], records)
    s = match_and_score(*args, radius_px=3.0, truth_series=["file-a", "file-b", "file-a"],
                        truth_snr=np.array([30.0, 25.0, 10.0]))
    assert s["recall_by_label"]["transient"]["recall"] == 1.0          # by series, not by frame 7
    assert s["recall_by_label"]["star"] == {"n_truth": 2, "n_sent": 1, "recall": 0.5}   # by frame 0
    s = match_and_score(*args, radius_px=3.0, truth_series=["file-a", "file-b", "file-a"],
                        truth_snr=np.array([30.0, 25.0, 10.0]), snr_min=20.0)
    assert s["snr_min"] == 20.0 and s["recall_by_label"]["star"] == {"n_truth": 1, "n_sent": 0, "recall": 0.0}
    assert s["n_matched"] == 2


def test_inject_then_process_then_score_finds_the_bright_injected_stars(ntt: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``rig inject`` on a real frame, ``process`` with every detection audited, ``rig score``: the bright
    injected stars are detected with recall >= 0.9, and matched through their series."""
    out, down = tmp_path / "inj", tmp_path / "down"
    assert main(["--log-level", "error", "rig", "inject", str(ntt), "--families", "star", "--per-frame", "12",
                 "--snr-min", "50", "--snr-max", "200", "--seed", "3", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["frames"] == 1 and printed["injected"] >= 8
    config = tmp_path / "audit-all.toml"   # send every detection down: recall of the detector, not of triage
    config.write_text("[triage]\naudit_rate = 1.0\nmax_records_per_frame = 100000\n", encoding="utf-8")
    assert main(["--log-level", "error", "process", "--config", str(config), "--out", str(down),
                 *map(str, sorted(out.glob("*_inj.fits")))]) == 0
    capsys.readouterr()
    assert main(["--log-level", "error", "rig", "score", "--truth", str(out / "truth.ecsv"), "--downlink",
                 str(down / "downlink.jsonl"), "--snr-min", "20", "--out", str(tmp_path / "score.json")]) == 0
    score = json.loads((tmp_path / "score.json").read_text())
    stars = score["recall_by_label"]["star"]
    assert stars["n_truth"] == printed["injected"] and stars["recall"] >= 0.9
    assert score["n_downlinked"] > score["n_matched"]   # the frame's own sources went down too
