"""Sky positions from the frame's WCS and the "new" test against the reference catalog."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from edge.errors import ConfigError
from edge.sky import (
    REGISTER_BRIGHTEST,
    ReferenceCatalog,
    check_wcs,
    header_pixel_scale_arcsec,
    pixel_scale_arcsec,
    pixel_to_sky,
    register_offset,
    wcs_from_header,
)

HEADER = {
    "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
    "CRVAL1": 150.0, "CRVAL2": 2.0,
    "CRPIX1": 101.0, "CRPIX2": 51.0,  # FITS 1-based: numpy pixel (100, 50) is the reference pixel
    "CD1_1": -0.5 / 3600, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.5 / 3600,
}


def test_reference_pixel_maps_to_the_pointing_with_numpy_convention() -> None:
    """0-based numpy pixel (x=100, y=50) is FITS CRPIX (101, 51), so it lands on CRVAL."""
    wcs = wcs_from_header(HEADER)
    ra, dec = pixel_to_sky(wcs, np.array([100.0, 110.0]), np.array([50.0, 50.0]))
    assert ra[0] == pytest.approx(150.0) and dec[0] == pytest.approx(2.0)
    # ten pixels along +x is 5 arcsec east, so RA decreases with CD1_1 < 0
    assert (ra[0] - ra[1]) * np.cos(np.radians(2.0)) * 3600 == pytest.approx(5.0, rel=1e-3)
    assert pixel_scale_arcsec(wcs) == pytest.approx(0.5)


def test_no_wcs_gives_nan_positions() -> None:
    """A frame without WCS keywords gets NaN sky positions, not an error."""
    assert wcs_from_header({"EXPTIME": 1.0}) is None
    ra, dec = pixel_to_sky(None, np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    assert np.isnan(ra).all() and np.isnan(dec).all()


def test_counterparts_within_radius(tmp_path) -> None:
    """A detection within its radius of a catalog source has a counterpart; one farther away is new."""
    path = tmp_path / "ref.ecsv"
    Table({"ra_deg": [150.0, 150.01], "dec_deg": [2.0, 2.0], "mag": [15.0, 16.0]}).write(path)
    cat = ReferenceCatalog.load(path)
    ra = np.array([150.0 + 0.5 / 3600, 150.0, np.nan])
    dec = np.array([2.0, 2.0 + 3.0 / 3600, 2.0])
    found = cat.has_counterpart(ra, dec, np.array([1.0, 1.0, 1.0]))
    assert found.tolist() == [True, False, False]
    assert cat.has_counterpart(ra[1:2], dec[1:2], np.array([4.0])).tolist() == [True]


def test_catalog_without_coordinates_is_a_config_error(tmp_path) -> None:
    """A catalog with no RA/Dec columns names the file and the columns it has."""
    path = tmp_path / "bad.ecsv"
    Table({"x": [1.0], "y": [2.0]}).write(path)
    with pytest.raises(ConfigError, match="RA/Dec columns") as exc:
        ReferenceCatalog.load(path)
    assert "bad.ecsv" in str(exc.value)


def twin_like_points(rng: np.random.Generator, n: int = 300, size_px: float = 1000.0):
    """A catalog of ``n`` sources with power-law fluxes, as a twin field of that size has."""
    x, y = rng.uniform(0, size_px, n), rng.uniform(0, size_px, n)
    flux_e = 10 ** rng.uniform(2.0, 5.0, n)
    return x, y, flux_e


def test_registration_recovers_a_known_shift_with_sources_missing_and_spurious(rng) -> None:
    """A frame shifted by (7.3, -4.1) px from the catalog, with 30 % of the sources missing,
    spurious detections added and centroid noise, registers back to (-7.3, +4.1) within 0.1 px."""
    cat_x, cat_y, flux = twin_like_points(rng)
    seen = rng.random(len(cat_x)) > 0.3
    x = cat_x[seen] + 7.3 + rng.normal(0, 0.05, seen.sum())
    y = cat_y[seen] - 4.1 + rng.normal(0, 0.05, seen.sum())
    spurious = 80
    x = np.concatenate([x, rng.uniform(0, 1000, spurious)])
    y = np.concatenate([y, rng.uniform(0, 1000, spurious)])
    f = np.concatenate([flux[seen], 10 ** rng.uniform(2.0, 5.0, spurious)])
    reg = register_offset(x, y, f, cat_x, cat_y)
    assert reg is not None
    assert reg.dx_px == pytest.approx(-7.3, abs=0.1) and reg.dy_px == pytest.approx(4.1, abs=0.1)
    assert reg.pairs >= 0.6 * min(REGISTER_BRIGHTEST, seen.sum()) and reg.rms_px < 0.2


def test_registration_of_too_few_sources_or_of_another_field_is_none(rng) -> None:
    """Five detections, or a frame of another field, give no registration rather than a guess."""
    cat_x, cat_y, flux = twin_like_points(rng)
    assert register_offset(cat_x[:5] + 3.0, cat_y[:5], flux[:5], cat_x, cat_y) is None
    other_x, other_y, other_flux = twin_like_points(rng)
    assert register_offset(other_x, other_y, other_flux, cat_x, cat_y) is None
    assert register_offset(cat_x + 70.0, cat_y, flux, cat_x, cat_y, max_shift_px=50.0) is None


def test_pixel_catalog_matches_in_pixels_after_registering(tmp_path, rng) -> None:
    """A catalog with x_px/y_px loads as a pixel catalog; a frame shifted from it registers, and a
    detection with no catalog source within its radius is new, a catalogued one is not."""
    cat_x, cat_y, flux = twin_like_points(rng)
    path = tmp_path / "pixels.ecsv"
    Table({"x_px": cat_x, "y_px": cat_y}).write(path)
    cat = ReferenceCatalog.load(path)
    assert cat.in_pixels and cat.ra_deg is None
    x = np.concatenate([cat_x[:100], [500.0]]) - 12.0
    y = np.concatenate([cat_y[:100], [500.0]]) + 5.0
    found = cat.has_counterpart_px(x + 12.0, y - 5.0, 1.0)
    assert found[:100].all()
    match = cat.match_in_pixels(x, y, np.concatenate([flux[:100], [1e4]]), 2.0)
    assert match.registration is not None
    assert match.registration.dx_px == pytest.approx(12.0, abs=0.01)
    assert match.new[-1] == (np.hypot(cat_x - 500.0, cat_y - 500.0).min() > 2.0)
    assert not match.new[:100].any()
    with pytest.raises(ConfigError, match="no RA/Dec"):
        cat.has_counterpart(np.array([1.0]), np.array([1.0]), np.array([1.0]))


def test_a_catalog_with_both_pairs_keeps_both_and_one_with_neither_names_both(tmp_path) -> None:
    """RA/Dec and x_px/y_px in one table are both read; a table with neither pair is refused with a
    message that names both."""
    path = tmp_path / "both.ecsv"
    Table({"ra_deg": [150.0], "dec_deg": [2.0], "x_px": [10.0], "y_px": [20.0]}).write(path)
    cat = ReferenceCatalog.load(path)
    assert cat.in_pixels and cat.ra_deg is not None and cat.x_px is not None
    bad = tmp_path / "neither.ecsv"
    Table({"x": [1.0], "flux": [2.0]}).write(bad)
    with pytest.raises(ConfigError, match=r"RA/Dec columns.*x_px"):
        ReferenceCatalog.load(bad)


def lowell_like_header() -> dict[str, object]:
    """A header written as the Lowell NASA42 camera writes it: the TAN WCS's numbers as strings
    (astropy then reads CDELT 1 deg, 3600 arcsec/px), SECPIXX 0.981 after 3x3 binning, PIXSCAL 0.327 unbinned."""
    return {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": "124.6185920672", "CRVAL2": "25.32885681452",
            "CRPIX1": "716.0", "CRPIX2": "685.0", "CD1_1": "-0.0003073728745725", "CD1_2": "1.223604312691e-05",
            "CD2_1": "1.223604312691e-05", "CD2_2": "0.0003073728745725", "SECPIXX": 0.981, "SECPIXY": 0.981,
            "PIXSCAL": 0.327, "CCDSUM": "3 3"}


def test_a_wcs_written_as_strings_is_implausible_and_the_reason_names_3600_arcsec() -> None:
    """The Lowell-style header gives 3600 arcsec/px through astropy: check_wcs calls it implausible,
    naming the scale, the seeing it implies and the disagreement with SECPIXX."""
    header = lowell_like_header()
    assert header_pixel_scale_arcsec(header) == pytest.approx(0.981)
    check = check_wcs(header, fwhm_px=3.0, expected_scale_arcsec=header_pixel_scale_arcsec(header))
    assert not check.plausible
    assert check.scale_arcsec == pytest.approx(3600.0)
    assert "3600 arcsec/px" in check.reason and "seeing" in check.reason and "0.981" in check.reason


def test_header_pixel_scale_reads_binned_and_unbinned_keywords() -> None:
    """SECPIX-style keywords are the image's pixel; PIXSCAL-style ones are multiplied by the binning."""
    assert header_pixel_scale_arcsec({"PIXSCAL": 0.327, "CCDSUM": "3 3"}) == pytest.approx(0.981)
    assert header_pixel_scale_arcsec({"PIXSCALE": "0.4", "XBINNING": 2}) == pytest.approx(0.8)
    assert header_pixel_scale_arcsec({"SECPIX": 1.2, "CCDSUM": "2 2"}) == pytest.approx(1.2)
    assert header_pixel_scale_arcsec({"PIXSCALE": "n/a"}) is None and header_pixel_scale_arcsec({}) is None


def test_a_sound_wcs_is_plausible_and_a_wrong_expected_scale_is_not() -> None:
    """A 0.5 arcsec/px TAN WCS with 3 px seeing is plausible; told the scale is 1 arcsec/px, it is not."""
    check = check_wcs(HEADER, fwhm_px=3.0)
    assert check.plausible and check.scale_arcsec == pytest.approx(0.5)
    assert check_wcs(HEADER, fwhm_px=3.0, expected_scale_arcsec=0.55).plausible
    wrong = check_wcs(HEADER, fwhm_px=3.0, expected_scale_arcsec=1.0)
    assert not wrong.plausible and "disagrees with the expected 1 arcsec/px" in wrong.reason
    assert not check_wcs(HEADER, fwhm_px=100.0).plausible    # 50 arcsec seeing


@pytest.mark.parametrize("path", ["m13-raw/M13_blue_0001.fits", "sep-ntt/image.fits", "saao-raw/a8280271.fits"])
def test_the_real_repository_frames_have_no_celestial_wcs(real_data, path: str) -> None:
    """None of the repository's real frames carries a celestial WCS (sep-ntt's is a linear pixel
    one), so check_wcs calls each implausible, for that reason, and gives no scale."""
    import warnings

    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning

    with warnings.catch_warnings():
        # sep-ntt's non-standard ESO-LOG cards warn on read; that is the file's, not ours
        warnings.simplefilter("ignore", AstropyUserWarning)
        with fits.open(real_data / path, memmap=False) as hdul:
            header = hdul[0].header.copy()
    check = check_wcs(header, fwhm_px=3.0, expected_scale_arcsec=header_pixel_scale_arcsec(header))
    assert not check.plausible and check.scale_arcsec is None
    assert check.reason == "the header has no celestial WCS"
