"""The detector: turn expected electrons into the uint16 ADU a camera writes.

Order of effects: flat-field response (vignetting x PRNU, dead pixels), dark current (hot pixels
included), shot and read noise, full-well saturation with charge bleeding along columns, gain,
bias with its column pattern, the 16-bit ADC. Shot noise is exact Poisson where the mean is below
``POISSON_BELOW_E`` and Gaussian with variance equal to the mean above it (skewness under 0.2
there), which is what keeps a 4096x4096 frame fast. Pure numpy; the generator is an argument;
it knows nothing of the sky and writes no files.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from twin.instrument import DetectorModel, fixed_patterns

POISSON_BELOW_E = 30.0
F32 = np.float32


def add_noise_e(signal_e: NDArray[np.float32], read_noise_e: float, rng: np.random.Generator) -> NDArray[np.float32]:
    """Shot noise (Poisson below ``POISSON_BELOW_E``, Gaussian above) plus Gaussian read noise, new array."""
    z = rng.standard_normal(signal_e.shape, dtype=F32)
    rn2 = F32(read_noise_e ** 2)
    std = signal_e + rn2
    np.sqrt(std, out=std)
    out = z
    out *= std
    out += signal_e
    flat_sig = signal_e.ravel()
    small = np.flatnonzero((flat_sig < POISSON_BELOW_E) & (flat_sig > 0))
    if small.size:
        zs = rng.standard_normal(small.size, dtype=F32)
        out.ravel()[small] = rng.poisson(flat_sig[small]).astype(F32) + F32(read_noise_e) * zs
    return out


def bleed(charge_e: NDArray[np.float32], full_well_e: float) -> NDArray[np.bool_]:
    """Cap pixels at the full well, spilling the excess up and down their column; return the saturated mask."""
    fw = F32(full_well_e)
    over = charge_e > fw
    cols = np.flatnonzero(over.any(axis=0))
    for c in cols.tolist():
        col = charge_e[:, c].astype(np.float64)
        rows = np.flatnonzero(col > full_well_e)
        # contiguous runs of saturated pixels
        splits = np.flatnonzero(np.diff(rows) > 1) + 1
        for run in np.split(rows, splits):
            a, b = int(run[0]), int(run[-1]) + 1
            excess = float((col[a:b] - full_well_e).sum())
            col[a:b] = full_well_e
            _spill(col, b, 1, excess / 2, full_well_e)
            _spill(col, a - 1, -1, excess / 2, full_well_e)
        charge_e[:, c] = col
        over[:, c] = col >= full_well_e
    return over


def _spill(col: NDArray[np.float64], start: int, step: int, charge: float, full_well: float) -> None:
    """Fill pixels from ``start`` in direction ``step`` up to the full well until ``charge`` is used."""
    idx = np.arange(start, len(col) if step > 0 else -1, step)
    if idx.size == 0 or charge <= 0:
        return
    room = np.maximum(full_well - col[idx], 0.0)
    filled = np.cumsum(room)
    k = int(np.searchsorted(filled, charge))
    col[idx[:k]] = full_well
    if k < idx.size:
        col[idx[k]] += charge - (filled[k - 1] if k > 0 else 0.0)
    # charge past the end of the column leaves through the serial register: lost


def expose(expected_e: NDArray[np.float32], det: DetectorModel, exposure_s: float,
           rng: np.random.Generator) -> tuple[NDArray[np.uint16], NDArray[np.bool_]]:
    """Raw ADU (uint16) from expected electrons before flat response; also the saturated-pixel mask."""
    pat = fixed_patterns(det)
    signal = expected_e * pat.flat
    if exposure_s > 0:
        signal += pat.dark_e_per_s * F32(exposure_s)
    charge = add_noise_e(signal, det.read_noise_e, rng)
    del signal
    saturated = bleed(charge, det.full_well_e)
    return to_adu(charge, det), saturated


def to_adu(charge_e: NDArray[np.float32], det: DetectorModel) -> NDArray[np.uint16]:
    """Gain, bias and the 16-bit ADC (rounding and clipping), consuming ``charge_e`` in place."""
    charge_e *= F32(1.0 / det.gain_e_per_adu)
    charge_e += fixed_patterns(det).bias_adu
    np.rint(charge_e, out=charge_e)
    np.clip(charge_e, 0, 65535, out=charge_e)
    return charge_e.astype(np.uint16)
