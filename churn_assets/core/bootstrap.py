"""The paired bootstrap: any metric of two models on the same rows, resampled together.

``paired_bootstrap`` draws rows (or, with ``groups``, whole customers) with replacement,
the same draws for both models, and reports the difference of each metric in
``BOOTSTRAP_METRICS`` with a percentile interval (``uncertainty.PairedDifference``).
Metrics are weighted sums over bootstrap counts, so no resample is materialised.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import sparse

from churn_assets.core.calibration import assign_bins, calibration_bin_edges
from churn_assets.core.uncertainty import PairedDifference, _check_confidence, _inputs, group_codes

BOOTSTRAP_METRICS = ("roc_auc", "pr_auc", "brier_score", "brier_skill", "log_loss", "accuracy", "precision",
                     "recall", "f1", "ece")
# Resamples per block: small enough that the (K, r) ranking arrays stay in cache (20 was
# fastest at 50,000 rows; 100 was ~15% slower) and memory is a few (n, 20) matrices.
# Part of the random stream's definition: changing it changes results for a seed.
_BLOCK = 20

_THRESHOLD_METRICS = frozenset({"accuracy", "precision", "recall", "f1"})
_RANKING_METRICS = frozenset({"roc_auc", "pr_auc"})

def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # zero_division=0, as sklearn's precision/recall/f1 are called in this project.
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _ranking_segments(y: np.ndarray, score: np.ndarray) -> sparse.csc_matrix:
    """Sparse (3K + 1, n) 0/1 matrix placing each row in one segment of the ranking.

    K = number of distinct scores held by a positive, descending. Segment 3k: rows scored
    strictly between the (k-1)-th and k-th such score; 3k + 1 / 3k + 2: negatives /
    positives tied at the k-th; 3K: rows below the last. Tied rows share a segment, as
    they share a threshold in sklearn's curves. CSC: its product with an (n, r) C-ordered
    matrix reads that matrix in order (3x faster than CSR here).
    """
    _, group = np.unique(-score, return_inverse=True)  # group 0 = highest score
    positive_groups = np.unique(group[y == 1])
    k = np.searchsorted(positive_groups, group)
    tied = k < positive_groups.size
    tied[tied] = positive_groups[k[tied]] == group[tied]
    segment = np.where(tied, 3 * k + 1 + y, 3 * k)
    return sparse.csc_matrix((np.ones(y.size), (segment, np.arange(y.size))),
                             shape=(3 * positive_groups.size + 1, y.size))


def _ranking_metrics(sums: np.ndarray, total: np.ndarray) -> dict[str, np.ndarray]:
    """PR AUC and ROC AUC, shape (r,), from segment sums, shape (3K + 1, r).

    With P_k / N_k the positive / negative weight tied at the k-th positive score and
    A_k, C_k the total / positive weight scored at or above it:
    AP = sum_k P_k C_k / A_k / P (recall only moves at those scores, by P_k / P), and
    AUC = sum_k P_k (N - (A_k - C_k) + N_k / 2) / (P N), where sum_k P_k C_k =
    (P^2 + sum_k P_k^2) / 2. Arrays are (K, r), so the work is done in place.
    """
    between, negatives, positives = sums[0:-1:3], sums[1::3], sums[2::3]
    above = between + negatives
    above += positives
    np.cumsum(above, axis=0, out=above)
    p = positives.sum(axis=0)
    n = total - p
    dot = lambda a, b: np.einsum("kr,kr->r", a, b)  # noqa: E731
    pos_pairs = (p * p + dot(positives, positives)) / 2
    auc_sum = n * p - dot(positives, above) + pos_pairs + dot(positives, negatives) / 2
    precision = np.cumsum(positives, axis=0)
    np.divide(precision, above, out=precision, where=above > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap, auc = dot(positives, precision) / p, auc_sum / (p * n)
    defined = (p > 0) & (n > 0)  # NaN with one class, as churn_metrics reports
    return {"pr_auc": np.where(defined, ap, np.nan), "roc_auc": np.where(defined, auc, np.nan)}


class _Design:
    """One model's scores reduced to what every resample needs: dense feature rows whose
    weighted sums give the additive metrics, sparse segment rows for ranking and ECE."""

    def __init__(self, y: np.ndarray, proba: np.ndarray, threshold: float,
                 metrics: tuple[str, ...], ece_bins: int):
        yf = y.astype(float)
        columns = {"weight": np.ones(y.size), "positive": yf}
        if "brier_score" in metrics or "brier_skill" in metrics:
            columns["brier_score"] = (proba - yf) ** 2
        if "log_loss" in metrics:
            eps = np.finfo(float).eps  # sklearn clips both class probabilities this way
            columns["log_loss"] = -np.where(y == 1, np.log(np.clip(proba, eps, 1 - eps)),
                                            np.log(np.clip(1 - proba, eps, 1 - eps)))
        if _THRESHOLD_METRICS.intersection(metrics):
            predicted = (proba >= threshold).astype(float)
            columns["predicted"], columns["tp"] = predicted, predicted * yf
        self.metrics = metrics
        self.names = tuple(columns)
        self.features = np.vstack(list(columns.values()))  # (k, n)
        self.segments = _ranking_segments(y, proba) if _RANKING_METRICS.intersection(metrics) else None
        self.ece = None
        if "ece" in metrics:
            # Bins frozen at the full sample's quantiles: a resample's own quantiles would
            # move the bins and make ECE a non-smooth function of the weights.
            bins = assign_bins(proba, calibration_bin_edges(proba, ece_bins, "quantile"))
            self.ece = sparse.csc_matrix((proba - yf, (bins, np.arange(y.size))), shape=(ece_bins, y.size))

    def evaluate(self, weights_t: np.ndarray) -> dict[str, np.ndarray]:
        """Metrics, each shape (r,), under row weights ``weights_t``, shape (n, r)."""
        s = dict(zip(self.names, self.features @ weights_t))
        total, positives = s["weight"], s["positive"]
        out = {}
        for loss in ("brier_score", "log_loss"):
            if loss in s:
                out[loss] = s[loss] / total
        if "brier_skill" in self.metrics:
            rate = positives / total
            with np.errstate(divide="ignore", invalid="ignore"):
                out["brier_skill"] = np.where((rate > 0) & (rate < 1),
                                              1.0 - out["brier_score"] / (rate * (1.0 - rate)), np.nan)
        if "predicted" in s:
            predicted, tp = s["predicted"], s["tp"]
            tn = total - predicted - positives + tp
            out.update(accuracy=(tp + tn) / total, precision=_ratio(tp, predicted),
                       recall=_ratio(tp, positives), f1=_ratio(2 * tp, predicted + positives))
        if self.ece is not None:
            out["ece"] = np.abs(self.ece @ weights_t).sum(axis=0) / total
        if self.segments is not None:
            out.update(_ranking_metrics(self.segments @ weights_t, total))
        return {m: out[m] for m in self.metrics}


def _metric_tuple(metrics) -> tuple[str, ...]:
    metrics = tuple(metrics)
    unknown = set(metrics) - set(BOOTSTRAP_METRICS)
    if unknown or not metrics:
        raise ValueError(f"metrics must be among {BOOTSTRAP_METRICS}, got {metrics}")
    return metrics


def resampled_metrics(y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray, threshold: float = 0.5,
                      metrics=BOOTSTRAP_METRICS, ece_bins: int = 10) -> dict[str, np.ndarray]:
    """One model's metrics under row weights, shape (r, n) -> each (r,): with bootstrap
    counts as weights, the metric on the resampled rows (the rows repeated by count).
    ECE keeps the quantile bins of the unweighted ``proba``."""
    y, p = _inputs(y_true, proba, probabilities=True)
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    return _Design(y, p, threshold, _metric_tuple(metrics), ece_bins).evaluate(np.ascontiguousarray(w.T))


def _resample_weights(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    """Bootstrap counts, shape (n, r), each column summing to n (multinomial(n, 1/n))."""
    dtype = np.int32 if n * r < 2**31 else np.int64  # int32 halves the memory traffic
    keys = rng.integers(0, n, size=(r, n), dtype=dtype)
    # Counting in (r, n) layout keeps each resample's counts in one cache-sized block;
    # the (n, r) copy is then cheaper than scattering over the whole matrix.
    keys += (np.arange(r, dtype=dtype) * n)[:, None]
    counts = np.bincount(keys.ravel(), minlength=n * r).reshape(r, n)
    return np.ascontiguousarray(counts.T, dtype=float)


def _group_resample_weights(rng: np.random.Generator, codes: np.ndarray, n_groups: int,
                            r: int) -> np.ndarray:
    """Bootstrap row weights, shape (n, r), drawing whole groups: each resample draws
    ``n_groups`` groups with replacement, and a row weighs as often as its group was drawn."""
    keys = rng.integers(0, n_groups, size=(r, n_groups), dtype=np.int64)
    keys += (np.arange(r, dtype=np.int64) * n_groups)[:, None]
    counts = np.bincount(keys.ravel(), minlength=n_groups * r).reshape(r, n_groups)
    return np.ascontiguousarray(counts.T[codes], dtype=float)


def _bootstrap_difference(metric, challenger, champion, diffs, confidence, method) -> PairedDifference:
    diff = challenger - champion
    finite = diffs[np.isfinite(diffs)]
    if finite.size < 2 or not math.isfinite(diff):
        nan = math.nan
        return PairedDifference(metric, challenger, champion, diff, nan, nan, nan, nan, method, confidence)
    lo, hi, one_lo, one_hi = np.quantile(finite, [(1 - confidence) / 2, (1 + confidence) / 2,
                                                  1 - confidence, confidence])
    # Two-sided: twice the share of resampled differences on the smaller side of 0.
    p = min(1.0, 2 * min(np.mean(finite <= 0), np.mean(finite >= 0)))
    return PairedDifference(metric, challenger, champion, diff, float(finite.std(ddof=1)), float(lo),
                            float(hi), float(p), method, confidence, float(one_lo), float(one_hi))


def paired_bootstrap(y_true: np.ndarray, proba_challenger: np.ndarray, proba_champion: np.ndarray,
                     metrics=BOOTSTRAP_METRICS, threshold_challenger: float = 0.5,
                     threshold_champion: float = 0.5, n_resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95, ece_bins: int = 10, groups=None) -> dict[str, PairedDifference]:
    """Paired percentile bootstrap of challenger - champion for each metric in ``metrics``.

    ``y_true``, probabilities: shape (n,). Each resample draws n rows with replacement,
    the same for both models; metrics are weighted sums over bootstrap counts. Threshold
    metrics use ``proba >= threshold`` (zero_division 0); PR AUC is sklearn's average
    precision; ROC/PR AUC are NaN with one class (such resamples are left out); ECE uses
    ``ece_bins`` quantile bins frozen at the full sample. ``challenger``/``champion``: on
    all rows. ``p_value``: twice the share of resampled differences on the smaller side
    of 0 (0 means below 1 / n_resamples). ``groups`` (shape (n,), e.g. customer ids):
    each resample draws groups with replacement instead of rows (a cluster bootstrap).
    Same seed, same result.
    """
    _check_confidence(confidence)
    if n_resamples < 2:
        raise ValueError("n_resamples must be at least 2")
    metrics = _metric_tuple(metrics)
    y, a, b = _inputs(y_true, proba_challenger, proba_champion, probabilities=True)
    if y.size == 0:
        raise ValueError("no rows to compare on")
    designs = (_Design(y, a, threshold_challenger, metrics, ece_bins),
               _Design(y, b, threshold_champion, metrics, ece_bins))
    points = [d.evaluate(np.ones((y.size, 1))) for d in designs]
    grouped = group_codes(groups, y.size)
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for start in range(0, n_resamples, _BLOCK):
        r = min(_BLOCK, n_resamples - start)
        weights_t = (_resample_weights(rng, y.size, r) if grouped is None
                     else _group_resample_weights(rng, *grouped, r))
        ours, theirs = (d.evaluate(weights_t) for d in designs)
        for m in metrics:
            diffs[m].append(ours[m] - theirs[m])
    unit = "" if grouped is None else " of customers"
    method = f"paired bootstrap ({n_resamples} resamples{unit}, percentile interval)"
    return {m: _bootstrap_difference(m, float(points[0][m][0]), float(points[1][m][0]),
                                     np.concatenate(diffs[m]), float(confidence), method)
            for m in metrics}
