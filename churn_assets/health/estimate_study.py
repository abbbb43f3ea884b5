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

from churn_assets.core.features import build_preprocessor
from churn_assets.core.spec import LABEL, FeatureSpec
from churn_assets.core.training import WindowPlan, split_by_time, train_challenger
from churn_assets.health.production import estimated_week, realized_week, week_start

# Probability sources per deployed model: the predictor as served, or its classifier's
# own (class-weighted, so inflated) probabilities, to show what calibration buys.
SERVED, RAW = "served", "raw"


def replay(records: pd.DataFrame, spec: FeatureSpec, deploy_dates: Iterable[str], *,
           families=("logistic_regression",), calibration: str | None = "sigmoid", seed: int = 42,
           plan: WindowPlan | None = None, n_draws: int = 200, sources=(SERVED, RAW)) -> pd.DataFrame:
    """One row per (deploy date, open week, probability source).

    ``records``: validated snapshots whose labels are final (column ``_label``) for
    every week estimated. Columns of the result: ``deploy``, ``week``, ``age_weeks``
    (weeks after the label cutoff), ``source``, ``estimated_roc_auc``, ``low``, ``high``,
    ``realized_roc_auc``, ``abs_error``, ``within_0_02``, ``covered`` (realized inside
    the interval), ``expected_churn_rate``, ``churn_rate``, ``ece``, ``rows``.
    """
    plan = plan or WindowPlan()
    ts = spec.timestamp_column
    weeks = week_start(records[ts])
    rows = []
    for deploy in deploy_dates:
        as_of = pd.Timestamp(deploy)
        known = records[records[ts] <= as_of]
        frames = split_by_time(known, spec, plan, as_of)
        preprocessor = build_preprocessor(spec).fit(frames.training_window)
        predictor, _ = train_challenger(frames, spec, preprocessor, list(families), seed, "study",
                                        "study", calibration=calibration)
        open_rows = known[known[ts] > frames.label_cutoff]
        open_weeks = weeks.loc[open_rows.index]
        for week, index in sorted(open_rows.groupby(open_weeks).indices.items()):
            batch = open_rows.iloc[index]
            y = batch[LABEL].to_numpy()
            for source in sources:
                proba = (predictor.predict_proba(batch) if source == SERVED
                         else predictor.pipeline.predict_proba(batch)[:, 1])
                est = estimated_week(proba, predictor.threshold, n_draws=n_draws)
                real = realized_week(y, proba, predictor.threshold)
                error = abs(est["roc_auc"] - real["roc_auc"])
                rows.append({
                    "deploy": str(as_of.date()), "week": week,
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
