"""How good are label-free estimates? A walk-forward replay on a history with final labels.

For each deploy date ``d`` a model is trained exactly as ``churn_model`` does (the
12 + 2 + 2 week split as of ``d``, preprocessing fitted on the training window,
``train_challenger``), then it estimates (CBPE) each snapshot week whose labels were
still open on ``d``, and the estimate is compared with the ROC AUC it really got once
those labels matured. This is what ``model_health`` does live, replayed in minutes.

Used by ``bench/estimate_accuracy.py`` (numbers in BENCHMARKS.md) and the tests.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from churn_assets.core.artifact import ScoreCalibrator
from churn_assets.core.calibration import estimate_performance
from churn_assets.core.features import build_preprocessor
from churn_assets.core.spec import LABEL, FeatureSpec
from churn_assets.core.training import (MODEL_FAMILIES, WindowPlan, make_classifier, purged_train,
                                        split_by_time, train_challenger)
from churn_assets.health.production import estimated_week, realized_week, week_start

# Probability sources per deployed model: the predictor as served, or its classifier's
# own (class-weighted, so inflated) probabilities, to show what calibration buys.
SERVED, RAW = "served", "raw"


def _walk_forward(records: pd.DataFrame, spec: FeatureSpec, deploy_dates: Iterable[str],
                  plan: WindowPlan | None):
    """Per deploy date: (as_of, the split as of it, the rows whose labels were still open
    then, their (week, row positions) groups oldest first)."""
    plan = plan or WindowPlan()
    ts = spec.timestamp_column
    weeks = week_start(records[ts])
    for deploy in deploy_dates:
        as_of = pd.Timestamp(deploy)
        known = records[records[ts] <= as_of]
        frames = split_by_time(known, spec, plan, as_of)
        open_rows = known[known[ts] > frames.label_cutoff]
        yield as_of, frames, open_rows, sorted(open_rows.groupby(weeks.loc[open_rows.index]).indices.items())


def replay(records: pd.DataFrame, spec: FeatureSpec, deploy_dates: Iterable[str], *,
           families=MODEL_FAMILIES, calibration: str | None = "sigmoid", seed: int = 42,
           plan: WindowPlan | None = None, n_draws: int = 200, sources=(SERVED, RAW)) -> pd.DataFrame:
    """One row per (deploy date, open week, probability source).

    ``records``: validated snapshots whose labels are final (column ``_label``) for
    every week estimated. Columns of the result: ``deploy``, ``family`` (the one
    ``train_challenger`` chose), ``week``, ``age_weeks`` (weeks after the label cutoff),
    ``source``, ``estimated_roc_auc``, ``low``, ``high``,
    ``realized_roc_auc``, ``abs_error``, ``within_0_02``, ``covered`` (realized inside
    the interval), ``expected_churn_rate``, ``churn_rate``, ``ece``, ``rows``.
    """
    rows = []
    for as_of, frames, open_rows, batches in _walk_forward(records, spec, deploy_dates, plan):
        preprocessor = build_preprocessor(spec).fit(frames.training_window)
        predictor, _ = train_challenger(frames, spec, preprocessor, list(families), seed, "study",
                                        "study", calibration=calibration)
        for week, index in batches:
            batch = open_rows.iloc[index]
            y = batch[LABEL].to_numpy()
            for source in sources:
                proba = (predictor.predict_proba(batch) if source == SERVED
                         else predictor.pipeline.predict_proba(batch)[:, 1])
                est = estimated_week(proba, predictor.threshold, n_draws=n_draws)
                real = realized_week(y, proba, predictor.threshold)
                error = abs(est["roc_auc"] - real["roc_auc"])
                rows.append({
                    "deploy": str(as_of.date()), "family": predictor.family, "week": week,
                    # 1 = the first week after the label cutoff (labels open longest).
                    "age_weeks": int(math.ceil((pd.Timestamp(week) - frames.label_cutoff).days / 7)),
                    "source": source, "calibration": calibration if source == SERVED else "none",
                    "estimated_roc_auc": est["roc_auc"], "low": est["roc_auc_low"], "high": est["roc_auc_high"],
                    "realized_roc_auc": real["roc_auc"], "abs_error": error,
                    "within_0_02": bool(error <= 0.02) if not math.isnan(error) else False,
                    "covered": bool(est["roc_auc_low"] <= real["roc_auc"] <= est["roc_auc_high"]),
                    "expected_churn_rate": est["expected_churn_rate"], "churn_rate": real["churn_rate"],
                    "ece": real["ece"], "rows": real["rows"],
                })
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per calibration: weeks, share within 0.02 ROC AUC, mean/max error, interval coverage."""
    grouped = table.groupby("calibration")
    return pd.DataFrame({
        "weeks": grouped.size(),
        "within_0_02": grouped["within_0_02"].mean(),
        "mean_abs_error": grouped["abs_error"].mean(),
        "max_abs_error": grouped["abs_error"].max(),
        "interval_coverage": grouped["covered"].mean(),
        "mean_ece": grouped["ece"].mean(),
        "churn_rate_error": (grouped["expected_churn_rate"].mean() - grouped["churn_rate"].mean()).abs(),
    }).reset_index()


def final_labels(records: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """``records`` with the 0/1 ``_label`` column (labels must already be final)."""
    from churn_assets.core.spec import churn_label

    out = records.copy()
    out[LABEL] = churn_label(out[spec.target_column], spec).to_numpy(dtype=np.int64)
    return out


def diagnose(records: pd.DataFrame, spec: FeatureSpec, deploy_dates: Iterable[str], *,
             families=MODEL_FAMILIES, seed: int = 42, plan: WindowPlan | None = None) -> pd.DataFrame:
    """Why CBPE missed: per deploy and family (each forced), the validation ROC AUC with and
    without the purge, and the CBPE error of three ways to serve the family.

    Variants: ``before`` (candidates fitted on the whole train weeks, calibrator from that fit,
    refit served: the code before ``purged_train``), ``refit`` (what ``train_challenger``
    does now: calibrator from the purged fit, refit served) and ``purged`` (the purged fit
    itself served, with its own calibrator). One row per (deploy, family, variant, open
    week): ``validation_auc``, ``purged_validation_auc``, ``slope`` (of the Platt map),
    ``estimated_roc_auc``, ``realized_roc_auc``, ``error`` (signed), ``holdout_roc_auc``.
    """
    rows = []
    for as_of, frames, open_rows, batches in _walk_forward(records, spec, deploy_dates, plan):
        frozen = FrozenEstimator(build_preprocessor(spec).fit(frames.training_window))
        y_val, y_hold = frames.validation[LABEL].to_numpy(), frames.holdout[LABEL].to_numpy()

        def fit(family, rows):
            pipe = Pipeline([("preprocess", frozen), ("classifier", make_classifier(family, seed))])
            return pipe.fit(rows, rows[LABEL].to_numpy())

        for family in families:
            whole, purged = fit(family, frames.train), fit(family, purged_train(frames, spec))
            refit = fit(family, frames.training_window)
            leaky_val = whole.decision_function(frames.validation)
            purged_val = purged.decision_function(frames.validation)
            leaky_cal = ScoreCalibrator.fit("sigmoid", leaky_val, y_val)
            purged_cal = ScoreCalibrator.fit("sigmoid", purged_val, y_val)
            variants = {"before": (refit, leaky_cal), "refit": (refit, purged_cal), "purged": (purged, purged_cal)}
            for variant, (model, calibrator) in variants.items():
                holdout_auc = roc_auc_score(y_hold, model.decision_function(frames.holdout))
                for week, index in batches:
                    batch = open_rows.iloc[index]
                    proba = calibrator(model.decision_function(batch))
                    estimate = estimate_performance(proba, 0.5, n_draws=1).roc_auc
                    realized = roc_auc_score(batch[LABEL].to_numpy(), proba)
                    rows.append({"deploy": str(as_of.date()), "family": family, "variant": variant, "week": week,
                                 "validation_auc": roc_auc_score(y_val, leaky_val),
                                 "purged_validation_auc": roc_auc_score(y_val, purged_val),
                                 "slope": float(calibrator.model.coef_[0, 0]), "estimated_roc_auc": estimate,
                                 "realized_roc_auc": realized, "error": estimate - realized,
                                 "holdout_roc_auc": holdout_auc})
    return pd.DataFrame(rows)
