"""The objects ``rig inject`` adds, drawn with a real frame's own PSF: twin shapes, measured optics.

Each injected object is first a :class:`Draft` (its family, its shape parameters, how far its
light reaches), so that it can be placed before it is drawn; :func:`render` then draws it at its
position as a unit-sum stamp. Shapes and their parameter ranges are the twin's
(:mod:`twin.anomalies`, :mod:`twin.artifacts`): a star or a transient is the PSF itself, a streak
a short debris trail, each anomaly family the twin's intrinsic shape convolved with the frame's
PSF at that place (:class:`edge.blend.FramePsf`: an elliptical Moffat whose size and shape vary
over the field). Pure numpy: the random generator is an argument; no I/O, no logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from edge.blend import FramePsf
from twin.anomalies import _intrinsic as intrinsic_shape  # the twin's shapes, before the optics
from twin.anomalies import draw_anomalies, half_px
from twin.artifacts import add_streak
from twin.instrument import ANOMALY_FAMILIES, DetectorModel, TwinConfig
from twin.psf import F32, PsfParams, fft_convolve, moffat_from_offsets, offsets
from twin.sky import Scene, Sources, centred_psf

#: every family ``rig inject`` can add: ordinary point sources (the control), new point sources,
#: debris trails, and each anomaly family of the twin
INJECT_FAMILIES: tuple[str, ...] = ("star", "transient", "streak", *ANOMALY_FAMILIES)
#: the truth label of each family, as the twin writes it
LABELS: dict[str, str] = {"star": "star", "transient": "transient", "streak": "streak",
                          **{f: "anomaly" for f in ANOMALY_FAMILIES}}
_STREAK_LENGTH_FWHM = (5.0, 12.0)   # short debris trails: they must fit between the frame's sources


@dataclass(frozen=True)
class Draft:
    """One object to inject, before it has a place: its shape, in pixels of the frame."""

    family: str
    half_px: int                  # its stamp is (2 half + 1)^2 pixels
    reach_px: float               # how much farther than a point source's its light reaches (px)
    size_px: float                # the truth's size_px (twin meaning: arc radius, tail, length ...)
    params: dict[str, float] = field(default_factory=dict)

    @property
    def keep_out_px(self) -> float:
        """Distance, beyond the isolation, that other sources keep from its centre.

        ``rig score`` matches an extended object within its ``size_px``, so nothing real may sit there."""
        return max(self.reach_px, self.size_px)


@dataclass(frozen=True, eq=False)
class Drawn:
    """An object drawn at its place: a unit-sum stamp, its lower-left corner and its truth geometry."""

    stamp: NDArray[np.float32]
    iy0: int
    ix0: int
    ends: tuple[float, float, float, float]   # (x0, y0, x1, y1): a streak's end points, else the centre


def psf_params(psf: FramePsf, x: NDArray[np.float64], y: NDArray[np.float64]) -> PsfParams:
    """The frame's PSF at (x, y) in the twin's terms: FWHM, ellipticity 1 - b/a and major-axis angle."""
    axx, ayy, axy = psf.quadratic_form(np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float)))
    det = axx * ayy - axy * axy
    half_gap = np.sqrt(0.25 * (axx - ayy) ** 2 + axy * axy)
    small, large = 0.5 * (axx + ayy) - half_gap, 0.5 * (axx + ayy) + half_gap   # 1/a^2, 1/b^2
    fwhm = 2.0 * np.sqrt(2.0 ** (1.0 / psf.beta) - 1.0) * det ** -0.25
    return PsfParams(fwhm_px=fwhm, ellipticity=1.0 - np.sqrt(small / large),
                     angle_rad=0.5 * np.arctan2(-2.0 * axy, ayy - axx), beta=psf.beta, defocus_px=0.0)


def _twin_config(fwhm_px: float, beta: float, shape: tuple[int, int]) -> TwinConfig:
    """A twin configuration whose optics have the frame's FWHM (pixel scale 1): the twin's sizes follow it."""
    ny, nx = max(shape[0], 16), max(shape[1], 16)
    return TwinConfig(detector=DetectorModel(shape_px=(ny, nx)), pixel_scale_arcsec=1.0,
                      psf_fwhm_arcsec=fwhm_px, psf_beta=beta, n_anomalies_per_family=1)


def point_half_px(fwhm_px: float) -> int:
    """Stamp half-size of a point source: six FWHM, so little of the Moffat's wing is left out."""
    return int(np.clip(np.ceil(6.0 * fwhm_px), 8, 64))


def draft(families: list[str], psf: FramePsf, shape: tuple[int, int], rng: np.random.Generator) -> list[Draft]:
    """One draft per entry of ``families``, shape parameters drawn as the twin draws them."""
    f, beta = psf.fwhm_px, psf.beta
    out: list[Draft | None] = [None] * len(families)
    for family in dict.fromkeys(families):
        where = [i for i, fam in enumerate(families) if fam == family]
        if family in ("star", "transient"):
            for i in where:
                out[i] = Draft(family, point_half_px(f), 0.0, 0.0)
        elif family == "streak":
            for i in where:
                length = float(rng.uniform(*_STREAK_LENGTH_FWHM)) * f
                half = int(np.ceil(0.5 * length + 4.0 * f))
                out[i] = Draft(family, half, 0.5 * length + 1.5 * f, length,
                               {"length_px": length, "angle_rad": float(rng.uniform(0.0, np.pi))})
        else:
            config = _twin_config(f, beta, shape).with_(anomalies=(family,), n_anomalies_per_family=len(where))
            none = Sources(np.zeros(0), np.zeros(0), np.zeros(0))
            (drawn,) = draw_anomalies(config, int(rng.integers(2 ** 31)), Scene(none, none, none))
            half = half_px(family, config)
            for k, i in enumerate(where):
                params = {key: float(v[k]) for key, v in drawn.params.items()}
                size = float(drawn.size_px[k])
                # the PSF blurs an extended object's edge by about a FWHM; a lobster's arms reach far
                reach = 0.5 * half if family == "lobster_psf" else size + 1.5 * f
                out[i] = Draft(family, half, reach, size, params)
    return [d for d in out if d is not None]


def render(d: Draft, x: float, y: float, psf: FramePsf) -> Drawn:
    """Draw a draft centred at (x, y) (0-based, x = column) with the frame's PSF there; unit sum."""
    xs, ys = np.array([x]), np.array([y])
    local = psf_params(psf, xs, ys)
    half = d.half_px
    iy0, ix0 = int(np.rint(y)) - half, int(np.rint(x)) - half
    ends = (x, y, x, y)
    if d.family in ("star", "transient"):
        dy, dx = offsets(xs, ys, half)
        stamp = moffat_from_offsets(dy, dx, local)[0]
    elif d.family == "streak":
        c, s = np.cos(d.params["angle_rad"]), np.sin(d.params["angle_rad"])
        h = 0.5 * d.params["length_px"]
        ends = (x - h * c, y - h * s, x + h * c, y + h * s)
        # the twin's trail (the round Moffat's line spread with the local FWHM), drawn on the stamp
        stamp = np.zeros((2 * half + 1, 2 * half + 1), F32)
        config = _twin_config(float(local.fwhm_px[0]), psf.beta, stamp.shape)
        add_streak(stamp, config, ends[0] - ix0, ends[1] - iy0, ends[2] - ix0, ends[3] - iy0, 1.0)
    else:
        config = _twin_config(psf.fwhm_px, psf.beta, psf.shape_px)
        p = {k: np.array([v]) for k, v in d.params.items()}
        dy, dx = offsets(xs, ys, half)
        if d.family == "close_double":
            stamp = _double(dy, dx, p, local)
        else:
            shape = intrinsic_shape(d.family, config, xs, ys, p, dy, dx, half)
            shape /= shape.sum(axis=(1, 2), keepdims=True)
            stamp = fft_convolve(shape, centred_psf(local, half))[0]
    stamp = np.asarray(stamp, F32)
    stamp /= F32(stamp.sum(dtype=np.float64))
    return Drawn(stamp, iy0, ix0, ends)


def _double(dy: NDArray[np.float32], dx: NDArray[np.float32], p: dict[str, NDArray[np.float64]],
            local: PsfParams) -> NDArray[np.float32]:
    """Two point sources of the frame's PSF, flux-weighted centre at the stamp's position (as the twin)."""
    sep, ratio = p["separation_px"], p["flux_ratio"]
    c, s = np.cos(p["angle_rad"]), np.sin(p["angle_rad"])
    w2 = ratio / (1 + ratio)

    def shift(d: NDArray[np.float64], a: NDArray[np.float64]) -> NDArray[np.float32]:
        return (d * a).astype(F32)[:, None, None]

    first = moffat_from_offsets(dy + shift(sep * w2, s), dx + shift(sep * w2, c), local)
    second = moffat_from_offsets(dy - shift(sep * (1 - w2), s), dx - shift(sep * (1 - w2), c), local)
    return (first * (1 - w2).astype(F32)[:, None, None] + second * w2.astype(F32)[:, None, None])[0]
