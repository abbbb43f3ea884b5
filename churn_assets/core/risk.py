"""What a retention team needs beside the probabilities: value at risk, how many will
churn, and what changed since the previous list. Pure functions of score frames.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

EXACT_CHURNERS_MAX = 5_000  # customers up to which the Poisson-binomial is convolved exactly


def value_at_risk(probability: np.ndarray, value: np.ndarray | None) -> np.ndarray:
    """P(churn) x value per customer, shape (n,), in the value's unit (NaN where the value
    is missing); the probability itself when there is no value column."""
    probability = np.asarray(probability, dtype=np.float64)
    if value is None:
        return probability.copy()
    return probability * np.asarray(value, dtype=np.float64)


def poisson_binomial_interval(probability: np.ndarray, confidence: float = 0.95) -> tuple[float, int, int]:
    """Expected count of successes of independent Bernoulli(p_i), and the central
    ``confidence`` interval of that count: (mean, low, high).

    The count is Poisson-binomial. Up to ``EXACT_CHURNERS_MAX`` customers its distribution
    is convolved exactly (one step per customer); beyond, the refined normal approximation
    (Volkova 1996: the normal CDF with a skewness term), whose error falls as 1/n and is
    far below one customer there. low and high are the quantiles at (1 - confidence) / 2
    and (1 + confidence) / 2.
    """
    p = np.asarray(probability, dtype=np.float64)
    n = len(p)
    mean = float(p.sum())
    if n == 0:
        return 0.0, 0, 0
    lo_q, hi_q = (1 - confidence) / 2, (1 + confidence) / 2
    if n <= EXACT_CHURNERS_MAX:
        pmf = np.zeros(n + 1)
        pmf[0] = 1.0
        for i, q in enumerate(p):
            pmf[1:i + 2] = pmf[1:i + 2] * (1 - q) + pmf[:i + 1] * q
            pmf[0] *= 1 - q
        cdf = np.cumsum(pmf)
    else:
        var = float((p * (1 - p)).sum())
        sd = max(np.sqrt(var), 1e-12)
        skew = float((p * (1 - p) * (1 - 2 * p)).sum()) / sd ** 3
        k = np.arange(max(0, int(mean - 8 * sd) - 1), min(n, int(mean + 8 * sd) + 2) + 1)
        x = (k + 0.5 - mean) / sd
        cdf_part = np.clip(norm.cdf(x) + skew * (1 - x ** 2) * norm.pdf(x) / 6, 0, 1)
        cdf_part = np.maximum.accumulate(cdf_part)
        low = int(k[np.searchsorted(cdf_part, lo_q)]) if cdf_part[-1] >= lo_q else int(k[-1])
        high = int(k[min(np.searchsorted(cdf_part, hi_q), len(k) - 1)])
        return mean, low, high
    low = int(np.searchsorted(cdf, lo_q))
    high = int(min(np.searchsorted(cdf, hi_q), n))
    return mean, low, high


def value_interval(probability: np.ndarray, value: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Expected value lost (sum of p_i v_i) and a central ``confidence`` interval of the
    value actually lost, sum of v_i over the customers who churn (independent Bernoulli
    draws): normal approximation with variance sum p_i (1 - p_i) v_i^2, floored at 0.
    Customers without a value are left out."""
    p = np.asarray(probability, dtype=np.float64)
    v = np.asarray(value, dtype=np.float64)
    known = ~np.isnan(v)
    p, v = p[known], v[known]
    total = float((p * v).sum())
    sd = float(np.sqrt((p * (1 - p) * v * v).sum()))
    z = float(norm.ppf((1 + confidence) / 2))
    return total, max(0.0, total - z * sd), total + z * sd


def compare_with_previous(scores: pd.DataFrame, previous: pd.DataFrame | None, id_column: str) -> pd.DataFrame:
    """``scores`` with ``new_at_risk`` and ``risk_change`` against the previous list.

    ``new_at_risk``: labelled at risk now (``churn_label`` 1) and not in the previous list
    as at risk (absent from it, or labelled 0 there). ``risk_change``: probability now
    minus the previous list's (NaN for a customer the previous list did not have). With
    no previous list, every customer at risk is new and every change is NaN.
    """
    out = scores.copy()
    at_risk = out["churn_label"].to_numpy() == 1
    if previous is None or previous.empty or id_column not in previous.columns:
        out["new_at_risk"] = at_risk
        out["risk_change"] = np.nan
        return out
    # Positions in the previous list by id (-1: absent), through one hash join of the
    # ids rather than a lookup per customer.
    before = previous.drop_duplicates(id_column, keep="last")
    where = _positions(before[id_column], out[id_column])
    found = where >= 0
    old_probability = np.full(len(out), np.nan)
    old_probability[found] = before["churn_probability"].to_numpy(dtype=np.float64)[where[found]]
    was_at_risk = np.zeros(len(out), dtype=bool)
    was_at_risk[found] = before["churn_label"].to_numpy()[where[found]] == 1
    out["new_at_risk"] = at_risk & ~was_at_risk
    out["risk_change"] = out["churn_probability"].to_numpy() - old_probability
    return out


def _positions(ids: pd.Series, wanted: pd.Series) -> np.ndarray:
    """Position in ``ids`` of each of ``wanted`` (the last, for an id listed twice), -1
    where absent; ids compared as text."""
    text = ids.astype(str)
    if text.is_unique:
        return pd.Index(text).get_indexer(wanted.astype(str))
    last = ~text.duplicated(keep="last").to_numpy()
    found = pd.Index(text[last]).get_indexer(wanted.astype(str))
    return np.where(found >= 0, np.flatnonzero(last)[found], -1)


def decile_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per risk decile (1 = riskiest): customers, P(churn) range and mean, customers at
    risk and newly at risk, expected churners, value at risk, mean risk change."""
    frame = scores.assign(_at_risk=scores["churn_label"] == 1)
    grouped = frame.groupby("risk_decile", sort=True)
    table = pd.DataFrame({
        "customers": grouped.size(),
        "min_probability": grouped["churn_probability"].min(),
        "mean_probability": grouped["churn_probability"].mean(),
        "at_risk": grouped["_at_risk"].sum(),
        "new_at_risk": grouped["new_at_risk"].sum() if "new_at_risk" in frame else 0,
        "expected_churners": grouped["churn_probability"].sum(),
        "value_at_risk": grouped["value_at_risk"].sum() if "value_at_risk" in frame else np.nan,
        "mean_risk_change": grouped["risk_change"].mean() if "risk_change" in frame else np.nan,
    })
    return table.reset_index()


def risk_summary(scores: pd.DataFrame, value: np.ndarray | None, value_column: str | None,
                 horizon_days: int, previous: pd.DataFrame | None, id_column: str) -> dict:
    """The run's facts for its metadata and the CLI: expected churners within the horizon
    with their 95% interval, the value at risk with its interval (or a statement that there
    is no value column), and the counts of what changed since ``previous``."""
    p = scores["churn_probability"].to_numpy(dtype=np.float64)
    mean, low, high = poisson_binomial_interval(p)
    summary: dict = {
        "customers": len(scores),
        "at_risk": int((scores["churn_label"] == 1).sum()),
        "expected_churners": round(mean, 2),
        "expected_churners_low": low,
        "expected_churners_high": high,
        "horizon_days": horizon_days,
    }
    if value is not None:
        total, vlow, vhigh = value_interval(p, value)
        summary.update({"value_column": value_column, "value_at_risk": round(total, 2),
                        "value_at_risk_low": round(vlow, 2), "value_at_risk_high": round(vhigh, 2),
                        "customers_without_value": int(np.isnan(np.asarray(value, dtype=np.float64)).sum())})
    else:
        summary.update({"value_column": None,
                        "value_at_risk_note": "no value column in the feature spec: value_at_risk is the"
                                              " churn probability and its total the expected churners"})
    if "new_at_risk" in scores:
        summary["new_at_risk"] = int(scores["new_at_risk"].sum())
    if previous is not None and not previous.empty and "risk_change" in scores:
        change = scores["risk_change"]
        was = previous.drop_duplicates(id_column, keep="last")
        was = was[was["churn_label"].to_numpy() == 1]
        now = _positions(scores[id_column], was[id_column])  # where last week's at-risk customers are now
        labels = scores["churn_label"].to_numpy()
        summary.update({"previous_customers": len(previous),
                        "no_longer_at_risk": int((labels[now[now >= 0]] != 1).sum()),
                        "customers_new_to_list": int(change.isna().sum()),
                        "mean_risk_change": round(float(change.mean()), 5) if change.notna().any() else None,
                        "risk_up_10_points": int((change >= 0.10).sum()),
                        "risk_down_10_points": int((change <= -0.10).sum())})
    return summary


def finish_risk_list(scores: pd.DataFrame, records: pd.DataFrame, value_column: str | None,
                     horizon_days: int, previous: pd.DataFrame | None, id_column: str
                     ) -> tuple[pd.DataFrame, dict]:
    """``scores`` (from ``scoring.score_customers``, rows in ``records``' order) with
    ``value_at_risk``, ``new_at_risk`` and ``risk_change``, and the run's summary
    (``risk_summary``)."""
    value = None
    if value_column is not None and value_column in records.columns:
        value = pd.to_numeric(records[value_column], errors="coerce").to_numpy(dtype=np.float64)
    out = scores.copy()
    at = out.columns.get_loc("model_version")
    out.insert(at, "value_at_risk", value_at_risk(out["churn_probability"].to_numpy(), value))
    changed = compare_with_previous(out, previous, id_column)
    for offset, name in enumerate(("new_at_risk", "risk_change")):
        out.insert(at + 1 + offset, name, changed[name].to_numpy())
    summary = risk_summary(out, value, value_column if value is not None else None, horizon_days,
                           previous, id_column)
    return out, summary
