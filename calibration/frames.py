"""Reading calibration and science FITS frames: frame kinds, FITS sections, overscan, sky gain.

This module is the file edge of calibration: it turns FITS files into arrays in ADU with the
overscan level removed and the frame trimmed, and into the few header values calibration needs
(kind, exposure, filter, gain, read noise). FITS sections are 1-based and inclusive; they become
0-based half-open numpy slices here and nowhere else. It must not combine frames or decide
anything about masters; that is ``combine`` and ``masters``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from edge.errors import CalibrationInputError

#: IMAGETYP spellings seen in the wild, lower-cased with spaces and underscores squeezed out
_KIND_SPELLINGS: dict[str, str] = {
    "bias": "bias", "biasframe": "bias", "zero": "bias", "zeroframe": "bias", "masterbias": "bias",
    "dark": "dark", "darkframe": "dark", "darkcurrent": "dark",
    "flat": "flat", "flatfield": "flat", "flatframe": "flat", "skyflat": "flat", "domeflat": "flat",
    "twilightflat": "flat", "lampflat": "flat",
    "light": "light", "lightframe": "light", "object": "light", "science": "light",
}

_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")

Section = tuple[slice, slice]

#: ``progress(stage, advance, total)``: ``advance`` more of ``total`` units of ``stage`` are done
#: (0 when the stage starts). Long functions take one to report to a shell; it only observes.
Progress = Callable[[str, int, int], None]


def frame_kind(imagetyp: str | None) -> str | None:
    """Map an IMAGETYP value to ``"bias"``, ``"dark"``, ``"flat"`` or ``"light"``; None if unknown."""
    if imagetyp is None:
        return None
    key = re.sub(r"[\s_\-]+", "", str(imagetyp).lower())
    return _KIND_SPELLINGS.get(key)


def parse_section(text: str, *, where: str | None = None) -> Section:
    """A FITS section ``'[x1:x2,y1:y2]'`` (1-based, inclusive) as numpy slices ``(rows, cols)``."""
    m = _SECTION.match(str(text).strip())
    if m is None:
        raise CalibrationInputError(f"section {text!r} is not of the form '[x1:x2,y1:y2]'", where=where)
    x1, x2, y1, y2 = (int(v) for v in m.groups())
    if x1 < 1 or y1 < 1 or x2 < x1 or y2 < y1:
        raise CalibrationInputError(f"section {text!r} must have 1 <= start <= end on both axes", where=where)
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def section_shape(section: Section) -> tuple[int, int]:
    """The (ny, nx) shape a section selects."""
    rows, cols = section
    return rows.stop - rows.start, cols.stop - cols.start


def check_section_fits(section: Section, shape: tuple[int, ...], *, key: str, where: str | None) -> None:
    """Raise when a section reaches outside an array of ``shape``."""
    rows, cols = section
    if rows.stop > shape[0] or cols.stop > shape[1]:
        raise CalibrationInputError(
            f"{key} reaches row {rows.stop} / column {cols.stop} but the data are {shape[0]}x{shape[1]}",
            where=where)


def clipped_mean_std(values: NDArray[Any], *, sigma: float = 4.0, iters: int = 5) -> tuple[float, float, int]:
    """Mean, standard deviation and count of ``values`` after iterative clipping about the median."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan"), float("nan"), int(v.size)
    keep = v
    for _ in range(iters):
        centre = float(np.median(keep))
        std = float(keep.std(ddof=1)) if keep.size > 1 else 0.0
        new = v[np.abs(v - centre) <= sigma * std] if std > 0 else keep
        if new.size == keep.size or new.size < 2:
            keep = new if new.size >= 2 else keep
            break
        keep = new
    return float(keep.mean()), float(keep.std(ddof=1)), int(keep.size)


@dataclass(frozen=True)
class OverscanStats:
    """Level and noise of a frame's overscan strip (BIASSEC), in ADU and, with a gain, electrons."""

    level_adu: float
    read_noise_adu: float
    read_noise_err_adu: float  # 1-sigma statistical error of the read-noise estimate
    n_pixels: int
    gain_e_per_adu: float | None

    @property
    def read_noise_e(self) -> float | None:
        """Read noise in electrons (None without a gain)."""
        return None if self.gain_e_per_adu is None else self.read_noise_adu * self.gain_e_per_adu

    @property
    def read_noise_err_e(self) -> float | None:
        """Statistical error of the read noise in electrons (None without a gain)."""
        return None if self.gain_e_per_adu is None else self.read_noise_err_adu * self.gain_e_per_adu


def overscan_stats(data: NDArray[Any], biassec: Section, *, gain_e_per_adu: float | None = None) -> OverscanStats:
    """Clipped level and read noise of the overscan strip; the noise is the strip's clipped scatter."""
    level, std, n = clipped_mean_std(np.asarray(data[biassec], dtype=np.float64))
    err = std / math.sqrt(2.0 * max(n - 1, 1))
    return OverscanStats(level_adu=level, read_noise_adu=std, read_noise_err_adu=err, n_pixels=n,
                         gain_e_per_adu=gain_e_per_adu)


@dataclass(frozen=True)
class SkyGain:
    """Gain measured from a light frame's own sky: shot variance against sky level.

    ``variance_adu2`` is the per-pixel variance of source-free sky (half the variance of the
    difference of vertically adjacent pixels, so column patterns and smooth gradients cancel);
    ``gain = level / (variance - read_noise^2)``. Flat-field structure between neighbouring
    pixels (PRNU p) adds ``(p * level)^2`` to the variance and biases the gain low by that share.
    """

    level_adu: float
    variance_adu2: float
    read_noise_adu: float
    gain_e_per_adu: float
    gain_err_e_per_adu: float  # 1-sigma statistical error (pairs and the read noise's own error)
    n_pairs: int


def _grow(mask: NDArray[np.bool_], px: int) -> NDArray[np.bool_]:
    """``mask`` dilated by a (2 px + 1)-square box: shifted ORs along rows, then along columns."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        for s in range(1, px + 1):
            if axis == 0:
                out[s:] |= src[:-s]
                out[:-s] |= src[s:]
            else:
                out[:, s:] |= src[:, :-s]
                out[:, :-s] |= src[:, s:]
    return out


def _box_mean(x: NDArray[np.float64], r: int) -> NDArray[np.float64]:
    """Mean over the (2 r + 1)-square box around each pixel (edges: the part inside the frame)."""
    c = np.zeros((x.shape[0] + 1, x.shape[1] + 1))
    c[1:, 1:] = x.cumsum(0).cumsum(1)
    ny, nx = x.shape
    y0, y1 = np.clip(np.arange(ny) - r, 0, ny), np.clip(np.arange(ny) + r + 1, 0, ny)
    x0, x1 = np.clip(np.arange(nx) - r, 0, nx), np.clip(np.arange(nx) + r + 1, 0, nx)
    total = c[y1][:, x1] - c[y0][:, x1] - c[y1][:, x0] + c[y0][:, x0]
    return total / np.outer(y1 - y0, x1 - x0)


def sky_gain(image_adu: NDArray[Any], read_noise_adu: float, *, read_noise_err_adu: float = 0.0,
             source_sigma: float = 4.0, grow_px: int = 4) -> SkyGain | None:
    """The gain from a trimmed, overscan-subtracted light frame's sky, or None when the sky's shot
    noise is too small against the read noise to measure (under 3 sigma of its own error).

    Where the 5x5 box mean lies more than ``source_sigma`` of its own noise above the median
    (sources), or a pixel 5 robust sigmas below it (defects), grown by ``grow_px``, is left out;
    the pairs' differences are then clipped at 4 sigma.
    """
    x = np.asarray(image_adu, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 4:
        raise CalibrationInputError(f"sky gain needs a 2-D image of at least 4 rows, got shape {x.shape}")
    finite = np.isfinite(x)
    if finite.sum() < 200:
        return None
    centre = float(np.median(x[finite]))
    sigma = 1.4826 * float(np.median(np.abs(x[finite] - centre)))
    # sources are found on a 5x5 box mean, whose noise is sigma / 5: thresholding single pixels
    # would cut the sky's own noise tail and bias the variance low
    smooth = _box_mean(np.where(finite, x, centre), 2)
    bad = ~finite | (smooth > centre + source_sigma * sigma / 5.0) | (x < centre - 5.0 * sigma)
    bad = _grow(bad, grow_px)
    n = x.shape[0] // 2 * 2
    top, bottom = x[0:n:2], x[1:n:2]
    keep = ~(bad[0:n:2] | bad[1:n:2])
    _, std_diff, n_pairs = clipped_mean_std((top - bottom)[keep])
    level, _, _ = clipped_mean_std(0.5 * (top + bottom)[keep])
    if n_pairs < 100 or not math.isfinite(std_diff):
        return None
    variance = std_diff**2 / 2.0
    shot = variance - read_noise_adu**2
    shot_err = math.hypot(variance * math.sqrt(2.0 / (n_pairs - 1)), 2.0 * read_noise_adu * read_noise_err_adu)
    if level <= 0 or shot <= 3.0 * shot_err:
        return None
    gain = level / shot
    return SkyGain(level_adu=level, variance_adu2=variance, read_noise_adu=read_noise_adu,
                   gain_e_per_adu=gain, gain_err_e_per_adu=gain * shot_err / shot, n_pairs=n_pairs)


@dataclass(frozen=True)
class CalFrame:
    """One FITS frame read for calibration: overscan-subtracted, trimmed, in ADU (float32)."""

    path: Path
    kind: str | None  # "bias" | "dark" | "flat" | "light" | None when IMAGETYP is unknown
    exposure_s: float | None
    filter_name: str | None
    data_adu: NDArray[np.float32]
    overscan_adu: float  # level removed; 0 without BIASSEC
    gain_e_per_adu: float | None  # header GAIN
    read_noise_e: float | None  # header RDNOISE
    saturate_adu: float | None  # header SATURATE
    trimsec: str | None
    biassec: str | None
    raw_shape: tuple[int, int]
    sha256: str


def header_float(header: Mapping[str, Any], key: str, *, where: str) -> float | None:
    """A numeric header value, None when absent; a typed error when present but not a number."""
    if key not in header:
        return None
    value = header[key]
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise CalibrationInputError(f"header {key}={value!r} is not a number", where=where) from None
    if not math.isfinite(out):
        raise CalibrationInputError(f"header {key}={value!r} is not finite", where=where)
    return out


def _amplifier(header: Mapping[str, Any]) -> str | None:
    """The two-digit number of the one amplifier that read the frame, None when not one or unknown."""
    used = [k[5:] for k in header if str(k).startswith("AAMP_") and str(header[k]).strip() in ("1", "True")]
    if len(used) == 1:
        return used[0]
    if not used and "AGAIN_01" in header and str(header.get("NUMAMP", "1")).strip() == "1":
        return "01"
    return None


def _camera_value(header: Mapping[str, Any], key: str, per_amplifier: str, *, where: str) -> float | None:
    """``key``, else the reading amplifier's ``per_amplifier`` + its number, else None."""
    value = header_float(header, key, where=where)
    amp = _amplifier(header) if value is None else None
    return header_float(header, f"{per_amplifier}{amp}", where=where) if amp is not None else value


def header_gain(header: Mapping[str, Any], *, where: str) -> float | None:
    """Gain [e-/ADU] from ``GAIN``, else the reading amplifier's ``AGAIN_nn`` (``AAMP_nn = 1``), else None."""
    return _camera_value(header, "GAIN", "AGAIN_", where=where)


def header_read_noise(header: Mapping[str, Any], *, where: str) -> float | None:
    """Read noise [e-] from ``RDNOISE``, else the reading amplifier's ``ARDNS_nn``, else None."""
    return _camera_value(header, "RDNOISE", "ARDNS_", where=where)


def header_filter(header: Mapping[str, Any]) -> str | None:
    """The FILTER (or FILTERS) header value as a stripped string, None when absent."""
    for key in ("FILTER", "FILTERS", "FILTNAME"):
        if key in header and str(header[key]).strip():
            return str(header[key]).strip()
    return None


def read_frame(path: Path | str) -> CalFrame:
    """Read one FITS frame: the first HDU with 2-D data; overscan removed and trimmed when present."""
    path = Path(path)
    where = str(path)
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise CalibrationInputError(f"cannot read the file ({exc.strerror})", where=where) from None
    digest = hashlib.sha256(raw_bytes).hexdigest()
    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = next((h for h in hdul if h.data is not None and getattr(h.data, "ndim", 0) == 2), None)
            if hdu is None:
                raise CalibrationInputError("no HDU holds a 2-D image", where=where)
            header = hdu.header.copy()
            if hdul[0] is not hdu:
                for key, value in hdul[0].header.items():
                    if key not in header and key not in ("COMMENT", "HISTORY", ""):
                        header[key] = value
            raw = np.asarray(hdu.data)
    except CalibrationInputError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise CalibrationInputError(f"not a readable FITS file ({exc})", where=where) from None
    data = raw.astype(np.float32)
    if not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise CalibrationInputError(f"{n_bad} pixels are NaN or infinite; calibration frames must be finite",
                                    where=where)
    overscan = 0.0
    biassec = str(header["BIASSEC"]) if "BIASSEC" in header else None
    trimsec = str(header["TRIMSEC"]) if "TRIMSEC" in header else None
    gain = header_gain(header, where=where)
    if biassec is not None:
        bsec = parse_section(biassec, where=f"{where} BIASSEC")
        check_section_fits(bsec, data.shape, key="BIASSEC", where=where)
        overscan = overscan_stats(data, bsec).level_adu
        data -= np.float32(overscan)
    if trimsec is not None:
        tsec = parse_section(trimsec, where=f"{where} TRIMSEC")
        check_section_fits(tsec, data.shape, key="TRIMSEC", where=where)
        data = np.ascontiguousarray(data[tsec])
    return CalFrame(
        path=path,
        kind=frame_kind(header.get("IMAGETYP")),
        exposure_s=header_float(header, "EXPTIME", where=where)
        if "EXPTIME" in header else header_float(header, "EXPOSURE", where=where),
        filter_name=header_filter(header),
        data_adu=data,
        overscan_adu=overscan,
        gain_e_per_adu=gain,
        read_noise_e=header_read_noise(header, where=where),
        saturate_adu=header_float(header, "SATURATE", where=where),
        trimsec=trimsec,
        biassec=biassec,
        raw_shape=(int(raw.shape[0]), int(raw.shape[1])),
        sha256=digest,
    )


def scan_folder(folder: Path | str, *, progress: Progress | None = None) -> list[CalFrame]:
    """Every FITS frame in a folder (``*.fits``, ``*.fit``, ``*.fts``, sorted by name).

    ``progress`` is told of each file read (stage ``"reading calibration frames"``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationInputError("is not a folder", where=str(folder))
    paths = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in (".fits", ".fit", ".fts"))
    if not paths:
        raise CalibrationInputError("holds no FITS files (*.fits, *.fit, *.fts); point it at the calibration frames",
                                    where=str(folder))
    stage = "reading calibration frames"
    if progress is not None:
        progress(stage, 0, len(paths))
    frames = []
    for p in paths:
        frames.append(read_frame(p))
        if progress is not None:
            progress(stage, 1, len(paths))
    return frames
