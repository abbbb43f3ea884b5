"""Paired uncertainty (DeLong, paired bootstrap, non-inferiority), calibration and CBPE.

The fast implementations are checked against slow references written here (O(n^2)
DeLong, sklearn on explicitly resampled rows), not against themselves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from churn_assets.core.calibration import (
    calibration_bin_edges,
    estimate_performance,
    expected_calibration_error,
    reliability_curve,
)
from churn_assets.core.bootstrap import BOOTSTRAP_METRICS, paired_bootstrap, resampled_metrics
from churn_assets.core.uncertainty import PairedDifference, delong_test, noninferiority


def tied_scores(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two correlated, informative scores rounded so that many rows tie."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    signal = y + rng.normal(0, 1.0, n)
    a = 1 / (1 + np.exp(-signal))
    b = 1 / (1 + np.exp(-(0.8 * signal + rng.normal(0, 0.7, n))))
    return y, np.round(a, 2), np.round(b, 1)


def slow_delong(y, a, b):
    """DeLong, DeLong & Clarke-Pearson (1988) by pairwise comparisons: AUCs, var(diff)."""
    v10, v01, auc = [], [], []
    for s in (a, b):
        pos, neg = s[y == 1], s[y == 0]
        psi = np.array([[1.0 if x > z else 0.5 if x == z else 0.0 for z in neg] for x in pos])
        auc.append(psi.sum() / psi.size)
        v10.append(psi.mean(axis=1))  # one structural component per positive
        v01.append(psi.mean(axis=0))  # one per negative
    m, k = len(v10[0]), len(v01[0])

    def cov(v, r, s, size):
        return sum((v[r][i] - auc[r]) * (v[s][i] - auc[s]) for i in range(size)) / (size - 1)

    s = [[cov(v10, r, t, m) / m + cov(v01, r, t, k) / k for t in (0, 1)] for r in (0, 1)]
    return auc[0], auc[1], s[0][0] + s[1][1] - 2 * s[0][1]


@pytest.mark.parametrize(("seed", "n"), [(0, 200), (1, 450), (2, 800)])
def test_delong_matches_the_pairwise_reference_and_sklearn(seed, n):
    y, a, b = tied_scores(seed, n)
    auc_a, auc_b, var = slow_delong(y, a, b)
    result = delong_test(y, a, b, confidence=0.9)

    assert result.challenger == pytest.approx(auc_a, abs=1e-9)
    assert result.champion == pytest.approx(auc_b, abs=1e-9)
    assert result.challenger == pytest.approx(skm.roc_auc_score(y, a), abs=1e-12)
    assert result.champion == pytest.approx(skm.roc_auc_score(y, b), abs=1e-12)
    assert result.standard_error == pytest.approx(math.sqrt(var), abs=1e-9)
    z = norm.ppf(0.95)
    assert result.ci_low == pytest.approx(auc_a - auc_b - z * math.sqrt(var), abs=1e-9)
    assert result.ci_high == pytest.approx(auc_a - auc_b + z * math.sqrt(var), abs=1e-9)
    assert result.p_value == pytest.approx(2 * norm.sf(abs(auc_a - auc_b) / math.sqrt(var)), abs=1e-9)
    assert result.one_sided_high == pytest.approx(auc_a - auc_b + norm.ppf(0.9) * math.sqrt(var), abs=1e-9)


def test_delong_degenerate_cases():
    y, a, _ = tied_scores(3, 300)
    same = delong_test(y, a, a)
    assert same.difference == 0 and same.standard_error == 0
    assert same.ci_low == same.ci_high == 0 and same.p_value == 1.0

    one_class = delong_test(np.zeros(50, dtype=int), a[:50], a[:50])
    assert all(math.isnan(v) for v in (one_class.challenger, one_class.difference,
                                       one_class.standard_error, one_class.p_value))


def sklearn_metrics(y, p, threshold):
    predicted = p >= threshold
    return {
        "roc_auc": skm.roc_auc_score(y, p),
        "pr_auc": skm.average_precision_score(y, p),
        "brier_score": skm.brier_score_loss(y, p),
        # The share of the base rate's Brier score removed, the base rate being these rows'.
        "brier_skill": 1 - skm.brier_score_loss(y, p) / (np.mean(y) * (1 - np.mean(y))),
        "log_loss": skm.log_loss(y, p, labels=[0, 1]),
        "accuracy": skm.accuracy_score(y, predicted),
        "precision": skm.precision_score(y, predicted, zero_division=0),
        "recall": skm.recall_score(y, predicted, zero_division=0),
        "f1": skm.f1_score(y, predicted, zero_division=0),
    }


def test_bootstrap_point_estimates_are_sklearns_metrics():
    y, a, b = tied_scores(4, 3000)
    a[:5] = [0.0, 1.0, 0.0, 1.0, 1.0]  # log loss must clip like sklearn
    result = paired_bootstrap(y, a, b, threshold_challenger=0.4, threshold_champion=0.6, n_resamples=50)
    assert set(result) == set(BOOTSTRAP_METRICS)
    for proba, threshold, side in ((a, 0.4, "challenger"), (b, 0.6, "champion")):
        expected = sklearn_metrics(y, proba, threshold)
        expected["ece"] = expected_calibration_error(y, proba)
        for metric, value in expected.items():
            assert getattr(result[metric], side) == pytest.approx(value, abs=1e-12), (metric, side)
    for metric, diff in result.items():
        assert diff.difference == pytest.approx(diff.challenger - diff.champion, abs=1e-15)
        assert diff.ci_low <= diff.one_sided_low <= diff.one_sided_high <= diff.ci_high, metric


@pytest.mark.parametrize("seed", [5, 6])
def test_weighted_metrics_equal_sklearn_on_the_explicitly_resampled_rows(seed):
    y, a, _ = tied_scores(seed, 60)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, y.size, y.size), minlength=y.size) for _ in range(6)])
    edges = calibration_bin_edges(a)  # bootstrap ECE keeps the full sample's bins
    weighted = resampled_metrics(y, a, counts, threshold=0.45)
    for r, count in enumerate(counts):
        y_r, a_r = np.repeat(y, count), np.repeat(a, count)
        expected = sklearn_metrics(y_r, a_r, 0.45)
        expected["ece"] = expected_calibration_error(y_r, a_r, bin_edges=edges)
        assert set(expected) == set(weighted)
        for metric, value in expected.items():
            assert weighted[metric][r] == pytest.approx(value, abs=1e-9), (metric, r)


def test_bootstrap_is_seeded():
    y, a, b = tied_scores(7, 1500)
    first = paired_bootstrap(y, a, b, metrics=("pr_auc", "brier_score"), n_resamples=200, seed=1)
    again = paired_bootstrap(y, a, b, metrics=("pr_auc", "brier_score"), n_resamples=200, seed=1)
    other = paired_bootstrap(y, a, b, metrics=("pr_auc", "brier_score"), n_resamples=200, seed=2)
    assert first == again
    assert first["pr_auc"].ci_low != other["pr_auc"].ci_low
    assert first["brier_score"].ci_high != other["brier_score"].ci_high
    assert first["pr_auc"].challenger == other["pr_auc"].challenger


def test_bootstrap_of_a_model_against_itself_finds_no_difference():
    y, a, _ = tied_scores(14, 500)
    for metric, diff in paired_bootstrap(y, a, a, n_resamples=40).items():
        assert (diff.difference, diff.ci_low, diff.ci_high, diff.standard_error) == (0, 0, 0, 0), metric
        assert diff.p_value == 1.0, metric


@pytest.mark.parametrize("seed", [10, 13])
def test_bootstrap_and_delong_agree_on_roc_auc_uncertainty(seed):
    # Two close models (DeLong p ~0.38 and ~0.13): both methods estimate the same
    # sampling distribution of the difference, so SE and p-value should roughly agree.
    y, a, _ = tied_scores(seed, 2000)
    close = np.clip(a + np.random.default_rng(seed).normal(0, 0.05, a.size), 0, 1)
    delong = delong_test(y, a, close)
    boot = paired_bootstrap(y, a, close, metrics=("roc_auc",), n_resamples=1000)["roc_auc"]
    assert boot.difference == pytest.approx(delong.difference, abs=1e-12)
    assert boot.standard_error == pytest.approx(delong.standard_error, rel=0.1)
    assert 0.1 < delong.p_value < 0.5
    assert boot.p_value == pytest.approx(delong.p_value, abs=0.06)


def champion_and_noise(n=5000, seed=9):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    champion = 1 / (1 + np.exp(-(2.5 * y - 1.5 + rng.normal(0, 1, n))))
    return rng, y, champion


def test_noninferiority_refuses_a_clearly_worse_challenger():
    rng, y, champion = champion_and_noise()
    noise = rng.random(y.size)
    auc = noninferiority(delong_test(y, noise, champion), max_regression=0.005, higher_is_better=True)
    assert not auc.passed and "clearly worse" in auc.reason and "upper 95% bound" in auc.reason
    boot = paired_bootstrap(y, noise, champion, metrics=("brier_score", "pr_auc"), n_resamples=200)
    assert not noninferiority(boot["brier_score"], 0.005, higher_is_better=False).passed
    assert not noninferiority(boot["pr_auc"], 0.01, higher_is_better=True).passed


def test_noninferiority_accepts_a_tied_challenger():
    rng, y, champion = champion_and_noise()
    tied = np.clip(champion + rng.normal(0, 1e-3, y.size), 0, 1)
    auc = noninferiority(delong_test(y, tied, champion), max_regression=0.005, higher_is_better=True)
    assert auc.passed, auc.reason
    boot = paired_bootstrap(y, tied, champion, metrics=("brier_score", "log_loss"), n_resamples=200)
    assert noninferiority(boot["brier_score"], 0.005, higher_is_better=False).passed
    assert noninferiority(boot["log_loss"], 0.01, higher_is_better=False).passed


def made_up(difference, one_sided_low, one_sided_high, ci_low=-0.02, ci_high=0.01):
    return PairedDifference("roc_auc", 0.8, 0.8 - difference, difference, 0.01, ci_low, ci_high, 0.5,
                            "test", 0.95, one_sided_low, one_sided_high)


def test_noninferiority_uses_the_one_sided_bound():
    within_noise = noninferiority(made_up(-0.006, -0.02, -0.0049), 0.005, higher_is_better=True)
    assert within_noise.passed and "within noise" in within_noise.reason
    assert not noninferiority(made_up(-0.006, -0.02, -0.0051), 0.005, higher_is_better=True).passed
    within = noninferiority(made_up(-0.001, -0.01, 0.008), 0.005, higher_is_better=True)
    assert within.passed and "within the allowed -0.005" in within.reason
    # A loss: a positive difference is a regression.
    assert not noninferiority(made_up(0.02, 0.0051, 0.03), 0.005, higher_is_better=False).passed
    assert noninferiority(made_up(0.02, 0.0049, 0.03), 0.005, higher_is_better=False).passed
    # Without one-sided bounds: the two-sided interval's bound, a one-sided 97.5% one.
    fallback = noninferiority(made_up(-0.03, math.nan, math.nan, -0.05, -0.01), 0.005, higher_is_better=True)
    assert not fallback.passed and "97.5%" in fallback.reason


def test_ece_of_calibrated_and_of_class_weighted_probabilities():
    rng = np.random.default_rng(10)
    p = rng.beta(1.5, 6, 200_000)
    y = (rng.random(p.size) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, p, strategy="uniform") < 0.01
    w = 6.0  # balanced class weights at a ~14% churn rate inflate the odds about this much
    inflated = p * w / (p * w + 1 - p)
    assert expected_calibration_error(y, inflated) > 0.1


def test_ece_by_hand_and_reliability_curve_matches_sklearn():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.6, 0.8])
    # Two equal-count bins: {0.1, 0.3} -> |0.2 - 0| and {0.6, 0.8} -> |0.7 - 1|, half the rows each.
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.5 * 0.2 + 0.5 * 0.3, abs=1e-12)
    assert expected_calibration_error(y, p, n_bins=1) == pytest.approx(abs(0.45 - 0.5), abs=1e-12)

    y, a, _ = tied_scores(11, 1000)
    for strategy in ("quantile", "uniform"):
        curve = reliability_curve(y, a, n_bins=8, strategy=strategy)
        observed, predicted = calibration_curve(y, a, n_bins=8, strategy=strategy)
        np.testing.assert_allclose(curve.observed_rate, observed, atol=1e-12)
        np.testing.assert_allclose(curve.mean_predicted, predicted, atol=1e-12)
        assert curve.counts.sum() == y.size
        gap = np.abs(curve.mean_predicted - curve.observed_rate) @ curve.counts / y.size
        assert gap == pytest.approx(expected_calibration_error(y, a, n_bins=8, strategy=strategy), abs=1e-12)


def test_cbpe_estimates_performance_of_calibrated_probabilities_without_labels():
    rng = np.random.default_rng(12)
    p = rng.beta(2, 5, 20_000)
    y = (rng.random(p.size) < p).astype(int)  # the labels CBPE does not see
    estimate = estimate_performance(p, threshold=0.4, confidence=0.99)

    realized = sklearn_metrics(y, p, 0.4)
    assert abs(estimate.roc_auc - realized["roc_auc"]) < 0.01
    assert estimate.roc_auc_low <= realized["roc_auc"] <= estimate.roc_auc_high
    assert estimate.roc_auc_high - estimate.roc_auc_low < 0.04
    for metric in ("precision", "recall", "f1", "accuracy"):
        assert abs(getattr(estimate, metric) - realized[metric]) < 0.02, metric
        assert getattr(estimate, f"{metric}_low") <= realized[metric] <= getattr(estimate, f"{metric}_high"), metric

    matrix = (estimate.expected_tp, estimate.expected_fp, estimate.expected_fn, estimate.expected_tn)
    assert sum(matrix) == pytest.approx(estimate.rows, abs=1e-6) and estimate.rows == p.size
    assert estimate.expected_tp + estimate.expected_fp == (p >= 0.4).sum()
    assert estimate.expected_churn_rate == pytest.approx(p.mean(), abs=1e-15)
    assert estimate.to_dict()["roc_auc"] == estimate.roc_auc
    assert estimate == estimate_performance(p, threshold=0.4, confidence=0.99)


def test_cbpe_roc_auc_is_the_auc_of_each_row_as_p_positive_and_1_minus_p_negative():
    # NannyML's expected ROC curve, with ties: every row counts as a positive with weight
    # p and as a negative with weight 1 - p.
    p = np.round(np.random.default_rng(13).beta(2, 5, 3000), 2)
    expected = skm.roc_auc_score(np.r_[np.ones(p.size), np.zeros(p.size)], np.r_[p, p],
                                 sample_weight=np.r_[p, 1 - p])
    assert estimate_performance(p, threshold=0.3, n_draws=20).roc_auc == pytest.approx(expected, abs=1e-12)


# --- customers that repeat across holdout weeks ----------------------------------------

def repeated_customers(n_customers: int = 800, weeks: int = 2, seed: int = 0):
    """A two-week holdout of the same customers: each customer's risk and label persist
    across weeks, and both models err on them alike."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n_customers)
    churner = rng.random(n_customers) < 1 / (1 + np.exp(-(1.5 * risk - 2)))
    groups = np.tile(np.arange(n_customers), weeks)
    y = np.tile(churner, weeks).astype(int)
    a = np.tile(risk, weeks) + rng.normal(scale=0.3, size=groups.size) + np.tile(rng.normal(size=n_customers), weeks)
    b = np.tile(risk, weeks) + rng.normal(scale=0.3, size=groups.size) + np.tile(rng.normal(size=n_customers), weeks)
    return y, a, b, groups


def test_grouped_delong_widens_when_customers_repeat_and_not_otherwise():
    y, a, b, groups = repeated_customers()
    rows, grouped = delong_test(y, a, b), delong_test(y, a, b, groups=groups)
    assert grouped.method == "DeLong, grouped" and grouped.difference == rows.difference
    # Two nearly identical rows per customer: the effective sample is about half.
    assert grouped.standard_error > 1.25 * rows.standard_error
    unique = delong_test(y, a, b, groups=np.arange(y.size))
    assert unique.standard_error == pytest.approx(rows.standard_error, rel=0.02)


def test_auc_standard_error_of_one_model_grouped():
    from churn_assets.core.uncertainty import auc_standard_error

    y, a, _, groups = repeated_customers(seed=1)
    auc, se = auc_standard_error(y, a)
    grouped_auc, grouped_se = auc_standard_error(y, a, groups=groups)
    assert auc == grouped_auc and grouped_se > 1.25 * se
    assert auc_standard_error(np.zeros(5, int), np.arange(5.0)) != auc_standard_error(y, a)  # one class: NaN


def test_grouped_bootstrap_draws_customers():
    y, a, b, groups = repeated_customers(n_customers=400, seed=2)
    pa, pb = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
    rows = paired_bootstrap(y, pa, pb, metrics=("pr_auc",), n_resamples=300, seed=0)["pr_auc"]
    grouped = paired_bootstrap(y, pa, pb, metrics=("pr_auc",), n_resamples=300, seed=0, groups=groups)["pr_auc"]
    assert "of customers" in grouped.method and grouped.difference == rows.difference
    assert grouped.standard_error > 1.2 * rows.standard_error


def test_ece_noise_floor_is_what_a_calibrated_model_shows():
    from churn_assets.core.calibration import ece_noise_floor

    rng = np.random.default_rng(4)
    p = rng.beta(1, 7, 3000)  # churn probabilities around 12%
    floor = ece_noise_floor(p, draws=400, seed=1)
    # A calibrated model's measured ECE lies under the floor's 95th percentile ~95% of the time.
    measured = [expected_calibration_error((rng.random(p.size) < p).astype(int), p) for _ in range(200)]
    assert 0.9 <= np.mean(np.array(measured) <= floor.p95) <= 0.99
    assert abs(np.mean(measured) - floor.mean) < 0.002
    # More rows, less noise; a 3-point overprediction is far above it.
    assert ece_noise_floor(np.tile(p, 10), draws=100).mean < floor.mean / 2
    y = (rng.random(p.size) < p).astype(int)
    assert floor.verdict(expected_calibration_error(y, np.clip(p + 0.03, 0, 1))) == "above noise"


def test_estimate_alternatives_carry_the_calibrators_uncertainty():
    rng = np.random.default_rng(5)
    p = rng.beta(1, 7, 2000)
    alone = estimate_performance(p, 0.2, n_draws=400, seed=0)
    # Other plausible calibrations of the same scores: flatter and steeper maps.
    logit = np.log(p / (1 - p))
    alternatives = np.vstack([1 / (1 + np.exp(-(s * (logit + 2) - 2))) for s in np.linspace(0.8, 1.2, 20)])
    wider = estimate_performance(p, 0.2, n_draws=400, seed=0, alternatives=alternatives)
    assert wider.roc_auc == alone.roc_auc  # the point estimate is the calibrated one's
    assert (wider.roc_auc_high - wider.roc_auc_low) > 1.3 * (alone.roc_auc_high - alone.roc_auc_low)
    with pytest.raises(ValueError, match="alternatives must have shape"):
        estimate_performance(p, 0.2, alternatives=alternatives[:, :10])
