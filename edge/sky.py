"""Sky positions and the reference catalog: pixel -> (RA, Dec) through the frame's WCS, a check
that a header's WCS is believable, registration of a frame onto a catalog's pixel grid, and
"new" = no counterpart in the field's reference catalog (on the sky, or in pixels).

astropy lives here, at the edge of the scoring stage; the functions take and return arrays.
Pixel coordinates are 0-based numpy (x = column), so WCS calls use origin 0. Nothing here logs or
touches a file but :meth:`ReferenceCatalog.load`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from edge.errors import ConfigError

_RA_NAMES = ("ra_deg", "ra", "RA", "RAJ2000", "ALPHA_J2000")
_DEC_NAMES = ("dec_deg", "dec", "DEC", "Dec", "DEJ2000", "DELTA_J2000")
#: pixel columns of a pixel catalog: 0-based positions in the grid of the reference frame
PIXEL_COLUMNS = ("x_px", "y_px")

#: a WCS is believed only with a pixel scale in this range (arcsec/px) ...
WCS_SCALE_RANGE_ARCSEC = (0.01, 100.0)
#: ... when the seeing it implies (FWHM x scale) lies in this range (arcsec) ...
WCS_SEEING_RANGE_ARCSEC = (0.1, 30.0)
#: ... and when it agrees with the scale the header states in words to this fraction
WCS_SCALE_TOLERANCE = 0.2

#: registration votes with this many of the brightest detections
REGISTER_BRIGHTEST = 200
#: a registration needs at least this many detection-catalog pairs that agree within 1 px
REGISTER_MIN_PAIRS = 8


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


#: keywords that state the scale of the image's own (binned) pixel, arcsec/px; the LOIS
#: cameras write SECPIXX "x pixscale after binning" beside PIXSCAL "Unbinned Pixel Scale"
_BINNED_SCALE_KEYS = ("SECPIXX", "SECPIX", "SECPIX1", "SECPIXY", "SECPIX2")
#: keywords that state the scale of an unbinned detector pixel, arcsec/px (times the binning)
_UNBINNED_SCALE_KEYS = ("PIXSCALE", "PIXSCAL", "PIXSCAL1", "PIXSCALX", "PIXSCAL2", "PIXSCALY")
_BINNING_KEYS = ("XBINNING", "CCDXBIN", "BINX", "XBIN")


def header_pixel_scale_arcsec(header: Mapping[str, Any] | None) -> float | None:
    """The pixel scale (arcsec per image pixel) the header states in words, or None.

    SECPIXX / SECPIX / SECPIX1 give the image's pixel as they stand; PIXSCALE / PIXSCAL / PIXSCAL1
    give a detector pixel and are multiplied by the x binning (CCDSUM "2 2", XBINNING, CCDXBIN,
    BINX). A value is taken only when it is a positive finite number (strings that read as one).
    """
    if not header:
        return None
    for key in _BINNED_SCALE_KEYS:
        value = _positive(header.get(key))
        if value is not None:
            return value
    for key in _UNBINNED_SCALE_KEYS:
        value = _positive(header.get(key))
        if value is not None:
            return value * _binning(header)
    return None


def _binning(header: Mapping[str, Any]) -> float:
    ccdsum = header.get("CCDSUM")
    if isinstance(ccdsum, str) and ccdsum.split():
        value = _positive(ccdsum.split()[0])
        if value is not None:
            return value
    for key in _BINNING_KEYS:
        value = _positive(header.get(key))
        if value is not None:
            return value
    return 1.0


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


@dataclass(frozen=True)
class WcsCheck:
    """Whether a header's WCS is believable, the pixel scale it gives (arcsec/px) and why."""

    plausible: bool
    scale_arcsec: float | None
    reason: str


def check_wcs(header: Mapping[str, Any] | None, *, fwhm_px: float,
              expected_scale_arcsec: float | None = None) -> WcsCheck:
    """Check a header's celestial WCS against the physics of the frame: its pixel scale must lie in
    [0.01, 100] arcsec/px, the seeing it implies (``fwhm_px`` x scale) in [0.1, 30] arcsec, and it
    must agree within 20 % with ``expected_scale_arcsec`` when one is given (e.g.
    :func:`header_pixel_scale_arcsec`). ``reason`` names every check that failed."""
    wcs = wcs_from_header(header)
    if wcs is None:
        return WcsCheck(False, None, "the header has no celestial WCS")
    scale = pixel_scale_arcsec(wcs)
    if scale is None or not math.isfinite(scale) or scale <= 0:
        return WcsCheck(False, None, f"the WCS gives no usable pixel scale ({scale})")
    problems = []
    lo, hi = WCS_SCALE_RANGE_ARCSEC
    if not lo <= scale <= hi:
        problems.append(f"the WCS pixel scale is {scale:.6g} arcsec/px, outside [{lo:g}, {hi:g}]")
    seeing = fwhm_px * scale
    lo, hi = WCS_SEEING_RANGE_ARCSEC
    if not lo <= seeing <= hi:
        problems.append(f"the seeing it implies ({fwhm_px:.3g} px FWHM x {scale:.6g} arcsec/px = "
                        f"{seeing:.4g} arcsec) is outside [{lo:g}, {hi:g}] arcsec")
    if expected_scale_arcsec is not None and abs(scale / expected_scale_arcsec - 1.0) > WCS_SCALE_TOLERANCE:
        problems.append(f"it disagrees with the expected {expected_scale_arcsec:.6g} arcsec/px by more "
                        f"than {WCS_SCALE_TOLERANCE:.0%}")
    if problems:
        return WcsCheck(False, scale, "; ".join(problems))
    return WcsCheck(True, scale, f"pixel scale {scale:.4g} arcsec/px, seeing {seeing:.3g} arcsec")


@dataclass(frozen=True)
class Registration:
    """The translation that maps a frame's pixels onto a catalog's grid: catalog = frame + (dx, dy)."""

    dx_px: float
    dy_px: float
    pairs: int          # detection-catalog pairs that agree with it within 1 px
    rms_px: float       # rms distance of those pairs from it


def register_offset(x_px: ArrayLike, y_px: ArrayLike, flux: ArrayLike, cat_x_px: ArrayLike,
                    cat_y_px: ArrayLike, *, max_shift_px: float = 50.0) -> Registration | None:
    """The translation (dx, dy) that maps a frame's detections onto the catalog grid, or None when
    fewer than :data:`REGISTER_MIN_PAIRS` pairs (or not clearly more than chance gives) agree on one.

    The brightest :data:`REGISTER_BRIGHTEST` detections vote with their offsets to every catalog
    source within ``max_shift_px`` in a 2-D histogram of 1 px bins; the peak (3x3 bins) is refined
    with the median offset of the pairs that agree within 1 px.
    """
    return _register(x_px, y_px, flux, cat_x_px, cat_y_px, max_shift_px=max_shift_px)[0]


def _register(x_px: ArrayLike, y_px: ArrayLike, flux: ArrayLike, cat_x_px: ArrayLike, cat_y_px: ArrayLike, *,
              max_shift_px: float, tree: Any | None = None) -> tuple[Registration | None, str]:
    """:func:`register_offset`, with the reason when there is no registration."""
    if not 0 < max_shift_px < math.inf:
        raise ConfigError(f"the largest shift to search must be > 0 px, not {max_shift_px}", where="register_offset")
    x, y = np.asarray(x_px, float), np.asarray(y_px, float)
    f = np.asarray(flux, float)
    cx, cy = np.asarray(cat_x_px, float), np.asarray(cat_y_px, float)
    finite = np.isfinite(cx) & np.isfinite(cy)
    cx, cy = cx[finite], cy[finite]
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    bright = ok[np.argsort(-np.nan_to_num(f[ok], nan=-np.inf), kind="stable")][:REGISTER_BRIGHTEST]
    if len(bright) < REGISTER_MIN_PAIRS or len(cx) < REGISTER_MIN_PAIRS:
        return None, (f"{len(bright)} usable detections and {len(cx)} catalog sources; "
                      f"registration needs {REGISTER_MIN_PAIRS} of each")
    if tree is None:
        tree = cKDTree(np.column_stack([cx, cy]))
    near = tree.query_ball_point(np.column_stack([x[bright], y[bright]]), r=max_shift_px)
    det = np.repeat(bright, [len(n) for n in near])
    cat = np.fromiter((j for n in near for j in n), dtype=np.int64, count=len(det))
    ddx, ddy = cx[cat] - x[det], cy[cat] - y[det]
    if len(ddx) < REGISTER_MIN_PAIRS:
        return None, f"only {len(ddx)} detection-catalog pairs within {max_shift_px:g} px"
    half = int(math.ceil(max_shift_px))
    edges = np.arange(-half - 0.5, half + 1.0)
    votes, _, _ = np.histogram2d(ddx, ddy, bins=(edges, edges))
    # a 3x3 box sum, so that an offset on a bin edge is not split between two bins
    padded = np.pad(votes, 1)
    box = np.zeros_like(votes)
    for i in range(3):
        for j in range(3):
            box += padded[i:i + votes.shape[0], j:j + votes.shape[1]]
    ix, iy = np.unravel_index(int(np.argmax(box)), box.shape)
    dx, dy = float(ix - half), float(iy - half)
    agree = (np.abs(ddx - dx) <= 1.5) & (np.abs(ddy - dy) <= 1.5)
    for _ in range(3):
        if not agree.any():
            break
        dx, dy = float(np.median(ddx[agree])), float(np.median(ddy[agree]))
        agree = np.hypot(ddx - dx, ddy - dy) <= 1.0
    pairs = int(agree.sum())
    # pairs expected within 1 px of any one offset by chance: the votes spread over the search disc
    chance = len(ddx) / max_shift_px ** 2
    needed = max(REGISTER_MIN_PAIRS, math.ceil(chance + 5.0 * math.sqrt(chance)))
    if pairs < needed:
        return None, (f"only {pairs} of {len(bright)} detections agree on one offset "
                      f"(best ({dx:+.1f}, {dy:+.1f}) px; {needed} needed)")
    rms = float(np.sqrt(np.mean((ddx[agree] - dx) ** 2 + (ddy[agree] - dy) ** 2)))
    return Registration(dx, dy, pairs, rms), ""


@dataclass(frozen=True)
class PixelMatch:
    """One frame matched to a pixel catalog: where a detection has no counterpart, and how the
    frame was registered (None, with the reason, when it could not be)."""

    new: NDArray[np.bool_]
    registration: Registration | None
    reason: str = ""


@dataclass(frozen=True)
class ReferenceCatalog:
    """Persistent sources of the field: RA and Dec in degrees (ICRS), pixel positions (0-based, in
    the grid of the reference frame), or both; a pair the table lacks is None.

    A pixel catalog covers ``footprint_px`` (x_min, x_max, y_min, y_max) of its grid: the table's
    ``footprint_px`` metadata (edge.commission.catalog writes it), else its sources' bounding box.
    A detection registered outside it is never new: the catalog cannot know what lies there.
    """

    ra_deg: NDArray[np.float64] | None
    dec_deg: NDArray[np.float64] | None
    source: str
    x_px: NDArray[np.float64] | None = None
    y_px: NDArray[np.float64] | None = None
    footprint_px: tuple[float, float, float, float] | None = None
    _tree: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.ra_deg is None) != (self.dec_deg is None) or (self.x_px is None) != (self.y_px is None):
            raise ConfigError("a reference catalog needs both RA and Dec, or both x_px and y_px", where=self.source)
        if self.ra_deg is None and self.x_px is None:
            raise ConfigError("a reference catalog needs RA/Dec or x_px/y_px positions", where=self.source)
        if self.x_px is not None and self.y_px is not None:
            keep = np.isfinite(self.x_px) & np.isfinite(self.y_px)
            object.__setattr__(self, "_tree", cKDTree(np.column_stack([self.x_px[keep], self.y_px[keep]])))
            if self.footprint_px is None and keep.any():
                x, y = self.x_px[keep], self.y_px[keep]
                bounds = (float(x.min()), float(x.max()), float(y.min()), float(y.max()))
                object.__setattr__(self, "footprint_px", bounds)

    @property
    def in_pixels(self) -> bool:
        """True for a pixel catalog: it is matched in pixels, after registering each frame to it."""
        return self.x_px is not None

    @classmethod
    def load(cls, path: str | Path) -> ReferenceCatalog:
        """Read a FITS or ECSV table with RA/Dec columns in degrees, x_px/y_px columns, or both."""
        from astropy.table import Table

        path = Path(path)
        try:
            table = Table.read(path)
        except Exception as exc:  # noqa: BLE001 - astropy raises many types for a bad file; one message
            raise ConfigError(f"cannot read the reference catalog: {exc}", where=str(path)) from exc
        ra = next((n for n in _RA_NAMES if n in table.colnames), None)
        dec = next((n for n in _DEC_NAMES if n in table.colnames), None)
        has_px = all(n in table.colnames for n in PIXEL_COLUMNS)
        if (ra is None or dec is None) and not has_px:
            raise ConfigError(
                f"the reference catalog needs RA/Dec columns in degrees (one of {_RA_NAMES} and {_DEC_NAMES}) "
                f"or pixel columns {PIXEL_COLUMNS}; it has {table.colnames}",
                where=str(path),
            )

        def column(name: str | None) -> NDArray[np.float64] | None:
            return None if name is None else np.asarray(table[name], float)

        sky_ok = ra is not None and dec is not None
        return cls(column(ra if sky_ok else None), column(dec if sky_ok else None), str(path),
                   column("x_px" if has_px else None), column("y_px" if has_px else None),
                   _footprint(table.meta.get("footprint_px"), str(path)) if has_px else None)

    def has_counterpart(self, ra_deg: NDArray[np.floating], dec_deg: NDArray[np.floating],
                        radius_arcsec: NDArray[np.floating]) -> NDArray[np.bool_]:
        """True where a catalog source lies within ``radius_arcsec`` (per detection) of the position."""
        if self.ra_deg is None or self.dec_deg is None:
            raise ConfigError("this reference catalog has no RA/Dec columns; match it in pixels",
                              where=self.source)
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

    def has_counterpart_px(self, x: ArrayLike, y: ArrayLike, radius_px: ArrayLike) -> NDArray[np.bool_]:
        """True where a catalog source lies within ``radius_px`` (scalar or per detection) of the
        position (x, y) in the catalog's grid; False for a non-finite position."""
        if self._tree is None:
            raise ConfigError("this reference catalog has no x_px/y_px columns; match it on the sky",
                              where=self.source)
        x, y = np.asarray(x, float), np.asarray(y, float)
        out = np.zeros(len(x), bool)
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any() or self._tree.n == 0:
            return out
        distance, _ = self._tree.query(np.column_stack([x[ok], y[ok]]))
        out[ok] = distance <= np.broadcast_to(np.asarray(radius_px, float), x.shape)[ok]
        return out

    def match_in_pixels(self, x: ArrayLike, y: ArrayLike, flux: ArrayLike, radius_px: ArrayLike, *,
                        max_shift_px: float = 50.0) -> PixelMatch:
        """Register a frame's detections onto this pixel catalog (:func:`register_offset`), then
        ``new`` = inside the footprint and no catalog source within ``radius_px`` of the registered
        position; an unregistered frame has nothing new."""
        if self._tree is None:
            raise ConfigError("this reference catalog has no x_px/y_px columns; match it on the sky",
                              where=self.source)
        x, y = np.asarray(x, float), np.asarray(y, float)
        data = self._tree.data
        reg, reason = _register(x, y, flux, data[:, 0], data[:, 1], max_shift_px=max_shift_px, tree=self._tree)
        if reg is None:
            return PixelMatch(np.zeros(len(x), bool), None, reason)
        cx, cy = x + reg.dx_px, y + reg.dy_px
        x_min, x_max, y_min, y_max = self.footprint_px or (-np.inf, np.inf, -np.inf, np.inf)
        inside = (cx >= x_min) & (cx <= x_max) & (cy >= y_min) & (cy <= y_max)
        return PixelMatch(inside & ~self.has_counterpart_px(cx, cy, radius_px), reg)


def _footprint(value: Any, where: str) -> tuple[float, float, float, float] | None:
    """A catalog table's ``footprint_px`` metadata: [x_min, x_max, y_min, y_max] in its pixel grid."""
    if value is None:
        return None
    try:
        x_min, x_max, y_min, y_max = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"footprint_px in the catalog's metadata must be [x_min, x_max, y_min, y_max], "
                          f"not {value!r}", where=where) from exc
    return x_min, x_max, y_min, y_max
