"""The triage policy: each reason fires on its condition, audits are a fair random sample, priority order."""

from __future__ import annotations

import numpy as np
import pytest

from edge.config import config_from_mapping
from edge.errors import ConfigError
from edge.triage import TriagePolicy, triage

POLICY = TriagePolicy(confidence_min=0.9, epistemic_max_nats=0.1, alpha=0.01,
                      classes_of_interest=("streak",), audit_rate=0.0)


def run(policy: TriagePolicy, rows: list[tuple[str, float, float, float, bool]],
        rng: np.random.Generator) -> tuple[tuple[str, ...], ...]:
    labels, conf, epi, pval, new = zip(*rows, strict=True)
    return triage(policy, labels=labels, confidence=np.array(conf), epistemic_nats=np.array(epi),
                  anomaly_pvalue=np.array(pval), new=np.array(new), rng=rng).reasons


def test_each_reason_fires_on_its_own_condition(rng: np.random.Generator) -> None:
    """Low confidence, high epistemic, low p-value, a class of interest and no counterpart each name their reason."""
    reasons = run(POLICY, [
        ("star", 0.99, 0.01, 0.5, False),    # confident ordinary: suppressed
        ("star", 0.50, 0.01, 0.5, False),    # low confidence
        ("star", 0.99, 0.30, 0.5, False),    # high epistemic
        ("galaxy", 0.99, 0.01, 0.001, False),  # anomalous
        ("streak", 0.99, 0.01, 0.5, False),  # class of interest
        ("star", 0.99, 0.01, 0.5, True),     # no catalog counterpart
        ("streak", 0.40, 0.50, 0.002, True),  # everything at once
    ], rng)
    assert reasons == ((), ("uncertain",), ("uncertain",), ("unknown",), ("unusual",), ("new",),
                       ("uncertain", "unknown", "unusual", "new"))


def test_thresholds_are_inclusive_where_documented(rng: np.random.Generator) -> None:
    """A p-value equal to alpha is unknown; confidence equal to its minimum and epistemic equal to its maximum are not uncertain."""
    reasons = run(POLICY, [("star", 0.9, 0.1, 0.01, False), ("star", 0.9, 0.1, 0.0100001, False)], rng)
    assert reasons == (("unknown",), ())


def test_non_finite_scores_are_never_suppressed_as_ordinary(rng: np.random.Generator) -> None:
    """NaN confidence, epistemic or p-value sends the detection down instead of hiding it."""
    reasons = run(POLICY, [("star", float("nan"), 0.0, 0.5, False), ("star", 0.99, float("nan"), 0.5, False),
                           ("star", 0.99, 0.0, float("nan"), False)], rng)
    assert reasons == (("uncertain",), ("uncertain",), ("unknown",))


def test_new_is_ignored_when_the_policy_says_so(rng: np.random.Generator) -> None:
    """With send_new off, a detection without a counterpart is not sent for that reason alone."""
    policy = TriagePolicy(send_new=False, audit_rate=0.0)
    assert run(policy, [("star", 0.99, 0.0, 0.5, True)], rng) == ((),)


def test_an_unusual_call_below_the_confidence_minimum_is_not_sent_as_unusual(rng: np.random.Generator) -> None:
    """With unusual_confidence_min set, a class-of-interest call is unusual at that confidence and
    above (inclusive), and below it only what else it is (here: uncertain when also under
    confidence_min); out-of-range values are refused."""
    from dataclasses import replace

    policy = replace(POLICY, confidence_min=0.3, unusual_confidence_min=0.6)
    reasons = run(policy, [("streak", 0.6, 0.01, 0.5, False), ("streak", 0.59, 0.01, 0.5, False),
                           ("streak", 0.2, 0.01, 0.5, False)], rng)
    assert reasons == (("unusual",), (), ("uncertain",))
    with pytest.raises(ValueError, match="unusual_confidence_min"):
        TriagePolicy(unusual_confidence_min=1.5)

def test_audit_samples_confident_ordinary_detections_at_the_configured_rate() -> None:
    """About audit_rate of confident ordinary detections are sent as audits; flagged ones never carry audit."""
    n = 40_000
    policy = TriagePolicy(audit_rate=0.01, confidence_min=0.9, max_records_per_frame=n)  # no cap here
    rng = np.random.default_rng(7)
    conf = np.where(np.arange(n) % 4 == 0, 0.5, 0.99)  # a quarter is uncertain
    result = triage(policy, labels=["star"] * n, confidence=conf, epistemic_nats=np.zeros(n),
                    anomaly_pvalue=np.full(n, 0.5), new=np.zeros(n, bool), rng=rng)
    audited = np.array(["audit" in r for r in result.reasons])
    ordinary = conf > 0.9
    assert not audited[~ordinary].any()
    rate = audited[ordinary].mean()
    # binomial standard error at p=0.01, n=30000 is 0.00057: four of them either side
    assert 0.01 - 0.0023 < rate < 0.01 + 0.0023
    assert result.sent == int(audited.sum()) + int((~ordinary).sum())
    assert result.sent + result.suppressed == n
    assert result.counts_by_reason()["audit"] == int(audited.sum())


def test_same_seed_same_audit_sample_and_rng_use_does_not_depend_on_the_data() -> None:
    """The audit draw is reproducible from the seed and consumes N uniforms whatever the scores say."""
    n = 500
    policy = TriagePolicy(audit_rate=0.1)
    args = dict(labels=["star"] * n, epistemic_nats=np.zeros(n), anomaly_pvalue=np.full(n, 0.5),
                new=np.zeros(n, bool))
    a = triage(policy, confidence=np.full(n, 0.99), rng=np.random.default_rng(3), **args)
    b = triage(policy, confidence=np.full(n, 0.99), rng=np.random.default_rng(3), **args)
    assert a.reasons == b.reasons and a.sent > 0
    rng_low, rng_high = np.random.default_rng(5), np.random.default_rng(5)
    triage(policy, confidence=np.full(n, 0.1), rng=rng_low, **args)
    triage(policy, confidence=np.full(n, 0.99), rng=rng_high, **args)
    assert rng_low.random() == rng_high.random()


def test_priority_puts_lowest_pvalue_then_highest_epistemic_first(rng: np.random.Generator) -> None:
    """Sorting by priority puts the most anomalous first, among equal p-values the most epistemic, and the epistemic part counts 10 per nat by default."""
    pval = np.array([0.5, 0.001, 0.001, 0.05, 0.5])
    epi = np.array([0.0, 0.0, 0.2, 0.0, 0.05])
    result = triage(POLICY, labels=["star"] * 5, confidence=np.full(5, 0.5), epistemic_nats=epi,
                    anomaly_pvalue=pval, new=np.zeros(5, bool), rng=rng)
    order = np.argsort(-result.priority, kind="stable")
    assert order.tolist() == [2, 1, 3, 4, 0]
    np.testing.assert_allclose(result.priority, -np.log10(pval) + 10.0 * epi)


def test_mismatched_lengths_are_refused(rng: np.random.Generator) -> None:
    """Arrays of different lengths are a ValueError naming the culprit."""
    with pytest.raises(ValueError, match="anomaly_pvalue"):
        triage(POLICY, labels=["star", "star"], confidence=np.ones(2), epistemic_nats=np.zeros(2),
               anomaly_pvalue=np.ones(3), new=np.zeros(2, bool), rng=rng)


def test_policy_comes_from_the_config_file_and_bad_values_are_named() -> None:
    """The [triage] section builds the policy, and out-of-range values are reported as config errors."""
    cfg = config_from_mapping({"triage": {"version": 4, "alpha": 0.005, "classes_of_interest": ["streak", "arc"]}})
    assert cfg.triage == TriagePolicy(version=4, alpha=0.005, classes_of_interest=("streak", "arc"))
    with pytest.raises(ConfigError, match="alpha must be in") as exc:
        config_from_mapping({"triage": {"alpha": 1.5, "audit_rate": 0.1}})
    assert "[triage]" in str(exc.value)
    for bad in ({"audit_rate": -0.1}, {"confidence_min": 2.0}, {"version": 0}):
        with pytest.raises(ValueError):
            TriagePolicy(**bad)


def test_blends_are_sent_only_when_the_policy_says_so(rng: np.random.Generator) -> None:
    """With send_blends a detection whose multiplicity ratio reaches blend_lr_min is sent as a blend;
    by default (and where nothing was measured) no detection is sent for being a blend."""
    args = dict(labels=["star"] * 4, confidence=np.full(4, 0.99), epistemic_nats=np.zeros(4),
                anomaly_pvalue=np.full(4, 0.5), new=np.zeros(4, bool), blend_lr=np.array([5.0, 20.0, 90.0, np.nan]))
    assert triage(POLICY, rng=rng, **args).reasons == ((), (), (), ())
    on = TriagePolicy(**{**POLICY.__dict__, "send_blends": True})
    assert triage(on, rng=rng, **args).reasons == ((), ("blend",), ("blend",), ())
    assert triage(on, rng=rng, **{**args, "blend_lr": None}).reasons == ((), (), (), ())
    with pytest.raises(ValueError, match="blend_lr_min"):
        TriagePolicy(blend_lr_min=-1.0)


def test_the_default_policy_sends_the_taught_unusual_classes() -> None:
    """Every unusual family the context engine is taught is a class of interest by default."""
    from edge.node.assemble import MODELS_DIR
    from engines.manifest import load_manifest

    classes = load_manifest(MODELS_DIR / "stampnet-v3").classes
    assert len(classes) > 6 and set(classes[6:]) <= set(TriagePolicy().classes_of_interest)
    assert "streak" in TriagePolicy().classes_of_interest


def test_the_per_frame_cap_keeps_the_highest_priorities_and_counts_the_rest() -> None:
    """1000 unknown detections under a cap of 100: the 100 of highest priority are sent, with their
    reasons; the other 900 are suppressed, carry no reason and are counted as capped."""
    n, cap = 1000, 100
    rng = np.random.default_rng(3)
    pvalue = rng.uniform(1e-6, 1e-3, n)           # every one unknown at alpha 0.01
    policy = TriagePolicy(max_records_per_frame=cap)
    result = triage(policy, labels=["star"] * n, confidence=np.full(n, 0.99), epistemic_nats=np.zeros(n),
                    anomaly_pvalue=pvalue, new=np.zeros(n, bool), rng=np.random.default_rng(0))
    assert (result.sent, result.suppressed, result.capped) == (cap, n - cap, n - cap)
    sent = np.flatnonzero(result.send)
    assert set(sent.tolist()) == set(np.argsort(-result.priority, kind="stable")[:cap].tolist())
    assert all(result.reasons[i] == ("unknown",) for i in sent)
    assert all(result.reasons[i] == () for i in np.flatnonzero(~result.send))
    assert result.counts_by_reason()["unknown"] == cap
    under = triage(TriagePolicy(max_records_per_frame=n), labels=["star"] * n, confidence=np.full(n, 0.99),
                   epistemic_nats=np.zeros(n), anomaly_pvalue=pvalue, new=np.zeros(n, bool),
                   rng=np.random.default_rng(0))
    assert (under.sent, under.capped) == (n, 0)
    with pytest.raises(ValueError, match="max_records_per_frame"):
        TriagePolicy(max_records_per_frame=0)
