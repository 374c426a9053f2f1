"""Noise models for frames calibrated without a bundle: header GAIN/RDNOISE, or measured from the image.

Pure numpy. ``header_noise`` reads the two keywords; ``estimate_background`` measures a frame's
sky level and noise from a strided sample of pixel-to-pixel differences, which a smooth sky
gradient and the few sources a field holds do not disturb. This module must not read files or
allocate frame-sized arrays: the Calibrator owns those.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from calibration.frames import header_gain, header_read_noise

#: at most this many pixels are sampled to estimate a frame's background
SAMPLE_PX = 65536


@dataclass(frozen=True)
class Background:
    """A frame's background level and its per-pixel noise, in the image's units."""

    level: float
    sigma: float


def header_noise(header: Mapping[str, Any] | None, *, where: str = "frame header") -> tuple[float, float] | None:
    """(gain e-/ADU, read noise e-) from a header when both are present and usable, else None.

    ``GAIN``/``RDNOISE``, or the reading amplifier's ``AGAIN_nn``/``ARDNS_nn``.
    """
    if header is None:
        return None
    gain = header_gain(header, where=where)
    rn = header_read_noise(header, where=where)
    if gain is None or rn is None or gain <= 0 or rn < 0:
        return None
    return gain, rn


def estimate_background(image: NDArray[np.floating], *, scale: float = 1.0, offset: float = 0.0) -> Background:
    """Background level and noise of ``(image - offset) * scale`` from a strided sample of rows.

    The noise is 1.4826 x the median absolute difference of horizontally adjacent pixels over
    sqrt(2): a gradient cancels in the difference and the median ignores sources. Non-finite
    values are skipped.
    """
    ny, nx = image.shape
    n_rows = max(1, min(ny, SAMPLE_PX // max(nx, 1)))
    rows = image[:: max(1, ny // n_rows)][:n_rows]
    sample = (np.asarray(rows, dtype=np.float64) - offset) * scale
    diff = np.diff(sample, axis=1).ravel()
    diff = diff[np.isfinite(diff)]
    vals = sample[np.isfinite(sample)]
    if vals.size == 0 or diff.size == 0:
        return Background(level=0.0, sigma=0.0)
    level = float(np.median(vals))
    sigma = 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / math.sqrt(2.0)
    return Background(level=level, sigma=sigma)
