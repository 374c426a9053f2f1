"""Astrometry and headers: a TAN WCS from pointing, pixel scale and rotation; a timestamp per frame.

The WCS uses the FITS 1-based convention inside the header only; every function here takes and
returns 0-based numpy pixel coordinates (x = column). No rendering, no randomness.
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.time import Time, TimeDelta
from astropy.wcs import WCS
from numpy.typing import NDArray

from edge.errors import TwinError
from twin.instrument import DetectorModel, TwinConfig


def make_wcs(config: TwinConfig) -> WCS:
    """The frame's TAN WCS: CRVAL at the pointing, CRPIX at the frame centre, north up rotated by rotation_deg."""
    ny, nx = config.detector.shape_px
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [config.ra_deg % 360.0, config.dec_deg]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    scale = config.pixel_scale_arcsec / 3600.0
    t = np.deg2rad(config.rotation_deg)
    # north up, east to the left (RA grows towards -x), the usual display orientation
    w.wcs.cd = scale * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    return w


def pixel_to_sky(wcs: WCS, x: NDArray[np.float64], y: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """RA, Dec in degrees of 0-based pixel positions."""
    if len(np.atleast_1d(x)) == 0:
        return np.zeros(0), np.zeros(0)
    ra, dec = wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    return np.asarray(ra), np.asarray(dec)


def frame_time(config: TwinConfig, index: int) -> Time:
    """UTC start of frame ``index``: ``date_obs`` plus ``index`` cadences."""
    try:
        t0 = Time(config.date_obs, format="isot", scale="utc")
    except ValueError as exc:
        raise TwinError(f"date_obs {config.date_obs!r} is not an ISO UTC time like 2026-03-20T03:00:00",
                        where="TwinConfig.date_obs") from exc
    return t0 + TimeDelta(index * config.cadence_s, format="sec")


def detector_cards(det: DetectorModel) -> list[tuple[str, object, str]]:
    """Header cards every frame of this detector carries (light and calibration alike)."""
    return [
        ("INSTRUME", det.name, "camera"),
        ("DETECTOR", f"{det.name}-{det.seed}", "detector model and pattern seed"),
        ("GAIN", det.gain_e_per_adu, "[e-/ADU] gain"),
        ("RDNOISE", det.read_noise_e, "[e-] read noise"),
        ("BIASLEV", det.bias_adu, "[ADU] nominal bias level"),
        ("SATURATE", min(65535.0, round(det.saturate_adu, 1)), "[ADU] full well above bias"),
    ]


def light_header(config: TwinConfig, index: int, seed: int, wcs: WCS) -> fits.Header:
    """The header a camera writes for a light frame, plus the TAN WCS and the twin's seed."""
    h = fits.Header()
    t = frame_time(config, index)
    h["IMAGETYP"] = ("LIGHT", "frame type")
    h["EXPTIME"] = (config.exposure_s, "[s] exposure time")
    h["DATE-OBS"] = (t.isot, "UTC start of exposure")
    h["MJD-OBS"] = (float(t.mjd), "[d] MJD of start of exposure")
    h["FILTER"] = (config.filter, "filter")
    for key, value, comment in detector_cards(config.detector):
        h[key] = (value, comment)
    h["FRAMENUM"] = (index, "frame index in the sequence")
    h["TWINSEED"] = (seed, "sequence seed of the twin")
    h["PIXSCALE"] = (config.pixel_scale_arcsec, "[arcsec/px]")
    h.extend(wcs_cards(wcs), update=True)
    return h


def wcs_cards(wcs: WCS) -> fits.Header:
    """The TAN WCS as the plain CTYPE/CRVAL/CRPIX/CD cards most camera software writes."""
    h = fits.Header()
    h["WCSAXES"] = 2
    for i in (1, 2):
        h[f"CTYPE{i}"] = wcs.wcs.ctype[i - 1]
        h[f"CUNIT{i}"] = "deg"
        h[f"CRVAL{i}"] = float(wcs.wcs.crval[i - 1])
        h[f"CRPIX{i}"] = float(wcs.wcs.crpix[i - 1])
    cd = wcs.wcs.cd
    for i in (1, 2):
        for j in (1, 2):
            h[f"CD{i}_{j}"] = float(cd[i - 1, j - 1])
    h["RADESYS"] = "ICRS"
    h["EQUINOX"] = 2000.0
    return h
