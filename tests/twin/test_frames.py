"""Light frames: reproducible bytes, truth that adds up, camera headers, WCS, star counts, files."""

from __future__ import annotations

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from twin import (
    ORDINARY_LABELS,
    DetectorModel,
    TwinConfig,
    TwinFrame,
    reference_catalog,
    simulate_frame,
    write_frames,
)
from twin.sky import expected_counts_per_bin


def test_same_config_and_seed_give_identical_bytes(small_config: TwinConfig, small_frame: TwinFrame) -> None:
    """Simulating the same frame twice gives the same raw bytes, truth and header."""
    again = simulate_frame(small_config, 0, 7)
    assert again.raw_adu.tobytes() == small_frame.raw_adu.tobytes()
    assert np.array_equal(again.expected_e, small_frame.expected_e)
    assert again.truth.as_array().tobytes() == small_frame.truth.as_array().tobytes()
    assert again.header.tostring() == small_frame.header.tostring()


def test_frames_of_a_sequence_share_the_field_but_not_the_noise(small_config: TwinConfig, small_frame: TwinFrame) -> None:
    """Frame 1 of the same seed shows the same stars and galaxies, new noise, cosmic rays and a later time."""
    other = simulate_frame(small_config, 1, 7)
    for label in ("star", "galaxy"):
        a = small_frame.truth[small_frame.truth["label"] == label]
        b = other.truth[other.truth["label"] == label]
        assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["source_id"], b["source_id"])
    assert not np.array_equal(other.raw_adu, small_frame.raw_adu)
    cr_a = small_frame.truth[small_frame.truth["label"] == "cosmic_ray"]
    cr_b = other.truth[other.truth["label"] == "cosmic_ray"]
    assert len(cr_a) and len(cr_b) and not np.array_equal(cr_a["x"][:1], cr_b["x"][:1])
    assert other.header["MJD-OBS"] - small_frame.header["MJD-OBS"] == pytest.approx(small_config.cadence_s / 86400)
    different_seed = simulate_frame(small_config, 0, 8)
    assert not np.array_equal(different_seed.truth["x"][:5], small_frame.truth["x"][:5])


def test_truth_fluxes_add_up_to_the_expected_electrons(small_config: TwinConfig) -> None:
    """Sky-free expected electrons sum to the truth flux of every deposited object (hot pixels are dark current)."""
    cfg = small_config.with_(sky_e_per_s=0.0, anomalies=("comet", "ghost"), n_transients=3)
    frame = simulate_frame(cfg, 0, 2)
    deposited = frame.truth[frame.truth["label"] != "hot_pixel"]
    assert frame.expected_e.sum(dtype=np.float64) == pytest.approx(float(np.sum(deposited["flux_e"])), rel=1e-4)


def test_light_by_family_splits_the_expected_electrons(small_config: TwinConfig) -> None:
    """Asked for, a frame carries each family's noise-free light; the parts add up to the expected
    electrons, each lies where its truth rows are, and asking changes nothing in the frame itself."""
    cfg = small_config.with_(anomalies=("ghost", "close_double"), n_transients=2, cosmic_ray_rate_per_s=2.0)
    plain = simulate_frame(cfg, 0, 5)
    frame = simulate_frame(cfg, 0, 5, light_by_family=True)
    assert plain.light_e is None
    np.testing.assert_array_equal(frame.raw_adu, plain.raw_adu)
    light = frame.light_e
    assert light is not None
    assert {"sky", "star", "ghost", "close_double", "transient", "cosmic_ray"} <= set(light)
    total = sum(light.values())
    np.testing.assert_allclose(total, frame.expected_e, rtol=1e-5, atol=1e-2)
    for fam in ("ghost", "close_double", "transient"):
        rows = frame.truth[frame.truth["family"] == fam]
        assert len(rows)
        assert light[fam].sum(dtype=np.float64) == pytest.approx(float(np.sum(rows["flux_e"])), rel=1e-4)
        if fam != "ghost":  # a ghost is a ring: its centre is dark
            iy, ix = np.rint(rows["y"]).astype(int), np.rint(rows["x"]).astype(int)
            assert (light[fam][iy, ix] > 0).all()


def test_truth_rows_have_labels_positions_and_snr(small_frame: TwinFrame, small_config: TwinConfig) -> None:
    """Every row has a known label, its family, a position inside the frame, positive flux and S/N."""
    t = small_frame.truth
    ny, nx = small_config.detector.shape_px
    assert set(t["label"]) == set(ORDINARY_LABELS)
    ordinary = np.isin(t["label"], ORDINARY_LABELS)
    assert np.all(t["family"][ordinary] == t["label"][ordinary])
    assert np.all((t["x"] > -0.5 - 1) & (t["x"] < nx + 0.5) & (t["y"] > -0.5 - 1) & (t["y"] < ny + 0.5))
    assert np.all(t["flux_e"] > 0) and np.all(t["snr_expected"] > 0)
    assert np.all(np.isfinite(t["ra_deg"])) and np.all(np.isfinite(t["dec_deg"]))
    stars = t[t["label"] == "star"]
    bright, faint = stars[stars["mag"] < 17], stars[stars["mag"] > 21]
    assert np.median(bright["snr_expected"]) > 10 * np.median(faint["snr_expected"])


def test_hot_pixel_rows_are_the_detector_hot_pixel_map(small_frame: TwinFrame, small_config: TwinConfig) -> None:
    """Hot-pixel truth rows sit exactly on the detector's hot pixel map and stand out in the raw frame."""
    t = small_frame.truth[small_frame.truth["label"] == "hot_pixel"]
    mask = small_config.detector.hot_pixel_mask()
    assert len(t) == mask.sum() > 0
    assert np.all(mask[np.asarray(t["y"], int), np.asarray(t["x"], int)])
    raw = small_frame.raw_adu.astype(float)
    bright = t[t["flux_e"] > 2000]
    assert len(bright)
    for x, y in zip(np.asarray(bright["x"], int), np.asarray(bright["y"], int), strict=True):
        if 0 < x < raw.shape[1] - 1 and 0 < y < raw.shape[0] - 1:
            assert raw[y, x] > np.median(raw[y - 1:y + 2, x - 1:x + 2]) + 500


def test_header_is_a_camera_header_with_a_tan_wcs(small_frame: TwinFrame, small_config: TwinConfig) -> None:
    """The header has the camera's keys and a TAN WCS that maps truth x, y to truth RA, Dec."""
    h = small_frame.header
    assert h["IMAGETYP"] == "LIGHT" and h["EXPTIME"] == small_config.exposure_s and h["FILTER"] == "r"
    assert h["GAIN"] == 1.5 and h["RDNOISE"] == 5.0 and h["SATURATE"] > 40000
    assert h["CTYPE1"] == "RA---TAN" and "CD1_1" in h and h["DATE-OBS"].startswith("2026-03-20T03:00:00")
    wcs = WCS(h)
    t = small_frame.truth[:50]
    ra, dec = wcs.all_pix2world(t["x"], t["y"], 0)
    assert np.allclose(ra, t["ra_deg"], atol=1e-9) and np.allclose(dec, t["dec_deg"], atol=1e-9)
    scale = np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600
    assert scale == pytest.approx(small_config.pixel_scale_arcsec)


def test_star_counts_per_magnitude_bin_are_as_configured() -> None:
    """Truth star counts per magnitude bin follow the configured law, and sep finds the bright ones."""
    cfg = TwinConfig(detector=DetectorModel(shape_px=(1024, 1024)), n_stars=2000, n_galaxies=0,
                     cosmic_ray_rate_per_s=0.0, streak_probability=0.0)
    frame = simulate_frame(cfg, 0, 4)
    stars = frame.truth[frame.truth["label"] == "star"]
    edges = np.arange(14.0, 23.01, 1.0)
    counts, _ = np.histogram(stars["mag"], edges)
    expected = expected_counts_per_bin(cfg, edges)
    assert expected.sum() == pytest.approx(2000)
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected) + 1)
    assert counts[-1] > 4 * counts[2]  # the slope: faint stars far outnumber bright ones
    data = np.ascontiguousarray(frame.raw_adu, dtype=np.float32)
    bkg = sep.Background(data)
    found = sep.extract(data - bkg, 5.0, err=bkg.globalrms, minarea=5)
    x, y = np.asarray(stars["x"]), np.asarray(stars["y"])
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(d, np.inf)
    isolated = (d.min(axis=1) > 4 * cfg.fwhm_px) & (x > 10) & (x < 1013) & (y > 10) & (y < 1013)
    for lo, hi in ((16, 17), (17, 18), (18, 19), (19, 20)):
        sel = isolated & (stars["mag"] >= lo) & (stars["mag"] < hi)
        near = np.hypot(x[sel][:, None] - found["x"][None], y[sel][:, None] - found["y"][None]).min(axis=1)
        assert np.mean(near < 1.5) > 0.9, (lo, hi)


def test_bright_stars_saturate_and_bleed_along_their_column() -> None:
    """A star above the full well clips at SATURATE and spreads its excess up and down its column."""
    det = DetectorModel(shape_px=(256, 256), hot_pixel_fraction=0.0, dead_pixel_fraction=0.0, n_bad_columns=0,
                        vignetting=0.0, prnu_rms=0.0)
    cfg = TwinConfig(detector=det, n_stars=1, star_mag_range=(12.0, 12.01), n_galaxies=0, cosmic_ray_rate_per_s=0.0,
                     streak_probability=0.0, psf_fwhm_variation=0.0, psf_ellipticity=0.0)
    frame = simulate_frame(cfg, 0, 1)
    star = frame.truth[frame.truth["label"] == "star"][0]
    x, y = int(round(star["x"])), int(round(star["y"]))
    raw = frame.raw_adu.astype(float)
    level = frame.header["SATURATE"]
    column = raw[:, x] >= level - 30
    row = raw[y, :] >= level - 30
    assert column.sum() > 3 * row.sum()  # the bleed trail runs along the column
    assert raw.max() < level + 30
    electrons = ((raw - det.bias_frame_adu()) * det.gain_e_per_adu).sum() / det.flat_field().mean()
    sky = cfg.sky_e_per_s * cfg.exposure_s * raw.size
    assert electrons - sky == pytest.approx(star["flux_e"], rel=0.03)  # bleeding keeps the charge


def test_write_frames_writes_fits_truth_and_reference_catalog(tmp_path, small_config: TwinConfig) -> None:
    """write_frames leaves raw uint16 FITS, one truth table for all frames and a catalog without transients."""
    cfg = small_config.with_(n_transients=4, anomalies=("lens_arc", "comet"))
    paths = write_frames(tmp_path, cfg, 2, seed=3)
    assert [p.name for p in paths] == ["frame_0000.fits", "frame_0001.fits"]
    with fits.open(paths[1]) as hdul:
        assert hdul[0].data.dtype.kind == "u" and hdul[0].data.shape == cfg.detector.shape_px
        assert hdul[0].header["FRAMENUM"] == 1
        assert np.array_equal(hdul[0].data, simulate_frame(cfg, 1, 3).raw_adu)
    truth = Table.read(tmp_path / "truth.ecsv")
    assert set(truth["frame"]) == {0, 1}
    catalog = Table.read(tmp_path / "reference_catalog.ecsv")
    assert catalog.meta["seed"] == 3
    assert {"ra_deg", "dec_deg", "mag"} <= set(catalog.colnames)
    assert np.array_equal(catalog, reference_catalog(cfg, 3))
    transients = truth[truth["label"] == "transient"]
    assert len(transients) == 8 and np.all(transients["source_id"] == -1)
    listed = truth[truth["source_id"] >= 0]
    assert set(listed["label"]) == {"star", "galaxy", "anomaly"}
    match = catalog[np.asarray(listed["source_id"])]
    assert np.allclose(match["ra_deg"], listed["ra_deg"]) and np.all(match["family"] == listed["family"])
    # a transient has no catalog source within an arcsecond; stars and lensed systems do
    for rows, in_catalog in ((transients, False), (truth[truth["label"] == "star"][:20], True),
                             (truth[truth["family"] == "lens_arc"], True), (truth[truth["family"] == "comet"], False)):
        sep_arcsec = np.hypot((rows["ra_deg"][:, None] - catalog["ra_deg"][None]) * np.cos(np.deg2rad(cfg.dec_deg)),
                              rows["dec_deg"][:, None] - catalog["dec_deg"][None]).min(axis=1) * 3600
        assert np.all((sep_arcsec < 0.01) == in_catalog)
