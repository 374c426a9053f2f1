"""Reading calibration and science FITS frames: frame kinds, FITS sections, overscan.

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
from collections.abc import Mapping
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
    gain = header_float(header, "GAIN", where=where)
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
        read_noise_e=header_float(header, "RDNOISE", where=where),
        saturate_adu=header_float(header, "SATURATE", where=where),
        trimsec=trimsec,
        biassec=biassec,
        raw_shape=(int(raw.shape[0]), int(raw.shape[1])),
        sha256=digest,
    )


def scan_folder(folder: Path | str) -> list[CalFrame]:
    """Every FITS frame in a folder (``*.fits``, ``*.fit``, ``*.fts``, sorted by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationInputError("is not a folder", where=str(folder))
    paths = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in (".fits", ".fit", ".fts"))
    if not paths:
        raise CalibrationInputError("holds no FITS files (*.fits, *.fit, *.fts); point it at the calibration frames",
                                    where=str(folder))
    return [read_frame(p) for p in paths]
