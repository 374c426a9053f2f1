"""Uncertainty and anomaly scoring of engine outputs, shipped with every engine.

From the ensemble's per-member logits and the shared embedding, :func:`score` computes

- ``probs``: the mean over the K members of ``softmax(logits / T)`` (temperature scaling);
- ``entropy``: predictive entropy of ``probs`` in nats, split into ``aleatoric`` (the mean member
  entropy) and ``epistemic`` (the mutual information, ``entropy - aleatoric``); all three >= 0;
- ``distance``: the smallest class-conditional Mahalanobis distance squared of the embedding,
  over shared-covariance Gaussians, divided by the embedding size D;
- ``anomaly_score = distance + entropy_weight * entropy``;
- ``anomaly_pvalue = (1 + #{conformal_scores >= anomaly_score}) / (M + 1)``: a split-conformal
  p-value against the anomaly scores of M held-out ordinary detections, so that flagging
  ``pvalue <= alpha`` flags about a fraction alpha of ordinary detections.

All constants live in :class:`ScoringConstants`, which the engine manifest stores through
``to_dict``/``from_dict``. The fitting helpers (temperature, class Gaussians) and the metrics
(expected calibration error, AUROC) are here too, so training and serving share one definition.
numpy only: this module never imports torch, onnxruntime, the node (``edge``, except its error
tree) or any I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge.errors import EngineError, EngineIntegrityError

__all__ = [
    "ScoringConstants",
    "Scores",
    "auroc",
    "conformal_pvalues",
    "expected_calibration_error",
    "fit_class_gaussians",
    "fit_temperature",
    "mahalanobis_distance",
    "member_probabilities",
    "score",
]

_T_MIN, _T_MAX = 0.05, 20.0


@dataclass(frozen=True, eq=False)
class ScoringConstants:
    """Every number :func:`score` needs; validated and stored as float64 arrays."""

    temperature: float
    class_means: NDArray[np.float64]       # (C, D)
    precision: NDArray[np.float64]         # (D, D), inverse of the shared class covariance
    entropy_weight: float
    conformal_scores: NDArray[np.float64]  # (M,), sorted ascending
    #: the distance is to the nearest of the first ``distance_classes`` class Gaussians (the
    #: ordinary classes of an engine that also has unusual ones); None: to every class
    distance_classes: int | None = None
    #: weight of the "not ordinary" term ``-log(1 - p_unusual)``, p_unusual being the summed
    #: probability of the classes after the first ``distance_classes`` (0: no such term)
    unusual_weight: float = 0.0

    def __post_init__(self) -> None:
        means = np.asarray(self.class_means, dtype=np.float64)
        prec = np.asarray(self.precision, dtype=np.float64)
        conf = np.sort(np.asarray(self.conformal_scores, dtype=np.float64).reshape(-1))
        problems = []
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            problems.append(f"temperature must be finite and > 0, got {self.temperature!r}")
        if not np.isfinite(self.entropy_weight) or self.entropy_weight < 0:
            problems.append(f"entropy_weight must be finite and >= 0, got {self.entropy_weight!r}")
        if not np.isfinite(self.unusual_weight) or self.unusual_weight < 0:
            problems.append(f"unusual_weight must be finite and >= 0, got {self.unusual_weight!r}")
        elif self.unusual_weight > 0 and self.distance_classes is None:
            problems.append("unusual_weight needs distance_classes (which classes are ordinary)")
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            problems.append(f"class_means must have shape (C, D), got {means.shape}")
        elif prec.shape != (means.shape[1], means.shape[1]):
            problems.append(f"precision must have shape (D, D) = {(means.shape[1],) * 2}, got {prec.shape}")
        if conf.size < 1:
            problems.append("conformal_scores is empty")
        k = self.distance_classes
        if k is not None and (isinstance(k, bool) or not isinstance(k, int)
                              or not 1 <= k <= (means.shape[0] if means.ndim == 2 else 0)):
            problems.append(f"distance_classes must be an integer in [1, C], got {k!r}")
        for name, arr in (("class_means", means), ("precision", prec), ("conformal_scores", conf)):
            if not np.isfinite(arr).all():
                problems.append(f"{name} holds non-finite values")
        if problems:
            raise EngineIntegrityError("; ".join(problems) + "; rebuild the engine's scoring constants",
                                       where="scoring")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "entropy_weight", float(self.entropy_weight))
        object.__setattr__(self, "unusual_weight", float(self.unusual_weight))
        object.__setattr__(self, "class_means", means)
        object.__setattr__(self, "precision", prec)
        object.__setattr__(self, "conformal_scores", conf)

    @property
    def n_classes(self) -> int:
        return int(self.class_means.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.class_means.shape[1])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (plain floats and nested lists) that from_dict reads back exactly."""
        return {
            "temperature": self.temperature,
            "class_means": self.class_means.tolist(),
            "precision": self.precision.tolist(),
            "entropy_weight": self.entropy_weight,
            "conformal_scores": self.conformal_scores.tolist(),
            **({} if self.distance_classes is None else {"distance_classes": self.distance_classes}),
            **({} if not self.unusual_weight else {"unusual_weight": self.unusual_weight}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoringConstants:
        """Read constants written by to_dict; a missing key raises EngineIntegrityError."""
        if not isinstance(data, dict):
            raise EngineIntegrityError(f"scoring constants must be an object, got {type(data).__name__}",
                                       where="scoring")
        keys = ("temperature", "class_means", "precision", "entropy_weight", "conformal_scores")
        missing = [k for k in keys if k not in data]
        if missing:
            raise EngineIntegrityError(f"scoring constants lack {missing}; the manifest is incomplete",
                                       where="scoring")
        try:
            return cls(temperature=float(data["temperature"]),
                       class_means=np.asarray(data["class_means"], dtype=np.float64),
                       precision=np.asarray(data["precision"], dtype=np.float64),
                       entropy_weight=float(data["entropy_weight"]),
                       conformal_scores=np.asarray(data["conformal_scores"], dtype=np.float64),
                       distance_classes=data.get("distance_classes"),
                       unusual_weight=float(data.get("unusual_weight", 0.0)))
        except (TypeError, ValueError) as exc:
            raise EngineIntegrityError(f"scoring constants are not numeric arrays: {exc}",
                                       where="scoring") from exc


@dataclass(frozen=True, eq=False)
class Scores:
    """Per-detection scores; every array has length N (``probs`` is (N, C))."""

    probs: NDArray[np.float64]
    label_index: NDArray[np.int64]
    confidence: NDArray[np.float64]
    entropy: NDArray[np.float64]       # nats
    aleatoric: NDArray[np.float64]     # nats
    epistemic: NDArray[np.float64]     # nats
    distance: NDArray[np.float64]      # min Mahalanobis^2 / D
    anomaly_score: NDArray[np.float64]
    anomaly_pvalue: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.confidence.shape[0])


def _as_member_logits(logits: NDArray[Any]) -> NDArray[np.float64]:
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.ndim != 3 or arr.shape[1] < 1 or arr.shape[2] < 2:
        raise EngineError(f"logits must have shape (N, K, C) with K >= 1, C >= 2, got {arr.shape}",
                          where="scoring")
    if not np.isfinite(arr).all():
        raise EngineError("logits hold NaN or inf; the engine output is broken", where="scoring")
    return arr


def member_probabilities(logits: NDArray[Any], temperature: float = 1.0) -> NDArray[np.float64]:
    """Per-member ``softmax(logits / temperature)``, shape (N, K, C); (N, C) logits count as K = 1."""
    z = _as_member_logits(logits) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _entropy(p: NDArray[np.float64]) -> NDArray[np.float64]:
    """Entropy in nats along the last axis, with 0 log 0 = 0."""
    logp = np.log(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(axis=-1)


def mahalanobis_distance(embedding: NDArray[Any], class_means: NDArray[Any],
                         precision: NDArray[Any]) -> NDArray[np.float64]:
    """Smallest class Mahalanobis distance squared, divided by D; shape (N,)."""
    emb = np.asarray(embedding, dtype=np.float64)
    means = np.asarray(class_means, dtype=np.float64)
    prec = np.asarray(precision, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[1] != means.shape[1]:
        raise EngineError(f"embedding must have shape (N, {means.shape[1]}), got {emb.shape}",
                          where="scoring")
    if not np.isfinite(emb).all():
        raise EngineError("embedding holds NaN or inf; the engine output is broken", where="scoring")
    # d2 = e'Pe - 2 e'P mu + mu'P mu for all classes at once, one (N, D) x (D, C) product
    pe = emb @ prec
    quad_e = np.einsum("nd,nd->n", pe, emb)
    cross = pe @ means.T
    quad_mu = np.einsum("cd,de,ce->c", means, prec, means)
    d2 = quad_e[:, None] - 2.0 * cross + quad_mu[None, :]
    return np.maximum(d2.min(axis=1), 0.0) / emb.shape[1]


def conformal_pvalues(anomaly_scores: NDArray[Any], conformal_scores: NDArray[Any]) -> NDArray[np.float64]:
    """Split-conformal p-values ``(1 + #{calibration >= s}) / (M + 1)``; calibration sorted ascending."""
    cal = np.asarray(conformal_scores, dtype=np.float64)
    s = np.asarray(anomaly_scores, dtype=np.float64)
    n_ge = cal.size - np.searchsorted(cal, s, side="left")
    return ((1.0 + n_ge) / (cal.size + 1.0)).astype(np.float64)


def score(logits: NDArray[Any], embedding: NDArray[Any], constants: ScoringConstants) -> Scores:
    """Score N detections from their (N, K, C) member logits and (N, D) embedding."""
    member = member_probabilities(logits, constants.temperature)
    n, _, n_classes = member.shape
    if n_classes != constants.n_classes:
        raise EngineError(f"logits have {n_classes} classes but the scoring constants have "
                          f"{constants.n_classes}; engine and manifest do not belong together",
                          where="scoring")
    if np.shape(embedding)[:1] != (n,):
        raise EngineError(f"embedding has {np.shape(embedding)[:1]} rows but logits have {n}",
                          where="scoring")
    probs = member.mean(axis=1)
    entropy = _entropy(probs)
    aleatoric = _entropy(member).mean(axis=1)
    # mutual information is >= 0 by Jensen; clip the rounding error of the subtraction
    epistemic = np.maximum(entropy - aleatoric, 0.0)
    aleatoric = np.minimum(aleatoric, entropy)
    distance = mahalanobis_distance(embedding, constants.class_means[:constants.distance_classes],
                                    constants.precision)
    anomaly = distance + constants.entropy_weight * entropy
    if constants.unusual_weight and constants.distance_classes is not None:
        # how surely the detection is none of the ordinary classes
        p_unusual = probs[:, constants.distance_classes:].sum(axis=1)
        anomaly = anomaly - constants.unusual_weight * np.log(np.maximum(1.0 - p_unusual, 1e-12))
    return Scores(
        probs=probs,
        label_index=probs.argmax(axis=1).astype(np.int64),
        confidence=probs.max(axis=1),
        entropy=entropy,
        aleatoric=aleatoric,
        epistemic=epistemic,
        distance=distance,
        anomaly_score=anomaly,
        anomaly_pvalue=conformal_pvalues(anomaly, constants.conformal_scores),
    )


def _check_labels(labels: NDArray[Any], n: int, n_classes: int) -> NDArray[np.int64]:
    lab = np.asarray(labels)
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
        raise EngineError(f"labels must be {n} integers, got shape {lab.shape} dtype {lab.dtype}",
                          where="labels")
    if n and (lab.min() < 0 or lab.max() >= n_classes):
        raise EngineError(f"labels must lie in [0, {n_classes}), got [{lab.min()}, {lab.max()}]",
                          where="labels")
    return lab.astype(np.int64)


def _nll(member_logits: NDArray[np.float64], labels: NDArray[np.int64], temperature: float) -> float:
    probs = member_probabilities(member_logits, temperature).mean(axis=1)
    p_true = probs[np.arange(labels.size), labels]
    return float(-np.log(np.maximum(p_true, 1e-300)).mean())


def fit_temperature(logits: NDArray[Any], labels: NDArray[Any]) -> float:
    """The temperature in [0.05, 20] that minimises the NLL of the ensemble-mean probabilities."""
    member = _as_member_logits(logits)
    lab = _check_labels(labels, member.shape[0], member.shape[2])
    if lab.size == 0:
        raise EngineError("cannot fit a temperature on zero samples", where="labels")
    # a coarse log grid guards against the local minima an ensemble mean can have,
    # then golden-section search refines inside the best bracket
    grid = np.geomspace(_T_MIN, _T_MAX, 41)
    nll = np.array([_nll(member, lab, t) for t in grid])
    best = int(nll.argmin())
    lo = np.log(grid[max(best - 1, 0)])
    hi = np.log(grid[min(best + 1, grid.size - 1)])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(member, lab, np.exp(a)), _nll(member, lab, np.exp(b))
    for _ in range(40):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = _nll(member, lab, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(member, lab, np.exp(b))
    return float(np.exp((lo + hi) / 2.0))


def fit_class_gaussians(embedding: NDArray[Any], labels: NDArray[Any], n_classes: int,
                        shrinkage: float = 0.05) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Class means (C, D) and the precision (D, D) of their pooled within-class covariance.

    The covariance is shrunk toward ``trace / D`` times the identity by ``shrinkage`` in [0, 1],
    which keeps it invertible when D is large for the sample.
    """
    emb = np.asarray(embedding, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise EngineError(f"embedding must have shape (N >= 2, D), got {emb.shape}", where="embedding")
    if not 0.0 <= shrinkage <= 1.0:
        raise EngineError(f"shrinkage must lie in [0, 1], got {shrinkage}", where="shrinkage")
    lab = _check_labels(labels, emb.shape[0], n_classes)
    counts = np.bincount(lab, minlength=n_classes)
    if (counts == 0).any():
        raise EngineError(f"classes {np.flatnonzero(counts == 0).tolist()} have no samples; "
                          "every class needs embeddings to fit its Gaussian", where="labels")
    dim = emb.shape[1]
    means = np.zeros((n_classes, dim))
    np.add.at(means, lab, emb)
    means /= counts[:, None]
    centred = emb - means[lab]
    cov = centred.T @ centred / emb.shape[0]
    cov = (1.0 - shrinkage) * cov + shrinkage * (np.trace(cov) / dim) * np.eye(dim)
    try:
        precision = np.linalg.inv(cov)
    except np.linalg.LinAlgError as exc:
        raise EngineError("the pooled covariance is singular; raise shrinkage", where="embedding") from exc
    return means, (precision + precision.T) / 2.0


def expected_calibration_error(probs: NDArray[Any], labels: NDArray[Any], n_bins: int = 15) -> float:
    """Top-label ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise EngineError(f"probs must have shape (N > 0, C), got {p.shape}", where="probs")
    lab = _check_labels(labels, p.shape[0], p.shape[1])
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == lab).astype(np.float64)
    # bins (lo, hi], with confidence 0 falling into the first
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.bincount(idx, weights=correct - conf, minlength=n_bins)
    return float(np.abs(gap).sum() / p.shape[0])


def auroc(scores_negative: NDArray[Any], scores_positive: NDArray[Any]) -> float:
    """Area under the ROC curve: P(positive > negative) + P(tie) / 2 (Mann-Whitney U)."""
    neg = np.asarray(scores_negative, dtype=np.float64).reshape(-1)
    pos = np.asarray(scores_positive, dtype=np.float64).reshape(-1)
    if neg.size == 0 or pos.size == 0:
        raise EngineError("auroc needs at least one negative and one positive score", where="auroc")
    both = np.concatenate([neg, pos])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    # mid-rank of each distinct value, 1-based
    upper = np.cumsum(counts)
    mid = upper - (counts - 1) / 2.0
    rank_pos = mid[inverse[neg.size:]].sum()
    u = rank_pos - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))
