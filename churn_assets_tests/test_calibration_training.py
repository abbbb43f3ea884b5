"""Calibrated churn probabilities: what train_challenger serves, and ECE as a metric."""

from __future__ import annotations

import copy
import functools
import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from churn_assets.core.artifact import ScoreCalibrator
from churn_assets.core.calibration import expected_calibration_error
from churn_assets.core.features import build_preprocessor
from churn_assets.core.gate import GateRule, evaluate_gate
from churn_assets.core.metrics import HIGHER_IS_BETTER, METRIC_NAMES, best_f1_threshold, churn_metrics
from churn_assets.core.spec import LABEL, load_spec
from churn_assets.core.training import WindowPlan, choose_calibration, train_challenger
from churn_assets.devtools.sample_models import sample_frames

SPEC = load_spec("simulator")


@functools.cache
def frames():
    # About 12% churners: balanced class weights act as if half were, so the raw
    # probabilities of the weighted fit sit far above the churn rate.
    return sample_frames(n_customers=600)


@functools.cache
def trained(calibration: str | None, family: str = "logistic_regression"):
    fr = frames()
    preprocessor = build_preprocessor(SPEC).fit(fr.training_window)
    predictor, _ = train_challenger(fr, SPEC, preprocessor, [family], 42, "test", "now", calibration=calibration)
    return predictor


def holdout():
    fr = frames()
    return fr.holdout, fr.holdout[LABEL].to_numpy()


def test_balanced_weights_inflate_scores_and_calibration_removes_it():
    rows, y = holdout()
    raw, calibrated = trained(None).predict_proba(rows), trained("sigmoid").predict_proba(rows)
    assert y.mean() < 0.2 and raw.mean() > 2 * y.mean()  # the fixture really is inflated
    raw_ece, calibrated_ece = expected_calibration_error(y, raw), expected_calibration_error(y, calibrated)
    assert raw_ece > 0.15
    assert calibrated_ece < 0.05 and calibrated_ece < raw_ece / 4
    assert abs(calibrated.mean() - y.mean()) < 0.03


def test_sigmoid_calibration_keeps_the_ranking_exactly():
    rows, y = holdout()
    predictor = trained("sigmoid")
    uncalibrated = predictor.pipeline.predict_proba(rows)[:, 1]  # same refit model, no calibrator
    assert roc_auc_score(y, predictor.predict_proba(rows)) == roc_auc_score(y, uncalibrated)


def test_threshold_is_tuned_on_the_calibrated_validation_scores():
    fr = frames()
    predictor = trained("sigmoid")
    y_val = fr.validation[LABEL].to_numpy()
    calibrated = predictor.calibrator(predictor.evaluated.pipeline.decision_function(fr.validation))
    assert predictor.threshold == best_f1_threshold(y_val, calibrated)
    expected = churn_metrics(y_val, calibrated, predictor.threshold)
    assert {k: predictor.validation_metrics[k] for k in expected} == expected
    # On the raw (inflated) scale the F1-best cut is far higher: the two are not mixed up.
    assert trained(None).threshold > predictor.threshold + 0.2
    # Platt scaling is strictly increasing, so the cut tuned on the calibrated scale picks
    # the same validation row as on the raw scale, and labels the same customers: a raw
    # threshold applied to calibrated scores (or the reverse) would not.
    rows, _ = holdout()
    np.testing.assert_array_equal(predictor.predict(rows), trained(None).predict(rows))


def test_no_evaluated_row_shares_a_label_window_with_what_scores_it():
    """A label covers the H days after its snapshot: the train weeks end H days before the
    first validation snapshot, and the deployed fit learns the newest weeks instead."""
    fr = frames()
    ts, horizon = SPEC.timestamp_column, pd.Timedelta(days=SPEC.label_horizon_days)
    assert fr.train[ts].max() + horizon <= fr.validation[ts].min()
    assert fr.train[ts].max() + horizon <= fr.holdout[ts].min()
    assert len(fr.embargo) and fr.embargo[ts].min() > fr.train[ts].max()
    assert fr.embargo[ts].max() < fr.validation[ts].min()
    # The deployed fit spans the plan's fit weeks, ending on the newest label; the
    # evaluated fit spans as many where the history reaches back far enough (here it
    # starts later, so it has fewer).
    span = lambda dates: (dates.max() - dates.min()).days  # noqa: E731
    served = pd.concat(fr.frames)
    served = served[served[ts] >= fr.serving_start]
    assert served[ts].max() == fr.holdout[ts].max() and span(served[ts]) == 7 * (WindowPlan().fit_weeks - 1)
    assert span(fr.train[ts]) <= span(served[ts])
    for family in ("logistic_regression", "hist_gradient_boosting"):
        predictor = trained("sigmoid", family)
        # The calibrator was fitted on the evaluated fit's validation scores: the fit the
        # holdout scores, whose rows share no churn event with the validation weeks.
        expected = ScoreCalibrator.fit("sigmoid", predictor.evaluated.pipeline.decision_function(fr.validation),
                                       fr.validation[LABEL].to_numpy())
        np.testing.assert_allclose(predictor.calibrator.model.coef_, expected.model.coef_, rtol=1e-9)
        np.testing.assert_allclose(predictor.calibrator.model.intercept_, expected.model.intercept_, rtol=1e-9)
        assert predictor.evaluated.calibrator is predictor.calibrator
        assert predictor.evaluated.threshold == predictor.threshold


def test_calibration_is_chosen_by_cross_validated_log_loss():
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(800), 2)
    decision = rng.normal(0, 1.5, groups.size)
    y = (rng.random(groups.size) < 1 / (1 + np.exp(-(decision - 2)))).astype(int)
    inflated = 1 / (1 + np.exp(-decision))  # a raw fit that predicts far too many churners
    choice, losses = choose_calibration(decision, inflated, y, groups)
    assert choice == "sigmoid" and set(losses) == {"none", "sigmoid", "isotonic"}
    assert losses["none"] > losses["sigmoid"] + 0.1
    # Probabilities that are already right need no map.
    choice, losses = choose_calibration(decision, 1 / (1 + np.exp(-(decision - 2))), y, groups)
    assert losses["none"] <= losses["sigmoid"] + 1e-3
    predictor = trained("auto")
    assert predictor.validation_metrics["calibration"] in ("sigmoid", "isotonic", "none")
    assert set(predictor.calibration_losses) == {"none", "sigmoid", "isotonic"}


def test_predictor_round_trips_through_joblib(tmp_path):
    rows, _ = holdout()
    for method in ("sigmoid", "isotonic"):
        predictor = trained(method, "hist_gradient_boosting")
        path = tmp_path / f"{method}.joblib"
        joblib.dump(predictor, path)
        loaded = joblib.load(path)
        assert loaded.calibrator.method == method
        np.testing.assert_array_equal(loaded.predict_proba(rows), predictor.predict_proba(rows))
        assert loaded.threshold == predictor.threshold


def test_an_artifact_pickled_before_calibration_existed_still_scores():
    rows, _ = holdout()
    old = copy.copy(trained(None))
    del old.__dict__["calibrator"]  # what a pickle made before the field existed holds
    revived = pickle.loads(pickle.dumps(old))
    assert "calibrator" not in revived.__dict__ and revived.calibrator is None
    np.testing.assert_array_equal(revived.predict_proba(rows), old.pipeline.predict_proba(rows)[:, 1])


def test_unknown_calibration_is_refused():
    fr = frames()
    with pytest.raises(ValueError, match="unknown calibration 'platt'"):
        train_challenger(fr, SPEC, build_preprocessor(SPEC).fit(fr.training_window), ["logistic_regression"],
                         42, "test", "now", calibration="platt")
    with pytest.raises(ValueError, match="unknown calibration method"):
        ScoreCalibrator.fit("beta", np.zeros(4), np.array([0, 1, 0, 1]))


def test_ece_is_a_reported_loss_the_gate_can_use():
    assert "ece" in METRIC_NAMES and "ece" not in HIGHER_IS_BETTER
    rng = np.random.default_rng(3)
    p = rng.uniform(0.0, 0.6, 4000)
    y = (rng.random(4000) < p).astype(int)
    calibrated = churn_metrics(y, p, 0.3)["ece"]
    inflated = churn_metrics(y, np.minimum(p + 0.2, 1.0), 0.3)["ece"]
    assert calibrated == expected_calibration_error(y, p, n_bins=10, strategy="quantile")
    assert calibrated < 0.03 and inflated > 0.15
    rule = [GateRule("ece", floor=0.05, max_regression=0.01, mode="point")]
    assert evaluate_gate({"ece": calibrated}, {"ece": calibrated + 0.02}, rule).passed
    worse = evaluate_gate({"ece": calibrated + 0.02}, {"ece": calibrated}, rule)
    assert not worse.passed and "regressed by 0.0200" in worse.summary
    assert "above the ceiling 0.05" in evaluate_gate({"ece": inflated}, None, rule).summary


def test_a_map_that_would_invert_the_ranking_is_never_applied():
    """When the evaluated fit ranks validation the wrong way round (the market changed),
    its Platt slope is negative; applied to the deployed fit it would turn its ranking
    upside down. Such a map is refused and the classifier's own probabilities kept."""
    rng = np.random.default_rng(0)
    decision = rng.normal(size=2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(2 * decision + 2))).astype(int)  # higher score, less churn
    for method in ("sigmoid", "isotonic"):
        assert not ScoreCalibrator.fit(method, decision, y).increasing
        assert ScoreCalibrator.fit(method, -decision, y).increasing

    from churn_assets.core.training import _calibrated

    class Backwards:  # a fitted classifier whose scores run against the labels
        def decision_function(self, x):
            return x[:, 0]

        def predict_proba(self, x):
            p = 1 / (1 + np.exp(-x[:, 0]))
            return np.column_stack([1 - p, p])

    _, proba, calibrator, method, _ = _calibrated(Backwards(), decision[:, None], y, np.arange(2000), "sigmoid", 0)
    assert calibrator is None and method.startswith("none (the evaluated fit does not rank")
    np.testing.assert_allclose(proba, 1 / (1 + np.exp(-decision)))


def test_prior_shift_moves_the_served_calibrator_to_the_newest_churn_rate():
    from churn_assets.core.training import prior_shift

    fr = frames()
    predictor = trained("sigmoid")
    rows = fr.holdout.copy()
    rows[LABEL] = (np.random.default_rng(1).random(len(rows)) < 0.25).astype(int)  # the rate doubled
    shifted, delta = prior_shift(predictor, rows)
    assert delta > 0.3
    assert shifted.evaluated_fit.predict_proba(rows).mean() == pytest.approx(rows[LABEL].mean(), abs=1e-6)
    # A prior shift moves levels only: the ranking, hence ROC AUC, is untouched.
    assert roc_auc_score(rows[LABEL], shifted.predict_proba(rows)) == roc_auc_score(rows[LABEL], predictor.predict_proba(rows))
    isotonic = trained("isotonic")
    moved, _ = prior_shift(isotonic, rows)
    assert moved.calibrator.method == "isotonic" and moved.calibrator.increasing
