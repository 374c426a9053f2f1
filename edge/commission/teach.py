"""Unusual objects taught on the instrument's own sky: twin-rendered objects of every known-unusual
family injected into calibrated commissioning frames, found by the node's detector, and labelled
with their family.

Real detections teach the engine only ordinary classes; if only the twin showed it the unusual
ones, the network could tell them apart by the texture of the background (twin sky against real
sky) and call anything on real sky ordinary. Injected into real frames, the unusual families sit on
the same sky, noise and neighbours as the stars do. The objects are drawn and rendered by
:mod:`edge.commission.inject` (the frame's own PSF; S/N log-uniform in [20, 200], a ghost never
fainter than the twin draws one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge import detect as detect_stage
from edge.commission.adapt import RealLabels
from edge.commission.inject import (
    InjectSettings,
    draft,
    family_floor_snr,
    flux_for_snr,
    measure_for_injection,
    place,
)
from edge.commission.inject_shapes import render
from edge.errors import DetectionError
from edge.log import get_logger

log = get_logger(__name__)

#: the families taught on real sky (the twin's known-unusual classes, and satellite trails)
TAUGHT = ("lens_arc", "comet", "lobster_psf", "ghost", "streak")
#: copies of each injected example in the fine-tuning set: a few hundred of them among ten
#: thousand twin and real stamps are otherwise under-fitted (measured: top-1 0.4-0.8 on them)
TEACH_COPIES = 3


@dataclass(frozen=True, eq=False)
class _Calibrated:
    """The part of a calibration.CalibratedFrame that injection reads."""

    image_e: NDArray[np.float32]
    variance_e2: NDArray[np.float32]
    mask: NDArray[np.uint8]

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.image_e.shape[0]), int(self.image_e.shape[1]))


def injected_examples(frames: Sequence[tuple[NDArray[Any], NDArray[Any], NDArray[Any]]], recipe: str,
                      detect_settings: detect_stage.DetectSettings, *, rounds: int = 4, per_frame: int = 25,
                      seed: int = 20261204, families: tuple[str, ...] = TAUGHT) -> RealLabels:
    """Stamps of injected objects as the node cuts them, labelled with their family, from ``rounds``
    injections into each (image_e, variance_e2, mask) frame; an object the detector misses gives none."""
    from engines.stamps import cut_for

    settings = InjectSettings(families=families, per_frame=per_frame, detect=detect_settings)
    rng = np.random.default_rng(seed)
    stamps, names, frame_of = [], [], []
    for k, (image, var, mask) in enumerate(frames):
        base = _Calibrated(np.asarray(image, np.float32), np.asarray(var, np.float32), np.asarray(mask, np.uint8))
        try:
            measured = measure_for_injection(base, settings, where=f"commissioning frame {k}")  # type: ignore[arg-type]
        except DetectionError as exc:
            log.warning("commission.teach_skipped", frame=k, reason=str(exc))
            continue
        for _ in range(rounds):
            fams = [families[(int(rng.integers(len(families))) + i) % len(families)] for i in range(per_frame)]
            placed = place(draft(fams, measured.psf, base.shape, rng), measured, settings, rng)
            img, v = base.image_e.copy(), base.variance_e2.copy()
            truth = []
            for d, x, y in placed:
                obj = render(d, x, y, measured.psf)
                rows = slice(obj.iy0, obj.iy0 + obj.stamp.shape[0])
                cols = slice(obj.ix0, obj.ix0 + obj.stamp.shape[1])
                vv = np.asarray(v[rows, cols], np.float64)
                ok = np.isfinite(vv) & (vv > 0) & (base.mask[rows, cols] == 0)
                vv = np.where(ok, vv, 1.0)
                lo = max(settings.snr_min, family_floor_snr(d, obj.stamp, vv, 1.0, ok))
                snr = float(np.exp(rng.uniform(np.log(lo), np.log(max(settings.snr_max, lo)))))
                mean = flux_for_snr(snr, obj.stamp, vv, 1.0, ok) * obj.stamp.astype(np.float64)
                img[rows, cols] += rng.poisson(np.maximum(mean, 0.0)).astype(np.float32)
                v[rows, cols] += np.maximum(mean, 0.0).astype(np.float32)
                truth.append((d.family, x, y, max(2.0, 0.5 * d.size_px)))
            bkg = detect_stage.subtract_background(img, base.mask, detect_settings)
            cands = detect_stage.detect(bkg.sub_e, v, base.mask, detect_settings)
            if len(cands) == 0:
                continue
            pick, labels = [], []
            for family, x, y, radius in truth:
                d2 = np.hypot(cands.x - x, cands.y - y)
                i = int(np.argmin(d2))
                if d2[i] <= radius:
                    pick.append(i)
                    labels.append(family)
            if pick:
                idx = np.asarray(pick)
                stamps.append(cut_for(recipe, bkg.sub_e, v, base.mask, cands.x[idx], cands.y[idx]))
                names.append(np.asarray(labels))
                frame_of.append(np.full(len(pick), k, np.int64))
    if not stamps:
        return RealLabels(np.zeros((0, 4, 32, 32), np.float32), np.zeros(0, str), np.zeros(0, np.int64))
    out = RealLabels(np.concatenate(stamps), np.concatenate(names).astype(str), np.concatenate(frame_of))
    log.info("commission.taught_on_sky", examples=out.counts())
    return out


def repeat(a: RealLabels, copies: int) -> RealLabels:
    """Each labelled stamp ``copies`` times."""
    return RealLabels(np.repeat(a.stamps, copies, axis=0), np.repeat(a.names, copies), np.repeat(a.frame, copies))


#: the most copies of each real galaxy that :func:`balance_galaxies` makes
MAX_GALAXY_COPIES = 5


def balance_galaxies(real: RealLabels, taught: RealLabels) -> RealLabels:
    """``real`` with each galaxy repeated until the galaxies are about as many as the examples of one
    taught family (at most MAX_GALAXY_COPIES times).

    On real sky the network sees extended shapes on both sides: the persistent galaxies of the field
    and the injected unusual objects. Measured on Lowell: 274 galaxy stamps against 580-730 of each
    family. Outnumbered, a real galaxy was called an unusual class at 0.5-0.9, and the triage's
    budget then raised the unusual threshold above the fainter injected objects.
    """
    families = taught.counts()
    galaxy = real.names == "galaxy"
    if not families or not galaxy.any():
        return real
    copies = int(np.clip(round(np.mean(list(families.values())) / int(galaxy.sum())), 1, MAX_GALAXY_COPIES))
    extra = np.repeat(np.flatnonzero(galaxy), copies - 1)
    return RealLabels(np.concatenate([real.stamps, real.stamps[extra]]),
                      np.concatenate([real.names, real.names[extra]]).astype(str),
                      np.concatenate([real.frame, real.frame[extra]]))


def merge(a: RealLabels, b: RealLabels) -> RealLabels:
    """One set of labelled stamps from two."""
    return RealLabels(np.concatenate([a.stamps, b.stamps]), np.concatenate([a.names, b.names]).astype(str),
                      np.concatenate([a.frame, b.frame]))
