"""Paired comparison of a challenger and a champion scored on the SAME holdout rows.

Their errors are correlated, so two separate intervals would overstate the noise in the
difference. ``delong_test``: DeLong (1988) for two correlated ROC AUCs, O(n log n) as in
Sun & Xu (2014). ``core.bootstrap.paired_bootstrap``: seeded, vectorised percentile
bootstrap of the other metrics. ``noninferiority``: refuse only a challenger the data
show to be worse by more than allowed. Differences are challenger - champion, in the
metric's units. Only numpy/scipy/pandas.

Rows are rarely independent: a weekly holdout holds every active customer once a week,
so most customers appear in each of its weeks, and their rows err together. Both tests
take ``groups`` (one customer id per row): DeLong's structural components are then
summed per customer before their variance is taken (Obuchowski 1997, clustered ROC
data), and the bootstrap draws customers, not rows. On the simulator's two-week
holdouts the grouped standard errors are 1.07-1.21x the row-wise ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata


HIGHER_IS_BETTER = frozenset({"roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "brier_skill"})
_LABELS = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "brier_score": "Brier score",
           "brier_skill": "Brier skill", "log_loss": "log loss", "ece": "ECE"}


@dataclass(frozen=True)
class PairedDifference:
    """Challenger minus champion for one metric on the same rows.

    ``challenger``/``champion``: the metric on all rows; ``difference`` = challenger -
    champion. ``ci_low``/``ci_high``: two-sided interval at ``confidence``. ``p_value``:
    two-sided, for "no difference". ``one_sided_low``/``one_sided_high``: one-sided
    bounds at ``confidence`` (the true difference is above ``one_sided_low`` with that
    confidence), what ``noninferiority`` decides on. NaN where undefined.
    """

    metric: str
    challenger: float
    champion: float
    difference: float
    standard_error: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str
    confidence: float
    one_sided_low: float = math.nan
    one_sided_high: float = math.nan

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


@dataclass(frozen=True)
class NoninferiorityDecision:
    passed: bool
    reason: str


def _inputs(y_true, *scores, probabilities: bool = False) -> tuple[np.ndarray, ...]:
    y = np.asarray(y_true)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be a 1-d array of 0/1 labels")
    out = [y.astype(np.int64)] + [np.asarray(s, dtype=float) for s in scores]
    for s in out[1:]:
        low, high = (0.0, 1.0) if probabilities else (-np.inf, np.inf)
        if s.shape != y.shape or not (np.isfinite(s).all() and np.all((s >= low) & (s <= high))):
            raise ValueError(f"scores must be finite{' probabilities' if probabilities else ''} of shape {y.shape}")
    return tuple(out)


def _check_confidence(confidence: float) -> None:
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")


def _normal_difference(metric, challenger, champion, se, confidence, method) -> PairedDifference:
    diff = challenger - champion
    two, one = norm.ppf((1 + confidence) / 2), norm.ppf(confidence)
    if not (math.isfinite(diff) and math.isfinite(se)):
        p = math.nan
    elif se > 0:
        p = float(2 * norm.sf(abs(diff) / se))
    else:  # no variance: the difference is exact
        p = 1.0 if diff == 0 else 0.0
    return PairedDifference(metric, float(challenger), float(champion), float(diff), float(se),
                            float(diff - two * se), float(diff + two * se), p, method,
                            float(confidence), float(diff - one * se), float(diff + one * se))


def group_codes(groups, n: int) -> tuple[np.ndarray, int] | None:
    """``groups`` (shape (n,), any hashable ids, e.g. customer ids) as int codes 0..C-1
    and the number of groups C; None when ``groups`` is None (every row its own group)."""
    if groups is None:
        return None
    values = np.asarray(groups, dtype=object) if not isinstance(groups, pd.Series) else groups.to_numpy()
    if values.shape != (n,):
        raise ValueError(f"groups have shape {values.shape}, the rows ({n},)")
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    return codes.astype(np.int64), len(uniques)


def _delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong's structural components of each row of ``scores`` (shape (r, n)):
    ``v10`` (r, m) per positive, the share of negatives it outranks; ``v01`` (r, k) per
    negative, the share of positives outranking it; and the AUCs (r,). Ties count half.
    Midranks within positives, within negatives and overall give them without comparing
    all m * k pairs (Sun & Xu 2014)."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, k = pos.shape[1], neg.shape[1]
    tx, ty = rankdata(pos, axis=1), rankdata(neg, axis=1)
    tz = rankdata(np.hstack([pos, neg]), axis=1)
    v10 = (tz[:, :m] - tx) / k
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return v10, v01, v10.mean(axis=1)


def _clustered_influence(y: np.ndarray, v10: np.ndarray, v01: np.ndarray, auc: np.ndarray,
                         codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, the sum of its rows' contributions to AUC - E[AUC] (linearised),
    shape (r, C): (V10 - AUC) / m over its positives plus (V01 - AUC) / k over its negatives."""
    m, k = v10.shape[1], v01.shape[1]
    pos, neg = codes[y == 1], codes[y == 0]
    return np.vstack([np.bincount(pos, weights=(v10[i] - auc[i]) / m, minlength=n_groups)
                      + np.bincount(neg, weights=(v01[i] - auc[i]) / k, minlength=n_groups)
                      for i in range(len(auc))])


def auc_standard_error(y_true: np.ndarray, score: np.ndarray, groups=None) -> tuple[float, float]:
    """ROC AUC of ``score`` (shape (n,)) and its DeLong standard error, (NaN, NaN) with one
    class. ``groups``: one id per row (e.g. the customer); rows of a group are then
    treated as correlated (clustered variance), else as independent."""
    y, a = _inputs(y_true, score)
    m, k = int((y == 1).sum()), int((y == 0).sum())
    if m == 0 or k == 0:
        return math.nan, math.nan
    v10, v01, auc = _delong_components(y, a[None, :])
    grouped = group_codes(groups, y.size)
    if grouped is None:
        if m < 2 or k < 2:
            return float(auc[0]), math.nan
        return float(auc[0]), math.sqrt(np.var(v10[0], ddof=1) / m + np.var(v01[0], ddof=1) / k)
    codes, c = grouped
    if c < 2:
        return float(auc[0]), math.nan
    z = _clustered_influence(y, v10, v01, auc, codes, c)[0]
    return float(auc[0]), math.sqrt(c / (c - 1) * float(z @ z))


def delong_test(y_true: np.ndarray, score_challenger: np.ndarray, score_champion: np.ndarray,
                confidence: float = 0.95, groups=None) -> PairedDifference:
    """DeLong's test of ROC AUC(challenger) - ROC AUC(champion) on the same rows.

    ``y_true``: shape (n,), 0/1. Scores: shape (n,), higher = more likely positive, ties
    allowed (counted half, as roc_auc_score does). Standard error, normal interval and
    two-sided p-value are in AUC units. ``groups`` (shape (n,), e.g. customer ids): the
    variance is that of clustered data, the components summed per group (method
    "DeLong, grouped"); None treats rows as independent. One class present: all NaN.
    Fewer than two rows of a class (or two groups): AUCs reported, variance NaN. Zero
    variance (e.g. identical scores): standard error 0, interval collapsed to the
    difference, p 1 if it is 0 else 0.
    """
    _check_confidence(confidence)
    y, a, b = _inputs(y_true, score_challenger, score_champion)
    m, k = int((y == 1).sum()), int((y == 0).sum())
    if m == 0 or k == 0:
        return _normal_difference("roc_auc", math.nan, math.nan, math.nan, confidence, "DeLong")
    v10, v01, auc = _delong_components(y, np.vstack([a, b]))
    grouped = group_codes(groups, y.size)
    if grouped is None:
        method = "DeLong"
        if m < 2 or k < 2:
            se = math.nan
        else:
            s = np.cov(v10) / m + np.cov(v01) / k
            # Rounding can leave a tiny negative variance for (near-)identical scores.
            se = math.sqrt(max(s[0, 0] + s[1, 1] - 2 * s[0, 1], 0.0))
    else:
        codes, c = grouped
        method = "DeLong, grouped"
        if c < 2:
            se = math.nan
        else:
            z = _clustered_influence(y, v10, v01, auc, codes, c)
            d = z[0] - z[1]
            se = math.sqrt(c / (c - 1) * float(d @ d))
    return _normal_difference("roc_auc", auc[0], auc[1], se, confidence, method)


def noninferiority(diff: PairedDifference, max_regression: float,
                   higher_is_better: bool) -> NoninferiorityDecision:
    """Refuse only when the data show, at ``diff.confidence``, a regression beyond the allowance.

    One-sided on purpose (the question is "clearly worse?", not "different?"): for a
    higher-is-better metric refuse when ``diff.one_sided_high``, the upper bound at
    confidence c (a test at level 1 - c; the same bound as the two-sided interval at
    2c - 1), is below -max_regression; for a loss, when ``one_sided_low`` is above
    +max_regression. Anything else passes: a drop within noise is no evidence. Without
    one-sided bounds (NaN) the two-sided interval's bound is used, a one-sided bound at
    (1 + c) / 2, and the reason says so. An undefined difference passes: floors are what
    reject undefined metrics.
    """
    if not (math.isfinite(max_regression) and max_regression >= 0):
        raise ValueError(f"max_regression must be a finite number >= 0, got {max_regression}")
    c, label = diff.confidence, _LABELS.get(diff.metric, diff.metric)
    side, beyond, allowed = ("upper", "below", -max_regression) if higher_is_better else \
        ("lower", "above", max_regression)
    bound, level = (diff.one_sided_high if higher_is_better else diff.one_sided_low), c
    if not math.isfinite(bound):
        bound, level = (diff.ci_high if higher_is_better else diff.ci_low), (1 + c) / 2
    if not (math.isfinite(diff.difference) and math.isfinite(bound)):
        return NoninferiorityDecision(True, f"{label} difference is undefined: no evidence of a regression")
    num, pct = "{:+.3g}".format, "{:.4g}%".format
    observed = (f"{label} difference {num(diff.difference)} ({pct(100 * c)} CI {num(diff.ci_low)} "
                f"to {num(diff.ci_high)})")
    bound_text = f"one-sided {side} {pct(100 * level)} bound {num(bound)}"
    if bound < allowed if higher_is_better else bound > allowed:
        return NoninferiorityDecision(False, f"{bound_text} of the {label} difference is {beyond} the "
                                             f"allowed {num(allowed)}: clearly worse; {observed}")
    if diff.difference >= allowed if higher_is_better else diff.difference <= allowed:
        return NoninferiorityDecision(True, f"{observed} is within the allowed {num(allowed)}")
    return NoninferiorityDecision(True, f"{observed} is within noise of the allowed {num(allowed)}: "
                                        f"{bound_text} is not {beyond} it")
