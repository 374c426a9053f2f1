"""The Calibrator: raw frames to calibrated electrons, a variance map and a mask, fast and in place.

Everything that does not change between frames is computed once: the offset ``bias + dark * t``
per exposure time (cached), ``gain / flat`` and ``1 / flat`` per filter, and the constant part of
the variance. A frame is then a handful of in-place numpy ufuncs over row blocks small enough to
stay in cache, split across at most ``threads`` worker threads (numpy ufuncs release the GIL).
Per frame nothing is allocated beyond the outputs, which a caller may pass back in to reuse.

Outputs (``CalibratedFrame``):

- ``image_e``: electrons (float32) after overscan, bias, dark and flat, i.e. charge the sky and
  sources deposited before the flat-field response; 0 where the flat has no response;
- ``variance_e2``: ``(read_noise_e^2 + dark shot + master-bias and master-dark noise) / flat^2 +
  max(image_e, 0) * (1 / flat + flat_relvar * image_e)`` in e^2, i.e. read, dark and master noise,
  shot noise, and the master flat's own noise (``flat_relvar`` x signal^2); +inf where the flat
  has no response;
- ``mask`` bits: ``MASK_BAD`` 1 (bad pixel from the bundle: hot, dead, low response, bad column),
  ``MASK_SATURATED`` 2 (raw value at or above the saturation level), ``MASK_NONFINITE`` 4 (NaN or
  inf in a float input; image_e 0 and variance +inf there).

Without a bundle (``Calibrator.without_bundle``) the frame is overscan-corrected (BIASSEC/TRIMSEC
or a BIASLEV keyword when present), converted with the header GAIN, and given ``read_noise^2 +
max(image_e, 0)`` (noise model "header") when GAIN and RDNOISE are present; otherwise the
background noise is measured from the image and the variance is ``sigma_bg^2 + max(image_e -
background, 0)`` (noise model "estimated", gain 1 unless the header gives GAIN: the image keeps
its own units, taken as electrons). Float frames are taken as already bias-subtracted.
This module must not read calibration frames or build masters.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from calibration.bundle import read_bundle
from calibration.frames import check_section_fits, header_filter, header_float, parse_section
from calibration.masters import DEAD_BELOW, Masters
from calibration.noise import estimate_background, header_noise
from edge.errors import CalibrationInputError, MissingMasterError
from edge.log import get_logger

log = get_logger(__name__)

MASK_BAD = 1
MASK_SATURATED = 2
MASK_NONFINITE = 4

#: rows per block: 32 rows of a 4096-wide frame keep the block's ~4 MB of inputs and outputs in cache
BLOCK_ROWS = 32
_CACHE_SIZE = 2
F32 = np.float32


@dataclass
class CalibratedFrame:
    """One calibrated frame; buffers are reused between frames when passed back as ``out``.

    ``image_e`` electrons, ``variance_e2`` e^2, ``mask`` bits (1 bad, 2 saturated, 4 non-finite);
    ``noise_model`` is "bundle", "header" or "estimated"; ``read_noise_e`` is the background
    noise (read and sky) when the model is "estimated"; ``bundle_id`` is the bundle's content hash.
    """

    image_e: NDArray[np.float32]
    variance_e2: NDArray[np.float32]
    mask: NDArray[np.uint8]
    noise_model: str = "bundle"
    gain_e_per_adu: float = 1.0
    read_noise_e: float = 0.0
    bundle_id: str | None = None

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> CalibratedFrame:
        """Fresh output buffers for frames of ``shape`` (ny, nx)."""
        return cls(image_e=np.empty(shape, F32), variance_e2=np.empty(shape, F32), mask=np.empty(shape, np.uint8))

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the buffers."""
        return (int(self.image_e.shape[0]), int(self.image_e.shape[1]))


@dataclass(frozen=True)
class _FilterTerms:
    gain_over_flat: NDArray[np.float32]  # e-/ADU / flat; 0 where the flat has no response
    inv_flat: NDArray[np.float32]  # 1 / flat; 0 where the flat has no response
    dead: NDArray[np.bool_]
    relvar: float


def _rows(x: Any, r0: int, r1: int) -> Any:
    return x[r0:r1] if isinstance(x, np.ndarray) and x.ndim == 2 else x


class Calibrator:
    """Turns raw frames into ``CalibratedFrame``; configure once (bundle, threads), then call per frame.

    One Calibrator serves one caller at a time: its scratch buffers and caches are shared between
    calls, so a pipeline running frames concurrently gives each worker its own Calibrator.
    """

    def __init__(self, masters: Masters | None, *, bundle_id: str | None = None, threads: int = 1) -> None:
        if threads < 1:
            raise CalibrationInputError(f"threads={threads} must be at least 1", where="Calibrator")
        self.masters = masters
        self.bundle_id = bundle_id
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
        self._offsets: OrderedDict[float, NDArray[np.float32]] = OrderedDict()
        self._constants: OrderedDict[tuple[float, str], NDArray[np.float32]] = OrderedDict()
        self._filters: dict[str, _FilterTerms] = {}
        self._scratch: dict[tuple[int, int], list[tuple[NDArray[np.float32], NDArray[np.bool_]]]] = {}
        self._trim = self._bsec = None
        self._strip_bufs: tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]] | None = None
        if masters is not None:
            if masters.trimsec is not None:
                self._trim = parse_section(masters.trimsec, where=f"bundle {bundle_id} TRIMSEC")
            if masters.biassec is not None:
                self._bsec = parse_section(masters.biassec, where=f"bundle {bundle_id} BIASSEC")
            self._bad = (masters.bad_pixels != 0).astype(np.uint8)  # MASK_BAD is bit 1
            self._g = masters.gain_e_per_adu
            self._rn = masters.read_noise_e
            if masters.dark_adu_per_s is None:
                log.info("calib.no_dark", bundle_id=bundle_id)

    # construction ---------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, path: Path | str, *, threads: int = 1) -> Calibrator:
        """A Calibrator from a bundle file (checksums, version and content hash verified)."""
        masters, bundle_id = read_bundle(path)
        log.info("calib.bundle_loaded", path=str(path), bundle_id=bundle_id, shape=masters.shape,
                 filters=sorted(masters.flats), gain_e_per_adu=masters.gain_e_per_adu)
        return cls(masters, bundle_id=bundle_id, threads=threads)

    @classmethod
    def without_bundle(cls, *, threads: int = 1) -> Calibrator:
        """A Calibrator with no masters: header GAIN/RDNOISE when present, else noise estimated per frame."""
        return cls(None, threads=threads)

    def close(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> Calibrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # precomputed terms ----------------------------------------------------------------------
    def _filter_terms(self, filter_name: str | None, where: str) -> _FilterTerms:
        m = self.masters
        assert m is not None
        if filter_name is not None and filter_name in m.flats:
            key = filter_name
        elif "" in m.flats:
            key = ""
        else:
            have = ", ".join(repr(k) for k in sorted(m.flats)) or "none"
            raise MissingMasterError(f"bundle {self.bundle_id} holds no flat for filter {filter_name!r} "
                                     f"(flats: {have}); add flats of that filter and rebuild", where=where)
        terms = self._filters.get(key)
        if terms is None:
            flat = m.flats[key]
            dead = flat < F32(DEAD_BELOW)
            inv = np.zeros_like(flat)
            np.divide(F32(1.0), flat, out=inv, where=~dead)
            terms = _FilterTerms(gain_over_flat=(inv * F32(self._g)).astype(F32), inv_flat=inv, dead=dead,
                                 relvar=float(m.flat_rel_var.get(key, 0.0)))
            self._filters[key] = terms
        return terms

    def _offset(self, exposure_s: float) -> NDArray[np.float32]:
        m = self.masters
        assert m is not None
        key = round(exposure_s, 6)
        off = self._offsets.get(key)
        if off is None:
            off = m.bias_adu.copy()
            if m.dark_adu_per_s is not None and exposure_s > 0:
                off += m.dark_adu_per_s * F32(exposure_s)
            self._offsets[key] = off
            while len(self._offsets) > _CACHE_SIZE:
                self._offsets.popitem(last=False)
        else:
            self._offsets.move_to_end(key)
        return off

    def _constant(self, exposure_s: float, fkey: str, terms: _FilterTerms) -> NDArray[np.float32]:
        """``(rn^2 + dark shot + master noise) / flat^2`` in e^2 for one exposure time and filter."""
        m = self.masters
        assert m is not None
        key = (round(exposure_s, 6), fkey)
        c = self._constants.get(key)
        if c is None:
            g = self._g
            c = np.full(m.shape, self._rn ** 2 + g * g * m.bias_var_adu2, np.float64)
            if m.dark_adu_per_s is not None and m.dark_var_adu2_per_s2 is not None and exposure_s > 0:
                c += g * np.maximum(m.dark_adu_per_s, 0) * exposure_s
                c += (g * g * exposure_s * exposure_s) * m.dark_var_adu2_per_s2
            c *= terms.inv_flat.astype(np.float64) ** 2
            c = c.astype(F32)
            c[terms.dead] = np.inf
            self._constants[key] = c
            while len(self._constants) > _CACHE_SIZE:
                self._constants.popitem(last=False)
        else:
            self._constants.move_to_end(key)
        return c

    def _scratch_for(self, shape: tuple[int, int]) -> list[tuple[NDArray[np.float32], NDArray[np.bool_]]]:
        bufs = self._scratch.get(shape)
        if bufs is None:
            rows = min(BLOCK_ROWS, shape[0])
            bufs = [(np.empty((rows, shape[1]), F32), np.empty((rows, shape[1]), bool)) for _ in range(self.threads)]
            self._scratch = {shape: bufs}
        return bufs

    def _overscan_level(self, strip: NDArray[Any]) -> float:
        """Clipped mean of an overscan strip, in buffers kept between frames (no per-frame allocation).

        A mean, not a median: integer ADU make a median jump in steps of 0.5 ADU. Values more than
        5 robust sigmas from the median (a cosmic ray in the overscan) are left out first.
        """
        bufs = self._strip_bufs
        if bufs is None or bufs[0].shape != strip.shape:
            bufs = (np.empty(strip.shape), np.empty(strip.shape), np.empty(strip.shape, bool))
            self._strip_bufs = bufs
        values, work, keep = bufs
        np.copyto(values, strip, casting="unsafe")
        flat_work = work.reshape(-1)
        np.copyto(work, values)
        k = flat_work.size // 2
        flat_work.partition(k)
        centre = float(flat_work[k])
        np.subtract(values, centre, out=work)
        np.abs(work, out=work)
        flat_work.partition(k)
        spread = 1.4826 * float(flat_work[k])
        if spread == 0.0:
            spread = float(values.std())
        np.subtract(values, centre, out=work)
        np.abs(work, out=work)
        np.less_equal(work, 5.0 * spread, out=keep)
        n = int(np.count_nonzero(keep))
        return float(np.sum(values, where=keep) / n) if n else centre

    # the per-frame path ---------------------------------------------------------------------
    def calibrate(self, raw: NDArray[Any], *, exposure_s: float, filter_name: str | None = None,
                  header: Mapping[str, Any] | None = None, out: CalibratedFrame | None = None) -> CalibratedFrame:
        """Calibrate one raw frame (integer of any width and byte order, or float) into ``out``."""
        where = _frame_name(header)
        raw = np.asarray(raw)
        if raw.ndim != 2:
            raise CalibrationInputError(f"frame has {raw.ndim} dimensions; expected a 2-D image", where=where)
        if raw.dtype.kind not in "uif":
            raise CalibrationInputError(f"frame dtype {raw.dtype} is neither integer nor float", where=where)
        try:
            seconds = float(exposure_s)
        except (TypeError, ValueError):
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < 0:
            raise CalibrationInputError(f"exposure_s={exposure_s!r} is not a finite, non-negative time; "
                                        "the frame needs EXPTIME", where=where)
        exposure_s = seconds
        if filter_name is None and header is not None:
            filter_name = header_filter(header)
        if self.masters is None:
            return self._calibrate_without_bundle(raw, exposure_s, header, out, where)
        m = self.masters
        level = 0.0
        if raw.shape == m.shape:
            view = raw
        elif raw.shape == m.raw_shape and self._trim is not None:
            view = raw[self._trim]
            if self._bsec is not None:
                level = self._overscan_level(raw[self._bsec])
        else:
            raise CalibrationInputError(
                f"frame shape {raw.shape[0]}x{raw.shape[1]} matches neither the bundle's trimmed "
                f"{m.shape[0]}x{m.shape[1]} nor its raw {m.raw_shape[0]}x{m.raw_shape[1]} (bundle {self.bundle_id})",
                where=where)
        terms = self._filter_terms(filter_name, where)
        fkey = filter_name if filter_name in m.flats else ""
        offset = self._offset(exposure_s)
        const = self._constant(exposure_s, fkey, terms)
        sat = _saturation(m.saturate_adu, header, raw.dtype, where)
        out = _outputs(out, m.shape, where)
        self._run(view, out, offset=offset, level=level, scale=terms.gain_over_flat, floor=0.0,
                  inv_gain=1.0 / self._g, const=const, relvar=terms.relvar, bad=self._bad, sat=sat)
        out.noise_model = "bundle"
        out.gain_e_per_adu = self._g
        out.read_noise_e = self._rn
        out.bundle_id = self.bundle_id
        return out

    def _calibrate_without_bundle(self, raw: NDArray[Any], exposure_s: float, header: Mapping[str, Any] | None,
                                  out: CalibratedFrame | None, where: str) -> CalibratedFrame:
        view, level = raw, 0.0
        if header is not None and raw.dtype.kind in "ui":
            if "TRIMSEC" in header:
                tsec = parse_section(str(header["TRIMSEC"]), where=f"{where} TRIMSEC")
                check_section_fits(tsec, raw.shape, key="TRIMSEC", where=where)
                view = raw[tsec]
            if "BIASSEC" in header:
                bsec = parse_section(str(header["BIASSEC"]), where=f"{where} BIASSEC")
                check_section_fits(bsec, raw.shape, key="BIASSEC", where=where)
                level = self._overscan_level(raw[bsec])
            else:
                level = header_float(header, "BIASLEV", where=where) or 0.0
        noise = header_noise(header, where=where)
        shape = (int(view.shape[0]), int(view.shape[1]))
        out = _outputs(out, shape, where)
        sat = _saturation(None, header, raw.dtype, where)
        if noise is not None:
            gain, rn = noise
            self._run(view, out, offset=level, level=0.0, scale=gain, floor=0.0, inv_gain=1.0 / gain, const=rn * rn,
                      relvar=0.0, bad=None, sat=sat)
            out.noise_model, out.gain_e_per_adu, out.read_noise_e = "header", gain, rn
        else:
            gain = (header_float(header, "GAIN", where=where) if header is not None else None) or 1.0
            bg = estimate_background(view, scale=gain, offset=level)
            self._run(view, out, offset=level, level=0.0, scale=gain, floor=bg.level, inv_gain=1.0 / gain,
                      const=bg.sigma ** 2, relvar=0.0, bad=None, sat=sat)
            out.noise_model, out.gain_e_per_adu, out.read_noise_e = "estimated", gain, bg.sigma
        out.bundle_id = None
        return out

    def _run(self, raw: NDArray[Any], out: CalibratedFrame, **terms: Any) -> None:
        ny = raw.shape[0]
        n = self.threads if self._pool is not None else 1
        band = -(-ny // n)
        scratch = self._scratch_for(out.shape)
        bands = [(i * band, min(ny, (i + 1) * band)) for i in range(n) if i * band < ny]
        if self._pool is None or len(bands) == 1:
            _calibrate_rows(raw, out, bands[0][0], bands[0][1], scratch[0], **terms)
            return
        futures = [self._pool.submit(_calibrate_rows, raw, out, r0, r1, scratch[i], **terms)
                   for i, (r0, r1) in enumerate(bands)]
        for f in futures:
            f.result()


def _calibrate_rows(raw: NDArray[Any], out: CalibratedFrame, start: int, stop: int,
                    scratch: tuple[NDArray[np.float32], NDArray[np.bool_]], *, offset: Any, level: float,
                    scale: Any, floor: float, inv_gain: float, const: Any, relvar: float, bad: Any, sat: Any) -> None:
    """The kernel: rows ``start:stop`` of ``raw`` into ``out``, block by block, all in place."""
    tmp_f, tmp_b = scratch
    is_float = raw.dtype.kind == "f"
    for r0 in range(start, stop, tmp_f.shape[0]):
        r1 = min(stop, r0 + tmp_f.shape[0])
        r = raw[r0:r1]
        img = out.image_e[r0:r1]
        var = out.variance_e2[r0:r1]
        msk = out.mask[r0:r1]
        t = tmp_f[: r1 - r0]
        tb = tmp_b[: r1 - r0]
        np.subtract(r, _rows(offset, r0, r1), out=img, casting="unsafe")
        if level:
            img -= F32(level)
        np.multiply(img, _rows(scale, r0, r1), out=img)
        if floor:
            np.subtract(img, F32(floor), out=var)
            np.maximum(var, F32(0.0), out=var)
        else:
            np.maximum(img, F32(0.0), out=var)
        # Shot and flat-master terms together: max(img, 0) * (1/flat + relvar * img), which equals
        # max(img, 0) / flat + relvar * img^2 wherever img >= 0 (below 0 the flat term is
        # negligible). 1/flat is scale / gain, so it is not streamed from memory a second time.
        if relvar:
            np.multiply(img, F32(relvar / inv_gain), out=t)
            np.add(t, _rows(scale, r0, r1), out=t)
            np.multiply(var, t, out=var)
            np.multiply(var, F32(inv_gain), out=var)
        elif isinstance(scale, np.ndarray):
            np.multiply(var, _rows(scale, r0, r1), out=var)
            np.multiply(var, F32(inv_gain), out=var)
        elif float(scale) * inv_gain != 1.0:
            np.multiply(var, F32(float(scale) * inv_gain), out=var)
        np.add(var, _rows(const, r0, r1), out=var)
        # saturation is rare: one max-reduction per block decides whether the per-pixel test is needed
        if is_float or r.max() >= sat:
            sat_bool = msk.view(np.bool_)
            np.greater_equal(r, sat, out=sat_bool)
            np.add(sat_bool, sat_bool, out=msk, dtype=np.uint8)  # saturated -> MASK_SATURATED (2)
            if bad is not None:
                np.bitwise_or(msk, _rows(bad, r0, r1), out=msk)
        elif bad is not None:
            np.copyto(msk, _rows(bad, r0, r1))
        else:
            msk.fill(0)
        if is_float:
            np.isfinite(r, out=tb)
            np.logical_not(tb, out=tb)
            if tb.any():
                np.copyto(img, F32(0.0), where=tb)
                np.copyto(var, F32(np.inf), where=tb)
                tb8 = tb.view(np.uint8)
                np.left_shift(tb8, 2, out=tb8)
                np.bitwise_or(msk, tb8, out=msk)


def _frame_name(header: Mapping[str, Any] | None) -> str:
    if header is not None:
        for key in ("FILENAME", "ORIGFILE", "FRAMEID"):
            if key in header:
                return str(header[key]).strip()
    return "frame"


def _saturation(bundle_sat: float | None, header: Mapping[str, Any] | None, dtype: np.dtype, where: str) -> Any:
    """The raw level flagged as saturated: the lowest of bundle, header SATURATE and the dtype's ceiling."""
    levels = [] if bundle_sat is None else [bundle_sat]
    if header is not None:
        hs = header_float(header, "SATURATE", where=where)
        if hs is not None:
            levels.append(hs)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        levels.append(float(info.max))
        # an integer threshold in the frame's own dtype: raw >= ceil(level) is the same test, and it
        # keeps the comparison in integers (a float threshold promotes every pixel to float64)
        return np.array(max(math.ceil(min(levels)), info.min), dtype=dtype.newbyteorder("="))[()]
    return min(levels) if levels else math.inf


def _outputs(out: CalibratedFrame | None, shape: tuple[int, int], where: str) -> CalibratedFrame:
    if out is None:
        return CalibratedFrame.empty(shape)
    for name in ("image_e", "variance_e2", "mask"):
        arr = getattr(out, name)
        want = np.uint8 if name == "mask" else F32
        if arr.shape != shape or arr.dtype != want or not arr.flags.c_contiguous:
            raise CalibrationInputError(f"out.{name} is {arr.dtype} {arr.shape}; the frame needs a contiguous "
                                        f"{np.dtype(want)} {shape} buffer", where=where)
    return out
