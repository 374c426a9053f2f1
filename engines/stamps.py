"""Fixed-size cut-outs around candidates, normalised the same way for training and serving.

A stamp has two channels of ``STAMP_SIZE`` x ``STAMP_SIZE`` float32 pixels:

- channel 0, the image: per-pixel S/N ``sub_e / sqrt(variance_e2)``, clipped to
  [``SNR_CLIP_LOW``, ``SNR_CLIP_HIGH``] = [-10, 1000] and compressed with ``arcsinh``, so the
  values lie in [asinh(-10), asinh(1000)] = [-2.998, 7.601]; noise near zero stays almost linear.
  Pixels that are masked, non-finite, have a non-positive variance, or lie outside the frame are 0.
- channel 1, the mask: 1.0 where the pixel is masked, non-finite, has a non-positive or
  non-finite variance, or lies outside the frame; 0.0 elsewhere.

The centre pixel of a stamp, at index (``size // 2``, ``size // 2``), is the frame pixel
(floor(y + 0.5), floor(x + 0.5)); so a stamp covers rows ``cy - size // 2`` to
``cy + size - size // 2 - 1``. ``NORMALISATION`` names this recipe; the engine manifest records
it so that a model is never fed stamps made another way. Pure numpy: no I/O, no logging.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from edge.errors import DetectionError

__all__ = ["NORMALISATION", "SNR_CLIP_HIGH", "SNR_CLIP_LOW", "STAMP_SIZE", "cut_stamps",
           "normalise_snr"]

STAMP_SIZE = 32
SNR_CLIP_LOW = -10.0
SNR_CLIP_HIGH = 1000.0
#: name of this stamp recipe, recorded in every engine manifest
NORMALISATION = "snr-asinh-clip-10-1000-v1"


def normalise_snr(snr: NDArray[Any]) -> NDArray[np.float32]:
    """The image-channel transform: clip S/N to [-10, 1000], then arcsinh; NaN/inf -> 0."""
    snr = np.asarray(snr, dtype=np.float32)
    out = np.arcsinh(np.clip(snr, SNR_CLIP_LOW, SNR_CLIP_HIGH))
    out[~np.isfinite(snr)] = 0.0
    return out


def cut_stamps(sub_e: NDArray[Any], variance_e2: NDArray[Any], mask: NDArray[Any] | None,
               x: NDArray[Any], y: NDArray[Any], size: int = STAMP_SIZE) -> NDArray[np.float32]:
    """Cut (n, 2, size, size) float32 stamps centred on (x, y) (0-based, x = column)."""
    if not isinstance(sub_e, np.ndarray) or sub_e.ndim != 2:
        raise DetectionError("sub_e must be a 2-D numpy array", where="cut_stamps")
    shape = sub_e.shape
    if getattr(variance_e2, "shape", None) != shape:
        raise DetectionError(f"variance_e2 shape {getattr(variance_e2, 'shape', None)} differs "
                             f"from sub_e shape {shape}", where="cut_stamps")
    if mask is not None and getattr(mask, "shape", None) != shape:
        raise DetectionError(f"mask shape {getattr(mask, 'shape', None)} differs from sub_e "
                             f"shape {shape}", where="cut_stamps")
    if int(size) != size or size < 1:
        raise DetectionError(f"stamp size must be a positive integer, got {size!r}", where="cut_stamps")
    xs = np.asarray(x, dtype=np.float64).reshape(-1)
    ys = np.asarray(y, dtype=np.float64).reshape(-1)
    if xs.shape != ys.shape:
        raise DetectionError(f"x has {xs.size} values but y has {ys.size}", where="cut_stamps")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise DetectionError("candidate positions must be finite", where="cut_stamps")
    n = xs.size
    height, width = shape
    half = size // 2
    top = np.floor(ys + 0.5).astype(np.int64) - half
    left = np.floor(xs + 0.5).astype(np.int64) - half
    sub_arr, var_arr = np.asarray(sub_e), np.asarray(variance_e2)
    mask_arr = None if mask is None else np.asarray(mask, dtype=bool)
    pix = np.empty((n, size, size), dtype=np.float32)
    var = np.empty((n, size, size), dtype=np.float32)
    bad = np.zeros((n, size, size), dtype=bool)

    interior = (top >= 0) & (left >= 0) & (top + size <= height) & (left + size <= width)
    idx = np.flatnonzero(interior)
    if idx.size:
        # block copies through a strided window view: several times faster than per-pixel indexing
        t, lft = top[idx], left[idx]
        pix[idx] = sliding_window_view(sub_arr, (size, size))[t, lft]
        var[idx] = sliding_window_view(var_arr, (size, size))[t, lft]
        if mask_arr is not None:
            bad[idx] = sliding_window_view(mask_arr, (size, size))[t, lft]
    idx = np.flatnonzero(~interior)
    if idx.size:
        offsets = np.arange(size)
        rows = top[idx, None] + offsets                                      # (m, size)
        cols = left[idx, None] + offsets                                     # (m, size)
        r = np.clip(rows, 0, height - 1)[:, :, None]
        c = np.clip(cols, 0, width - 1)[:, None, :]
        outside = ~(((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :])
        pix[idx] = sub_arr[r, c]
        var[idx] = var_arr[r, c]
        bad[idx] = outside if mask_arr is None else outside | mask_arr[r, c]
    bad |= ~np.isfinite(pix) | ~np.isfinite(var) | ~(var > 0)
    snr = np.divide(pix, np.sqrt(np.where(bad, np.float32(1.0), var)), where=~bad,
                    out=np.zeros((n, size, size), dtype=np.float32))
    stamps = np.empty((n, 2, size, size), dtype=np.float32)
    stamps[:, 0] = normalise_snr(snr)
    stamps[:, 0][bad] = 0.0
    stamps[:, 1] = bad
    return stamps
