"""Training, scoring fit and evaluation of the stamp ensemble, from twin frames to a scored model.

The pieces, each usable alone (tests run them small):

- :func:`fit_model`: the torch loop (cross-entropy per member with an online Poisson bootstrap,
  plus outlier exposure pushing generic multi-blob stamps, and optionally deformed stars and
  galaxies (:mod:`engines.training.deform`), toward a uniform prediction);
- :func:`fit_scoring`: temperature, class Gaussians, entropy weight (measured on held-out stamps
  and outlier-exposure stamps, never on an anomaly family) and the conformal set;
- :func:`evaluate`: the figures of the issue's bars on a labelled set (accuracy and ECE at
  S/N >= 10, per-family AUROC, flagged fraction at alpha, recall at S/N >= 20).

Seeds: training frames use ``seed``, the held-out calibration frames ``seed + 1``, evaluation
frames ``seed + 2`` (never seen by training or by the scoring fit), outlier exposure
``seed + 3`` (their field of stars and galaxies ``seed + 6``), and deformed-object outliers
(``oe_deformed_share`` > 0) ``seed + 4`` (training) and ``seed + 5`` (the held-out ones that pick
the entropy weight). torch is imported here; the node
never imports this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from engines.scoring import (
    ScoringConstants,
    auroc,
    expected_calibration_error,
    fit_class_gaussians,
    fit_temperature,
    score,
)
from engines.training.dataset import (
    CLASSES,
    NEAR_PREFIX,
    UNKNOWN,
    UNUSUAL_CLASSES,
    StampSet,
    class_labels,
)
from engines.training.model import ModelSpec

if TYPE_CHECKING:
    from twin.instrument import Progress

__all__ = [
    "ENTROPY_WEIGHTS",
    "TrainSettings",
    "evaluate",
    "evaluate_precisions",
    "evaluation_set",
    "fit_model",
    "fit_scoring",
    "per_family_counts",
    "predict",
    "training_twin_config",
]

#: candidate entropy weights of the anomaly score; the fit keeps the best on held-out data
ENTROPY_WEIGHTS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
#: candidate weights of the "not ordinary" term (engines with unusual classes); picked with the entropy weight
UNUSUAL_WEIGHTS: tuple[float, ...] = (0.0, 1.0, 3.0, 10.0)
ALPHA = 0.01
#: the second false-flag level the evaluation reports (the conformal guarantee holds at every alpha)
ALPHA_WIDE = 0.05
#: the most training copies a stamp of a sparse frame gets (density_repeats)
MAX_DENSITY_REPEATS = 8
#: the joint false-flag budget: ordinary candidates sent as unusual or unknown
BUDGET = 0.01
#: the alphas the budget's operating point is chosen from (largest that keeps the budget on held-out frames)
BUDGET_ALPHAS = (0.01, 0.005, 0.003, 0.002, 0.001)
#: the least probability of an unusual call that the budget's operating point sends (0: every call);
#: chosen with the alpha (bench/budget_threshold.py measures the trade)
BUDGET_UNUSUAL_MIN = (0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9)
#: what the unknown score's distance is measured to: the ordinary classes' Gaussians, or every class's
UNKNOWN_DISTANCES = ("ordinary", "all")
#: held-out outlier-exposure stamps that pick the entropy weight
OE_VALIDATION_STAMPS = 1000


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides a trained engine; recorded in its manifest."""

    seed: int = 20261128
    frame_size_px: int = 512
    n_train_frames: int = 240
    n_calib_frames: int = 80
    n_eval_frames: int = 180
    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    oe_weight: float = 0.5
    #: outlier-exposure stamps per training stamp
    oe_fraction: float = 0.25
    #: share of the outlier-exposure stamps made by deforming twin stars and galaxies
    #: (engines.training.deform); the rest are the generic blob shapes of engines.training.dataset.outlier_stamps
    oe_deformed_share: float = 0.0
    #: the blob outliers sit in a field of stars and galaxies at ``densities`` (context-view
    #: engines; engines.training.dataset.outlier_stamps), not on empty sky
    oe_in_field: bool = True
    threads: int = 2
    #: every n-th training and calibration frame is calibrated without the bad-pixel map, so that
    #: hot pixels are seen (evaluation frames are always calibrated as the node does)
    unmasked_every: int = 6
    #: training copies of each streak and bogus stamp (they are rare: about one streak a frame)
    rare_repeats: int = 6
    #: the twin's unusual families taught as classes (after CLASSES); training and calibration
    #: frames render these families and no other
    unusual: tuple[str, ...] = UNUSUAL_CLASSES
    #: objects of each unusual family per 512 x 512 px of training, calibration and evaluation frame
    anomalies_per_frame: int = 6
    #: the unusual objects of a frame scale with its star density (at least one of each family):
    #: without it a sparse field holds about as many of them as stars, and the network learns that
    #: an isolated object with an empty context is probably unusual
    anomalies_follow_density: bool = True
    #: star and galaxy densities of the training, calibration and evaluation frames, relative to the training mix,
    #: in equal shares of the frames: the context view must see sparse fields as well as crowded ones
    densities: tuple[float, ...] = (1.0, 1.0, 0.3, 0.05)
    #: the unknown score's distance: to the nearest ordinary class ("ordinary") or any class ("all")
    unknown_distance: str = "ordinary"
    #: classes learned from labelled stamps alone (engines finetune), after the unusual ones
    labelled: tuple[str, ...] = ()
    #: a fitted instrument (astro-edge commission): TwinConfig fields of its optics, sky and
    #: exposure, and under "detector" the DetectorModel fields of its noise, that replace the
    #: training mix's (densities and the rates of rare classes stay the mix's); None: the default twin
    instrument: dict[str, Any] | None = None
    spec: ModelSpec = field(default_factory=lambda: ModelSpec(n_classes=len(CLASSES) + len(UNUSUAL_CLASSES),
                                                              widths=(24, 48, 96), views=2))

    def __post_init__(self) -> None:
        object.__setattr__(self, "unusual", tuple(self.unusual))
        object.__setattr__(self, "labelled", tuple(self.labelled))
        object.__setattr__(self, "densities", tuple(float(d) for d in self.densities))
        if not self.densities or min(self.densities) <= 0:
            raise ValueError(f"densities must be positive, got {self.densities}")
        wrong = [f for f in self.unusual if f not in UNUSUAL_CLASSES]
        if wrong or len(set(self.unusual)) != len(self.unusual):
            raise ValueError(f"unusual classes must be distinct names of {UNUSUAL_CLASSES}, got {self.unusual}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names must be distinct, got {self.classes}")
        if self.unknown_distance not in UNKNOWN_DISTANCES:
            raise ValueError(f"unknown_distance must be one of {UNKNOWN_DISTANCES}, got {self.unknown_distance!r}")

    @property
    def classes(self) -> tuple[str, ...]:
        """The engine's classes: the ordinary ones, the unusual families it is taught, then the
        classes learned from labels alone."""
        return CLASSES + self.unusual + self.labelled

    @property
    def recipe(self) -> str:
        """The stamp recipe (engines.stamps.RECIPES) the model reads."""
        from engines.stamps import CONTEXT_NORMALISATION, NORMALISATION

        return CONTEXT_NORMALISATION if self.spec.views == 2 else NORMALISATION

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["unusual"] = list(self.unusual)
        out["labelled"] = list(self.labelled)
        out["densities"] = list(self.densities)
        out["spec"] = self.spec.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSettings:
        values = dict(data)
        values["spec"] = ModelSpec.from_dict(values["spec"])
        # settings of engines made before unusual classes existed
        values.setdefault("unusual", ())
        values.setdefault("anomalies_per_frame", 0)
        values.setdefault("unknown_distance", "all")
        values.setdefault("oe_in_field", False)
        values.setdefault("anomalies_follow_density", False)
        values["unusual"] = tuple(values["unusual"])
        values["labelled"] = tuple(values.get("labelled", ()))
        values.setdefault("instrument", None)
        values["densities"] = tuple(values.get("densities", (1.0,)))
        return cls(**values)


#: TwinConfig fields that the training mix sets itself, whatever the instrument
_MIX_FIELDS = ("n_stars", "n_galaxies", "cosmic_ray_rate_per_s", "streak_probability", "anomalies",
               "n_anomalies_per_family", "cluster_n_stars")


def training_twin_config(size_px: int, anomalies: tuple[str, ...] = (), per_frame: int = 0,
                         density: float = 1.0, *, anomalies_follow_density: bool = False,
                         instrument: dict[str, Any] | None = None) -> Any:
    """The twin configuration of the training mix: dense fields with every ordinary class common.

    Cosmic rays, streaks and hot pixels are far more frequent than on the default twin so that
    a few tens of frames hold hundreds of each; ``anomalies`` switches families on, with
    ``per_frame`` objects of each per 512 x 512 px (0: the evaluation's 12 per megapixel, at least 4);
    ``density`` scales the stars and galaxies (1: 1500 stars and 600 galaxies per megapixel) and,
    with ``anomalies_follow_density``, the ``per_frame`` objects of each family too (at least one),
    so that a sparse field does not hold as many unusual objects as stars. ``instrument``
    (:attr:`TrainSettings.instrument`) puts a fitted camera's optics, sky and noise in place of the
    default twin's.
    """
    from twin import DetectorModel, TwinConfig

    area_mpx = size_px * size_px / 1e6
    # the mix owns its counts and rates (class balance); a fitted instrument brings the rest
    fitted = {k: v for k, v in (instrument or {}).items() if k not in _MIX_FIELDS}
    det = DetectorModel(**{"hot_pixel_fraction": 3e-4, "seed": 7, **fitted.pop("detector", {}),
                           "shape_px": (size_px, size_px)})
    return TwinConfig(detector=det, **fitted, n_stars=max(1, int(1500 * density * area_mpx)),
                      n_galaxies=max(1, int(600 * density * area_mpx)),
                      cosmic_ray_rate_per_s=4.0, streak_probability=1.0,
                      anomalies=anomalies,
                      n_anomalies_per_family=(max(1, int(round(per_frame * size_px * size_px / 512 ** 2
                                                                   * (density if anomalies_follow_density else 1.0))))
                                              if per_frame else int(max(4, 12 * area_mpx))))


def _dihedral(batch: Any, code: int) -> Any:
    """One of the eight flips/rotations of a (B, C, H, W) tensor: the classes do not care."""
    import torch

    if code & 4:
        batch = torch.flip(batch, dims=(3,))
    return torch.rot90(batch, k=code & 3, dims=(2, 3))


def fit_model(stamps: NDArray[np.float32], labels: NDArray[np.int64], oe_stamps: NDArray[np.float32],
              settings: TrainSettings, init_state: dict[str, Any] | None = None,
              on_epoch: Callable[..., None] | None = None, progress: Progress | None = None) -> Any:
    """Train a :class:`~engines.training.model.StampEnsemble` and return it in eval mode.

    Each member's cross-entropy is weighted per sample by its own Poisson(1) draw (an online
    bootstrap) so that members disagree where data are thin. Outlier exposure adds
    ``oe_weight`` times the cross-entropy to the uniform distribution on ``oe_stamps``.
    ``on_epoch(epoch=, epochs=, loss=)`` hears of each epoch's mean loss; ``progress`` of each
    optimiser step (stage ``"training"``, epochs times steps per epoch in all). Both only observe.
    """
    import torch
    from torch.nn import functional as F  # noqa: N812 - torch's own convention

    from engines.training.model import StampEnsemble

    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(settings.seed)
    model = StampEnsemble(settings.spec)
    if init_state is not None:
        model.load_state_dict(init_state)
    x_all = torch.from_numpy(np.ascontiguousarray(stamps, np.float32))
    y_all = torch.from_numpy(np.asarray(labels, np.int64))
    oe_all = torch.from_numpy(np.ascontiguousarray(oe_stamps, np.float32))
    n, k = len(y_all), settings.spec.n_members
    steps_per_epoch = max(1, n // settings.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                            weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.learning_rate,
                                                total_steps=settings.epochs * steps_per_epoch)
    oe_batch = max(1, int(round(settings.batch_size * settings.oe_fraction))) if len(oe_all) else 0
    n_steps = settings.epochs * steps_per_epoch
    if progress is not None:
        progress("training", 0, n_steps)
    model.train()
    for epoch in range(settings.epochs):
        order = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            xb, yb = x_all[idx], y_all[idx]
            parts = [xb]
            if oe_batch:
                parts.append(oe_all[torch.from_numpy(rng.integers(0, len(oe_all), oe_batch))])
            batch = _dihedral(torch.cat(parts), int(rng.integers(0, 8)))
            logits, _ = model(batch)
            known = logits[:len(yb)]                                        # (B, K, C)
            weights = torch.from_numpy(rng.poisson(1.0, (len(yb), k)).astype(np.float32))
            ce = F.cross_entropy(known.reshape(-1, known.shape[-1]), yb.repeat_interleave(k),
                                 reduction="none").reshape(len(yb), k)
            loss = (ce * weights).sum() / weights.sum().clamp(min=1.0)
            if oe_batch:
                # cross-entropy to the uniform distribution: mean over classes of -log p
                loss = loss + settings.oe_weight * (-F.log_softmax(logits[len(yb):], dim=-1).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
            if progress is not None:
                progress("training", 1, n_steps)
        if on_epoch is not None:
            on_epoch(epoch=epoch + 1, epochs=settings.epochs, loss=total / steps_per_epoch)
    model.eval()
    return model


def predict(model: Any, stamps: NDArray[np.float32], batch: int = 2048) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Torch forward pass in eval mode: ``(logits (N, K, C), embedding (N, D))``."""
    import torch

    model.eval()
    logits, embedding = [], []
    with torch.no_grad():
        for i in range(0, len(stamps), batch):
            lo, em = model(torch.from_numpy(np.ascontiguousarray(stamps[i:i + batch], np.float32)))
            logits.append(lo.numpy())
            embedding.append(em.numpy())
    return np.concatenate(logits), np.concatenate(embedding)


def _recall_at(neg: NDArray[np.float64], pos: NDArray[np.float64], fpr: float) -> float:
    threshold = np.quantile(neg, 1.0 - fpr)
    return float((pos > threshold).mean())


def fit_scoring(train_outputs: tuple[NDArray[Any], NDArray[Any]], train_labels: NDArray[np.int64],
                calib_outputs: tuple[NDArray[Any], NDArray[Any]], calib_labels: NDArray[np.int64],
                oe_outputs: tuple[NDArray[Any], NDArray[Any]], seed: int, *, n_classes: int = len(CLASSES),
                unknown_distance: str = "all",
                conformal_pool: NDArray[np.bool_] | None = None) -> tuple[ScoringConstants, dict[str, Any]]:
    """Fit the scoring constants; returns them and the figures of the measured choices.

    Class Gaussians come from the training embeddings of all ``n_classes`` classes; the unknown
    score's distance is to the nearest ordinary one (``unknown_distance="ordinary"``) or to any.
    The held-out calibration set is split in two halves: the first fits the temperature (every
    class) and picks the entropy weight (highest recall at a 1 % false-flag rate of
    outlier-exposure stamps against ordinary ones, AUROC breaking ties); the second gives the
    conformal scores from its ordinary candidates (and of those, only where ``conformal_pool`` is
    true: frames calibrated as the node calibrates), so the p-values are honest for ordinary detections.
    """
    rng = np.random.default_rng(seed)
    means, precision = fit_class_gaussians(train_outputs[1], train_labels, n_classes)
    distance_classes = len(CLASSES) if unknown_distance == "ordinary" and n_classes > len(CLASSES) else None
    order = rng.permutation(len(calib_labels))
    half_a, half_b = order[: len(order) // 2], order[len(order) // 2:]
    temperature = fit_temperature(calib_outputs[0][half_a], calib_labels[half_a])
    ordinary_a = half_a[calib_labels[half_a] < len(CLASSES)]
    pool = np.ones(len(calib_labels), bool) if conformal_pool is None else conformal_pool
    ordinary_b = half_b[(calib_labels[half_b] < len(CLASSES)) & pool[half_b]]
    if ordinary_b.size == 0:
        # so few calibration frames that all were calibrated without the bad-pixel map (tiny test sets)
        ordinary_b = half_b[calib_labels[half_b] < len(CLASSES)]
    choice: dict[str, Any] = {"weights": {}}
    # per unusual weight, the entropy weight with the best (recall, AUROC) on the outlier stamps
    best: dict[float, tuple[float, float, float]] = {}
    unusual_weights = UNUSUAL_WEIGHTS if distance_classes is not None and n_classes > len(CLASSES) else (0.0,)
    for wu in unusual_weights:
        for w in ENTROPY_WEIGHTS:
            probe = ScoringConstants(temperature, means, precision, w, np.zeros(1), distance_classes, wu)
            neg = score(calib_outputs[0][ordinary_a], calib_outputs[1][ordinary_a], probe).anomaly_score
            pos = score(oe_outputs[0], oe_outputs[1], probe).anomaly_score
            recall, area = _recall_at(neg, pos, ALPHA), auroc(neg, pos)
            choice["weights"][f"entropy {w}, unusual {wu}"] = {"oe_recall_at_1pct": recall, "oe_auroc": area}
            if wu not in best or (recall, area) > best[wu][1:]:
                best[wu] = (w, recall, area)
    # generic blobs are easy: many weights catch them all, so they cannot rank the "not ordinary"
    # term the taught unusual classes give; take the largest unusual weight that still catches the
    # blobs within 0.01 of the best recall
    top = max(r for _, r, _ in best.values())
    unusual_weight = max(wu for wu, (_, r, _) in best.items() if r >= top - 0.01)
    weight = best[unusual_weight][0]
    probe = ScoringConstants(temperature, means, precision, weight, np.zeros(1), distance_classes, unusual_weight)
    conformal = np.sort(score(calib_outputs[0][ordinary_b], calib_outputs[1][ordinary_b], probe).anomaly_score)
    constants = ScoringConstants(temperature, means, precision, weight, conformal, distance_classes, unusual_weight)
    # the budget's operating point, on the first half (independent of the conformal set): among the
    # alphas and least unusual-call probabilities whose joint false flags (unusual call or unknown)
    # on ordinary candidates stay within 90 % of the budget, the one that sends most of the taught
    # unusual classes' candidates, each class weighing the same (a larger alpha, then a lower
    # threshold, on ties)
    held = score(calib_outputs[0][half_a], calib_outputs[1][half_a], constants)
    labels_held = calib_labels[half_a]
    ordinary_held = labels_held < len(CLASSES)
    taught = [c for c in range(len(CLASSES), n_classes) if (labels_held == c).any()]
    called = held.label_index >= len(CLASSES)
    joint, sent = {}, {}
    for a in BUDGET_ALPHAS:
        for tau in BUDGET_UNUSUAL_MIN:
            flagged = (called & (held.confidence >= tau)) | (held.anomaly_pvalue <= a)
            joint[(a, tau)] = float(flagged[ordinary_held].mean())
            sent[(a, tau)] = float(np.mean([flagged[labels_held == c].mean() for c in taught])) if taught else 0.0
    fits = [k for k in joint if joint[k] <= 0.9 * BUDGET]
    point = (max(fits, key=lambda k: (sent[k], k[0], -k[1])) if fits
             else (min(BUDGET_ALPHAS), max(BUDGET_UNUSUAL_MIN)))
    choice.update(temperature=temperature, entropy_weight=weight, unusual_weight=unusual_weight,
                  n_conformal=int(conformal.size),
                  unknown_distance=unknown_distance, budget=BUDGET,
                  budget_alpha=point[0], budget_unusual_min=point[1],
                  budget_joint_heldout={f"{a} {tau}": v for (a, tau), v in joint.items()},
                  budget_sent_heldout={f"{a} {tau}": v for (a, tau), v in sent.items()})
    return constants, choice


def _wilson_low(hits: int, n: int, z: float = 1.959964) -> float | None:
    """The lower end of the 95 % Wilson score interval of a proportion hits / n."""
    if n == 0:
        return None
    p = hits / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(min(1.0, max(0.0, (centre - spread) / (1 + z * z / n))))


def _recall(hit: NDArray[np.bool_]) -> dict[str, Any]:
    n, k = int(hit.size), int(hit.sum())
    return {"n": n, "recall": k / n if n else None, "wilson_low": _wilson_low(k, n)}


def evaluate(outputs: tuple[NDArray[Any], NDArray[Any]], data: StampSet, constants: ScoringConstants,
             alpha: float = ALPHA, classes: tuple[str, ...] = CLASSES,
             budget_alpha: float | None = None, budget_unusual_min: float = 0.0) -> dict[str, Any]:
    """The issue's figures on a labelled set (ordinary classes, unusual classes, anomaly families).

    ``data.labels`` are the plain labels (ordinary index or UNKNOWN); ``classes`` are the engine's.
    A detection is *flagged* when the engine calls it one of its unusual classes (triage's
    ``unusual``) or its p-value is at most ``alpha`` (``unknown``); ordinary candidates flagged
    are the false flags of the joint budget. With ``budget_alpha`` and ``budget_unusual_min`` (the
    operating point :func:`fit_scoring` chose for the joint budget: unknown at that alpha, unusual
    calls of at least that probability) the same figures are under ``budget``.
    """
    s = score(outputs[0], outputs[1], constants)
    n_ord = len(CLASSES)
    ordinary = (data.labels >= 0) & (data.labels < n_ord)
    bright = ordinary & (data.snr >= 10.0)
    as_unusual = s.label_index >= n_ord
    unknown = s.anomaly_pvalue <= alpha
    flagged = as_unusual | unknown
    target = class_labels(data, classes)
    taught = target >= 0
    figures: dict[str, Any] = {
        "classes": list(classes),
        "n_known": int(ordinary.sum()),
        "n_known_snr10": int(bright.sum()),
        "accuracy_snr10": float((s.label_index[bright] == data.labels[bright]).mean()),
        "ece_snr10": expected_calibration_error(s.probs[bright], data.labels[bright]),
        "accuracy_all": float((s.label_index[ordinary] == data.labels[ordinary]).mean()),
        "ece_all": expected_calibration_error(s.probs[ordinary], data.labels[ordinary]),
        "ece_taught_snr10": expected_calibration_error(s.probs[taught & (data.snr >= 10)],
                                                       target[taught & (data.snr >= 10)]),
        "flagged_ordinary_at_alpha": float(unknown[ordinary].mean()),
        "flagged_ordinary_at_alpha_wide": float((s.anomaly_pvalue[ordinary] <= ALPHA_WIDE).mean()),
        "alpha_wide": ALPHA_WIDE,
        "ordinary_as_unusual": float(as_unusual[ordinary].mean()),
        "ordinary_flagged_joint": float(flagged[ordinary].mean()),
        "alpha": alpha,
        "per_class": {},
        "families": {},
    }
    for c, name in enumerate(CLASSES):
        sel = bright & (data.labels == c)
        figures["per_class"][name] = {
            "n_snr10": int(sel.sum()),
            "recall_snr10": float((s.label_index[sel] == c).mean()) if sel.any() else None,
        }
    neg = s.anomaly_score[ordinary]
    budget: dict[str, Any] = {"families": {}}
    budget_flagged = np.zeros(len(s.probs), bool)
    if budget_alpha is not None:
        budget_flagged = (as_unusual & (s.confidence >= budget_unusual_min)) | (s.anomaly_pvalue <= budget_alpha)
        budget.update(alpha=budget_alpha, unusual_min=budget_unusual_min,
                      ordinary_flagged=float(budget_flagged[ordinary].mean()))
        figures["budget"] = budget
    near = np.char.startswith(data.family.astype(str), NEAR_PREFIX)
    figures["near_anomaly"] = {"n": int(near.sum()),
                               "flagged_at_alpha": float(flagged[near].mean()) if near.any() else None}
    for fam in sorted(set(data.family[(data.labels == UNKNOWN) & ~near].tolist())):
        sel = data.family == fam
        strong = sel & (data.snr >= 20.0)
        own = classes.index(fam) if fam in classes else None
        if budget_alpha is not None:
            budget["families"][fam] = _recall(budget_flagged[strong])
        figures["families"][fam] = {
            "n": int(sel.sum()),
            "n_snr20": int(strong.sum()),
            "taught": own is not None,
            "auroc": auroc(neg, s.anomaly_score[sel]),
            "recall_snr20_at_alpha": float(unknown[strong].mean()) if strong.any() else None,
            "unknown_snr20": _recall(unknown[strong]),
            "own_class_snr20": _recall(s.label_index[strong] == own) if own is not None else None,
            "flagged_snr20": _recall(flagged[strong]),
        }
    return figures


def confusion(predicted: NDArray[np.int64], labels: NDArray[np.int64], n: int = len(CLASSES)) -> list[list[int]]:
    """Confusion counts: rows are true classes, columns predicted, both in the engine's class order."""
    matrix = np.zeros((n, n), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix.tolist()


# --- the whole engine, from twin frames to a verified folder -------------------------------------

MODEL_FILES = {"fp32": ("model_fp32.onnx", "onnx"), "fp16": ("model_fp16.onnx", "onnx"),
               "int8": ("model_int8.onnx", "onnx-qdq")}
GOLDEN_FILE = "golden.npz"
WEIGHTS_FILE = "weights_fp32.npz"
CARD_FILE = "MODEL_CARD.md"
#: parity limits on the golden stamps, per precision, against the FP32 ONNX outputs
GOLDEN_TOLERANCE: dict[str, dict[str, float]] = {
    "fp32": {"logits_max_abs": 1e-3, "embedding_max_abs": 1e-3, "top1_agreement_min": 1.0},
    "fp16": {"logits_max_abs": 0.1, "embedding_max_abs": 0.1, "top1_agreement_min": 0.98},
    "int8": {"logits_max_abs": 1.5, "embedding_max_abs": 1.5, "top1_agreement_min": 0.95},
}
N_GOLDEN = 96
N_INT8_CALIBRATION = 2048


def _golden_indices(data: StampSet, rng: np.random.Generator) -> NDArray[np.int64]:
    """Golden stamps: a few of every class and family present, so parity covers all of them."""
    picks = []
    names = sorted(set(data.family.tolist()))
    per = max(1, N_GOLDEN // max(1, len(names)))
    for name in names:
        idx = np.flatnonzero(data.family == name)
        picks.append(rng.choice(idx, size=min(per, idx.size), replace=False))
    return np.sort(np.concatenate(picks))[:N_GOLDEN]


def compare_precisions(reference: dict[str, Any], outputs: tuple[NDArray[Any], NDArray[Any]],
                       ref_outputs: tuple[NDArray[Any], NDArray[Any]], data: StampSet,
                       constants: ScoringConstants, classes: tuple[str, ...] = CLASSES,
                       budget_alpha: float | None = None, budget_unusual_min: float = 0.0) -> dict[str, Any]:
    """Agreement of one precision with FP32 on an evaluation set: top-1, ECE and AUROC differences."""
    figures = evaluate(outputs, data, constants, classes=classes, budget_alpha=budget_alpha,
                       budget_unusual_min=budget_unusual_min)
    top = score(outputs[0], outputs[1], constants).label_index
    top_ref = score(ref_outputs[0], ref_outputs[1], constants).label_index
    figures["top1_agreement_vs_fp32"] = float((top == top_ref).mean())
    figures["ece_snr10_diff_vs_fp32"] = abs(figures["ece_snr10"] - reference["ece_snr10"])
    figures["auroc_max_diff_vs_fp32"] = max(
        (abs(f["auroc"] - reference["families"][k]["auroc"]) for k, f in figures["families"].items()),
        default=0.0)
    return figures


def evaluate_precisions(run: Any, test: StampSet, constants: ScoringConstants,
                        classes: tuple[str, ...] = CLASSES, budget_alpha: float | None = None,
                        budget_unusual_min: float = 0.0) -> dict[str, Any]:
    """The evaluation of every precision on one labelled set, as the manifest stores it.

    ``run(precision, stamps)`` gives (logits, embedding) of that precision's model file; FP32 is
    the reference the others are compared with.
    """
    ref_outputs = run("fp32", test.stamps)
    evaluation: dict[str, Any] = {"fp32": evaluate(ref_outputs, test, constants, classes=classes,
                                                   budget_alpha=budget_alpha,
                                                   budget_unusual_min=budget_unusual_min)}
    for precision in ("fp16", "int8"):
        evaluation[precision] = compare_precisions(evaluation["fp32"], run(precision, test.stamps),
                                                   ref_outputs, test, constants, classes, budget_alpha,
                                                   budget_unusual_min)
    target = class_labels(test, classes)
    bright = (target != UNKNOWN) & (test.snr >= 10)
    evaluation["confusion_snr10_fp32"] = confusion(
        score(ref_outputs[0][bright], ref_outputs[1][bright], constants).label_index, target[bright],
        len(classes))
    return evaluation


def evaluation_set(settings: TrainSettings, n_frames: int | None = None, *, seed: int | None = None,
                   progress: Progress | None = None) -> tuple[StampSet, dict[str, Any]]:
    """The fresh evaluation set of an engine trained with ``settings`` (seed + 2 unless ``seed``
    says otherwise, every anomaly family), and its twin configuration summary; ``progress`` is
    told of each frame simulated. Labels are the plain ones (ordinary index or UNKNOWN)."""
    from twin import ANOMALY_FAMILIES

    config = training_twin_config(settings.frame_size_px, anomalies=ANOMALY_FAMILIES,
                                  per_frame=settings.anomalies_per_frame, instrument=settings.instrument)
    n = settings.n_eval_frames if n_frames is None else n_frames
    return (density_mix(settings, ANOMALY_FAMILIES, n, settings.seed + 2 if seed is None else seed, 0,
                        "simulating evaluation frames", progress),
            {**_config_summary(config), "densities": list(settings.densities)})


def node_calibrated(settings: TrainSettings, data: StampSet) -> NDArray[np.bool_]:
    """Which stamps of a training or calibration set come from frames calibrated as the node
    calibrates them (with the bad-pixel map; see ``unmasked_every``)."""
    if not settings.unmasked_every:
        return np.ones(len(data), bool)
    return np.asarray(data.frame % settings.unmasked_every != 0)


def training_copies(settings: TrainSettings, data: StampSet, *, by_density: bool = True) -> NDArray[np.int64]:
    """Training copies of each stamp of ``data`` (labels indexing ``settings.classes``):
    ``rare_repeats`` of each streak and bogus stamp, times (``by_density``) the copies of its
    frame's density (:func:`density_repeats`)."""
    rare = np.isin(data.labels, [CLASSES.index("streak"), CLASSES.index("bogus")])
    copies = np.where(rare, settings.rare_repeats, 1)
    return copies * density_repeats(settings, data.frame) if by_density else copies


def density_repeats(settings: TrainSettings, frame: NDArray[np.int64]) -> NDArray[np.int64]:
    """Training copies of each stamp by its frame's density (1 / density, at most
    ``MAX_DENSITY_REPEATS``): a sparse frame holds few objects, and without the copies the isolated
    object with an empty context would be a small minority of what the network sees."""
    group = frame // (1000 * max(1, settings.unmasked_every))
    factors = np.array([min(MAX_DENSITY_REPEATS, max(1, int(round(1.0 / d)))) for d in settings.densities])
    return factors[np.clip(group, 0, len(factors) - 1)]


def density_mix(settings: TrainSettings, anomalies: tuple[str, ...], n_frames: int, set_seed: int,
                unmasked_every: int, stage: str, progress: Progress | None = None) -> StampSet:
    """The labelled stamps of ``n_frames`` twin frames in equal shares of ``settings.densities``
    (each share drawn from its own seed of ``set_seed``; one density: ``set_seed`` itself). The j-th
    share's frame indices start at j * 1000 * unmasked_every, so that index % unmasked_every still
    tells which frames were calibrated without the bad-pixel map."""
    from engines.stamps import RECIPES
    from engines.training.dataset import concat, twin_stamp_set

    parts, done = [], 0
    for j, density in enumerate(settings.densities):
        n = n_frames * (j + 1) // len(settings.densities) - done
        done += n
        cfg = training_twin_config(settings.frame_size_px, anomalies=anomalies,
                                   per_frame=settings.anomalies_per_frame, density=density,
                                   anomalies_follow_density=settings.anomalies_follow_density,
                                   instrument=settings.instrument)
        part = twin_stamp_set(cfg, n, set_seed if len(settings.densities) == 1 else
                              int(np.random.SeedSequence([set_seed, j]).generate_state(1)[0]),
                              unmasked_every=unmasked_every, recipe=settings.recipe, progress=progress, stage=stage)
        parts.append(replace(part, frame=part.frame + j * 1000 * max(1, unmasked_every)))
    return concat(parts, RECIPES[settings.recipe])


@dataclass(frozen=True)
class TwinSets:
    """The labelled sets an engine is made from (see the module docstring for their seeds)."""

    train: StampSet        # the engine's classes (labels index settings.classes)
    calib: StampSet        # the engine's classes, held out
    test: StampSet         # ordinary classes and every anomaly family, fresh seed; plain labels
    oe_train: NDArray[np.float32]
    oe_val: NDArray[np.float32]
    configs: dict[str, Any]


def make_twin_sets(settings: TrainSettings, *, test: StampSet | None = None,
                   progress: Progress | None = None) -> TwinSets:
    """Simulate and label the training, calibration and evaluation sets, and the outlier stamps
    (``test``: an evaluation set already made with these settings, used as it is); ``progress`` is
    told of each frame simulated (one stage per set)."""
    from engines.training.dataset import outlier_stamps
    from engines.training.deform import deformed_stamps
    from twin import ANOMALY_FAMILIES

    config = training_twin_config(settings.frame_size_px, anomalies=settings.unusual,
                                  per_frame=settings.anomalies_per_frame, instrument=settings.instrument)
    seed, recipe = settings.seed, settings.recipe

    train = density_mix(settings, settings.unusual, settings.n_train_frames, seed, settings.unmasked_every,
                        "simulating training frames", progress)
    calib = density_mix(settings, settings.unusual, settings.n_calib_frames, seed + 1, settings.unmasked_every,
                        "simulating calibration frames", progress)
    if test is None:
        test, eval_summary = evaluation_set(settings, progress=progress)
    else:
        eval_summary = _config_summary(training_twin_config(settings.frame_size_px, anomalies=ANOMALY_FAMILIES,
                                                            per_frame=settings.anomalies_per_frame,
                                                            instrument=settings.instrument))
    classes = settings.classes
    train = replace(train, labels=class_labels(train, classes))
    train = train.select(train.labels != UNKNOWN)
    calib = replace(calib, labels=class_labels(calib, classes))
    calib = calib.select(calib.labels != UNKNOWN)
    oe_rng = np.random.default_rng(seed + 3)
    field = settings.densities if settings.oe_in_field else ()
    field_rng = np.random.default_rng(seed + 6)
    n_oe, n_val = int(len(train) * settings.oe_fraction), OE_VALIDATION_STAMPS
    n_def, n_val_def = (int(round(k * settings.oe_deformed_share)) for k in (n_oe, n_val))
    # blobs first, from the same generator as always: a share of 0 gives the engine it always gave
    plain = training_twin_config(settings.frame_size_px, instrument=settings.instrument)
    oe_train = np.concatenate([outlier_stamps(n_oe - n_def, oe_rng, recipe=recipe, field=field, field_rng=field_rng),
                               deformed_stamps(plain, n_def, seed + 4, recipe=recipe, progress=progress,
                                               stage="deforming stars and galaxies (training)")])
    oe_val = np.concatenate([outlier_stamps(n_val - n_val_def, oe_rng, recipe=recipe, field=field, field_rng=field_rng),
                             deformed_stamps(plain, n_val_def, seed + 5, recipe=recipe, progress=progress,
                                             stage="deforming stars and galaxies (validation)")])
    return TwinSets(train=train, calib=calib, test=test, oe_train=oe_train, oe_val=oe_val,
                    configs={"train": _config_summary(config), "evaluation": eval_summary,
                             "seeds": {"train": seed, "calibration": seed + 1, "evaluation": seed + 2,
                                       "outlier_exposure": seed + 3, "outlier_field": seed + 6,
                                       "deformed_outliers": seed + 4,
                                       "deformed_outliers_validation": seed + 5}})


def set_sizes(sets: TwinSets, classes: tuple[str, ...] = CLASSES) -> dict[str, Any]:
    """Dataset sizes for the manifest."""
    return {"train": len(sets.train), "calibration": len(sets.calib), "evaluation": len(sets.test),
            "outlier_exposure": len(sets.oe_train), "outlier_validation": len(sets.oe_val),
            "train_per_class": {c: int((sets.train.labels == i).sum()) for i, c in enumerate(classes)},
            "evaluation_per_family": per_family_counts(sets.test)}


def per_family_counts(data: StampSet) -> dict[str, int]:
    """Candidates per family name (classes, anomaly families, ``near_`` ones) of a labelled set."""
    return {f: int((data.family == f).sum()) for f in sorted(set(data.family.tolist()))}


def save_weights(model: Any, path: Any) -> None:
    """The torch state as a plain .npz (no pickle), so fine-tuning can start from a shipped engine."""
    np.savez_compressed(path, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})


def load_weights(path: Any) -> dict[str, Any]:
    """A torch state dict from :func:`save_weights`' file."""
    import torch

    with np.load(path) as data:
        return {k: torch.from_numpy(np.array(data[k])) for k in data.files}


def package_engine(out_dir: Any, model: Any, settings: TrainSettings, sets: TwinSets, *, name: str,
                   version: str, training: dict[str, Any], real_data: Any = None,
                   extra_evaluation: dict[str, Any] | None = None, progress: Progress | None = None,
                   stage: str = "exporting and evaluating",
                   extra_train: tuple[NDArray[np.float32], NDArray[np.str_]] | None = None) -> Any:
    """Export, quantize, fit scoring, evaluate every precision and write a verified engine folder.

    ``extra_train`` (stamps, class names) joins the training stamps the class Gaussians are fitted
    on (labelled stamps of a class the twin does not render) and the INT8 calibration stamps.
    ``progress`` is told of each step
    done, under the name ``stage``.
    """
    from pathlib import Path

    from engines import manifest
    from engines.stamps import RECIPES
    from engines.training import export

    n_steps = 6 + (real_data is not None)

    def step_done(advance: int = 1) -> None:
        if progress is not None:
            progress(stage, advance, n_steps)

    if settings.spec.n_classes != len(settings.classes):
        raise ValueError(f"the model has {settings.spec.n_classes} classes but the settings name "
                         f"{len(settings.classes)}: {settings.classes}")
    step_done(0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed = settings.seed
    paths = {p: out / f for p, (f, _) in MODEL_FILES.items()}
    channels = RECIPES[settings.recipe]
    export.export_onnx(model, paths["fp32"], in_channels=channels)
    export.convert_fp16(paths["fp32"], paths["fp16"])
    step_done()
    pool = sets.calib.stamps
    if len(pool) < N_INT8_CALIBRATION:
        # a fine-tune's few replay frames: the training frames' stamps join, so that the activation
        # ranges are not set by a few hundred stamps (full training has enough calibration frames)
        pool = np.concatenate([pool, sets.train.stamps])
    cal_idx = np.random.default_rng(seed + 4).permutation(len(pool))[:N_INT8_CALIBRATION]
    cal_stamps = pool[cal_idx]
    if extra_train is not None:
        # a fine-tune's labelled stamps (a new class among them) set activation ranges that the
        # replay frames alone never reach: calibrated without them, INT8 clips that class's logits
        cal_stamps = np.concatenate([cal_stamps, extra_train[0]])
    export.quantize_int8(paths["fp32"], paths["int8"], cal_stamps)
    save_weights(model, out / WEIGHTS_FILE)
    step_done()

    def run(precision: str, stamps: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        return export.run_onnx(paths[precision], stamps, threads=settings.threads)

    classes = settings.classes
    fit_stamps, fit_labels = sets.train.stamps, sets.train.labels
    if extra_train is not None:
        index = {c: i for i, c in enumerate(classes)}
        fit_stamps = np.concatenate([fit_stamps, extra_train[0]])
        fit_labels = np.concatenate([fit_labels, [index[n] for n in extra_train[1].tolist()]]).astype(np.int64)
    constants, choice = fit_scoring(run("fp32", fit_stamps), fit_labels,
                                    run("fp32", sets.calib.stamps), sets.calib.labels,
                                    run("fp32", sets.oe_val), seed, n_classes=len(classes),
                                    unknown_distance=settings.unknown_distance,
                                    conformal_pool=node_calibrated(settings, sets.calib))
    step_done()
    test = sets.test
    evaluation = evaluate_precisions(run, test, constants, classes, choice["budget_alpha"],
                                     choice["budget_unusual_min"])
    evaluation["scoring_fit"] = choice
    if extra_evaluation:
        evaluation.update(extra_evaluation)
    step_done()
    if real_data is not None:
        evaluation["real_data"] = classify_real(Path(real_data), lambda s: run("fp32", s), constants,
                                                classes=classes, recipe=settings.recipe)
        step_done()

    golden = _golden_indices(test, np.random.default_rng(seed + 5))
    g_logits, g_embedding = run("fp32", test.stamps[golden])
    np.savez_compressed(out / GOLDEN_FILE, stamps=test.stamps[golden], logits=g_logits,
                        embedding=g_embedding, family=test.family[golden])
    step_done()

    files = {f: manifest.file_entry(paths[p], p, fmt) for p, (f, fmt) in MODEL_FILES.items()}
    files[WEIGHTS_FILE] = manifest.file_entry(out / WEIGHTS_FILE, "fp32", "npz")
    files[GOLDEN_FILE] = manifest.file_entry(out / GOLDEN_FILE, "none", "npz")
    written = manifest.EngineManifest(
        name=name, version=version, classes=classes, ensemble_size=settings.spec.n_members,
        embedding_dim=settings.spec.embedding_dim, normalisation=settings.recipe, scoring=constants,
        input=manifest.InputSpec(shape=(-1, channels, 32, 32)),
        files=files, training={**training, "settings": settings.to_dict(),
                               "parameters": int(sum(p.numel() for p in model.parameters()))},
        evaluation=evaluation,
        golden=manifest.GoldenSpec(file=GOLDEN_FILE, tolerance=GOLDEN_TOLERANCE),
    )
    manifest.write_manifest(written, out)
    write_model_card(out, manifest.load_manifest(out))
    files[CARD_FILE] = manifest.file_entry(out / CARD_FILE, "none", "markdown")
    manifest.write_manifest(written.with_files(files), out)
    loaded = manifest.load_manifest(out)
    step_done()
    return loaded


def provenance(command: str, seed: int) -> dict[str, Any]:
    """Who made an engine: command, seed, date, software versions."""
    import datetime
    import platform

    import onnx
    import onnxruntime
    import torch

    return {"seed": seed, "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "software": {"python": platform.python_version(), "numpy": np.__version__,
                         "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                         "onnx": onnx.__version__}}


def train_engine(out_dir: Any, settings: TrainSettings, *, name: str, version: str, command: str,
                 real_data: Any = None, log: Any = None, progress: Progress | None = None) -> Any:
    """Simulate, train, export, quantize, fit scoring, evaluate and write a complete engine folder.

    Returns the written :class:`~engines.manifest.EngineManifest` (re-read and verified).
    ``progress`` is told of every frame simulated, optimiser step and packaging step, stage by stage.
    """
    import time

    def note(event: str, **kw: Any) -> None:
        if log is not None:
            log.info(event, **kw)

    started = time.perf_counter()
    sets = make_twin_sets(settings, progress=progress)
    sizes = set_sizes(sets, settings.classes)
    note("engines.train.dataset", seconds=round(time.perf_counter() - started, 1),
         **{k: v for k, v in sizes.items() if isinstance(v, int)})
    repeat = training_copies(settings, sets.train)
    model = fit_model(np.repeat(sets.train.stamps, repeat, axis=0), np.repeat(sets.train.labels, repeat),
                      sets.oe_train, settings, on_epoch=lambda **kw: note("engines.train.epoch", **kw),
                      progress=progress)
    note("engines.train.fitted", seconds=round(time.perf_counter() - started, 1))
    training = {**provenance(command, settings.seed), "twin_config": sets.configs, "dataset_sizes": sizes}
    written = package_engine(out_dir, model, settings, sets, name=name, version=version,
                             training=training, real_data=real_data, progress=progress)
    # the training examples an explanation shows beside a record (engines/explain.py)
    from pathlib import Path

    from engines.training.exemplar_set import exemplars_from_set

    exemplars_from_set(Path(out_dir), sets.train, settings.classes, seed=settings.seed)
    note("engines.train.done", out=str(out_dir), seconds=round(time.perf_counter() - started, 1))
    return written


def _config_summary(config: Any) -> dict[str, Any]:
    """The twin configuration as plain JSON values."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v
    return plain(config)


# --- real frames and the model card ---------------------------------------------------------------

def _read_sextractor_catalog(path: Any) -> NDArray[np.float64]:
    """Rows of a SExtractor ASCII catalog (comment lines start with '#')."""
    with open(path, encoding="ascii") as fh:
        rows = [line.split() for line in fh if line.strip() and not line.startswith("#")]
    return np.array(rows, dtype=np.float64)


def classify_real(real_dir: Any, run: Any, constants: ScoringConstants, alpha: float = ALPHA, *,
                  classes: tuple[str, ...] = CLASSES, recipe: str | None = None) -> dict[str, Any]:
    """Classify the real objects the issue names; report what the engine says, not a tuned score.

    - sep-ntt: SExtractor's FLAGS == 0 objects on the reduced NTT frame (SExtractor's own
      background and RMS maps give ``sub_e`` and the variance); truth: astrophysical sources, so
      star or galaxy is right.
    - gmos-cr: the two cosmic rays astroscrappy's test fixes (SCI - SKYFIT, variance VAR), each at
      its highest-S/N pixel; truth: cosmic_ray.
    """
    import warnings
    from pathlib import Path

    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning

    from engines.stamps import NORMALISATION, cut_for

    real_dir = Path(real_dir)
    recipe = recipe or NORMALISATION
    out: dict[str, Any] = {}

    def summarise(stamps: NDArray[np.float32], right: tuple[str, ...], truth: str) -> dict[str, Any]:
        logits, embedding = run(stamps)
        s = score(logits, embedding, constants)
        names = [classes[i] for i in s.label_index]
        return {"truth": truth, "n": len(names),
                "predicted": {c: names.count(c) for c in classes if names.count(c)},
                "correct_fraction": float(np.mean([n in right for n in names])),
                "mean_confidence": float(s.confidence.mean()),
                "flagged_at_alpha": float((s.anomaly_pvalue <= alpha).mean()),
                "per_object": [{"label": n, "confidence": round(float(c), 3), "pvalue": round(float(p), 4)}
                               for n, c, p in zip(names, s.confidence, s.anomaly_pvalue, strict=True)]}

    ntt = real_dir / "sep-ntt"
    with warnings.catch_warnings():
        # the NTT header's non-standard ESO-LOG cards are the file's, not ours (astropy reports
        # them as a plain AstropyUserWarning)
        warnings.simplefilter("ignore", AstropyUserWarning)
        image = fits.getdata(ntt / "image.fits").astype(np.float32)
        back = fits.getdata(ntt / "back.fits").astype(np.float32)
        rms = fits.getdata(ntt / "rms.fits").astype(np.float32)
    cat = _read_sextractor_catalog(ntt / "image.cat")
    good = cat[:, -1] == 0
    stamps = cut_for(recipe, image - back, rms * rms, None, cat[good, 1] - 1.0, cat[good, 2] - 1.0)
    out["sep-ntt"] = summarise(stamps, ("star", "galaxy"), "star or galaxy (SExtractor FLAGS == 0)")
    out["sep-ntt"]["per_object"] = [{"number": int(n), **o} for n, o in zip(cat[good, 0], out["sep-ntt"]["per_object"], strict=True)]

    with fits.open(real_dir / "gmos-cr" / "gmos.fits") as hdul:
        sci = hdul["SCI"].data.astype(np.float32)
        var = hdul["VAR"].data.astype(np.float32)
        sky = hdul["SKYFIT"].data.astype(np.float32)
    sub = sci - sky
    snr = sub / np.sqrt(np.where(var > 0, var, np.inf))
    xs, ys = [], []
    for rows, cols in ((slice(41, 72), slice(142, 161)), (slice(117, 147), slice(35, 43))):
        iy, ix = np.unravel_index(np.argmax(snr[rows, cols]), snr[rows, cols].shape)
        ys.append(rows.start + iy)
        xs.append(cols.start + ix)
    stamps = cut_for(recipe, sub, var, ~(var > 0), np.array(xs, float), np.array(ys, float))
    out["gmos-cr"] = summarise(stamps, ("cosmic_ray",), "cosmic_ray (astroscrappy's fixed test rays)")
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def write_model_card(out_dir: Any, m: Any) -> None:
    """MODEL_CARD.md of an engine folder, generated from its manifest so the figures cannot drift."""
    from pathlib import Path

    ev, tr = m.evaluation, m.training
    st = tr["settings"]
    spec = st["spec"]
    sizes = tr.get("dataset_sizes", {})
    ordinary = [c for c in m.classes if c in CLASSES]
    taught = [c for c in m.classes if c not in CLASSES]
    n_views = spec.get("views", 1)
    view_text = ("a 32x32 sharp view and a 96 px context view binned 3x3 to 32x32, each with its image "
                 "and mask channel" if n_views == 2 else "32x32 two-channel stamps (S/N-normalised image, mask)")
    lines = [
        f"# {m.name} {m.version}: stamp classifier with calibrated uncertainty",
        "",
        f"Classifies {view_text} (normalisation `{m.normalisation}`) into the ordinary classes "
        f"{', '.join(ordinary)}"
        + (f" and the unusual classes {', '.join(taught)}" if taught else "")
        + f", with a {m.ensemble_size}-member ensemble ({spec['design']} design, widths {spec['widths']}, "
        f"{tr.get('parameters')} parameters), and scores how unlike every ordinary class each stamp is "
        "(the unknown score: Mahalanobis distance in the embedding plus predictive entropy, turned into a "
        "split-conformal p-value).",
        "",
        "## How it was made",
        "",
        f"- command: `{tr.get('command')}` (seed {tr.get('seed')}, {tr.get('date')})",
        f"- software: {', '.join(f'{k} {v}' for k, v in tr.get('software', {}).items())}",
        f"- data: twin frames of {st['frame_size_px']}x{st['frame_size_px']} px, detected with edge.detect and cut "
        "with engines.stamps exactly as the node does, labelled by truth matching (an anomaly's candidates are "
        "those made mostly of its light); "
        + (f"training and calibration frames render {st.get('anomalies_per_frame')} objects of each unusual "
           f"class per 512x512 px; " if taught else "")
        + f"training {sizes.get('train')} stamps ({st['n_train_frames']} frames), held-out calibration "
        f"{sizes.get('calibration')} ({st['n_calib_frames']} frames), evaluation {sizes.get('evaluation')} "
        f"({st['n_eval_frames']} frames with every anomaly family, seed never used in training), outlier "
        f"exposure {sizes.get('outlier_exposure')} generic multi-blob stamps (none of the anomaly families)",
        f"- training stamps per class: {sizes.get('train_per_class')}",
        f"- scoring: temperature {m.scoring.temperature:.3f}, entropy weight {m.scoring.entropy_weight} "
        f"(chosen on held-out outlier-exposure stamps), distance to "
        f"{'the ordinary classes' if m.scoring.distance_classes else 'every class'}, "
        f"{len(m.scoring.conformal_scores)} conformal scores (ordinary candidates of held-out frames)",
        "",
        "## Evaluation on a fresh twin set" + (f" (seed {ev['evaluation_seed']})" if "evaluation_seed" in ev else ""),
        "",
        "Ordinary candidates: accuracy and ECE at S/N >= 10; flagged: the share sent as unknown at "
        "alpha = 0.01 and 0.05, called an unusual class, or either (the joint false flags at alpha = 0.01).",
        "",
        "| precision | accuracy S/N>=10 | ECE S/N>=10 | unknown at 0.01 | unknown at 0.05 | as unusual | joint | "
        "top-1 agreement vs FP32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in ("fp32", "fp16", "int8"):
        e = ev.get(p)
        if e:
            lines.append(f"| {p} | {_fmt(e['accuracy_snr10'], 4)} | {_fmt(e['ece_snr10'], 4)} | "
                         f"{_fmt(e['flagged_ordinary_at_alpha'], 4)} | {_fmt(e.get('flagged_ordinary_at_alpha_wide'), 4)} | "
                         f"{_fmt(e.get('ordinary_as_unusual'), 4)} | {_fmt(e.get('ordinary_flagged_joint'), 4)} | "
                         f"{_fmt(e.get('top1_agreement_vs_fp32', 1.0), 4)} |")
    b = ev["fp32"].get("budget")
    if b:
        lines += ["", f"Under one budget of {ev.get('scoring_fit', {}).get('budget', BUDGET):.0%} false flags "
                  f"(alpha = {b['alpha']} and unusual calls of probability >= {b.get('unusual_min', 0.0)}, "
                  "chosen on held-out frames): ordinary candidates flagged "
                  f"{_fmt(b['ordinary_flagged'], 4)}; families sent at S/N >= 20: "
                  + ", ".join(f"{k} {v['recall']:.3f} (>= {v['wilson_low']:.3f})" for k, v in b["families"].items()
                              if v.get("recall") is not None) + "."]
    lines += ["", "Anomaly families at S/N >= 20 (FP32; recall with its 95 % Wilson lower bound): as their own "
              "class, by the unknown score alone at alpha = 0.01, and sent (either); AUROC of the unknown score "
              "against every ordinary candidate, FP32 and INT8:", "",
              "| family | taught | n | own class | unknown | sent | AUROC fp32 | AUROC int8 |",
              "|---|---|---|---|---|---|---|---|"]

    def rec(r: Any) -> str:
        return "n/a" if not r or r.get("recall") is None else f"{r['recall']:.3f} ({r['wilson_low']:.3f})"

    for fam, f in ev["fp32"]["families"].items():
        q = ev.get("int8", {}).get("families", {}).get(fam, {})
        lines.append(f"| {fam} | {'yes' if f.get('taught') else 'no'} | {f.get('n_snr20', f['n'])} | "
                     f"{rec(f.get('own_class_snr20'))} | {rec(f.get('unknown_snr20'))} | {rec(f.get('flagged_snr20'))} | "
                     f"{_fmt(f['auroc'], 4)} | {_fmt(q.get('auroc'), 4)} |")
    near = ev["fp32"].get("near_anomaly")
    if near and near.get("n"):
        lines += ["", f"Candidates within an anomaly's reach but not made of its light (a star on a ghost's donut, "
                  f"a galaxy beside an arc): {near['n']}, counted neither as finds nor as ordinary detections; "
                  f"{_fmt(near['flagged_at_alpha'])} of them are flagged (unusual or unknown at alpha = 0.01)."]
    lines += ["", "Per class (FP32, S/N >= 10):", "", "| class | n | recall |", "|---|---|---|"]
    for c, f in ev["fp32"]["per_class"].items():
        lines.append(f"| {c} | {f['n_snr10']} | {_fmt(f['recall_snr10'])} |")
    if "confusion_snr10_fp32" in ev:
        lines += ["", "Confusion (FP32, S/N >= 10; rows true, columns predicted):", "",
                  "| true \\ predicted | " + " | ".join(m.classes) + " |", "|---" * (len(m.classes) + 1) + "|"]
        for c, row in zip(m.classes, ev["confusion_snr10_fp32"], strict=True):
            lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    if "finetune" in ev:
        new_classes = ev["finetune"].get("new_classes") or []
        lines += ["", "## Fine-tuning", "", f"Fine-tuned from `{ev['finetune'].get('from')}` on "
                  f"`{ev['finetune'].get('labels')}`"
                  + (f", which taught the new classes {', '.join(new_classes)}" if new_classes else "")
                  + "; held-out labelled stamps: "
                  f"accuracy {_fmt(ev['finetune'].get('heldout_accuracy'), 4)}, "
                  f"ECE {_fmt(ev['finetune'].get('heldout_ece'), 4)} (n = {ev['finetune'].get('heldout_n')})."]
    real = ev.get("real_data")
    if real:
        lines += ["", "## Real frames", "",
                  "Not tuned to these files; they only show how a twin-trained engine behaves on real data.", "",
                  "| data | truth | n | predicted | right | mean confidence | flagged at alpha=0.01 |",
                  "|---|---|---|---|---|---|---|"]
        for key, r in real.items():
            lines.append(f"| {key} | {r['truth']} | {r['n']} | {r['predicted']} | {_fmt(r['correct_fraction'])} | "
                         f"{_fmt(r['mean_confidence'])} | {_fmt(r['flagged_at_alpha'])} |")
    lines += ["", "## Limits", "",
              "- Trained on the digital twin only; real detectors differ in PSF, noise and artefacts, and the "
              "real-frame table above is the honest measure of that gap.",
              "- The unusual classes are the twin's renderings of those phenomena; an object the twin never rendered "
              "can only be caught by the unknown score, whose leave-one-family-out figures are in docs/engines.md "
              "(bench/leave_one_out.py). Close doubles are not a class: the node measures multiplicity (edge.blend).",
              "- Hot pixels are only seen where calibration leaves them unmasked; most single hot pixels fall below "
              "the detector's minimum area and never reach the engine.",
              "- The conformal p-value is valid for detections drawn like the held-out twin set; on another "
              "instrument the flagged fraction of ordinary detections will differ from alpha.", ""]
    Path(out_dir, CARD_FILE).write_text("\n".join(lines), encoding="utf-8")
