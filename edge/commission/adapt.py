"""The engine adapted to the instrument: fine-tuned on the fitted twin and on real detections
whose label is not in doubt, then its conformal set and the triage's operating point refit on
the instrument's own detections.

Labels not in doubt, from the commissioning frames alone (no catalog, no person):

- ``star``: unflagged, found at the same place (within 1.5 px after registration) in all but at
  most one of the other frames, S/N >= 5, and of the size of the frame's other persistent
  sources at that S/N (within 2.5 robust sigmas);
- ``galaxy``: as persistent, S/N >= 10, and larger (3 robust sigmas) than that size: what stays in
  every frame and is not a point source is, on the sky, a galaxy (a lensed arc too, but among
  thousands of detections there are few, and the injected ones teach that class on the same sky);
- ``cosmic_ray``: S/N >= 7, sharper than the persistent sources at its S/N, and found within
  3 px in no other frame (a moving asteroid is not sharp; a satellite trail is not this small).

Everything else (the faint, the flagged, the odd) stays unlabelled: the twin teaches the rest.
The conformal set is the anomaly scores of every detection of frames the fine-tuning never saw,
trimmed of its highest 0.1 % (a few real oddities among them must not widen what "ordinary"
means); the triage thresholds are set on the same detections: low confidence and high epistemic
uncertainty each at most REASON_SHARE of them, and unusual calls what alpha and those leave of
UNION_SHARE.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from edge import detect as detect_stage
from edge.commission.measure import size_locus
from edge.log import get_logger

log = get_logger(__name__)

#: the share of the highest calibration scores left out of the conformal set (presumed oddities)
CONFORMAL_TRIM = 0.001
#: each of the triage's own reasons (low confidence, high epistemic, an unusual call) sends at
#: most this share of the instrument's ordinary detections, with alpha and the audit on top
REASON_SHARE = 0.004
#: the engine's reasons together (unknown, uncertain, unusual) send at most this share of the
#: instrument's ordinary detections; "new" and the audit sample come on top (the bar is 3 % in all)
UNION_SHARE = 0.021
#: the node's defaults (edge.triage.TriagePolicy) are kept where the instrument does not need looser ones
DEFAULT_CONFIDENCE_MIN, DEFAULT_EPISTEMIC_MAX = 0.45, 0.05
#: persistent detections this much larger than the stellar locus, at this S/N or more, are galaxies
GALAXY_SIGMAS, GALAXY_SNR_MIN = 3.0, 10.0
#: a commissioned node never calls a detection fainter than this "new" (noise peaks are new too)
MIN_NEW_SNR = 10.0


@dataclass(frozen=True)
class FrameDetections:
    """One commissioning frame's detections and stamps, and the (dx, dy) that maps it onto the first
    frame's grid (``edge.commission.catalog.StackInfo.offsets_px``)."""

    name: str
    cands: detect_stage.Candidates
    stamps: NDArray[np.float32]
    offset_px: tuple[float, float]


@dataclass(frozen=True)
class RealLabels:
    """Stamps of real detections whose label is not in doubt."""

    stamps: NDArray[np.float32]
    names: NDArray[np.str_]
    frame: NDArray[np.int64]

    def counts(self) -> dict[str, int]:
        """Labelled stamps per class."""
        return {str(k): int(v) for k, v in zip(*np.unique(self.names, return_counts=True), strict=True)}


def label_real(frames: Sequence[FrameDetections]) -> RealLabels:
    """The labels not in doubt of every frame's detections (see the module docstring)."""
    trees = [cKDTree(np.c_[f.cands.x + f.offset_px[0], f.cands.y + f.offset_px[1]]) if len(f.cands) else None
             for f in frames]
    stamps, names, index = [], [], []
    for k, f in enumerate(frames):
        c = f.cands
        if len(c) == 0:
            continue
        pts = np.c_[c.x + f.offset_px[0], c.y + f.offset_px[1]]
        near15 = np.zeros(len(c), np.int64)
        near3 = np.zeros(len(c), np.int64)
        for j, t in enumerate(trees):
            if j == k or t is None:
                continue
            d, _ = t.query(pts)
            near15 += d < 1.5
            near3 += d < 3.0
        others = sum(1 for j, t in enumerate(trees) if j != k and t is not None)
        snr = np.nan_to_num(np.asarray(c.snr, float))
        size = np.sqrt(np.clip(np.asarray(c.a_px, float) * np.asarray(c.b_px, float), 0, None))
        persistent = (np.asarray(c.flags) == 0) & (near15 >= max(1, others - 1))
        centre, spread = size_locus(snr, size, persistent)
        lab = np.full(len(c), "", object)
        lab[persistent & (snr >= 5) & (np.abs(size - centre) < 2.5 * spread)] = "star"
        lab[persistent & (snr >= GALAXY_SNR_MIN) & (size > centre + GALAXY_SIGMAS * spread)] = "galaxy"
        if others:
            lab[(near3 == 0) & (snr >= 7) & (size < centre - spread)] = "cosmic_ray"
        keep = lab != ""
        stamps.append(f.stamps[keep])
        names.append(lab[keep].astype(str))
        index.append(np.full(int(keep.sum()), k, np.int64))
    if not stamps:
        return RealLabels(np.zeros((0, 4, 32, 32), np.float32), np.zeros(0, str), np.zeros(0, np.int64))
    return RealLabels(np.concatenate(stamps), np.concatenate(names), np.concatenate(index))


def adapt_engine(base_dir: Path, instrument: dict[str, Any], labels: RealLabels, out_dir: Path, *,
                 version: str, replay_frames: int = 48, epochs: int = 3, learning_rate: float = 5e-4,
                 seed: int = 20261204, threads: int = 2, command: str = "astro-edge commission",
                 progress: Callable[[str, int, int], None] | None = None) -> Any:
    """Fine-tune the engine in ``base_dir`` on the fitted twin (``instrument``, TrainSettings.instrument)
    and on ``labels``; write a verified engine to ``out_dir`` and return its manifest."""
    from engines.training.finetune import finetune_model, trainable
    from engines.training.train import (
        WEIGHTS_FILE,
        load_weights,
        make_twin_sets,
        package_engine,
        provenance,
        set_sizes,
    )

    old, base = trainable(base_dir)
    replay = dataclasses.replace(base, seed=seed, n_train_frames=replay_frames,
                                 n_calib_frames=max(8, replay_frames // 3), n_eval_frames=max(8, replay_frames // 3),
                                 instrument=instrument, threads=threads)
    sets = make_twin_sets(replay, progress=progress)
    model, settings = finetune_model(replay, load_weights(old.path(WEIGHTS_FILE)), sets, labels.stamps, labels.names,
                                     seed=seed, epochs=epochs, learning_rate=learning_rate, threads=threads,
                                     progress=progress)
    training = {**provenance(command, seed),
                "commissioned_from": {"name": old.name, "version": old.version,
                                      "engine_id": old.engine_id(WEIGHTS_FILE), "real_labels": labels.counts(),
                                      "replay_frames": replay_frames, "epochs": epochs},
                "twin_config": sets.configs, "dataset_sizes": set_sizes(sets, settings.classes)}
    manifest = package_engine(out_dir, model, settings, sets, name=old.name, version=version, training=training,
                              progress=progress, stage="exporting and evaluating the adapted engine")
    log.info("commission.engine_adapted", out=str(out_dir), version=version, real_labels=labels.counts())
    return manifest


@dataclass(frozen=True)
class OperatingPoint:
    """The refit conformal set and triage thresholds, and what they send of the calibration frames."""

    conformal_scores: NDArray[np.float64]
    confidence_min: float
    epistemic_max_nats: float
    unusual_confidence_min: float
    min_new_snr: float
    shares: dict[str, float]          # of the calibration detections, each reason's share
    n_detections: int
    trimmed: int


def operating_point(logits: NDArray[Any], embedding: NDArray[Any], constants: Any, classes: Sequence[str],
                    classes_of_interest: Sequence[str], alpha: float = 0.01) -> OperatingPoint:
    """Refit the conformal set on the instrument's own detections (trimmed) and choose the
    thresholds: low confidence and high epistemic uncertainty each REASON_SHARE of them, unusual
    calls what is left of UNION_SHARE."""
    from engines.scoring import conformal_pvalues, score

    s = score(logits, embedding, constants)
    n = len(s.anomaly_score)
    order = np.sort(np.asarray(s.anomaly_score, float))
    trimmed = int(np.floor(CONFORMAL_TRIM * n))
    conformal = order[: n - trimmed] if trimmed else order
    conf = np.asarray(s.confidence, float)
    epi = np.asarray(s.epistemic, float)
    confidence_min = min(DEFAULT_CONFIDENCE_MIN, float(np.quantile(conf, REASON_SHARE)))
    epistemic_max = max(DEFAULT_EPISTEMIC_MAX, float(np.quantile(epi, 1.0 - REASON_SHARE)))
    labels = np.asarray(classes, dtype=object)[s.label_index]
    interest = np.isin(labels, np.asarray(list(classes_of_interest), dtype=object))
    p = conformal_pvalues(s.anomaly_score, conformal)
    others = (p <= alpha) | (conf < confidence_min) | (epi > epistemic_max)
    unusual_min = _unusual_threshold(conf, interest, others, n)
    shares = {
        "unknown": float(np.mean(p <= alpha)),
        "uncertain": float(np.mean((conf < confidence_min) | (epi > epistemic_max))),
        "unusual": float(np.mean(interest & (conf >= unusual_min))),
        "any": float(np.mean(others | (interest & (conf >= unusual_min)))),
    }
    return OperatingPoint(conformal_scores=conformal, confidence_min=confidence_min, epistemic_max_nats=epistemic_max,
                          unusual_confidence_min=unusual_min, min_new_snr=MIN_NEW_SNR, shares=shares,
                          n_detections=n, trimmed=trimmed)


def _unusual_threshold(conf: NDArray[np.float64], interest: NDArray[np.bool_], others: NDArray[np.bool_],
                       n: int) -> float:
    """The lowest confidence for an unusual call that keeps the detections sent for any of the
    engine's reasons (unknown, uncertain, unusual) to UNION_SHARE, and at least REASON_SHARE of
    them to unusual calls: what alpha and the uncertain thresholds leave of the budget goes to
    the known-unusual classes, which the twin taught and the instrument's sky confirmed."""
    calls = np.sort(conf[interest & ~others])[::-1]
    room = max(int(np.floor(UNION_SHARE * n)) - int(others.sum()), int(np.floor(REASON_SHARE * n)))
    return 0.0 if calls.size <= room else float(min(1.0, np.nextafter(calls[room], 2.0)))


def write_recalibrated(manifest: Any, point: OperatingPoint, directory: Path) -> Any:
    """The engine's manifest with the instrument's conformal set (the model files are unchanged)."""
    from engines.manifest import write_manifest

    constants = dataclasses.replace(manifest.scoring, conformal_scores=point.conformal_scores)
    evaluation = {**manifest.evaluation,
                  "commissioning": {"conformal_from": "the instrument's own detections",
                                    "n_detections": point.n_detections, "trimmed": point.trimmed,
                                    "shares": point.shares}}
    updated = dataclasses.replace(manifest, scoring=constants, evaluation=evaluation)
    write_manifest(updated, directory)
    return updated
