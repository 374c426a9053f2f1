"""Calibration-frame sets (bias, dark, flat stacks) of a detector, with the truth they must recover.

The frames go through the very same detector model as light frames (``twin.detector.expose``),
so a master bias, dark and flat built from them agree with the light frames of the same
``DetectorModel.seed``. This module is the I/O shell: it writes FITS and returns the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time, TimeDelta
from numpy.typing import NDArray

from edge.errors import TwinError
from edge.log import get_logger
from twin.astrometry import detector_cards
from twin.detector import expose
from twin.instrument import DetectorModel, Progress

log = get_logger(__name__)

FLAT_EXPTIME_S = 5.0
_START = "2026-03-19T18:00:00"
_BIAS, _DARK, _FLAT = 1, 2, 3


@dataclass(frozen=True)
class CalibrationTruth:
    """What a calibration built from the set should recover, and the files written."""

    gain_e_per_adu: float
    read_noise_e: float
    bias_adu: NDArray[np.float32]  # noise-free bias frame with its column pattern
    dark_e_per_s: float  # dark current of ordinary pixels
    flat: NDArray[np.float32]  # relative response, mean 1 over live pixels, 0 at dead pixels
    hot_pixels: NDArray[np.bool_]
    dead_pixels: NDArray[np.bool_]
    files: list[Path]
    dark_map_e_per_s: NDArray[np.float32] | None = None  # per-pixel dark current, hot pixels included


def _header(det: DetectorModel, imagetyp: str, exptime_s: float, index: int, filt: str | None) -> fits.Header:
    h = fits.Header()
    t = Time(_START, format="isot", scale="utc") + TimeDelta(60.0 * index, format="sec")
    h["IMAGETYP"] = (imagetyp, "frame type")
    h["EXPTIME"] = (exptime_s, "[s] exposure time")
    h["DATE-OBS"] = (t.isot, "UTC start of exposure")
    h["MJD-OBS"] = (float(t.mjd), "[d] MJD of start of exposure")
    if filt is not None:
        h["FILTER"] = (filt, "filter")
    for key, value, comment in detector_cards(det):
        h[key] = (value, comment)
    return h


def make_calibration_set(out_dir: Path, detector: DetectorModel, *, n_bias: int = 10, n_dark: int = 5,
                         dark_exptime_s: float = 300.0, n_flat: int = 10, flat_level_e: float = 20000.0,
                         filters: tuple[str, ...] = ("r",), seed: int = 0,
                         progress: Progress | None = None) -> CalibrationTruth:
    """Write bias_000.fits, dark_000.fits, flat_<filter>_000.fits ... (uint16) and return the truth.

    ``progress`` is told of each frame written (stage ``"writing calibration frames"``,
    ``n_bias + n_dark + n_flat * len(filters)`` in all).
    """
    if min(n_bias, n_dark, n_flat, seed) < 0 or dark_exptime_s <= 0:
        raise TwinError("frame counts and seed must be >= 0 and dark_exptime_s > 0", where="make_calibration_set")
    if not 0 < flat_level_e < detector.full_well_e / (1 + detector.vignetting + 5 * detector.prnu_rms):
        raise TwinError(f"flat_level_e={flat_level_e} must be positive and leave room below the full well "
                        f"({detector.full_well_e} e)", where="make_calibration_set")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TwinError(f"cannot create output folder: {exc}; choose a writable --out", where=str(out_dir)) from exc
    zeros = np.zeros(detector.shape_px, np.float32)
    files: list[Path] = []
    count = 0
    total = n_bias + n_dark + n_flat * len(filters)
    stage = "writing calibration frames"
    if progress is not None:
        progress(stage, 0, total)

    def write(name: str, expected: NDArray[np.float32], exptime_s: float, imagetyp: str, filt: str | None,
              stream: tuple[int, ...]) -> None:
        nonlocal count
        rng = np.random.default_rng([seed, *stream])
        raw, _ = expose(expected, detector, exptime_s, rng)
        path = out_dir / name
        fits.PrimaryHDU(data=raw, header=_header(detector, imagetyp, exptime_s, count, filt)).writeto(path, overwrite=True)
        files.append(path)
        count += 1
        log.debug("twin.calib_written", path=str(path), imagetyp=imagetyp)
        if progress is not None:
            progress(stage, 1, total)

    for i in range(n_bias):
        write(f"bias_{i:03d}.fits", zeros, 0.0, "BIAS", None, (_BIAS, i))
    for i in range(n_dark):
        write(f"dark_{i:03d}.fits", zeros, dark_exptime_s, "DARK", None, (_DARK, i))
    lit = np.full(detector.shape_px, flat_level_e, np.float32)
    for k, filt in enumerate(filters):
        for i in range(n_flat):
            write(f"flat_{filt}_{i:03d}.fits", lit, FLAT_EXPTIME_S, "FLAT", filt, (_FLAT, k, i))
    log.info("twin.calib_set_written", out=str(out_dir), n_files=len(files))
    return CalibrationTruth(
        gain_e_per_adu=detector.gain_e_per_adu, read_noise_e=detector.read_noise_e,
        bias_adu=detector.bias_frame_adu(), dark_e_per_s=detector.dark_e_per_s, flat=detector.flat_field(),
        hot_pixels=detector.hot_pixel_mask(), dead_pixels=detector.dead_pixel_mask(), files=files,
        dark_map_e_per_s=detector.dark_current_e_per_s())
