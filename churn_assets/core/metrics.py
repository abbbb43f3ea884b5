"""Classification metrics for a churn model, as plain floats."""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

from churn_assets.core.calibration import expected_calibration_error

# Metrics where a larger value is better; the rest (brier_score, log_loss, ece) are losses.
HIGHER_IS_BETTER = {"accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "brier_skill"}
METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "brier_score", "brier_skill",
                "log_loss", "ece")
# Equal-count bins of the expected calibration error: 10, as the bootstrap in
# core.uncertainty (paired_bootstrap's ece_bins) uses, so the point value and its
# interval describe the same quantity.
ECE_BINS = 10


def churn_metrics(y_true: np.ndarray, churn_probability: np.ndarray, threshold: float) -> dict[str, float]:
    """Metrics of probabilities ``churn_probability`` (shape (n,), in [0, 1]) against 0/1 labels.

    Threshold metrics use ``probability >= threshold``. ``ece``: expected calibration
    error over ``ECE_BINS`` equal-count bins, in probability units (a loss). A metric
    that is undefined on these rows (ROC AUC with one class present) is NaN, which a
    gate treats as failing. ``brier_skill``: 1 - Brier / (r (1 - r)) with r the churn rate
    of these rows, the share of the base rate's Brier score the model removes (0: no
    better than predicting r for everyone; a raw Brier score of 0.25 is never reached at
    a churn rate of 11%, so only the skill can say a model predicts nothing).
    """
    y_true = np.asarray(y_true, dtype=int)
    proba = np.clip(np.asarray(churn_probability, dtype=float), 0.0, 1.0)
    predicted = (proba >= threshold).astype(int)
    both_classes = len(np.unique(y_true)) == 2
    brier = float(skm.brier_score_loss(y_true, proba))
    rate = float(y_true.mean()) if y_true.size else math.nan
    return {
        "accuracy": float(skm.accuracy_score(y_true, predicted)),
        "precision": float(skm.precision_score(y_true, predicted, zero_division=0)),
        "recall": float(skm.recall_score(y_true, predicted, zero_division=0)),
        "f1": float(skm.f1_score(y_true, predicted, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y_true, proba)) if both_classes else math.nan,
        "pr_auc": float(skm.average_precision_score(y_true, proba)) if both_classes else math.nan,
        "brier_score": brier,
        "brier_skill": 1.0 - brier / (rate * (1.0 - rate)) if both_classes else math.nan,
        "log_loss": float(skm.log_loss(y_true, proba, labels=[0, 1])),
        "ece": expected_calibration_error(y_true, proba, n_bins=ECE_BINS, strategy="quantile"),
    }


def best_f1_threshold(y_true: np.ndarray, churn_probability: np.ndarray) -> float:
    """The probability cut-off that maximises F1 on these rows (0.5 if undefined)."""
    precision, recall, thresholds = skm.precision_recall_curve(y_true, churn_probability)
    if len(thresholds) == 0:
        return 0.5
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.zeros_like(precision), where=(precision + recall) > 0)
    return float(thresholds[int(np.argmax(f1[:-1]))])
