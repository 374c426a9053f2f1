"""Commissioning's calibration step: the bundle from the given frames, its gain checked three ways,
and a bad-pixel map from the science frames themselves when no darks are given.

The gain that matters to the node is the one that makes its variance model match the sky's
noise: the headers' figure (``GAIN``, or the reading amplifier's ``AGAIN_nn``), photon transfer on
the bias and flat pairs, and the sky of the science frames (``calibration.frames.sky_gain``) are
all measured; the header's is used when the sky agrees with it, else photon transfer's when the sky
agrees with that, else the sky's own. Headers lie, and a node whose variance is 25 % wrong
thresholds noise as sources.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from calibration import Masters, build_masters, write_bundle
from calibration.frames import CalFrame, read_frame, sky_gain
from calibration.masters import BPM_BAD_COLUMN, BPM_HOT
from edge.errors import CalibrationInputError
from edge.log import get_logger

log = get_logger(__name__)

#: the header's gain (or photon transfer's) is kept when the sky's agrees with it this closely
GAIN_AGREEMENT = 0.10
#: a pixel above its neighbourhood by this many sigmas in this share of the science frames is hot
HOT_SIGMA, HOT_SHARE = 6.0, 0.8


@dataclass(frozen=True)
class NoiseChoice:
    """The gain and read noise the bundle carries, where they come from, and what else was measured."""

    gain_e_per_adu: float
    read_noise_e: float
    source: str                                   # "header" | "photon_transfer" | "sky"
    header: tuple[float, float] | None            # (gain, read noise) the headers wrote
    photon_transfer: tuple[float, float] | None   # (gain, read noise) from bias and flat pairs
    sky: tuple[float, float] | None               # (gain, its error) from the science frames' sky
    read_noise_adu: float                         # from the bias pairs (or the overscan)
    note: str


@dataclass(frozen=True)
class BundleResult:
    """What the calibration step made."""

    masters: Masters
    bundle_id: str
    noise: NoiseChoice
    science_hot_px: int
    science_bad_columns: int


def read_as(paths: Sequence[Path | str], kind: str) -> list[CalFrame]:
    """Read frames given on the command line as ``kind`` whatever their IMAGETYP says."""
    return [dataclasses.replace(read_frame(p), kind=kind) for p in paths]


def build_commission_bundle(bias: Sequence[Path | str], dark: Sequence[Path | str], flat: Sequence[Path | str],
                            science: Sequence[Path | str], out_path: Path | str) -> BundleResult:
    """Masters from the given frames, the checked gain, the science frames' defects; write the bundle."""
    if not bias:
        raise CalibrationInputError("a calibration bundle needs bias frames (--bias); without them the node "
                                    "calibrates from headers alone", where="commission")
    frames = read_as(bias, "bias") + read_as(dark, "dark") + read_as(flat, "flat")
    masters = build_masters(frames)
    lights = read_as(science, "light")
    shapes = {f.data_adu.shape for f in lights}
    if shapes != {masters.shape}:
        raise CalibrationInputError(f"science frames of shape {sorted(shapes)} do not match the calibration "
                                    f"frames' {masters.shape}: mixed cameras or binnings", where="commission")
    noise = choose_noise(masters, frames, lights)
    bpm = masters.bad_pixels.copy()
    hot_px, bad_cols = 0, 0
    if not dark:
        hot, cols = science_defects([f.data_adu - masters.bias_adu for f in lights])
        bpm[hot] |= BPM_HOT
        bpm[:, cols] |= BPM_BAD_COLUMN
        hot_px, bad_cols = int(hot.sum()), int(cols.size)
    masters = dataclasses.replace(masters, gain_e_per_adu=noise.gain_e_per_adu, read_noise_e=noise.read_noise_e,
                                  noise_source=noise.source, bad_pixels=bpm)
    bundle_id = write_bundle(masters, out_path)
    log.info("commission.bundle", path=str(out_path), bundle_id=bundle_id, gain=round(noise.gain_e_per_adu, 4),
             read_noise_e=round(noise.read_noise_e, 3), source=noise.source, science_hot_px=hot_px,
             science_bad_columns=bad_cols)
    return BundleResult(masters=masters, bundle_id=bundle_id, noise=noise, science_hot_px=hot_px,
                        science_bad_columns=bad_cols)


def choose_noise(masters: Masters, cal_frames: Sequence[CalFrame], lights: Sequence[CalFrame]) -> NoiseChoice:
    """Header, photon-transfer and sky gains side by side; the first one the sky agrees with wins."""
    headers = {(f.gain_e_per_adu, f.read_noise_e) for f in [*cal_frames, *lights]
               if f.gain_e_per_adu is not None and f.read_noise_e is not None}
    header = headers.pop() if len(headers) == 1 else None
    ptc = masters.photon_transfer
    rn_adu = ptc.read_noise_adu if ptc is not None else float(np.sqrt(max(masters.bias_var_adu2, 0.0)
                                                                      * max(masters.n_bias, 1)))
    gains = []
    for f in lights:
        # flat-fielded first: a 1 % pixel response on a sky of 2000 e- adds as much variance as its shot noise
        flat = masters.flats.get(f.filter_name or "", masters.flats.get("", next(iter(masters.flats.values()), None)))
        sky_adu = f.data_adu - masters.bias_adu
        if flat is not None:
            sky_adu = np.where(flat > 0.5, sky_adu / np.where(flat > 0.5, flat, 1.0), np.nan)
        g = sky_gain(sky_adu, rn_adu)
        if g is not None:
            gains.append((g.gain_e_per_adu, g.gain_err_e_per_adu))
    sky = (float(np.median([g for g, _ in gains])), float(np.median([e for _, e in gains]))) if gains else None
    ptc_pair = (ptc.gain_e_per_adu, ptc.read_noise_e) if ptc is not None else None

    def agrees(g: float) -> bool:
        return sky is None or abs(g / sky[0] - 1.0) <= GAIN_AGREEMENT

    if header is not None and agrees(header[0]):
        gain, rn, source = header[0], header[1], "header"
        note = "the headers' gain agrees with the sky's" if sky else "the headers' gain (the sky too faint to check it)"
    elif ptc_pair is not None and agrees(ptc_pair[0]):
        gain, rn, source = ptc_pair[0], ptc_pair[1], "photon_transfer"
        note = ("photon transfer's gain agrees with the sky's" + (
            f"; the headers' {header[0]:.3g} e-/ADU does not and is not used" if header else ""))
    elif sky is not None:
        gain, rn, source = sky[0], sky[0] * rn_adu, "sky"
        note = "neither the headers' nor photon transfer's gain agrees with the sky's; the sky's is used"
    else:
        raise CalibrationInputError("no gain: the headers give none, photon transfer needs two biases and two "
                                    "flats of one filter and exposure, and the sky is too faint", where="commission")
    return NoiseChoice(gain_e_per_adu=float(gain), read_noise_e=float(rn), source=source, header=header,
                       photon_transfer=ptc_pair, sky=sky, read_noise_adu=float(rn_adu), note=note)


def science_defects(images_adu: Sequence[NDArray[Any]]) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
    """Hot pixels (far above their 3x3 neighbourhood in most frames: stars move, defects stay) and
    bad columns (a column whose median departs from its neighbours' in every frame)."""
    n = len(images_adu)
    high = np.zeros(images_adu[0].shape, np.int16)
    col_dev = []
    for img in images_adu:
        x = np.asarray(img, np.float32)
        neigh_med, neigh_max = _neighbours(x)
        resid = x - neigh_med
        sigma = max(1.4826 * float(np.median(np.abs(resid[:: 7, :: 7]))), 1e-6)
        # a star, however sharp, lights its brightest neighbour to a third of its peak or more;
        # a hot pixel stands alone
        alone = (neigh_max - neigh_med) < 0.2 * resid + 3 * sigma
        high += (resid > HOT_SIGMA * sigma) & alone
        cols = np.median(x, axis=0)
        smooth = np.convolve(np.pad(cols, 4, mode="edge"), np.ones(9) / 9, mode="valid")
        d = cols - smooth
        col_dev.append(np.abs(d) > 5 * 1.4826 * float(np.median(np.abs(d))) + 1e-6)
    hot = high >= max(2, int(np.ceil(HOT_SHARE * n)))
    bad = np.flatnonzero(np.all(col_dev, axis=0)) if n >= 2 else np.zeros(0, np.int64)
    return hot, bad.astype(np.int64)


def _neighbours(x: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Median and maximum of each pixel's 8 neighbours (edges padded by reflection)."""
    p = np.pad(x, 1, mode="reflect")
    ny, nx = x.shape
    stack = np.stack([p[1 + dy:1 + dy + ny, 1 + dx:1 + dx + nx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                      if dy or dx])
    return np.median(stack, axis=0).astype(np.float32), stack.max(axis=0)


def summary(result: BundleResult) -> dict[str, Any]:
    """The calibration figures the report prints."""
    n = result.noise
    m = result.masters
    return {"bundle_id": result.bundle_id, "gain_e_per_adu": n.gain_e_per_adu, "read_noise_e": n.read_noise_e,
            "noise_source": n.source, "header": n.header, "photon_transfer": n.photon_transfer, "sky_gain": n.sky,
            "read_noise_adu": n.read_noise_adu, "note": n.note, "n_bias": m.n_bias, "n_dark": m.n_dark,
            "flats": dict(m.n_flat), "bad_pixels": int(np.count_nonzero(m.bad_pixels)),
            "science_hot_px": result.science_hot_px, "science_bad_columns": result.science_bad_columns,
            "saturate_adu": m.saturate_adu, "shape_px": list(m.shape)}
