"""The compiled detector behind ``[detect] backend = "fast"``: sep's algorithms in numba, GIL-free.

:mod:`edge.detect` calls it exactly where it would call sep, so both backends return the same
:class:`~edge.detect.Candidates` columns with the same conventions (0-based pixel centres, sep's
OBJ_*/APER_* flag bits). The pieces, one module each: :mod:`.background` (mesh mode estimator,
median filter, bicubic spline), :mod:`.segment` (matched filter S/N map, 8-connected groups),
:mod:`.deblend` (multi-threshold deblending), :mod:`.measure` (isophotal barycentre, moments,
errors, flags), :mod:`.photometry` (Kron radius, AUTO flux). Every loop releases the GIL
(``nogil``), so the heavy ones (box statistics, the spline, the S/N threshold, deblending) run in
pieces on plain threads (:mod:`.chunks`, ``[detect] threads``).
Pure functions of arrays: no logging, no clocks, no files.

Where it differs from sep on purpose: deblending gives each left-over pixel to its most probable
branch (sep draws one at random), and the deblending base level is the S/N threshold times the
lowest noise in the group (sep takes the noise of the pixel that closed the group). sep's
"cleaning" of spurious detections in the wings of bright objects is not done.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edge.errors import DetectionError
from edge.fastdetect.background import background
from edge.fastdetect.chunks import in_chunks
from edge.fastdetect.measure import COLUMNS, measure
from edge.fastdetect.photometry import auto_flux
from edge.fastdetect.segment import components, filtered_values, threshold_rows

__all__ = ["COLUMNS", "auto_flux", "background", "extract"]


def extract(sub: NDArray[np.float32], var: NDArray[np.float32], bad: NDArray[np.bool_],
            threshold_snr: float, min_area_px: int, deblend_nthresh: int, deblend_cont: float,
            kernel: NDArray[np.float64] | None, threads: int = 1) -> dict[str, NDArray[np.float64]]:
    """sep.extract's objects as columns (:data:`COLUMNS`), thresholding the S/N map on the variance.

    ``kernel`` (or None for no filter) is the matched filter; ``var`` must be finite and positive
    wherever ``bad`` is False.
    """
    k = np.zeros((3, 3)) if kernel is None else np.asarray(kernel, dtype=np.float64)
    if kernel is None:
        k[1, 1] = 1.0
    if k.shape != (3, 3):
        raise DetectionError(f"the fast backend filters with a 3x3 kernel, not {k.shape}",
                             where="matched_filter")
    k = (k / np.abs(k).sum()).astype(np.float32)
    above = np.empty(sub.shape, dtype=np.uint8)
    in_chunks(threshold_rows, sub.shape[0], threads, sub, var, bad, k, float(threshold_snr), above)
    xs, ys, offsets = components(above, int(min_area_px))
    cdv = filtered_values(sub, bad, k, xs, ys)
    table = measure(xs, ys, offsets, cdv, sub, var, bad, float(threshold_snr),
                    int(deblend_nthresh), float(deblend_cont), int(min_area_px), threads)
    return {name: table[:, i] for i, name in enumerate(COLUMNS)}
