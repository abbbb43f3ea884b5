"""Permutation importance over RAW feature columns.

Permuting the model's input frame column by column, rather than the encoded matrix,
gives one importance per raw feature: a one-hot encoded categorical is permuted as a
whole, so its importance is not split across (and diluted by) its indicator columns,
and the numbers read in the feature names a business user knows.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

# Higher is better for every scorer, so importance = baseline - permuted is a loss of skill.
SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "roc_auc": skm.roc_auc_score,
    "average_precision": skm.average_precision_score,
    "neg_brier_score": lambda y, p: -skm.brier_score_loss(y, p),
    "neg_log_loss": lambda y, p: -skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]),
}


def _positive_scores(predict_proba: Callable[[pd.DataFrame], np.ndarray], frame: pd.DataFrame) -> np.ndarray:
    scores = np.asarray(predict_proba(frame), dtype=float)
    # Accept both sklearn's (n, 2) class-probability matrix and a plain (n,) churn probability.
    return scores[:, 1] if scores.ndim == 2 else scores


def permutation_importance_raw(
    predict_proba: Callable[[pd.DataFrame], np.ndarray],
    records: pd.DataFrame,
    y_true,
    features: Sequence[str],
    n_repeats: int = 3,
    seed: int = 0,
    max_rows: int = 5000,
    scoring: str | Callable[[np.ndarray, np.ndarray], float] = "roc_auc",
) -> list[tuple[str, float, float]]:
    """Drop in ``scoring`` when each raw feature column is shuffled, as (feature, mean, std).

    ``predict_proba`` maps a frame shaped like ``records`` (raw columns, e.g. a fitted
    sklearn Pipeline's ``predict_proba``) to churn probabilities of shape (n,) or (n, 2).
    ``y_true`` is 0/1 of shape (len(records),). Rows are subsampled to ``max_rows``
    (without replacement, reproducibly from ``seed``) because the cost is
    len(features) * n_repeats predictions. ``mean`` and ``std`` are over ``n_repeats``
    shuffles, in the scorer's units (ROC AUC points by default); a feature the model
    ignores scores ~0 and can come out slightly negative by chance. Sorted by mean,
    largest first.
    """
    scorer = SCORERS[scoring] if isinstance(scoring, str) else scoring
    missing = [f for f in features if f not in records.columns]
    if missing:
        raise KeyError(f"features not in records: {missing}")
    y = np.asarray(y_true)
    if len(y) != len(records):
        raise ValueError(f"y_true has {len(y)} rows, records {len(records)}")
    rng = np.random.default_rng(seed)
    if len(records) > max_rows:
        keep = np.sort(rng.choice(len(records), size=max_rows, replace=False))
        frame, y = records.iloc[keep].reset_index(drop=True), y[keep]
    else:
        frame = records.reset_index(drop=True)
    if scorer in (skm.roc_auc_score, skm.average_precision_score) and len(np.unique(y)) < 2:
        raise ValueError("permutation importance needs both classes in y_true (after subsampling)")
    # One working copy whose columns are shuffled and restored in turn: cheaper than
    # copying the frame for every (feature, repeat) pair.
    work = frame.copy()
    baseline = float(scorer(y, _positive_scores(predict_proba, work)))
    results = []
    for feature in features:
        original = work[feature].copy()
        drops = []
        for _ in range(n_repeats):
            # iloc + set_axis keeps the column's dtype (category, nullable ints) intact.
            work[feature] = original.iloc[rng.permutation(len(work))].set_axis(work.index)
            drops.append(baseline - float(scorer(y, _positive_scores(predict_proba, work))))
        work[feature] = original
        results.append((feature, float(np.mean(drops)), float(np.std(drops))))
    return sorted(results, key=lambda r: r[1], reverse=True)
