"""Truth rows: one per injected object, gathered as column arrays and turned into an astropy Table.

Columns (units in the names):

- ``frame``; ``x``, ``y``: 0-based numpy pixel coordinates (x = column); for streaks the middle of
  the part inside the frame, for cosmic rays the charge-weighted centroid of their pixels inside it;
- ``label``: one of ``ORDINARY_LABELS``, ``"anomaly"`` or ``"transient"``; ``family``: the label
  itself for ordinary objects, the anomaly family, or ``"transient"``;
- ``flux_e``: electrons deposited inside the frame before flat-field response; ``mag``: NaN where
  the object has no sky magnitude; ``snr_expected``; ``ra_deg``, ``dec_deg``;
- ``x0``, ``y0``, ``x1``, ``y1``: end points of streaks (clipped to the frame) and of cosmic-ray
  tracks (as drawn); the position itself otherwise;
- ``fwhm_px``: local PSF FWHM; ``size_px``: half-light radius of galaxies, length of tracks and
  streaks, the characteristic size of anomalies (Einstein radius, comet tail length, double
  separation, ghost radius, lobster arm scale), 0 otherwise;
- ``source_id``: row of the reference catalog, -1 when the object is not in it.

This module renders nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table
from numpy.typing import ArrayLike, NDArray

TRUTH_COLUMNS: tuple[str, ...] = (
    "frame", "x", "y", "label", "family", "flux_e", "mag", "snr_expected", "ra_deg", "dec_deg",
    "x0", "y0", "x1", "y1", "fwhm_px", "size_px", "source_id",
)

_FLOAT_COLUMNS = ("x", "y", "flux_e", "mag", "snr_expected", "ra_deg", "dec_deg", "x0", "y0", "x1", "y1",
                  "fwhm_px", "size_px")


@dataclass
class TruthBuilder:
    """Collects truth rows group by group (mutable while one frame is rendered)."""

    frame: int
    groups: list[dict[str, NDArray[np.generic]]] = field(default_factory=list)

    def add(self, label: str, family: str, x: ArrayLike, y: ArrayLike, flux_e: ArrayLike, *,
            snr_expected: ArrayLike, mag: ArrayLike | None = None, fwhm_px: ArrayLike = 0.0,
            size_px: ArrayLike = 0.0, ends: tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike] | None = None,
            source_id: ArrayLike = -1) -> None:
        """Add rows of one label and family; scalars broadcast to the length of ``x``."""
        x = np.atleast_1d(np.asarray(x, float))
        n = len(x)
        if n == 0:
            return
        y = np.asarray(y, float)

        def col(v: ArrayLike | None, fill: float = np.nan, dtype: type = float) -> NDArray[np.generic]:
            return np.broadcast_to(np.asarray(fill if v is None else v, dtype), (n,)).copy()

        x0, y0, x1, y1 = ends if ends is not None else (x, y, x, y)
        self.groups.append({
            "frame": np.full(n, self.frame, np.int64), "x": x, "y": col(y),
            "label": np.full(n, label, dtype="<U12"), "family": np.full(n, family, dtype="<U12"),
            "flux_e": col(flux_e), "mag": col(mag), "snr_expected": col(snr_expected),
            "ra_deg": np.full(n, np.nan), "dec_deg": np.full(n, np.nan),
            "x0": col(x0), "y0": col(y0), "x1": col(x1), "y1": col(y1),
            "fwhm_px": col(fwhm_px), "size_px": col(size_px), "source_id": col(source_id, dtype=np.int64),
        })

    def table(self) -> Table:
        """All rows as a Table with the columns of ``TRUTH_COLUMNS``."""
        return concat_columns(self.groups)


def empty_truth() -> Table:
    """A truth Table with no rows and the right column types."""
    return concat_columns([])


def concat_columns(groups: list[dict[str, NDArray[np.generic]]]) -> Table:
    """Concatenate column groups into one Table in ``TRUTH_COLUMNS`` order."""
    cols = {}
    for name in TRUTH_COLUMNS:
        parts = [g[name] for g in groups]
        if parts:
            cols[name] = np.concatenate(parts)
        elif name in ("label", "family"):
            cols[name] = np.zeros(0, "<U12")
        elif name in ("frame", "source_id"):
            cols[name] = np.zeros(0, np.int64)
        else:
            cols[name] = np.zeros(0, float)
    return Table(cols)


def snr_expected(flux_e: ArrayLike, noise_area_px: ArrayLike, background_e: ArrayLike,
                 read_noise_e: float) -> NDArray[np.float64]:
    """S/N of an object of ``flux_e`` spread over a noise-equivalent area on a per-pixel background."""
    f = np.asarray(flux_e, float)
    var = f + np.asarray(noise_area_px, float) * (np.asarray(background_e, float) + read_noise_e ** 2)
    return np.where(var > 0, f / np.sqrt(np.maximum(var, 1e-300)), 0.0)
