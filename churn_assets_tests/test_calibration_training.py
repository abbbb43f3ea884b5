"""Calibrated churn probabilities: what train_challenger serves, and ECE as a metric."""

from __future__ import annotations

import copy
import dataclasses
import functools
import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from churn_assets.core.artifact import ScoreCalibrator
from churn_assets.core.calibration import expected_calibration_error
from churn_assets.core.features import build_preprocessor
from churn_assets.core.gate import GateRule, evaluate_gate
from churn_assets.core.metrics import HIGHER_IS_BETTER, METRIC_NAMES, best_f1_threshold, churn_metrics
from churn_assets.core.spec import LABEL, load_spec
from churn_assets.core.training import make_classifier, purged_train, train_challenger
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


def purged_fit(family: str = "logistic_regression") -> Pipeline:
    """The candidate fit whose validation scores the calibrator and the threshold saw."""
    fr = frames()
    rows = purged_train(fr, SPEC)
    fit = Pipeline([("preprocess", trained("sigmoid", family).pipeline.named_steps["preprocess"]),
                    ("classifier", make_classifier(family, 42))])
    return fit.fit(rows, rows[LABEL].to_numpy())


def test_threshold_is_tuned_on_the_calibrated_validation_scores():
    fr = frames()
    predictor = trained("sigmoid")
    y_val = fr.validation[LABEL].to_numpy()
    calibrated = predictor.calibrator(purged_fit().decision_function(fr.validation))
    assert predictor.threshold == best_f1_threshold(y_val, calibrated)
    assert predictor.validation_metrics == churn_metrics(y_val, calibrated, predictor.threshold)
    # On the raw (inflated) scale the F1-best cut is far higher: the two are not mixed up.
    assert trained(None).threshold > predictor.threshold + 0.2
    # Platt scaling is strictly increasing, so the cut tuned on the calibrated scale picks
    # the same validation row as on the raw scale, and labels the same customers: a raw
    # threshold applied to calibrated scores (or the reverse) would not.
    rows, _ = holdout()
    np.testing.assert_array_equal(predictor.predict(rows), trained(None).predict(rows))


def test_candidates_fit_only_rows_that_share_no_churn_event_with_validation():
    fr = frames()
    ts, ids = SPEC.timestamp_column, SPEC.id_column
    kept = purged_train(fr, SPEC)
    start = fr.validation[ts].min()
    recent = fr.train[ts] > start - pd.Timedelta(days=SPEC.label_horizon_days)
    # Dropped: exactly the validation customers' snapshots whose label window reaches
    # into the validation weeks; older snapshots, and customers gone before, stay.
    expected = fr.train[~(recent & fr.train[ids].isin(fr.validation[ids]))]
    pd.testing.assert_frame_equal(kept, expected)
    assert 0 < len(kept) < len(fr.train) and recent.any()
    # The calibrator was fitted on that fit's validation scores, not on a fit that
    # trained on the dropped rows (whose churn events it would recognise in validation).
    for family in ("logistic_regression", "hist_gradient_boosting"):
        predictor = trained("sigmoid", family)
        expected = ScoreCalibrator.fit("sigmoid", purged_fit(family).decision_function(fr.validation),
                                       fr.validation[LABEL].to_numpy())
        np.testing.assert_allclose(predictor.calibrator.model.coef_, expected.model.coef_, rtol=1e-9)
        np.testing.assert_allclose(predictor.calibrator.model.intercept_, expected.model.intercept_, rtol=1e-9)
    # No label horizon (Telco: one snapshot per customer): nothing to purge.
    assert purged_train(fr, dataclasses.replace(SPEC, label_horizon_days=0)) is fr.train


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
    rule = [GateRule("ece", floor=0.05, max_regression=0.01)]
    assert evaluate_gate({"ece": calibrated}, {"ece": calibrated + 0.02}, rule).passed
    worse = evaluate_gate({"ece": calibrated + 0.02}, {"ece": calibrated}, rule)
    assert not worse.passed and "regressed by 0.0200" in worse.summary
    assert "above the ceiling 0.05" in evaluate_gate({"ece": inflated}, None, rule).summary
