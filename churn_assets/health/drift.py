"""Population Stability Index (PSI) drift between a reference sample and a current sample.

PSI = sum over bins of (cur - ref) * ln(cur / ref), where ``ref`` and ``cur`` are the
shares (fractions in [0, 1], summing to 1 over all bins) of each sample's rows in a bin.
It is unitless and >= 0; the conventional reading is < 0.1 stable, 0.1-0.25 worth
watching, >= 0.25 a shift to act on.

Bins are always fixed from the reference alone, so the same current sample scored
against the same reference gives the same PSI whatever else it is compared with.
Missing values get their own bin: a feature that starts arriving empty is drift even
when its non-missing values look unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from churn_assets.core.features import canonical_categories

KINDS = ("numeric", "categorical", "prediction", "target")
MISSING = "missing"
UNSEEN = "unseen"
# Ordered from least to most severe so that max() over statuses gives the worst one.
STATUSES = ("no_data", "stable", "watch", "act")


@dataclass(frozen=True)
class FeatureDrift:
    """PSI of one column, with the per-bin shares it was computed from.

    ``psi`` is NaN when either sample has no rows (there is no distribution to
    compare). ``bins`` is a list of ``{"bin": label, "reference_share": float,
    "current_share": float}`` with the raw (un-floored) shares. ``details`` holds
    kind-specific extras, e.g. the churn rates of a target drift.
    """

    feature: str
    kind: str
    psi: float
    missing_rate_reference: float
    missing_rate_current: float
    reference_rows: int
    current_rows: int
    bins: list = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def status(self, watch: float = 0.1, act: float = 0.25) -> str:
        """"stable", "watch" or "act" by PSI threshold; "no_data" when PSI is undefined."""
        if self.psi is None or math.isnan(self.psi):
            return "no_data"
        if self.psi >= act:
            return "act"
        if self.psi >= watch:
            return "watch"
        return "stable"

    def to_dict(self) -> dict:
        """JSON-friendly copy (plain floats, ints, strings, lists and dicts)."""
        return asdict(self)


@dataclass(frozen=True)
class DriftThresholds:
    """PSI levels at which a column becomes "watch" and "act" (watch <= act)."""

    watch: float = 0.1
    act: float = 0.25

    def __post_init__(self) -> None:
        if not 0 <= self.watch <= self.act:
            raise ValueError(f"need 0 <= watch <= act, got watch={self.watch}, act={self.act}")


def psi_from_shares(reference_shares: Sequence[float], current_shares: Sequence[float],
                    eps: float = 1e-4) -> float:
    """PSI of two aligned share vectors (each shape (n_bins,), fractions summing to 1).

    Shares are floored at ``eps`` before the log: a bin that is empty in either sample
    would otherwise make ln(cur / ref) infinite (or 0 * -inf), and a single empty bin
    would turn any comparison into PSI = inf. The floor keeps PSI finite while still
    letting an emptied or newly filled bin dominate the sum. Floored shares are not
    renormalised, which is the common convention and keeps hand computation simple.
    """
    ref = np.maximum(np.asarray(reference_shares, dtype=float), eps)
    cur = np.maximum(np.asarray(current_shares, dtype=float), eps)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _shares(counts: np.ndarray, rows: int) -> np.ndarray:
    return counts / rows if rows else np.zeros_like(counts, dtype=float)


def _result(feature: str, kind: str, labels: list[str], ref_counts: np.ndarray, cur_counts: np.ndarray,
            ref_missing: int, cur_missing: int, eps: float, details: dict | None = None) -> FeatureDrift:
    ref_rows, cur_rows = int(ref_counts.sum()), int(cur_counts.sum())
    ref_shares, cur_shares = _shares(ref_counts, ref_rows), _shares(cur_counts, cur_rows)
    psi = psi_from_shares(ref_shares, cur_shares, eps) if ref_rows and cur_rows else math.nan
    bins = [{"bin": label, "reference_share": float(r), "current_share": float(c)}
            for label, r, c in zip(labels, ref_shares, cur_shares)]
    return FeatureDrift(
        feature=feature, kind=kind, psi=psi,
        missing_rate_reference=ref_missing / ref_rows if ref_rows else math.nan,
        missing_rate_current=cur_missing / cur_rows if cur_rows else math.nan,
        reference_rows=ref_rows, current_rows=cur_rows, bins=bins, details=dict(details or {}))


def _edge_label(lower: float, upper: float) -> str:
    # Intervals are right-closed, except the last one which is open at +inf.
    close = ")" if math.isinf(upper) else "]"
    return f"({lower:.6g}, {upper:.6g}{close}"


def numeric_psi(reference: pd.Series, current: pd.Series, n_bins: int = 10, eps: float = 1e-4,
                *, feature: str | None = None, kind: str = "numeric") -> FeatureDrift:
    """PSI of a numeric column over reference-quantile bins plus a missing-value bin.

    ``reference`` and ``current`` are 1-d (Series or array-like), any length; values that
    do not parse as numbers count as missing. Inner edges are the unique reference
    quantiles at 1/n_bins, ..., (n_bins-1)/n_bins; the outer edges are -inf and +inf so
    that current values beyond the reference range land in the outer bins rather than
    being dropped. Bins are right-closed: (a, b]. Duplicate quantiles (heavy ties, a
    constant column) merge bins, so there may be fewer than ``n_bins`` value bins.
    An all-missing reference has no quantiles: one (-inf, inf) value bin remains
    next to the missing bin, so PSI then depends only on the missing share.
    """
    name = feature if feature is not None else str(getattr(reference, "name", None) or "value")
    ref, cur = _as_float(reference), _as_float(current)
    ref_valid, cur_valid = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if ref_valid.size:
        inner = np.unique(np.quantile(ref_valid, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))
    else:
        inner = np.array([], dtype=float)
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    labels = [_edge_label(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])] + [MISSING]
    n_value_bins = len(edges) - 1
    # side="left" puts a value equal to an inner edge into the bin that edge closes.
    ref_counts = np.bincount(np.searchsorted(inner, ref_valid, side="left"), minlength=n_value_bins)
    cur_counts = np.bincount(np.searchsorted(inner, cur_valid, side="left"), minlength=n_value_bins)
    ref_missing, cur_missing = int(ref.size - ref_valid.size), int(cur.size - cur_valid.size)
    return _result(name, kind, labels, np.append(ref_counts, ref_missing), np.append(cur_counts, cur_missing),
                   ref_missing, cur_missing, eps)


def _as_float(values) -> np.ndarray:
    """Shape (n,) float array; anything that does not parse as a number becomes NaN."""
    series = pd.Series(values)
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    # na_value: nullable dtypes (Int64, boolean) refuse a plain float conversion when NA is present.
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def categorical_psi(reference: pd.Series, current: pd.Series, eps: float = 1e-4,
                    *, feature: str | None = None) -> FeatureDrift:
    """PSI of a categorical column over the reference's categories, "missing" and "unseen".

    ``reference`` and ``current`` are 1-d (Series or array-like). Categories are compared
    by their string form. Current categories absent from the reference are pooled in an
    "unseen" bucket (reference share 0, so floored at ``eps``): a new category appearing
    in production is exactly the kind of shift this should report.
    """
    name = feature if feature is not None else str(getattr(reference, "name", None) or "value")
    ref = pd.Series(reference).astype(object)
    cur = pd.Series(current).astype(object)
    ref_missing_mask, cur_missing_mask = ref.isna().to_numpy(), cur.isna().to_numpy()
    ref_values = ref[~ref_missing_mask].astype(str)
    cur_values = cur[~cur_missing_mask].astype(str)
    ref_freq = ref_values.value_counts()
    # Most frequent first, ties by name, so bin order is stable across runs.
    categories = sorted(ref_freq.index, key=lambda c: (-int(ref_freq[c]), c))
    cur_freq = cur_values.value_counts()
    ref_counts = [int(ref_freq.get(c, 0)) for c in categories]
    cur_counts = [int(cur_freq.get(c, 0)) for c in categories]
    ref_missing, cur_missing = int(ref_missing_mask.sum()), int(cur_missing_mask.sum())
    cur_unseen = int(cur_values.size - sum(cur_counts))
    return _result(name, "categorical", list(categories) + [MISSING, UNSEEN],
                   np.array(ref_counts + [ref_missing, 0]), np.array(cur_counts + [cur_missing, cur_unseen]),
                   ref_missing, cur_missing, eps)


def _by_psi_descending(drifts: Iterable[FeatureDrift]) -> list[FeatureDrift]:
    # NaN (no data) sorts last: it is not evidence of a large shift.
    return sorted(drifts, key=lambda d: (math.isnan(d.psi), -d.psi if not math.isnan(d.psi) else 0.0, d.feature))


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str],
                  categorical: list[str], n_bins: int = 10, eps: float = 1e-4,
                  category_aliases: dict[str, dict[str, str]] | None = None) -> list[FeatureDrift]:
    """PSI of every listed column, sorted by PSI descending (undefined PSI last).

    Both frames must contain every listed column: a column missing from ``current`` is
    a schema break that belongs to validation, not a drift number. Categories are
    compared as the model reads them: stripped, case-folded, ``category_aliases`` (the
    spec's, per column) resolved, so an export that starts writing "CC" for "Credit Card"
    moves no model input and no PSI.
    """
    absent = [c for c in [*numeric, *categorical] if c not in reference.columns or c not in current.columns]
    if absent:
        raise KeyError(f"columns missing from reference or current: {absent}")
    drifts = [numeric_psi(reference[c], current[c], n_bins=n_bins, eps=eps, feature=c) for c in numeric]
    aliases = category_aliases or {}
    drifts += [categorical_psi(canonical_categories(reference[c], aliases.get(c, {})),
                               canonical_categories(current[c], aliases.get(c, {})), eps=eps, feature=c)
               for c in categorical]
    return _by_psi_descending(drifts)


def prediction_drift(reference_scores, current_scores, n_bins: int = 10, eps: float = 1e-4) -> FeatureDrift:
    """PSI of model scores (churn probabilities, shape (n,), in [0, 1]), kind "prediction".

    Score drift needs no labels, so it is the earliest warning available in production.
    """
    return numeric_psi(pd.Series(np.asarray(reference_scores, dtype=float)),
                       pd.Series(np.asarray(current_scores, dtype=float)),
                       n_bins=n_bins, eps=eps, feature="prediction", kind="prediction")


def _label_counts(labels) -> tuple[np.ndarray, int]:
    values = _as_float(labels)
    valid = values[~np.isnan(values)]
    if not np.isin(valid, (0.0, 1.0)).all():
        raise ValueError(f"target labels must be 0/1, got {sorted(set(valid.tolist()) - {0.0, 1.0})[:5]}")
    missing = int(values.size - valid.size)
    return np.array([int((valid == 0).sum()), int((valid == 1).sum()), missing]), missing


def target_drift(reference_labels, current_labels, eps: float = 1e-4) -> FeatureDrift:
    """Change of the observed churn rate: PSI of the 0/1 label distribution, kind "target".

    Labels are 0/1 (shape (n,)); missing labels (not yet matured) get their own bin.
    ``details`` holds ``reference_rate``, ``current_rate`` (churn share among labelled
    rows, in [0, 1]) and ``rate_change`` (current minus reference, NaN if undefined).
    """
    ref_counts, ref_missing = _label_counts(reference_labels)
    cur_counts, cur_missing = _label_counts(current_labels)

    def rate(counts: np.ndarray) -> float:
        labelled = counts[0] + counts[1]
        return float(counts[1] / labelled) if labelled else math.nan

    ref_rate, cur_rate = rate(ref_counts), rate(cur_counts)
    details = {"reference_rate": ref_rate, "current_rate": cur_rate, "rate_change": cur_rate - ref_rate}
    return _result("target", "target", ["0", "1", MISSING], ref_counts, cur_counts, ref_missing, cur_missing,
                   eps, details)


def drift_summary(drifts: Sequence[FeatureDrift], thresholds: DriftThresholds | None = None,
                  top: int = 5) -> dict:
    """Counts by status, the worst status, the maximum PSI and the ``top`` drifting columns."""
    thresholds = thresholds or DriftThresholds()
    ordered = _by_psi_descending(drifts)
    statuses = [d.status(thresholds.watch, thresholds.act) for d in ordered]
    counts = {s: statuses.count(s) for s in STATUSES}
    defined = [d.psi for d in ordered if not math.isnan(d.psi)]
    return {
        "columns": len(ordered),
        "counts": counts,
        "status": max(statuses, key=STATUSES.index) if statuses else "no_data",
        "max_psi": max(defined) if defined else math.nan,
        "thresholds": {"watch": thresholds.watch, "act": thresholds.act},
        "top": [{"feature": d.feature, "kind": d.kind, "psi": d.psi, "status": s}
                for d, s in zip(ordered[:top], statuses[:top])],
    }
