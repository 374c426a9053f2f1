"""The diffuse pass of detection: extended objects of low surface brightness, found on a binned frame.

The threshold of :func:`edge.detect.detect` is per pixel (sep's, as SExtractor's: in sigma of the
unfiltered pixel, applied to the 3x3-filtered image). An object larger than the PSF whose light
is spread thin (a ghost's ring at 3 sigma a pixel, a faint arc, a low-surface-brightness galaxy)
can then hold S/N 30-80 in all and never reach it. Binning k x k adds k**2 pixels' light while
their noise adds in quadrature, so the binned per-pixel S/N of a smooth object is k times higher.

The pass sums ``sub`` and the variance over k x k blocks (a block with any masked pixel is
masked), runs the same extraction at the same threshold, and keeps the objects whose centre has no
object of the full-resolution pass within max(1.5 k, 2 a) pixels (``a`` the binned object's
semi-major axis in full-resolution pixels): a bright star found again at the coarser scale is
dropped, a ring with nothing at its centre is kept. Positions and shapes are mapped back to
full-resolution pixels, and :func:`edge.detect.detect` measures their flux there like any other
candidate and flags them :data:`edge.detect.FLAG_DIFFUSE`.

Measured on real frames (docs/commissioning.md): on Lowell's 300 s frames a 2 x 2 pass finds
0.96 of the injected ghosts of S/N >= 20 (the full-resolution pass 0.83) and adds about 22
detections to a frame's 1500.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

__all__ = ["FIELDS", "as_columns", "diffuse_objects", "merged"]

#: the extraction columns :func:`edge.detect.detect` reads
FIELDS = ("x", "y", "a", "b", "theta", "flag", "xpeak", "ypeak", "errx2", "erry2", "peak", "npix")


def as_columns(objects: Any) -> dict[str, NDArray[Any]]:
    """sep's structured array or fastdetect's dict, as a dict of the :data:`FIELDS` arrays."""
    return {f: np.asarray(objects[f]) for f in FIELDS}


def _binned(image: NDArray[Any], k: int, reduce: str) -> NDArray[Any]:
    h, w = image.shape
    blocks = image[: h // k * k, : w // k * k].reshape(h // k, k, w // k, k)
    return np.ascontiguousarray(getattr(blocks, reduce)(axis=(1, 3)))


def diffuse_objects(first: dict[str, NDArray[Any]], sub: NDArray[np.float32], var: NDArray[np.float32],
                    bad: NDArray[np.bool_], k: int,
                    extract: Callable[[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]], Any],
                    ) -> dict[str, NDArray[Any]]:
    """The objects of the k x k binned frame that the full-resolution pass (``first``) did not find,
    in full-resolution pixels; ``extract(sub, var, bad)`` is the full-resolution extraction."""
    if sub.shape[0] < 2 * k or sub.shape[1] < 2 * k:
        return {f: np.asarray(first[f])[:0] for f in FIELDS}
    found = as_columns(extract(_binned(sub, k, "sum"), _binned(var, k, "sum").astype(np.float32),
                               _binned(bad, k, "max")))
    x = (found["x"].astype(np.float64) + 0.5) * k - 0.5
    y = (found["y"].astype(np.float64) + 0.5) * k - 0.5
    a = found["a"].astype(np.float64) * k
    keep = np.ones(len(x), bool)
    if len(first["x"]) and len(x):
        d, _ = cKDTree(np.c_[first["x"], first["y"]]).query(np.c_[x, y])
        keep = d > np.maximum(1.5 * k, 2.0 * a)
    out = {f: found[f][keep] for f in FIELDS}
    out["x"], out["y"], out["a"] = x[keep], y[keep], a[keep]
    out["b"] = found["b"][keep].astype(np.float64) * k
    out["xpeak"] = found["xpeak"][keep].astype(np.int64) * k + k // 2
    out["ypeak"] = found["ypeak"][keep].astype(np.int64) * k + k // 2
    out["errx2"] = found["errx2"][keep].astype(np.float64) * k * k
    out["erry2"] = found["erry2"][keep].astype(np.float64) * k * k
    # the record's peak is one pixel's: the brightest of the binned peak's block (read for the kept
    # objects alone, not binned over the whole frame)
    dy, dx = np.divmod(np.arange(k * k), k)
    rows = found["ypeak"][keep].astype(np.int64)[:, None] * k + dy
    cols = found["xpeak"][keep].astype(np.int64)[:, None] * k + dx
    out["peak"] = sub[rows, cols].max(axis=1, initial=-np.inf).astype(np.float64)
    out["npix"] = found["npix"][keep].astype(np.int64) * k * k
    return out


def merged(objects: Any, sub: NDArray[np.float32], var: NDArray[np.float32], bad: NDArray[np.bool_], k: int,
           extract: Callable[[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]], Any],
           ) -> tuple[dict[str, NDArray[Any]], int]:
    """The full-resolution ``objects`` followed by the diffuse pass's, and how many it added."""
    first = as_columns(objects)
    extra = diffuse_objects(first, sub, var, bad, k, extract)
    return {f: np.concatenate([first[f], extra[f].astype(first[f].dtype)]) for f in FIELDS}, len(extra["x"])
