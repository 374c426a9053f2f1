"""The field's pixel reference catalog, built from commissioning frames.

Each frame is detected on, registered onto the first (``edge.sky.register_offset``), shifted by
the rounded offset and median-combined; the catalog is what the node's detector finds on that
stack, plus the sources single frames found at one place in two frames or more where the stack
had none (a pair the stack's deblending merged, a faint star the detector dropped there). The
median drops what is in one frame only (cosmic rays, hot pixels that move with the pointing, an
asteroid crossing the field) and the stack is deeper than any single frame. The
table's ``x_px``, ``y_px`` are 0-based positions in the grid of the first frame, which
``edge.sky.ReferenceCatalog`` reads as a pixel catalog: the node then registers each frame onto
that grid and matches "new" in pixels.

Pure numpy on arrays in memory; :func:`write_catalog` is the only file I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from edge import detect as detect_stage
from edge.errors import ConfigError, DetectionError
from edge.sky import REGISTER_MIN_PAIRS, register_offset

#: a stack pixel seen by fewer frames than this (or than all of them, with fewer frames) is
#: masked: a median of two values is their mean and cannot reject a cosmic ray
MIN_FRAMES_PER_PIXEL = 3
#: a single frame's detection within this distance of a catalog source counts for it
DETECTED_WITHIN_PX = 2.0
#: rows of the stack median-combined at a time (bounds the temporaries of nanmedian)
_ROWS_PER_BLOCK = 256

#: one commissioning frame: background-subtracted electrons, their variance (e^2), and a mask
#: (non-zero: bad) or None
Frame = tuple[NDArray[Any], NDArray[Any], NDArray[Any] | None]


@dataclass(frozen=True)
class StackInfo:
    """How the frames were put together; one entry per frame given, the first is the reference."""

    #: (dx, dy) that maps each frame onto the first frame's grid, px; None: not registered, left out
    offsets_px: tuple[tuple[float, float] | None, ...]
    #: the whole-pixel shift applied to each frame before the median; None: left out
    shifts_px: tuple[tuple[int, int] | None, ...]
    #: detection pairs that agreed on each frame's offset (the first frame: its own detections)
    pairs: tuple[int, ...]
    #: detections in each single frame
    detections: tuple[int, ...]
    #: why a frame was left out ("" for every frame stacked)
    reasons: tuple[str, ...]
    #: the fewest frames a stack pixel needs to be used
    min_frames_per_pixel: int
    #: (x_min, x_max, y_min, y_max) of the stack pixels used: the area the catalog speaks for
    footprint_px: tuple[float, float, float, float]
    #: sources added because single frames found them at one place, where the stack had none
    recurring: int = 0

    @property
    def stacked(self) -> int:
        """Frames in the median."""
        return sum(s is not None for s in self.shifts_px)

    def as_meta(self) -> dict[str, Any]:
        """Plain values for the table's metadata (ECSV header)."""
        return {"frames": len(self.offsets_px), "stacked": self.stacked,
                "offsets_px": [None if o is None else [round(o[0], 3), round(o[1], 3)] for o in self.offsets_px],
                "pairs": list(self.pairs), "min_frames_per_pixel": self.min_frames_per_pixel,
                "footprint_px": list(self.footprint_px), "recurring": self.recurring}


def build_pixel_catalog(frames: Sequence[Frame], detect_settings: detect_stage.DetectSettings, *,
                        max_shift_px: float = 50.0) -> tuple[Table, StackInfo]:
    """A pixel reference catalog (x_px, y_px, flux_e, snr, n_frames_detected, in_stack) from
    commissioning frames, and how they were stacked.

    ``frames`` are (sub_e, variance_e2, mask) of one field, background already subtracted, all of
    one shape; the first is the reference grid. A frame that cannot be registered onto the first
    within ``max_shift_px`` is left out (``StackInfo.reasons`` says why).
    """
    shape = _check_frames(frames)
    singles = [detect_stage.detect(sub, var, mask, detect_settings) for sub, var, mask in frames]
    ref = singles[0]
    offsets: list[tuple[float, float] | None] = [(0.0, 0.0)]
    pairs, reasons = [len(ref)], [""]
    for cands in singles[1:]:
        reg = register_offset(cands.x, cands.y, cands.flux_e, ref.x, ref.y, max_shift_px=max_shift_px)
        offsets.append(None if reg is None else (reg.dx_px, reg.dy_px))
        pairs.append(0 if reg is None else reg.pairs)
        reasons.append("" if reg is not None else
                       f"fewer than {REGISTER_MIN_PAIRS} of its {len(cands)} detections agree on one offset onto the first frame "
                       f"within {max_shift_px:g} px")
    shifts = [None if o is None else (int(round(o[0])), int(round(o[1]))) for o in offsets]
    used = [i for i, s in enumerate(shifts) if s is not None]
    need = min(MIN_FRAMES_PER_PIXEL, len(used))
    sub_e, variance_e2, bad = _median_stack([frames[i] for i in used], [shifts[i] for i in used], shape, need)
    stack = detect_stage.detect(sub_e, variance_e2, bad, detect_settings)
    grids = []
    for i in used:
        off = offsets[i]
        assert off is not None
        c = singles[i]
        grids.append((c.x + off[0], c.y + off[1], c.flux_e, c.snr))
    extra = _recurring(grids, stack.x, stack.y)
    x, y = np.concatenate([stack.x, extra[0]]), np.concatenate([stack.y, extra[1]])
    info = StackInfo(offsets_px=tuple(offsets), shifts_px=tuple(shifts), pairs=tuple(pairs),
                     detections=tuple(len(c) for c in singles), reasons=tuple(reasons),
                     min_frames_per_pixel=need, footprint_px=_bounds(~bad), recurring=len(extra[0]))
    table = Table({"x_px": x, "y_px": y, "flux_e": np.concatenate([stack.flux_e, extra[2]]),
                   "snr": np.concatenate([stack.snr, extra[3]]), "n_frames_detected": _times_found(x, y, grids),
                   "in_stack": np.arange(len(x)) < len(stack)}, meta=info.as_meta())
    return table, info


def write_catalog(table: Table, path: str | Path) -> Path:
    """Write the catalog as ECSV (``[catalog] reference`` of the node reads it); returns the path."""
    path = Path(path)
    try:
        table.write(path, format="ascii.ecsv", overwrite=True)
    except OSError as exc:
        raise ConfigError(f"cannot write the reference catalog: {exc.strerror or exc}; choose a writable path",
                          where=str(path)) from exc
    return path


def _check_frames(frames: Sequence[Frame]) -> tuple[int, int]:
    if not frames:
        raise DetectionError("no commissioning frames to build a catalog from", where="build_pixel_catalog")
    shape = np.shape(frames[0][0])
    if len(shape) != 2:
        raise DetectionError(f"frames must be 2-D images, not of shape {shape}", where="build_pixel_catalog")
    for i, (sub, var, mask) in enumerate(frames):
        shapes = {np.shape(sub), np.shape(var)} | ({np.shape(mask)} if mask is not None else set())
        if shapes != {shape}:
            raise DetectionError(f"frame {i} has images of shapes {sorted(shapes)}; every frame must be "
                                 f"{shape}", where="build_pixel_catalog")
    return int(shape[0]), int(shape[1])


def _median_stack(frames: Sequence[Frame], shifts: Sequence[tuple[int, int] | None], shape: tuple[int, int],
                  need: int) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
    """The median of the shifted frames, its variance and its mask; masked and shifted-in pixels
    are left out of each pixel's median, and a pixel with fewer than ``need`` values is masked."""
    cube = np.full((len(frames), *shape), np.nan, np.float32)
    var_sum = np.zeros(shape, np.float64)
    count = np.zeros(shape, np.int32)
    for k, ((sub, var, mask), shift) in enumerate(zip(frames, shifts, strict=True)):
        assert shift is not None
        sub = np.asarray(sub, np.float32)
        var = np.asarray(var, np.float32)
        good = np.isfinite(sub) & np.isfinite(var) & (var > 0)
        if mask is not None:
            good &= np.asarray(mask) == 0
        dst, src = _overlap(shape, *shift)
        ok = good[src]
        cube[k][dst] = np.where(ok, sub[src], np.nan)
        var_sum[dst] += np.where(ok, var[src], 0.0)
        count[dst] += ok
    median = np.full(shape, np.nan, np.float32)
    for start in range(0, shape[0], _ROWS_PER_BLOCK):
        block = cube[:, start:start + _ROWS_PER_BLOCK]
        seen = np.isfinite(block).any(axis=0)
        # nanmedian warns on all-NaN columns; they stay NaN and are masked below
        median[start:start + _ROWS_PER_BLOCK][seen] = np.nanmedian(block[:, seen], axis=0)
    bad = count < max(need, 1)
    # the variance of a median of n values is about pi/2 times that of their mean (large n);
    # of one or two values the median is their mean
    efficiency = np.where(count >= 3, math.pi / 2.0, 1.0)
    variance = efficiency * var_sum / np.maximum(count, 1) ** 2
    return (np.where(bad, 0.0, median).astype(np.float32),
            np.where(bad, 1.0, variance).astype(np.float32), bad)


#: (x, y, flux_e, snr) of one frame's detections, in the first frame's grid
_Grid = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]


def _times_found(x: NDArray[np.float64], y: NDArray[np.float64], grids: Sequence[_Grid]) -> NDArray[np.int64]:
    """In how many of the frames a detection lies within DETECTED_WITHIN_PX of each (x, y)."""
    found = np.zeros(len(x), np.int64)
    for gx, gy, _, _ in grids:
        if len(gx) and len(x):
            found += cKDTree(np.column_stack([gx, gy])).query(np.column_stack([x, y]))[0] <= DETECTED_WITHIN_PX
    return found


def _recurring(grids: Sequence[_Grid], stack_x: NDArray[np.float64], stack_y: NDArray[np.float64]) -> _Grid:
    """Sources the stack's detection missed (a pair deblended otherwise, a faint star the detector
    dropped there) that single frames found at one place in at least two frames: a cosmic ray or
    an asteroid is never twice at one place. One entry per source, from its highest-S/N detection."""
    x, y, flux, snr = (np.concatenate([g[k] for g in grids]) if grids else np.zeros(0) for k in range(4))
    if len(grids) < 2 or not len(x):
        return x[:0], y[:0], flux[:0], snr[:0]
    xy = np.column_stack([x, y])
    far = (cKDTree(np.column_stack([stack_x, stack_y])).query(xy)[0] > DETECTED_WITHIN_PX
           if len(stack_x) else np.ones(len(x), bool))
    pick = np.flatnonzero(far & (_times_found(x, y, grids) >= 2))
    pick = pick[np.argsort(-snr[pick], kind="stable")]
    taken = np.zeros(len(pick), bool)
    keep = []
    if len(pick):
        tree = cKDTree(xy[pick])
        for k in range(len(pick)):
            if not taken[k]:
                keep.append(pick[k])
                taken[tree.query_ball_point(xy[pick[k]], r=DETECTED_WITHIN_PX)] = True
    index = np.asarray(keep, np.int64)
    return x[index], y[index], flux[index], snr[index]


def _bounds(used: NDArray[np.bool_]) -> tuple[float, float, float, float]:
    """(x_min, x_max, y_min, y_max) of the True pixels; an empty box (max < min) when none is."""
    rows, cols = np.flatnonzero(used.any(axis=1)), np.flatnonzero(used.any(axis=0))
    if not len(rows):
        return 0.0, -1.0, 0.0, -1.0
    return float(cols[0]), float(cols[-1]), float(rows[0]), float(rows[-1])


def _overlap(shape: tuple[int, int], dx: int, dy: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices (destination, source) so that destination[y, x] = source[y - dy, x - dx] (no wrap)."""
    h, w = shape

    def axis(d: int, n: int) -> tuple[slice, slice]:
        d = max(-n, min(n, d))
        return slice(max(d, 0), n + min(d, 0)), slice(max(-d, 0), n - max(d, 0))

    (ys_dst, ys_src), (xs_dst, xs_src) = axis(dy, h), axis(dx, w)
    return (ys_dst, xs_dst), (ys_src, xs_src)


__all__ = ["DETECTED_WITHIN_PX", "MIN_FRAMES_PER_PIXEL", "StackInfo", "build_pixel_catalog", "write_catalog"]
