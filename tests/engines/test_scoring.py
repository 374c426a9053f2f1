"""Tests for engines.scoring: entropy split, temperature, Mahalanobis anomaly, conformal p-values, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge.errors import EngineError, EngineIntegrityError
from engines.scoring import (
    ScoringConstants,
    auroc,
    conformal_pvalues,
    expected_calibration_error,
    fit_class_gaussians,
    fit_temperature,
    mahalanobis_distance,
    member_probabilities,
    score,
)


def _constants(rng: np.random.Generator, n_classes: int = 6, dim: int = 4, **kw: object) -> ScoringConstants:
    base = {"temperature": 1.0, "class_means": rng.normal(size=(n_classes, dim)),
            "precision": np.eye(dim), "entropy_weight": 0.5,
            "conformal_scores": np.sort(rng.exponential(size=200))}
    base.update(kw)
    return ScoringConstants(**base)  # type: ignore[arg-type]


def _gaussian_classes(rng: np.random.Generator, n: int, means: np.ndarray, cov: np.ndarray):
    labels = rng.integers(0, means.shape[0], n)
    emb = means[labels] + rng.multivariate_normal(np.zeros(means.shape[1]), cov, size=n)
    return emb, labels


def test_entropy_is_aleatoric_plus_epistemic_and_all_are_non_negative(rng: np.random.Generator) -> None:
    """For random ensembles, entropy = aleatoric + epistemic, each part >= 0, probs sum to 1."""
    logits = rng.normal(scale=3.0, size=(500, 5, 6))
    s = score(logits, rng.normal(size=(500, 4)), _constants(rng))
    np.testing.assert_allclose(s.entropy, s.aleatoric + s.epistemic, atol=1e-12)
    assert (s.aleatoric >= 0).all() and (s.epistemic >= 0).all()
    assert (s.entropy <= np.log(6) + 1e-12).all()
    np.testing.assert_allclose(s.probs.sum(axis=1), 1.0)
    assert np.array_equal(s.label_index, s.probs.argmax(axis=1))
    np.testing.assert_allclose(s.confidence, s.probs.max(axis=1))


def test_agreeing_members_have_no_epistemic_uncertainty(rng: np.random.Generator) -> None:
    """When every member gives the same logits, the mutual information is zero and entropy is all aleatoric."""
    one = rng.normal(size=(50, 1, 6))
    s = score(np.repeat(one, 4, axis=1), rng.normal(size=(50, 4)), _constants(rng))
    np.testing.assert_allclose(s.epistemic, 0.0, atol=1e-12)
    np.testing.assert_allclose(s.aleatoric, s.entropy, atol=1e-12)


def test_disagreeing_confident_members_are_epistemic(rng: np.random.Generator) -> None:
    """Members each sure of a different class give high epistemic and low aleatoric uncertainty."""
    logits = np.full((1, 4, 6), -20.0)
    for k in range(4):
        logits[0, k, k] = 20.0
    s = score(logits, np.zeros((1, 4)), _constants(rng))
    assert s.epistemic[0] == pytest.approx(np.log(4), rel=1e-6)
    assert s.aleatoric[0] < 1e-6


def test_temperature_fit_recovers_a_known_temperature(rng: np.random.Generator) -> None:
    """Labels drawn from softmax(z / 2.5) make fit_temperature return about 2.5."""
    n, c = 20000, 6
    z = rng.normal(scale=4.0, size=(n, c))
    p = member_probabilities(z, 2.5)[:, 0]
    labels = (p.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    t = fit_temperature(np.repeat(z[:, None, :], 3, axis=1), labels)
    assert t == pytest.approx(2.5, rel=0.06)
    assert fit_temperature(z, labels) == pytest.approx(t, rel=1e-6)


def test_mahalanobis_flags_an_outlier_cluster(rng: np.random.Generator) -> None:
    """On class Gaussians with a correlated shared covariance, a displaced cluster scores AUROC near 1."""
    dim, n_classes = 8, 4
    a = rng.normal(size=(dim, dim))
    cov = a @ a.T / dim + 0.1 * np.eye(dim)
    means = rng.normal(scale=4.0, size=(n_classes, dim))
    emb, labels = _gaussian_classes(rng, 4000, means, cov)
    fit_means, precision = fit_class_gaussians(emb, labels, n_classes, shrinkage=0.01)
    np.testing.assert_allclose(fit_means, means, atol=0.15)
    ordinary, _ = _gaussian_classes(rng, 1000, means, cov)
    # the outliers sit along the direction of least variance, where Euclidean distance misleads
    w, v = np.linalg.eigh(cov)
    outliers = means[rng.integers(0, n_classes, 300)] + 4.0 * np.sqrt(w[0]) * 3 * v[:, 0] \
        + rng.multivariate_normal(np.zeros(dim), cov, size=300)
    d_ord = mahalanobis_distance(ordinary, fit_means, precision)
    d_out = mahalanobis_distance(outliers, fit_means, precision)
    assert auroc(d_ord, d_out) > 0.98
    assert np.median(d_ord) == pytest.approx(1.0, abs=0.25)


def test_conformal_pvalues_are_uniform_and_alpha_flags_about_alpha(rng: np.random.Generator) -> None:
    """With exchangeable ordinary data, p-values are uniform and p <= alpha flags about alpha of fresh data."""
    m, n = 2000, 5000
    constants = _constants(rng, conformal_scores=rng.gamma(2.0, size=m))
    fresh = rng.gamma(2.0, size=n)
    p = conformal_pvalues(fresh, constants.conformal_scores)
    grid = np.linspace(0, 1, 101)
    ks = np.abs(np.searchsorted(np.sort(p), grid, side="right") / n - grid).max()
    assert ks < 1.63 * np.sqrt(1 / n + 1 / m)
    for alpha in (0.01, 0.05, 0.2):
        flagged = np.mean(p <= alpha)
        assert abs(flagged - alpha) < 3 * np.sqrt(alpha * (1 - alpha) * (1 / n + 1 / m))
    assert p.min() >= 1 / (m + 1) and p.max() <= 1.0


def test_score_pvalue_counts_calibration_scores_at_least_as_large(rng: np.random.Generator) -> None:
    """A score above every calibration score gets p = 1/(M+1); one below all gets p = 1."""
    constants = _constants(rng, entropy_weight=0.0, precision=np.eye(4),
                           conformal_scores=np.array([1.0, 2.0, 3.0]))
    far = constants.class_means[0] + 100.0
    near = constants.class_means[0]
    s = score(rng.normal(size=(2, 4, 6)), np.stack([far, near]), constants)
    assert s.anomaly_pvalue[0] == pytest.approx(1 / 4)
    assert s.anomaly_pvalue[1] == pytest.approx(1.0)
    assert s.distance[1] == pytest.approx(0.0, abs=1e-9)


def test_ece_is_near_zero_for_a_calibrated_predictor_and_large_for_an_overconfident_one(rng: np.random.Generator) -> None:
    """A predictor right with probability equal to its confidence has ECE near 0; claiming 0.99 at 50 % accuracy has ECE near 0.49."""
    n, c = 20000, 4
    conf = rng.uniform(0.25, 1.0, n)
    probs = np.empty((n, c))
    probs[:] = ((1 - conf) / (c - 1))[:, None]
    top = rng.integers(0, c, n)
    probs[np.arange(n), top] = conf
    right = rng.uniform(size=n) < conf
    labels = np.where(right, top, (top + rng.integers(1, c, n)) % c)
    assert expected_calibration_error(probs, labels) < 0.02
    over = np.full((n, 2), 0.01)
    over[:, 0] = 0.99
    coin = rng.integers(0, 2, n)
    assert expected_calibration_error(over, coin) == pytest.approx(0.49, abs=0.02)


def test_auroc_matches_pairwise_count_on_small_samples() -> None:
    """auroc equals the brute-force fraction of (neg, pos) pairs ordered right, ties counting half."""
    neg = np.array([0.1, 0.4, 0.4, 0.9])
    pos = np.array([0.4, 0.8, 1.0])
    pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p in pos for q in neg]
    assert auroc(neg, pos) == pytest.approx(np.mean(pairs))
    assert auroc([0, 1], [2, 3]) == 1.0 and auroc([2, 3], [0, 1]) == 0.0
    assert auroc([1, 1], [1]) == 0.5


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=20), st.lists(st.floats(-5, 5), min_size=1, max_size=20))
def test_auroc_equals_brute_force_for_any_samples(neg: list[float], pos: list[float]) -> None:
    """For arbitrary small samples, the rank formula and the pairwise definition agree."""
    brute = np.mean([(1.0 if p > q else 0.5 if p == q else 0.0) for p in pos for q in neg])
    assert auroc(neg, pos) == pytest.approx(brute, abs=1e-12)


_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.data())
def test_constants_round_trip_through_json(n_classes: int, dim: int, data: st.DataObject) -> None:
    """to_dict -> JSON -> from_dict reproduces every constant bit for bit."""
    constants = ScoringConstants(
        temperature=data.draw(st.floats(1e-3, 100)),
        class_means=data.draw(hnp.arrays(np.float64, (n_classes, dim), elements=_floats)),
        precision=data.draw(hnp.arrays(np.float64, (dim, dim), elements=_floats)),
        entropy_weight=data.draw(st.floats(0, 10)),
        conformal_scores=data.draw(hnp.arrays(np.float64, st.integers(1, 30), elements=_floats)),
    )
    back = ScoringConstants.from_dict(json.loads(json.dumps(constants.to_dict())))
    assert back.temperature == constants.temperature
    assert back.entropy_weight == constants.entropy_weight
    for name in ("class_means", "precision", "conformal_scores"):
        assert np.array_equal(getattr(back, name), getattr(constants, name))
    assert np.all(np.diff(back.conformal_scores) >= 0)


def test_broken_constants_are_refused_with_integrity_errors(rng: np.random.Generator) -> None:
    """A missing key, a non-positive temperature or a precision of the wrong size is an EngineIntegrityError."""
    good = _constants(rng).to_dict()
    with pytest.raises(EngineIntegrityError, match="precision"):
        ScoringConstants.from_dict({k: v for k, v in good.items() if k != "precision"})
    with pytest.raises(EngineIntegrityError, match="temperature"):
        ScoringConstants.from_dict({**good, "temperature": 0.0})
    with pytest.raises(EngineIntegrityError, match="precision"):
        ScoringConstants.from_dict({**good, "precision": np.eye(3).tolist()})
    with pytest.raises(EngineIntegrityError, match="non-finite"):
        ScoringConstants.from_dict({**good, "conformal_scores": [1.0, float("nan")]})


def test_engine_outputs_that_do_not_fit_the_constants_are_refused(rng: np.random.Generator) -> None:
    """Wrong class count, wrong embedding size or NaN logits raise EngineError rather than scoring garbage."""
    constants = _constants(rng)
    with pytest.raises(EngineError, match="classes"):
        score(rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4)), constants)
    with pytest.raises(EngineError, match="embedding"):
        score(rng.normal(size=(3, 4, 6)), rng.normal(size=(3, 5)), constants)
    bad = rng.normal(size=(3, 4, 6))
    bad[1, 2, 3] = np.nan
    with pytest.raises(EngineError, match="NaN"):
        score(bad, rng.normal(size=(3, 4)), constants)


def test_fit_class_gaussians_refuses_a_class_without_samples(rng: np.random.Generator) -> None:
    """Fitting with a class absent from the labels says which class is missing."""
    with pytest.raises(EngineError, match=r"\[2\]"):
        fit_class_gaussians(rng.normal(size=(30, 3)), np.arange(30) % 2, 3)


def test_the_unknown_distance_can_ignore_the_unusual_classes(rng: np.random.Generator) -> None:
    """With distance_classes the distance is to the first classes' Gaussians only: an embedding on an
    unusual class's mean is far from every ordinary one; the choice survives the manifest round trip."""
    from engines.scoring import ScoringConstants, score

    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    logits = rng.normal(size=(1, 2, 3))
    on_third = np.array([[0.0, 10.0]])
    every = ScoringConstants(1.0, means, np.eye(2), 0.0, np.array([0.0, 1.0]))
    ordinary = ScoringConstants(1.0, means, np.eye(2), 0.0, np.array([0.0, 1.0]), distance_classes=2)
    assert score(logits, on_third, every).distance[0] == pytest.approx(0.0)
    assert score(logits, on_third, ordinary).distance[0] == pytest.approx(100.0 / 2)
    assert ScoringConstants.from_dict(ordinary.to_dict()).distance_classes == 2
    assert "distance_classes" not in every.to_dict()
    with pytest.raises(EngineIntegrityError, match="distance_classes"):
        ScoringConstants(1.0, means, np.eye(2), 0.0, np.array([0.0]), distance_classes=4)


def test_the_not_ordinary_term_raises_the_score_of_whatever_the_unusual_classes_claim(rng: np.random.Generator) -> None:
    """With unusual_weight, a detection the engine gives to its unusual classes scores higher by
    -w log(1 - p_unusual) than with no such term; an ordinary-looking one hardly changes."""
    from engines.scoring import ScoringConstants, score

    means = np.zeros((3, 2))
    logits = np.array([[[5.0, 0.0, 0.0]], [[0.0, 0.0, 5.0]]])       # ordinary, then unusual
    embedding = np.zeros((2, 2))
    plain = ScoringConstants(1.0, means, np.eye(2), 0.0, np.array([0.0]), distance_classes=2)
    weighted = ScoringConstants(1.0, means, np.eye(2), 0.0, np.array([0.0]), distance_classes=2, unusual_weight=3.0)
    a, b = score(logits, embedding, plain), score(logits, embedding, weighted)
    p_unusual = b.probs[:, 2]
    np.testing.assert_allclose(b.anomaly_score - a.anomaly_score, -3.0 * np.log(1 - p_unusual))
    assert b.anomaly_score[1] - a.anomaly_score[1] > 10 * (b.anomaly_score[0] - a.anomaly_score[0])
    assert ScoringConstants.from_dict(weighted.to_dict()).unusual_weight == 3.0
    with pytest.raises(EngineIntegrityError, match="unusual_weight needs distance_classes"):
        ScoringConstants(1.0, means, np.eye(2), 0.0, np.array([0.0]), unusual_weight=1.0)
