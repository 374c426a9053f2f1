"""Levenberg-Marquardt on many small fits at once, as numpy arrays (the fits of edge.blend).

N independent fits of P parameters to S weighted pixels each advance together: one (N, P, P)
normal-equation solve per step, each row with its own damping, accepted only where chi2 falls.
No I/O, no logging.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

__all__ = ["Model", "levenberg_marquardt"]

F64 = NDArray[np.float64]
#: params (N, P) -> model (N, S), Jacobian (N, S, P), which rows are valid
Model = Callable[[F64], tuple[F64, F64, NDArray[np.bool_]]]


def levenberg_marquardt(model: Model, p: F64, data: F64, weight: F64, lo: F64, hi: F64,
                        iterations: int) -> tuple[F64, F64, NDArray[np.bool_]]:
    """Fit every row at once, within [lo, hi], for a fixed number of steps: the params, chi2 (inf
    where the model is invalid) and which rows settled (chi2 fell by < 0.5 over the last 5 steps)."""
    p, eye = np.clip(np.array(p, float), lo, hi), np.eye(p.shape[1])

    def chi2_of(q: F64) -> tuple[F64, F64, F64]:
        m, j, valid = model(q)
        c = (weight * (data - m) ** 2).sum(axis=1)
        return np.where(valid & np.isfinite(c), c, np.inf), data - m, j

    (chi2, resid, jac), lam = chi2_of(p), np.full(len(p), 1e-3)
    history = [chi2.copy()]
    for _ in range(iterations):
        jw = (jac * weight[:, :, None]).transpose(0, 2, 1)
        h, g = jw @ jac, (jw @ resid[:, :, None])[:, :, 0]
        h = h + (lam[:, None] * np.einsum("npp->np", h) + 1e-9)[:, :, None] * eye
        bad = ~(np.isfinite(h).all(axis=(1, 2)) & np.isfinite(g).all(axis=1))
        h[bad], g[bad] = eye, 0.0
        trial = np.clip(p + np.linalg.solve(h, g[:, :, None])[:, :, 0], lo, hi)
        chi2_t, resid_t, jac_t = chi2_of(trial)
        better = chi2_t < chi2
        p[better], chi2[better], resid[better], jac[better] = trial[better], chi2_t[better], resid_t[better], jac_t[better]
        lam = np.clip(np.where(better, lam * 0.3, lam * 10.0), 1e-7, 1e7)
        history.append(chi2.copy())
    settled = history[-6] - np.where(np.isfinite(chi2), chi2, 0.0) < 0.5 if len(history) > 6 else False
    return p, chi2, settled & np.isfinite(chi2)
