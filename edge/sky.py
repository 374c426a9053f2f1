"""Sky positions and the reference catalog: pixel -> (RA, Dec) through the frame's WCS, and
"new" = no counterpart in the field's reference catalog.

astropy lives here, at the edge of the scoring stage; the functions take and return arrays.
Pixel coordinates are 0-based numpy (x = column), so WCS calls use origin 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import ConfigError

_RA_NAMES = ("ra_deg", "ra", "RA", "RAJ2000", "ALPHA_J2000")
_DEC_NAMES = ("dec_deg", "dec", "DEC", "Dec", "DEJ2000", "DELTA_J2000")


def wcs_from_header(header: Mapping[str, Any] | None) -> Any | None:
    """An astropy celestial WCS from FITS-style keywords, or None when the header has none usable."""
    if not header or "CTYPE1" not in header or "CTYPE2" not in header:
        return None
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    card_header = fits.Header()
    for key, value in header.items():
        if isinstance(value, (str, int, float, bool)) and len(str(key)) <= 8:
            card_header[str(key)] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(card_header, naxis=2)
        except Exception:  # noqa: BLE001 - a broken WCS means "no sky position", never a dead frame
            return None
    return wcs if wcs.has_celestial else None


def pixel_to_sky(wcs: Any | None, x: NDArray[np.floating], y: NDArray[np.floating]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(RA, Dec) in degrees for 0-based pixel positions; NaN where there is no WCS."""
    if wcs is None or len(x) == 0:
        nan = np.full(len(x), np.nan)
        return nan, nan.copy()
    ra, dec = wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    return np.asarray(ra, float), np.asarray(dec, float)


def pixel_scale_arcsec(wcs: Any | None) -> float | None:
    """Mean pixel scale in arcsec, or None without a WCS."""
    if wcs is None:
        return None
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


@dataclass(frozen=True)
class ReferenceCatalog:
    """Persistent sources of the field: RA and Dec in degrees (ICRS)."""

    ra_deg: NDArray[np.float64]
    dec_deg: NDArray[np.float64]
    source: str

    @classmethod
    def load(cls, path: str | Path) -> ReferenceCatalog:
        """Read a FITS or ECSV table with RA/Dec columns in degrees."""
        from astropy.table import Table

        path = Path(path)
        try:
            table = Table.read(path)
        except Exception as exc:  # noqa: BLE001 - astropy raises many types for a bad file; one message
            raise ConfigError(f"cannot read the reference catalog: {exc}", where=str(path)) from exc
        ra = next((n for n in _RA_NAMES if n in table.colnames), None)
        dec = next((n for n in _DEC_NAMES if n in table.colnames), None)
        if ra is None or dec is None:
            raise ConfigError(
                f"the reference catalog needs RA/Dec columns in degrees (one of {_RA_NAMES} and {_DEC_NAMES}); "
                f"it has {table.colnames}",
                where=str(path),
            )
        return cls(np.asarray(table[ra], float), np.asarray(table[dec], float), str(path))

    def has_counterpart(self, ra_deg: NDArray[np.floating], dec_deg: NDArray[np.floating],
                        radius_arcsec: NDArray[np.floating]) -> NDArray[np.bool_]:
        """True where a catalog source lies within ``radius_arcsec`` (per detection) of the position."""
        ra_deg = np.asarray(ra_deg, float)
        out = np.zeros(len(ra_deg), bool)
        ok = np.isfinite(ra_deg) & np.isfinite(dec_deg)
        if not ok.any() or len(self.ra_deg) == 0:
            return out
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        cat = SkyCoord(self.ra_deg * u.deg, self.dec_deg * u.deg)
        pos = SkyCoord(ra_deg[ok] * u.deg, np.asarray(dec_deg, float)[ok] * u.deg)
        _, sep2d, _ = pos.match_to_catalog_sky(cat)
        out[ok] = sep2d.arcsec <= np.asarray(radius_arcsec, float)[ok]
        return out
