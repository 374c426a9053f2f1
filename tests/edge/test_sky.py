"""Sky positions from the frame's WCS and the "new" test against the reference catalog."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from edge.errors import ConfigError
from edge.sky import ReferenceCatalog, pixel_scale_arcsec, pixel_to_sky, wcs_from_header

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
