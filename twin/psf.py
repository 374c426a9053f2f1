"""The optics: a field-dependent Moffat PSF evaluated analytically on small postage stamps.

The PSF is defined as sampled at pixel centres, so the configured FWHM is the FWHM an observer
measures on the pixels. Its FWHM grows towards the corners and it gains a small tangential
astigmatism (ellipticity); ``defocus_px`` turns it into a donut. Everything here is pure numpy on
batches of stamps: it allocates no frame-sized array (``add_stamps`` only writes into one), draws
no random numbers and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gamma, pi, sqrt

import numpy as np
from numpy.typing import NDArray

from twin.instrument import TwinConfig

F32 = np.float32


@dataclass(frozen=True)
class PsfParams:
    """Per-source Moffat parameters (arrays of length N): FWHM in px, ellipticity, angle in rad."""

    fwhm_px: NDArray[np.float64]
    ellipticity: NDArray[np.float64]
    angle_rad: NDArray[np.float64]
    beta: float
    defocus_px: float


def psf_at(config: TwinConfig, x: NDArray[np.float64], y: NDArray[np.float64]) -> PsfParams:
    """The PSF at 0-based pixel positions (x = column): FWHM grows and astigmatism turns on radially."""
    ny, nx = config.detector.shape_px
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    u = (np.asarray(x, float) - cx) / cx
    v = (np.asarray(y, float) - cy) / cy
    r2 = (u * u + v * v) / 2.0  # 0 at the centre, 1 at the corners
    fwhm = config.fwhm_px * (1.0 + config.psf_fwhm_variation * r2)
    ell = config.psf_ellipticity * np.sqrt(r2)
    angle = np.arctan2(v, u) + np.pi / 2  # tangential elongation
    return PsfParams(fwhm_px=fwhm, ellipticity=ell, angle_rad=angle, beta=config.psf_beta,
                     defocus_px=config.defocus_px)


def moffat_alpha(fwhm_px: NDArray[np.float64] | float, beta: float) -> NDArray[np.float64]:
    """Moffat core width alpha for a FWHM: FWHM = 2 alpha sqrt(2^(1/beta) - 1)."""
    return np.asarray(fwhm_px, float) / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def stamp_corners(x: NDArray[np.float64], y: NDArray[np.float64], half: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Lower-left pixel (iy0, ix0) of a (2 half + 1)^2 stamp centred on the pixel nearest (x, y)."""
    return (np.rint(np.asarray(y)).astype(np.int64) - half, np.rint(np.asarray(x)).astype(np.int64) - half)


def offsets(x: NDArray[np.float64], y: NDArray[np.float64], half: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Pixel-centre offsets from each source: dy (N, s, 1) and dx (N, 1, s) for a stamp of side 2 half + 1."""
    iy0, ix0 = stamp_corners(x, y, half)
    grid = np.arange(2 * half + 1, dtype=np.float64)
    dx = (ix0[:, None] + grid[None, :] - np.asarray(x)[:, None]).astype(F32)[:, None, :]
    dy = (iy0[:, None] + grid[None, :] - np.asarray(y)[:, None]).astype(F32)[:, :, None]
    return dy, dx


def moffat_stamps(x: NDArray[np.float64], y: NDArray[np.float64], psf: PsfParams, half: int) -> NDArray[np.float32]:
    """Unit-sum PSF stamps (N, 2 half + 1, 2 half + 1) centred on sub-pixel positions (x, y)."""
    dy, dx = offsets(x, y, half)
    return moffat_from_offsets(dy, dx, psf)


def moffat_from_offsets(dy: NDArray[np.float32], dx: NDArray[np.float32], psf: PsfParams) -> NDArray[np.float32]:
    """Unit-sum Moffat stamps evaluated at offsets ``dy`` (N, s, 1), ``dx`` (N, 1, s) from each centre."""
    alpha = moffat_alpha(psf.fwhm_px, psf.beta)
    q = 1.0 - psf.ellipticity
    c, s = np.cos(psf.angle_rad), np.sin(psf.angle_rad)
    # quadratic form of an ellipse with axes alpha/sqrt(q), alpha*sqrt(q): the area (and FWHM's
    # geometric mean) stays that of the round PSF
    a2 = (alpha * alpha / q)
    b2 = (alpha * alpha * q)
    cxx = (c * c / a2 + s * s / b2).astype(F32)[:, None, None]
    cyy = (s * s / a2 + c * c / b2).astype(F32)[:, None, None]
    cxy = (2 * c * s * (1 / a2 - 1 / b2)).astype(F32)[:, None, None]
    rr = cxx * dx * dx + cyy * dy * dy + cxy * dx * dy
    if psf.defocus_px > 0:
        a = alpha.astype(F32)[:, None, None]
        rho = np.sqrt(rr) * a
        rr = ((rho - F32(psf.defocus_px)) / a) ** 2
    out = np.power(rr + F32(1.0), F32(-psf.beta), dtype=F32)
    out /= out.sum(axis=(1, 2), keepdims=True)
    return out


def stamp_half_px(config: TwinConfig, flux_e: NDArray[np.float64]) -> NDArray[np.int64]:
    """Stamp half-size per source, so the PSF wing left outside is well below a photon per pixel."""
    fwhm = config.fwhm_px * (1.0 + config.psf_fwhm_variation)
    base = np.full(np.shape(flux_e), 2.5 * fwhm, float)
    base = np.where(flux_e > 2e4, 6.0 * fwhm, base)
    base = np.where(flux_e > 5e5, 14.0 * fwhm, base)
    return np.clip(np.ceil(base + config.defocus_px).astype(np.int64), 3, 96)


def line_spread(d_px: NDArray[np.float32], fwhm_px: float, beta: float) -> NDArray[np.float32]:
    """The round Moffat integrated along a line, per unit length, at perpendicular distance d (unit area)."""
    alpha = float(moffat_alpha(fwhm_px, beta))
    prof = np.power(F32(1.0) + (d_px / F32(alpha)) ** 2, F32(0.5 - beta), dtype=F32)
    # integral over d of (1 + d^2/a^2)^(1/2 - beta) is a sqrt(pi) Gamma(beta - 1) / Gamma(beta - 1/2)
    return prof / F32(alpha * sqrt(pi) * gamma(beta - 1.0) / gamma(beta - 0.5))


def fft_convolve(intrinsic: NDArray[np.float32], kernel: NDArray[np.float32]) -> NDArray[np.float32]:
    """Convolve stamps (N, s, s) with centred kernels of the same shape; flux is preserved."""
    s = intrinsic.shape[-1]
    f = np.fft.rfft2(intrinsic) * np.fft.rfft2(np.fft.ifftshift(kernel, axes=(-2, -1)))
    out = np.fft.irfft2(f, s=(s, s)).astype(F32)
    np.maximum(out, 0.0, out=out)  # FFT ringing leaves tiny negatives
    return out


def add_stamps(image: NDArray[np.float32], stamps: NDArray[np.float32], iy0: NDArray[np.int64],
               ix0: NDArray[np.int64]) -> None:
    """Add stamps into ``image`` in place at lower-left corners (iy0, ix0), clipping at the edges."""
    ny, nx = image.shape
    s_y, s_x = stamps.shape[1:]
    for st, y0, x0 in zip(stamps, iy0.tolist(), ix0.tolist(), strict=True):
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + s_y, ny), min(x0 + s_x, nx)
        if ya >= yb or xa >= xb:
            continue
        image[ya:yb, xa:xb] += st[ya - y0:yb - y0, xa - x0:xb - x0]


def inside_fraction(stamps: NDArray[np.float32], iy0: NDArray[np.int64], ix0: NDArray[np.int64],
                    shape: tuple[int, int]) -> NDArray[np.float64]:
    """Fraction of each stamp's sum that lands inside a frame of ``shape``."""
    ny, nx = shape
    s_y, s_x = stamps.shape[1:]
    total = stamps.sum(axis=(1, 2), dtype=np.float64)
    out = np.ones(len(stamps))
    edge = (iy0 < 0) | (ix0 < 0) | (iy0 + s_y > ny) | (ix0 + s_x > nx)
    for i in np.flatnonzero(edge):
        ya, xa = max(iy0[i], 0), max(ix0[i], 0)
        yb, xb = min(iy0[i] + s_y, ny), min(ix0[i] + s_x, nx)
        inside = stamps[i, ya - iy0[i]:yb - iy0[i], xa - ix0[i]:xb - ix0[i]].sum(dtype=np.float64) if ya < yb and xa < xb else 0.0
        out[i] = inside / total[i] if total[i] > 0 else 0.0
    return out


def noise_area_px(stamps: NDArray[np.float32]) -> NDArray[np.float64]:
    """Noise-equivalent area (sum s)^2 / sum s^2 of each stamp, in pixels."""
    s1 = stamps.sum(axis=(1, 2), dtype=np.float64)
    s2 = np.square(stamps, dtype=np.float64).sum(axis=(1, 2))
    return np.where(s2 > 0, s1 * s1 / np.maximum(s2, 1e-300), 1.0)
