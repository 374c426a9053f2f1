"""Masters from calibration frames: bias, dark, flat per filter, bad-pixel mask, gain and read noise.

Pure numpy on ``CalFrame`` objects already read by ``frames``: it groups frames, checks that they
agree, combines them, flags bad pixels and measures gain and read noise by photon transfer. It
must not read or write files (``frames`` and ``bundle`` do) and must not calibrate science frames
(``apply`` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from calibration.combine import sigma_clip_combine
from calibration.frames import CalFrame, Progress, clipped_mean_std
from edge.errors import CalibrationInputError

#: bits of ``Masters.bad_pixels`` (the Calibrator folds them all into its mask bit 1)
BPM_HOT = 1  # dark current far above the detector's typical rate
BPM_DEAD = 2  # no or almost no response in the flat (below ``DEAD_BELOW``)
BPM_LOW_RESPONSE = 4  # response below ``LOW_RESPONSE_BELOW`` of the flat's mean
BPM_BAD_COLUMN = 8  # a column that is mostly flagged, dead in the flat or hot in the dark

DEAD_BELOW = 0.1
LOW_RESPONSE_BELOW = 0.5
HIGH_RESPONSE_ABOVE = 1.5  # folded into BPM_LOW_RESPONSE: a pixel off by a factor is unusable either way
HOT_SIGMA = 5.0
#: the ADC ceiling of a 16-bit camera, the saturation level when no header gives SATURATE
ADC_MAX_ADU = 65535.0


@dataclass(frozen=True)
class PhotonTransfer:
    """Gain and read noise measured from pairs of flats and pairs of biases (Janesick)."""

    gain_e_per_adu: float
    read_noise_e: float
    read_noise_adu: float
    gain_err_e_per_adu: float  # scatter of the per-pair gains over sqrt(pairs); 0 with one pair
    read_noise_err_e: float
    n_flat_pairs: int
    n_bias_pairs: int


@dataclass(frozen=True)
class InputRecord:
    """Provenance of one input frame."""

    name: str
    sha256: str
    kind: str
    exposure_s: float
    filter_name: str


@dataclass(frozen=True)
class Masters:
    """Everything a calibration bundle holds, in ADU on the trimmed detector area."""

    bias_adu: NDArray[np.float32]
    bias_var_adu2: float  # variance of the master bias per pixel (read noise^2 / n_bias)
    dark_adu_per_s: NDArray[np.float32] | None  # bias-subtracted dark rate; None without darks
    dark_var_adu2_per_s2: NDArray[np.float32] | None  # variance of that rate per pixel
    flats: dict[str, NDArray[np.float32]]  # normalised to mean 1 over good pixels; key "" = any filter
    flat_rel_var: dict[str, float]  # mean relative variance of each master flat
    bad_pixels: NDArray[np.uint8]  # BPM_* bits
    gain_e_per_adu: float
    read_noise_e: float
    noise_source: str  # "photon_transfer" | "header"
    saturate_adu: float  # raw ADU at or above which a pixel is saturated
    trimsec: str | None
    biassec: str | None
    raw_shape: tuple[int, int]
    inputs: tuple[InputRecord, ...]
    photon_transfer: PhotonTransfer | None = None
    n_bias: int = 0
    n_dark: int = 0
    n_flat: dict[str, int] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the trimmed detector area."""
        return (int(self.bias_adu.shape[0]), int(self.bias_adu.shape[1]))


def photon_transfer(bias_pairs: Sequence[tuple[NDArray[np.float32], NDArray[np.float32]]],
                    flat_pairs: Sequence[tuple[NDArray[np.float32], NDArray[np.float32]]],
                    *, exclude: NDArray[np.bool_] | None = None) -> PhotonTransfer:
    """Gain g = ((F1+F2) - (B1+B2)) / (var(F1-F2) - var(B1-B2)); read noise g * std(B1-B2) / sqrt(2).

    Frames in ADU (overscan removed, not bias-subtracted). The flat's pixel-response pattern and
    the bias structure cancel in the differences; a pair at different levels (twilight) has its
    second flat scaled to the first's level before the difference; variances are 5-sigma clipped so cosmic rays
    do not count as noise; ``exclude`` drops known bad pixels. Each flat pair is matched with a
    bias pair in turn; the results are the medians over pairs.
    """
    if not bias_pairs or not flat_pairs:
        raise ValueError("photon transfer needs at least one pair of biases and one pair of flats")
    good = None if exclude is None else ~exclude
    bias_diff_var: list[float] = []
    bias_sum: list[float] = []
    for b1, b2 in bias_pairs:
        d = (b1 - b2) if good is None else (b1 - b2)[good]
        _, std, _ = clipped_mean_std(d, sigma=5.0)
        bias_diff_var.append(std * std)
        s = (b1 + b2) if good is None else (b1 + b2)[good]
        bias_sum.append(float(np.mean(s, dtype=np.float64)))
    gains: list[float] = []
    for i, (f1, f2) in enumerate(flat_pairs):
        j = i % len(bias_pairs)
        bias_level = bias_sum[j] / 2.0
        m1 = float(np.mean(f1 if good is None else f1[good], dtype=np.float64)) - bias_level
        m2 = float(np.mean(f2 if good is None else f2[good], dtype=np.float64)) - bias_level
        if m1 <= 0 or m2 <= 0:
            raise ValueError("flat pair has no signal above the biases; photon transfer needs exposed flats")
        # Twilight flats of one exposure time differ in level: the second is scaled to the first
        # so the flat's pattern (vignetting, pixel response) cancels in the difference; with
        # r = 1 this is the textbook (F1+F2) / var(F1-F2). var(D) = (m1 + r^2 m2) / g + (1 + r^2) rn^2.
        r = m1 / m2
        d = (f1 - bias_level) - np.float32(r) * (f2 - bias_level)
        if good is not None:
            d = d[good]
        _, std, _ = clipped_mean_std(d, sigma=5.0)
        signal = m1 + r * r * m2
        excess = std * std - (1.0 + r * r) * bias_diff_var[j] / 2.0
        if excess <= 0:
            raise ValueError("flat pair has no signal above the biases; photon transfer needs exposed flats")
        gains.append(signal / excess)
    gain = float(np.median(gains))
    rn_adu_pairs = [math.sqrt(v / 2.0) for v in bias_diff_var]
    rn_adu = float(np.median(rn_adu_pairs))
    gain_err = float(np.std(gains, ddof=1) / math.sqrt(len(gains))) if len(gains) > 1 else 0.0
    rn_err_adu = float(np.std(rn_adu_pairs, ddof=1) / math.sqrt(len(rn_adu_pairs))) if len(rn_adu_pairs) > 1 else 0.0
    rn_e = gain * rn_adu
    rn_err_e = math.hypot(gain * rn_err_adu, rn_adu * gain_err)
    return PhotonTransfer(gain_e_per_adu=gain, read_noise_e=rn_e, read_noise_adu=rn_adu,
                          gain_err_e_per_adu=gain_err, read_noise_err_e=rn_err_e,
                          n_flat_pairs=len(flat_pairs), n_bias_pairs=len(bias_pairs))


def hot_pixels(dark_adu_per_s: NDArray[np.float32], *, sigma: float = HOT_SIGMA) -> NDArray[np.bool_]:
    """Pixels whose dark rate exceeds the typical rate by ``sigma`` clipped standard deviations."""
    level, std, _ = clipped_mean_std(_sample(dark_adu_per_s), sigma=3.0)
    return dark_adu_per_s > level + sigma * max(std, 1e-12)


def response_defects(flat: NDArray[np.float32]) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(dead, low-or-odd response) pixels of a normalised flat."""
    dead = flat < DEAD_BELOW
    odd = ~dead & ((flat < LOW_RESPONSE_BELOW) | (flat > HIGH_RESPONSE_ABOVE))
    return dead, odd


def bad_columns(flags: NDArray[np.bool_], dark_adu_per_s: NDArray[np.float32] | None) -> NDArray[np.bool_]:
    """Columns that are more than half flagged, or whose median dark rate is itself hot."""
    cols = flags.mean(axis=0) > 0.5
    if dark_adu_per_s is not None:
        col_rate = np.median(dark_adu_per_s, axis=0)
        level, std, _ = clipped_mean_std(col_rate, sigma=3.0)
        cols |= col_rate > level + HOT_SIGMA * max(std, 1e-12)
    return cols


def _sample(a: NDArray[np.float32], n: int = 1_000_000) -> NDArray[np.float32]:
    """A strided sample of at most ``n`` values, so robust statistics stay cheap on 4k frames."""
    flat = a.ravel()
    step = max(1, flat.size // n)
    return flat[::step]


def _check_shapes(frames: Sequence[CalFrame]) -> tuple[int, int]:
    ref = frames[0]
    for f in frames[1:]:
        if f.data_adu.shape != ref.data_adu.shape:
            raise CalibrationInputError(
                f"shape {f.data_adu.shape[0]}x{f.data_adu.shape[1]} (after trimming) does not match "
                f"{ref.path.name}'s {ref.data_adu.shape[0]}x{ref.data_adu.shape[1]}; "
                "keep one detector and one readout mode per folder", where=str(f.path))
    return (int(ref.data_adu.shape[0]), int(ref.data_adu.shape[1]))


def _exposure(f: CalFrame) -> float:
    if f.exposure_s is None:
        raise CalibrationInputError(f"{f.kind} frame has no EXPTIME; add the exposure time in seconds",
                                    where=str(f.path))
    if f.exposure_s < 0:
        raise CalibrationInputError(f"EXPTIME={f.exposure_s} is negative", where=str(f.path))
    return f.exposure_s


def _pairs(arrays: Sequence[NDArray[np.float32]]) -> list[tuple[NDArray[np.float32], NDArray[np.float32]]]:
    return [(arrays[i], arrays[i + 1]) for i in range(0, len(arrays) - 1, 2)]


def _header_noise(frames: Sequence[CalFrame]) -> tuple[float, float] | None:
    gains = {f.gain_e_per_adu for f in frames if f.gain_e_per_adu is not None}
    rns = {f.read_noise_e for f in frames if f.read_noise_e is not None}
    if len(gains) == 1 and len(rns) == 1:
        return gains.pop(), rns.pop()
    return None


def build_masters(frames: Sequence[CalFrame], *, trust_header_gain: bool = False,
                  progress: Progress | None = None) -> Masters:
    """Combine bias, dark and flat frames into masters, flag bad pixels, measure gain and read noise.

    Frames of other kinds (lights, unknown IMAGETYP) are left out. Biases are required; darks and
    flats are optional. Gain and read noise come from photon transfer unless
    ``trust_header_gain`` is set and every frame's GAIN and RDNOISE agree. ``progress`` is told of
    each step done (stage ``"combining masters"``: the bias, the dark, each filter's flat, then
    gain and read noise).
    """
    cal = [f for f in frames if f.kind in ("bias", "dark", "flat")]
    if not cal:
        where = str(frames[0].path.parent) if frames else None
        raise CalibrationInputError("no BIAS, DARK or FLAT frames (by IMAGETYP) among the files", where=where)
    shape = _check_shapes(cal)
    biases = [f for f in cal if f.kind == "bias"]
    darks = [f for f in cal if f.kind == "dark"]
    flats = [f for f in cal if f.kind == "flat"]
    if not biases:
        raise CalibrationInputError("no BIAS frames (IMAGETYP BIAS / Bias Frame / zero); a master bias is required",
                                    where=str(cal[0].path.parent))
    for f in darks + flats:
        _exposure(f)
    stage = "combining masters"
    n_steps = 2 + bool(darks) + len({f.filter_name or "" for f in flats})

    def step_done(advance: int = 1) -> None:
        if progress is not None:
            progress(stage, advance, n_steps)

    step_done(0)
    bias_stack = np.stack([f.data_adu for f in biases])
    bias = sigma_clip_combine(bias_stack).mean
    del bias_stack
    step_done()

    dark_rate = None
    if darks:
        rates = np.stack([(f.data_adu - bias) / np.float32(max(_exposure(f), 1e-9)) for f in darks])
        dark_rate = sigma_clip_combine(rates).mean
        del rates
        step_done()
    bpm = np.zeros(shape, np.uint8)
    if dark_rate is not None:
        hot = hot_pixels(dark_rate)
        bpm[hot] |= BPM_HOT

    master_flats: dict[str, NDArray[np.float32]] = {}
    flat_rel_var: dict[str, float] = {}
    n_flat: dict[str, int] = {}
    by_filter: dict[str, list[CalFrame]] = {}
    for f in flats:
        by_filter.setdefault(f.filter_name or "", []).append(f)
    for name, group in sorted(by_filter.items()):
        normed = []
        for f in group:
            img = f.data_adu - bias
            if dark_rate is not None:
                img -= dark_rate * np.float32(_exposure(f))
            level = float(np.median(_sample(img)))
            if level <= 0:
                raise CalibrationInputError(f"flat has no signal above the bias (median {level:.1f} ADU)",
                                            where=str(f.path))
            normed.append(img / np.float32(level))
        comb = sigma_clip_combine(np.stack(normed))
        del normed
        master = comb.mean
        live = master > LOW_RESPONSE_BELOW
        master /= np.float32(master[live].mean(dtype=np.float64))
        dead, odd = response_defects(master)
        bpm[dead] |= BPM_DEAD
        bpm[odd] |= BPM_LOW_RESPONSE
        good = ~dead & ~odd
        flat_rel_var[name] = float(np.mean(comb.variance_of_mean[good] / master[good] ** 2, dtype=np.float64))
        master_flats[name] = master
        n_flat[name] = len(group)
        step_done()
    flagged = bpm != 0
    cols = bad_columns(flagged, dark_rate)
    bpm[:, cols] |= BPM_BAD_COLUMN

    ptc = None
    header_noise = _header_noise(cal)
    if trust_header_gain and header_noise is not None:
        gain, rn_e = header_noise
        source = "header"
    else:
        ptc = _photon_transfer(biases, flats, bpm != 0)
        if ptc is None:
            if header_noise is None:
                raise CalibrationInputError(
                    "cannot measure gain and read noise: photon transfer needs at least two biases and two "
                    "flats of one filter and exposure time, and the headers give no GAIN/RDNOISE to fall back on",
                    where=str(cal[0].path.parent))
            gain, rn_e = header_noise
            source = "header"
        else:
            gain, rn_e = ptc.gain_e_per_adu, ptc.read_noise_e
            source = "photon_transfer"
    step_done()
    rn_adu = rn_e / gain
    bias_var = rn_adu ** 2 / len(biases)
    dark_var = None
    if dark_rate is not None:
        t = np.array([_exposure(f) for f in darks], np.float64)
        # each dark frame's rate carries read noise, dark shot noise and the master bias's noise
        per_frame = (rn_adu ** 2 + bias_var + np.maximum(dark_rate, 0) * np.float32(t.mean()) / gain) / np.float32(
            max(float((t ** 2).mean()), 1e-18))
        dark_var = (per_frame / len(darks)).astype(np.float32)
    saturate = [f.saturate_adu for f in cal if f.saturate_adu is not None]
    ref = cal[0]
    inputs = tuple(InputRecord(name=f.path.name, sha256=f.sha256, kind=str(f.kind),
                               exposure_s=float(f.exposure_s or 0.0), filter_name=f.filter_name or "")
                   for f in cal)
    return Masters(
        bias_adu=bias, bias_var_adu2=float(bias_var), dark_adu_per_s=dark_rate, dark_var_adu2_per_s2=dark_var,
        flats=master_flats, flat_rel_var=flat_rel_var, bad_pixels=bpm, gain_e_per_adu=float(gain),
        read_noise_e=float(rn_e), noise_source=source,
        saturate_adu=float(min(saturate)) if saturate else ADC_MAX_ADU,
        trimsec=ref.trimsec, biassec=ref.biassec, raw_shape=ref.raw_shape, inputs=inputs,
        photon_transfer=ptc, n_bias=len(biases), n_dark=len(darks), n_flat=n_flat)


def _photon_transfer(biases: Sequence[CalFrame], flats: Sequence[CalFrame],
                     exclude: NDArray[np.bool_]) -> PhotonTransfer | None:
    bias_pairs = _pairs([f.data_adu for f in biases])
    groups: dict[tuple[str, float], list[CalFrame]] = {}
    for f in flats:
        groups.setdefault((f.filter_name or "", round(_exposure(f), 3)), []).append(f)
    flat_pairs = [p for g in groups.values() for p in _pairs([f.data_adu for f in g])]
    if not bias_pairs or not flat_pairs:
        return None
    return photon_transfer(bias_pairs, flat_pairs, exclude=exclude)
