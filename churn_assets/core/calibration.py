"""Calibration of churn probabilities, and label-free performance estimation from it.

- ``expected_calibration_error`` / ``reliability_curve``: how far predicted churn
  probabilities are from observed churn rates, on labelled rows.
- ``ece_noise_floor``: the ECE a perfectly calibrated model would still show on that many
  rows, so a measured ECE can be told from chance.
- ``estimate_performance``: confidence-based performance estimation (CBPE, as NannyML
  defines it) on rows with no labels yet, valid when the probabilities are calibrated.

Only numpy; all probabilities are floats in [0, 1], labels are 0/1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

STRATEGIES = ("quantile", "uniform")


def _probabilities(proba: np.ndarray) -> np.ndarray:
    p = np.asarray(proba, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"probabilities must be 1-d, got shape {p.shape}")
    if p.size and not (np.all(np.isfinite(p)) and p.min() >= 0.0 and p.max() <= 1.0):
        raise ValueError("probabilities must be finite and within [0, 1]")
    return p


def _labels(y_true: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.shape != (n,):
        raise ValueError(f"labels have shape {y.shape}, probabilities ({n},)")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    return y.astype(float)


def calibration_bin_edges(proba: np.ndarray, n_bins: int = 10, strategy: str = "quantile") -> np.ndarray:
    """Bin edges, shape (n_bins + 1,): equal-count ("quantile") or equal-width ("uniform").

    Quantile edges are ``np.percentile`` of ``proba`` as sklearn's ``calibration_curve``
    computes them; ties can make edges coincide, which leaves some bins empty.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    if strategy == "quantile":
        p = _probabilities(proba)
        if p.size == 0:
            raise ValueError("quantile bins need at least one probability")
        return np.percentile(p, np.linspace(0, 1, n_bins + 1) * 100)
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def assign_bins(proba: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each probability, ints in [0, len(edges) - 2], shape (n,).

    Only the inner edges matter, so probabilities outside the outer edges (new data
    binned with edges frozen on other rows) land in the first or last bin. A value equal
    to an inner edge goes to the lower bin, as in sklearn's ``calibration_curve``.
    """
    return np.searchsorted(np.asarray(edges, dtype=float)[1:-1], proba)


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10,
                               strategy: str = "quantile", bin_edges: np.ndarray | None = None) -> float:
    """ECE: mean over bins of |mean(proba) - mean(y)|, weighted by the bin's share of rows.

    ``y_true``: shape (n,), 0/1; ``proba``: shape (n,), churn probability. Result in
    [0, 1], in probability units (0.03 = predictions off by 3 points on average).
    ``bin_edges`` (shape (k + 1,)) overrides ``n_bins``/``strategy``, e.g. to keep the
    bins of a full sample fixed across its bootstrap resamples.
    """
    p = _probabilities(proba)
    y = _labels(y_true, p.size)
    if p.size == 0:
        return float("nan")
    edges = calibration_bin_edges(p, n_bins, strategy) if bin_edges is None else np.asarray(bin_edges)
    # Sum of (p - y) per bin is count * (mean p - mean y): the count weights cancel.
    gap = np.bincount(assign_bins(p, edges), weights=p - y, minlength=len(edges) - 1)
    return float(np.abs(gap).sum() / p.size)


@dataclass(frozen=True)
class EceNoiseFloor:
    """ECE of a perfectly calibrated model with the same probabilities on the same number
    of rows (labels drawn y ~ Bernoulli(proba)): ``mean`` and ``p95`` over ``draws`` draws,
    in probability units. An ECE below ``p95`` is what chance alone gives."""

    mean: float
    p95: float
    rows: int
    draws: int

    def verdict(self, ece: float) -> str:
        """"within noise" or "above noise" for a measured ECE on these rows."""
        if not (np.isfinite(ece) and np.isfinite(self.p95)):
            return "unknown"
        return "within noise" if ece <= self.p95 else "above noise"


def ece_noise_floor(proba: np.ndarray, n_bins: int = 10, draws: int = 200, seed: int = 0) -> EceNoiseFloor:
    """The ECE chance gives a calibrated model on these rows (``EceNoiseFloor``).

    ``proba``: shape (n,). Bins are the quantile bins of ``proba`` itself, as
    ``expected_calibration_error`` uses, so the floor describes the same quantity.
    Vectorised over blocks of draws; seeded.
    """
    p = _probabilities(proba)
    if p.size == 0:
        return EceNoiseFloor(float("nan"), float("nan"), 0, draws)
    bins = assign_bins(p, calibration_bin_edges(p, n_bins, "quantile"))
    order = np.argsort(bins, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(bins[order]) != 0])
    ps = p[order]
    rng = np.random.default_rng(seed)
    values = []
    block = max(1, min(draws, 4_000_000 // p.size))
    for start in range(0, draws, block):
        y = (rng.random((min(block, draws - start), p.size)) < ps).astype(float)
        gaps = np.add.reduceat(ps[None, :] - y, starts, axis=1)
        values.append(np.abs(gaps).sum(axis=1) / p.size)
    values = np.concatenate(values)
    return EceNoiseFloor(float(values.mean()), float(np.quantile(values, 0.95)), int(p.size), int(draws))


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per non-empty bin (shape (k,), k <= n_bins): mean predicted churn probability,
    observed churn rate, and row count; plot observed_rate against mean_predicted."""

    mean_predicted: np.ndarray
    observed_rate: np.ndarray
    counts: np.ndarray


def reliability_curve(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10,
                      strategy: str = "quantile") -> ReliabilityCurve:
    """Reliability diagram data; empty bins are dropped (as in sklearn's calibration_curve)."""
    p = _probabilities(proba)
    y = _labels(y_true, p.size)
    bins = assign_bins(p, calibration_bin_edges(p, n_bins, strategy))
    counts = np.bincount(bins, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    keep = counts > 0
    return ReliabilityCurve(mean_predicted=sum_p[keep] / counts[keep],
                            observed_rate=sum_y[keep] / counts[keep], counts=counts[keep])


@dataclass(frozen=True)
class PerformanceEstimate:
    """Estimated performance of calibrated probabilities on ``rows`` unlabelled rows.

    Point estimates follow CBPE: threshold metrics come from the expected confusion
    matrix (``expected_tp`` + ``expected_fp`` + ``expected_fn`` + ``expected_tn`` = rows),
    ROC AUC from the expected ROC curve. Each ``*_low``/``*_high`` is the two-sided
    ``confidence`` interval of the metric over label vectors drawn y ~ Bernoulli(proba):
    the spread the realized metric will have once the labels arrive, if calibrated.
    """

    rows: int
    threshold: float
    confidence: float
    n_draws: int
    expected_churn_rate: float
    expected_tp: float
    expected_fp: float
    expected_fn: float
    expected_tn: float
    roc_auc: float
    roc_auc_low: float
    roc_auc_high: float
    precision: float
    precision_low: float
    precision_high: float
    recall: float
    recall_low: float
    recall_high: float
    f1: float
    f1_low: float
    f1_high: float
    accuracy: float
    accuracy_low: float
    accuracy_high: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # zero_division=0, as the project's metrics use for precision/recall/F1.
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _threshold_metrics(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn), "accuracy": _ratio(tp + tn, tp + fp + fn + tn)}


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (shape (n,)), ties sharing their average rank (rankdata's "average")."""
    _, group, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2.0)[group]


def _expected_roc_auc(p: np.ndarray) -> float:
    """Area under the expected ROC curve (NannyML's CBPE): each row counts p as a
    positive and 1 - p as a negative; tied scores share half credit, as in roc_auc_score."""
    _, group = np.unique(p, return_inverse=True)  # ascending score groups
    pos = np.bincount(group, weights=p)
    neg = np.bincount(group, weights=1.0 - p)
    neg_below = np.cumsum(neg) - neg
    total = pos.sum() * neg.sum()
    return float((pos * (neg_below + 0.5 * neg)).sum() / total) if total > 0 else float("nan")


def estimate_performance(proba: np.ndarray, threshold: float, n_draws: int = 200, seed: int = 0,
                         confidence: float = 0.9, alternatives: np.ndarray | None = None) -> PerformanceEstimate:
    """CBPE on unlabelled rows whose churn probabilities ``proba`` (shape (n,)) are calibrated.

    Predicted churn is ``proba >= threshold``. Intervals: ``n_draws`` label vectors
    y ~ Bernoulli(q), drawn vectorised and seeded; the ranks are fixed, so each
    draw's ROC AUC is (sum of positives' midranks - n1 (n1 + 1) / 2) / (n1 n0).
    ``q`` is ``proba``, or, with ``alternatives`` (shape (k, n): the same rows' probabilities
    under k other plausible calibrators, e.g. refitted on resamples), the k rows in turn:
    the interval then carries the calibrator's uncertainty as well as the labels' noise.
    Draws where AUC is undefined (one class) are left out of its interval.
    """
    p = _probabilities(proba)
    if p.size == 0:
        raise ValueError("no rows to estimate performance on")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    n = p.size
    predicted = p >= threshold
    e_tp, e_fp = p[predicted].sum(), (1.0 - p[predicted]).sum()
    e_fn, e_tn = p[~predicted].sum(), (1.0 - p[~predicted]).sum()
    point = {k: float(v) for k, v in _threshold_metrics(e_tp, e_fp, e_fn, e_tn).items()}
    point["roc_auc"] = _expected_roc_auc(p)

    ranks = midranks(p)
    pred = predicted.astype(float)
    if alternatives is not None:
        alternatives = np.asarray(alternatives, dtype=float)
        if alternatives.ndim != 2 or alternatives.shape[1] != n or not len(alternatives):
            raise ValueError(f"alternatives must have shape (k, {n}), got {alternatives.shape}")
    rng = np.random.default_rng(seed)
    # About 4M draws per block bounds memory at ~32 MB whatever the row count.
    block = max(1, min(n_draws, 4_000_000 // n))
    draws: dict[str, list[np.ndarray]] = {k: [] for k in point}
    for start in range(0, n_draws, block):
        size = min(block, n_draws - start)
        q = p if alternatives is None else alternatives[np.arange(start, start + size) % len(alternatives)]
        y = (rng.random((size, n)) < q).astype(float)
        n1 = y.sum(axis=1)
        n0 = n - n1
        tp = y @ pred
        fp = predicted.sum() - tp
        fn = n1 - tp
        for k, v in _threshold_metrics(tp, fp, fn, n - tp - fp - fn).items():
            draws[k].append(v)
        with np.errstate(divide="ignore", invalid="ignore"):
            draws["roc_auc"].append((y @ ranks - n1 * (n1 + 1) / 2) / (n1 * n0))

    bounds: dict[str, float] = {}
    for k, chunks in draws.items():
        values = np.concatenate(chunks)
        values = values[np.isfinite(values)]
        low, high = (np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
                     if values.size else (np.nan, np.nan))
        bounds[f"{k}_low"], bounds[f"{k}_high"] = float(low), float(high)
    return PerformanceEstimate(
        rows=n, threshold=float(threshold), confidence=float(confidence), n_draws=int(n_draws),
        expected_churn_rate=float(p.mean()), expected_tp=float(e_tp), expected_fp=float(e_fp),
        expected_fn=float(e_fn), expected_tn=float(e_tn), **point, **bounds)
