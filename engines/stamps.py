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
``cy + size - size // 2 - 1``. ``NORMALISATION`` names this recipe.

The context recipe (``CONTEXT_NORMALISATION``, the default of engines from stampnet 2 on) adds a
second, wider view beside the sharp one, so that extended objects are seen whole (a comet's tail
falls off over 9-21 px from the head, past the stamp's 16 px half-size):

- channels 2 and 3, the context: the ``CONTEXT_BIN * STAMP_SIZE`` = 96 px square around the same
  centre, binned ``CONTEXT_BIN`` x ``CONTEXT_BIN`` to 32 x 32. A bin's S/N is the sum of its good
  pixels over the square root of the sum of their variances, normalised as channel 0; the bin is
  masked (channel 3 = 1, channel 2 = 0) when fewer than ``CONTEXT_MIN_GOOD`` of its 9 pixels are
  good. The centre pixel is the middle of bin (16, 16): the 96 px square covers rows ``cy - 49``
  to ``cy + 46``.

:data:`RECIPES` maps each recipe name to its number of channels; :func:`cut_for` cuts the stamps
of a named recipe. The engine manifest records the recipe, so that a model is never fed stamps
made another way. Pure functions of arrays (numpy, and one loop compiled with numba that bins the
context views straight from the frame): no I/O, no logging.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from edge.errors import DetectionError

__all__ = ["CONTEXT_BIN", "CONTEXT_NORMALISATION", "NORMALISATION", "RECIPES", "SNR_CLIP_HIGH",
           "SNR_CLIP_LOW", "STAMP_SIZE", "cut_context", "cut_for", "cut_stamps", "normalise_snr", "warm_up"]

STAMP_SIZE = 32
SNR_CLIP_LOW = -10.0
SNR_CLIP_HIGH = 1000.0
#: name of the sharp-stamp recipe (two channels), recorded in every engine manifest
NORMALISATION = "snr-asinh-clip-10-1000-v1"
#: the sharp stamp and a binned 96 px context view (four channels)
CONTEXT_NORMALISATION = "snr-asinh-clip-10-1000-ctx96bin3-v2"
CONTEXT_BIN = 3
#: a context bin with fewer good pixels than this is masked
CONTEXT_MIN_GOOD = 5
#: recipe name -> channels of its stamps
RECIPES: dict[str, int] = {NORMALISATION: 2, CONTEXT_NORMALISATION: 4}


def normalise_snr(snr: NDArray[Any]) -> NDArray[np.float32]:
    """The image-channel transform: clip S/N to [-10, 1000], then arcsinh; NaN/inf -> 0."""
    snr = np.asarray(snr, dtype=np.float32)
    out = np.arcsinh(np.clip(snr, SNR_CLIP_LOW, SNR_CLIP_HIGH))
    out[~np.isfinite(snr)] = 0.0
    return out


def _check_inputs(sub_e: NDArray[Any], variance_e2: NDArray[Any], mask: NDArray[Any] | None,
                  x: NDArray[Any], y: NDArray[Any], size: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
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
    return xs, ys


def _cut_pixels(sub_arr: NDArray[Any], var_arr: NDArray[Any], mask_arr: NDArray[np.bool_] | None,
                top: NDArray[np.int64], left: NDArray[np.int64],
                size: int) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
    """Pixels, variances and bad flags of the size x size squares at (top, left); outside is bad."""
    n = top.size
    height, width = sub_arr.shape
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
    return pix, var, bad


def _normalised(pix: NDArray[np.float32], var: NDArray[np.float32], bad: NDArray[np.bool_],
                out: NDArray[np.float32]) -> None:
    """Write the image channel and the mask channel of (n, h, w) pixels into out (n, 2, h, w)."""
    snr = np.divide(pix, np.sqrt(np.where(bad, np.float32(1.0), var)), where=~bad,
                    out=np.zeros(pix.shape, dtype=np.float32))
    out[:, 0] = normalise_snr(snr)
    out[:, 0][bad] = 0.0
    out[:, 1] = bad


def cut_stamps(sub_e: NDArray[Any], variance_e2: NDArray[Any], mask: NDArray[Any] | None,
               x: NDArray[Any], y: NDArray[Any], size: int = STAMP_SIZE) -> NDArray[np.float32]:
    """Cut (n, 2, size, size) float32 stamps centred on (x, y) (0-based, x = column)."""
    xs, ys = _check_inputs(sub_e, variance_e2, mask, x, y, size)
    half = size // 2
    top = np.floor(ys + 0.5).astype(np.int64) - half
    left = np.floor(xs + 0.5).astype(np.int64) - half
    mask_arr = None if mask is None else np.asarray(mask, dtype=bool)
    pix, var, bad = _cut_pixels(np.asarray(sub_e), np.asarray(variance_e2), mask_arr, top, left, size)
    stamps = np.empty((xs.size, 2, size, size), dtype=np.float32)
    _normalised(pix, var, bad, stamps)
    return stamps


@nb.njit(cache=True, nogil=True)
def _bin_views(sub: NDArray[np.float32], var: NDArray[np.float32], mask: NDArray[np.bool_], masked: bool,
               top: NDArray[np.int64], left: NDArray[np.int64], size: int, factor: int,
               pix_sum: NDArray[np.float32], var_sum: NDArray[np.float32], n_good: NDArray[np.int32]) -> None:
    """Per candidate and bin: the sums of the good pixels' values and variances, and their count.

    A pixel is good inside the frame, unmasked, with a finite value and a finite positive
    variance. Read straight from the frame: no factor * size square is ever cut out.
    """
    height, width = sub.shape
    for i in range(top.size):
        for by in range(size):
            y0 = top[i] + by * factor
            for bx in range(size):
                x0 = left[i] + bx * factor
                ps = np.float32(0.0)
                vs = np.float32(0.0)
                ng = 0
                for yy in range(max(y0, 0), min(y0 + factor, height)):
                    for xx in range(max(x0, 0), min(x0 + factor, width)):
                        p = sub[yy, xx]
                        v = var[yy, xx]
                        if (masked and mask[yy, xx]) or not (np.isfinite(p) and np.isfinite(v) and v > 0):
                            continue
                        ps += p
                        vs += v
                        ng += 1
                pix_sum[i, by, bx] = ps
                var_sum[i, by, bx] = vs
                n_good[i, by, bx] = ng


def cut_context(sub_e: NDArray[Any], variance_e2: NDArray[Any], mask: NDArray[Any] | None,
                x: NDArray[Any], y: NDArray[Any], size: int = STAMP_SIZE,
                factor: int = CONTEXT_BIN) -> NDArray[np.float32]:
    """The (n, 2, size, size) context views: ``factor * size`` px around (x, y), binned by ``factor``."""
    xs, ys = _check_inputs(sub_e, variance_e2, mask, x, y, size)
    if int(factor) != factor or factor < 1 or factor % 2 != 1:
        raise DetectionError(f"context binning must be an odd positive integer, got {factor!r}",
                             where="cut_context")
    # the centre pixel is the middle of bin (size // 2, size // 2)
    reach = factor * (size // 2) + factor // 2
    top = np.floor(ys + 0.5).astype(np.int64) - reach
    left = np.floor(xs + 0.5).astype(np.int64) - reach
    sub_arr = np.ascontiguousarray(sub_e, dtype=np.float32)
    var_arr = np.ascontiguousarray(variance_e2, dtype=np.float32)
    mask_arr = np.zeros((1, 1), dtype=bool) if mask is None else np.ascontiguousarray(mask, dtype=bool)
    n = xs.size
    pix_sum = np.empty((n, size, size), dtype=np.float32)
    var_sum = np.empty((n, size, size), dtype=np.float32)
    n_good = np.empty((n, size, size), dtype=np.int32)
    _bin_views(sub_arr, var_arr, mask_arr, mask is not None, top, left, size, int(factor),
               pix_sum, var_sum, n_good)
    views = np.empty((n, 2, size, size), dtype=np.float32)
    min_good = int(np.ceil(CONTEXT_MIN_GOOD * factor * factor / 9.0))
    _normalised(pix_sum, var_sum, n_good < min_good, views)
    return views


def cut_for(recipe: str, sub_e: NDArray[Any], variance_e2: NDArray[Any], mask: NDArray[Any] | None,
            x: NDArray[Any], y: NDArray[Any]) -> NDArray[np.float32]:
    """The stamps of the named recipe (``RECIPES``): (n, 2, 32, 32) or, with context, (n, 4, 32, 32)."""
    if recipe not in RECIPES:
        raise DetectionError(f"unknown stamp recipe {recipe!r}; this astro-edge makes {sorted(RECIPES)}",
                             where="cut_for")
    stamps = cut_stamps(sub_e, variance_e2, mask, x, y)
    if RECIPES[recipe] == 2:
        return stamps
    return np.concatenate([stamps, cut_context(sub_e, variance_e2, mask, x, y)], axis=1)


def warm_up(recipe: str) -> None:
    """Cut one stamp of the recipe from a small frame: numba compiles (or loads from its cache) the
    binning loop now, so that a node's first frame does not pay for it."""
    frame = np.zeros((8, 8), dtype=np.float32)
    cut_for(recipe, frame, np.ones_like(frame), None, np.array([4.0]), np.array([4.0]))
