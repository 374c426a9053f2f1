"""Sigma-clipped combination of a stack of frames into one master.

Pure numpy on a (n_frames, ny, nx) stack. The clipping is our own vectorised pass rather than
``astropy.stats.sigma_clip`` or ccdproc's ``Combiner``: on ten 1024x1024 frames it runs about as fast
as astropy's sigma_clip (0.44 s against 0.45 s), needs half the memory (no masked arrays, row blocks), and
its master is as quiet as a plain mean (noise 1.00x the ideal, astropy's MAD-based loop 1.08x),
because the spread it clips on is floored at the block's typical spread; docs/calibration.md
gives the command. It must not read files or know what kind of frame it combines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Combined:
    """A combined master: per-pixel clipped mean, the variance of that mean, and frames kept."""

    mean: NDArray[np.float32]
    variance_of_mean: NDArray[np.float32]  # the mean's own noise, in the stack's units squared
    n_used: NDArray[np.int16]


def sigma_clip_combine(stack: NDArray[np.floating], *, sigma: float = 4.0,
                       rows_per_block: int = 256) -> Combined:
    """Per-pixel mean over axis 0 after rejecting values more than ``sigma`` robust sigmas from the median.

    One pass about the median with 1.4826 x the median absolute deviation as sigma, so one
    cosmic ray in a stack of five cannot widen its own acceptance window; that spread is floored
    at the block's median spread so a small stack's noisy MAD does not reject good values.
    Works in row blocks to bound memory.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3 or stack.shape[0] < 1:
        raise ValueError(f"expected a (n_frames, ny, nx) stack, got shape {stack.shape}")
    n, ny, nx = stack.shape
    mean = np.empty((ny, nx), np.float32)
    var = np.empty((ny, nx), np.float32)
    used = np.empty((ny, nx), np.int16)
    for r0 in range(0, ny, rows_per_block):
        block = stack[:, r0:r0 + rows_per_block].astype(np.float32, copy=False)
        m, v, k = _clip_block(block, sigma)
        mean[r0:r0 + rows_per_block] = m
        var[r0:r0 + rows_per_block] = v
        used[r0:r0 + rows_per_block] = k
    return Combined(mean=mean, variance_of_mean=var, n_used=used)


def _clip_block(block: NDArray[np.float32], sigma: float
                ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int16]]:
    n = block.shape[0]
    if n == 1:
        # One frame has no scatter over the stack: its own noise is half the robust variance of
        # vertically adjacent differences (pixel-response patterns add to it, so it errs high).
        # Finite, so a single flat still makes a bundle (a real night may have one flat a filter).
        frame = block[0]
        if frame.shape[0] > 1:
            diff = np.diff(frame, axis=0)
            diff = diff[np.isfinite(diff)]
            mad = np.median(np.abs(diff - np.median(diff))) if diff.size else np.float32(0.0)
            noise_var = 0.5 * (1.4826 * float(mad)) ** 2
        else:
            noise_var = 0.0
        return (frame.copy(), np.full(block.shape[1:], noise_var, np.float32),
                np.ones(block.shape[1:], np.int16))
    centre = np.median(block, axis=0)
    dev = np.abs(block - centre)
    spread = np.float32(1.4826) * np.median(dev, axis=0)
    # A MAD from ten values scatters by ~25 %, so a per-pixel spread alone rejects good values
    # where it comes out low (measured: ~12 % more noise in a master of ten). Floor it at the
    # block's typical spread; pixels with more scatter (hot pixels in darks) keep their own.
    spread = np.maximum(spread, np.float32(np.median(spread)))
    keep = dev <= sigma * spread + np.float32(1e-6)
    k = keep.sum(axis=0)
    total = np.where(keep, block, np.float32(0.0)).sum(axis=0, dtype=np.float64)
    m = (total / k).astype(np.float32)
    d = np.where(keep, block - m, np.float32(0.0))
    v = (d * d).sum(axis=0, dtype=np.float64) / np.maximum(k - 1, 1) / k
    return m, v.astype(np.float32), k.astype(np.int16)
