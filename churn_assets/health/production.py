"""Health of the model in production, as pure functions of frames and probabilities.

Three questions, each answerable on a different set of rows:

- **Has the data moved?** (``drift_report``) Reference = the weeks the production model
  was trained on; current = the newest snapshot weeks, labelled or not. Per feature PSI
  and missing-rate change, PSI of the model's scores, change of the observed churn rate.
- **Has the model decayed?** (``realized_week``) On weeks whose labels have matured
  since deployment: the metrics it really achieved, against those it was deployed on.
- **How is it doing right now?** (``estimate_week``) On the newest weeks, whose labels
  are still open: CBPE's estimate with an interval that carries the label noise, the
  calibrator's uncertainty and the errors earlier estimates made; honest only while the
  probabilities stay calibrated (``calibration_verdict`` tells, on matured weeks).

Weeks are keyed by the Monday that starts them (ISO date string), so daily snapshots
and the simulator's Monday snapshots group the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scipy.stats import norm

from churn_assets.core.calibration import ece_noise_floor, estimate_performance, expected_calibration_error
from churn_assets.core.metrics import churn_metrics
from churn_assets.core.uncertainty import auc_standard_error
from churn_assets.health.drift import (DriftThresholds, FeatureDrift, drift_summary, feature_drift,
                                       prediction_drift, target_drift)

# Metrics of realized weeks that the health log and the asset publish.
REALIZED_KEYS = ("roc_auc", "pr_auc", "precision", "recall", "f1", "brier_score", "log_loss", "accuracy")
ESTIMATE_KEYS = ("roc_auc", "roc_auc_low", "roc_auc_high", "expected_churn_rate", "precision",
                 "precision_low", "precision_high", "recall", "recall_low", "recall_high", "f1", "accuracy")


def week_start(timestamps: pd.Series) -> pd.Series:
    """The Monday starting each timestamp's week, as ``YYYY-MM-DD`` strings (same index).

    Computed once per distinct date: formatting a million timestamps row by row costs
    a second, a history has a few hundred distinct dates.
    """
    ts = pd.Series(pd.to_datetime(timestamps))
    codes, days = pd.factorize(ts.dt.normalize())
    days = pd.DatetimeIndex(days)
    mondays = np.asarray((days - pd.to_timedelta(days.day_of_week, unit="D")).strftime("%Y-%m-%d"), dtype=object)
    return pd.Series(np.where(codes >= 0, mondays[np.maximum(codes, 0)] if len(mondays) else None, None),
                     index=ts.index, dtype=object)


def newest_weeks(timestamps: pd.Series, count: int) -> list[str]:
    """The ``count`` newest week starts present in ``timestamps``, oldest first."""
    weeks = sorted(week_start(timestamps).unique())
    return weeks[-count:] if count > 0 else []


def sample_rows(frame: pd.DataFrame, cap: int, seed: int = 0) -> pd.DataFrame:
    """At most ``cap`` rows, drawn with a fixed seed.

    PSI over 10 bins is already stable to ~1e-3 at 50,000 rows, while scoring and
    binning a 600,000-row training window would cost seconds every run.
    """
    if cap <= 0 or len(frame) <= cap:
        return frame
    return frame.sample(n=cap, random_state=seed)


def sample_parts(parts: list[pd.DataFrame], cap: int, seed: int = 0,
                 keep: list[np.ndarray | None] | None = None) -> pd.DataFrame:
    """``sample_rows(pd.concat(kept, ignore_index=True), cap, seed)`` where ``kept`` are
    the rows of ``parts`` that ``keep`` selects (one boolean array or None per part): the
    same rows in the same order with the same index, without building the concatenation
    or the selections: at a 10 M-row training window those are 1.6 GiB copies to keep
    50,000 rows."""
    kept = [np.arange(len(p)) if keep is None or keep[i] is None else np.flatnonzero(keep[i])
            for i, p in enumerate(parts)]
    total = sum(len(k) for k in kept)
    if cap <= 0 or total <= cap:
        return pd.concat([p.iloc[k] for p, k in zip(parts, kept)], ignore_index=True)
    # What DataFrame.sample draws for an integer seed.
    positions = np.random.RandomState(seed).choice(total, size=cap, replace=False)
    starts = np.cumsum([0] + [len(k) for k in kept])
    owner = np.searchsorted(starts, positions, side="right") - 1
    by_part = np.argsort(owner, kind="stable")
    picked = pd.concat([parts[i].iloc[kept[i][positions[by_part][owner[by_part] == i] - starts[i]]]
                        for i in range(len(parts))], ignore_index=True)
    restored = picked.iloc[np.argsort(by_part, kind="stable")]
    return restored.set_axis(pd.Index(positions), axis=0)


@dataclass
class DriftReport:
    """Everything the drift check shows: features sorted by PSI, then scores and target."""

    features: list[FeatureDrift]
    prediction: FeatureDrift | None
    target: FeatureDrift | None
    thresholds: DriftThresholds
    summary: dict = field(default_factory=dict)

    @property
    def all(self) -> list[FeatureDrift]:
        return [d for d in [*self.features, self.prediction, self.target] if d is not None]

    @property
    def status(self) -> str:
        """Worst status over features and scores ("no_data", "stable", "watch", "act").

        The target's PSI is shown but does not set the status: a churn rate that moves
        with the season is what the model is for, not a reason to distrust its inputs.
        """
        return self.summary.get("status", "no_data")

    def table(self) -> list[dict]:
        """One row per column, largest PSI first, for a markdown table."""
        rows = []
        for d in self.all:
            rows.append({
                "column": d.feature, "kind": d.kind,
                "psi": _round(d.psi, 4), "status": d.status(self.thresholds.watch, self.thresholds.act),
                "missing_ref": _round(d.missing_rate_reference, 4),
                "missing_cur": _round(d.missing_rate_current, 4),
                "missing_change": _round(d.missing_rate_current - d.missing_rate_reference, 4),
                "rows_ref": d.reference_rows, "rows_cur": d.current_rows,
            })
        return rows


def _round(value: float, digits: int):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), digits)


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], categorical: list[str],
                 thresholds: DriftThresholds, reference_scores=None, current_scores=None,
                 reference_labels=None, current_labels=None,
                 category_aliases: dict[str, dict[str, str]] | None = None) -> DriftReport:
    """Feature PSI (with missing rates), score PSI and churn-rate drift in one report.

    ``reference``/``current`` hold the raw feature columns, categories compared in their
    canonical form (``category_aliases``: the spec's); scores are P(churn) arrays (shape
    (n,)) of the production model on rows it never trained on (None: no model yet);
    labels are 0/1 arrays of rows with final labels (None: not measured).
    """
    features = feature_drift(reference, current, list(numeric), list(categorical),
                             category_aliases=category_aliases)
    prediction = None
    if reference_scores is not None and current_scores is not None:
        prediction = prediction_drift(reference_scores, current_scores)
    target = None
    if reference_labels is not None and current_labels is not None:
        target = target_drift(reference_labels, current_labels)
    scored = [*features, *([prediction] if prediction is not None else [])]
    return DriftReport(features, prediction, target, thresholds,
                       drift_summary(scored, thresholds, top=5))


def realized_week(y_true, proba, threshold: float) -> dict:
    """Metrics a model achieved on one week with final labels, plus calibration (ECE).

    ``y_true``: 0/1, shape (n,); ``proba``: P(churn), shape (n,). ROC AUC is NaN when
    the week holds one class only.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(proba, dtype=float)
    metrics = churn_metrics(y, p, threshold)
    out = {k: float(metrics[k]) for k in REALIZED_KEYS}
    out.update(rows=int(y.size), churn_rate=float(y.mean()) if y.size else math.nan,
               mean_proba=float(p.mean()) if p.size else math.nan,
               ece=expected_calibration_error(y, p) if y.size else math.nan)
    return out


def pooled_auc(frames: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """ROC AUC over several weeks' (labels, probabilities) pooled, NaN if one class.

    One pooled number is a steadier decay signal than any single week: at 1,000
    customers a week holds ~100 churners and its AUC wobbles by +-0.03 on its own.
    """
    if not frames:
        return math.nan
    y = np.concatenate([f[0] for f in frames]).astype(int)
    p = np.concatenate([f[1] for f in frames]).astype(float)
    return churn_metrics(y, p, 0.5)["roc_auc"]


# Calibrators refitted on customer resamples of the validation weeks, per estimate: the
# spread of the estimate they cause was 0.011-0.017 ROC AUC on the simulator, as large
# as the label noise the draws model, so leaving it out made intervals far too narrow.
CALIBRATOR_DRAWS = 50
# Past estimates whose truth is known needed before their errors widen the interval.
MIN_RESIDUALS = 4


def estimate_week(predictor, rows: pd.DataFrame, n_draws: int = 200, seed: int = 0,
                  confidence: float = 0.9, residuals=()) -> dict:
    """The label-free estimate of ``predictor`` on one week's ``rows``, with an interval
    that carries three kinds of uncertainty.

    The week is read through the evaluated fit (``ChurnPredictor.evaluated_fit``): its
    scores are on the scale its calibration was measured on, out of time. The deployed
    fit's scores spread differently (newer weeks, another fit), and reading them through
    the evaluated fit's calibration made the estimate wander with that spread: on the
    simulator its error was 0.019-0.020 on average against 0.011-0.017 this way, for a
    deployed fit whose realized ROC AUC stays within about 0.001 of the evaluated fit's
    (BENCHMARKS.md, "Backtest"). The uncertainty:

    1. the labels' own noise: labels drawn y ~ Bernoulli(p) (CBPE);
    2. the calibrator's: probabilities come from a calibrator fitted on the evaluated
       fit's validation and holdout scores, and each draw uses one refitted on a customer
       resample of them (``ChurnPredictor.estimate_calibrators``);
    3. what earlier estimates got wrong beyond that: ``residuals`` are (realized -
       estimated, interval half-width) of past weeks whose labels have matured; with at
       least ``MIN_RESIDUALS`` of them, the variance their errors show beyond what their
       intervals allowed is added to this interval (symmetric, about the same point).

    Returns ``estimated_week``'s keys plus ``widened_by`` (the added half-width).
    """
    evaluated = predictor.evaluated_fit
    point, refits = predictor.estimate_calibrators(CALIBRATOR_DRAWS, seed=seed)
    alternatives = None
    if point is None:
        proba = evaluated.predict_proba(rows)
    else:
        decision = evaluated.pipeline.decision_function(rows)
        proba = point(decision)
        alternatives = np.vstack([c(decision) for c in refits]) if refits else None
    estimate = estimate_performance(proba, predictor.threshold, n_draws=n_draws, seed=seed,
                                    confidence=confidence, alternatives=alternatives)
    values = estimate.to_dict()
    out = {k: float(values[k]) for k in ESTIMATE_KEYS}
    out.update(rows=int(estimate.rows), confidence=float(estimate.confidence), widened_by=0.0)
    z = norm.ppf((1 + confidence) / 2)
    past = [(float(e), float(h)) for e, h in residuals
            if e is not None and h is not None and math.isfinite(e) and math.isfinite(h)]
    if len(past) >= MIN_RESIDUALS and math.isfinite(out["roc_auc_low"]):
        errors = np.array([e for e, _ in past])
        modelled = np.array([(h / z) ** 2 for _, h in past])
        extra = max(0.0, float(np.mean(errors ** 2) - np.mean(modelled)))
        if extra > 0:
            half = (out["roc_auc_high"] - out["roc_auc_low"]) / 2
            wider = math.sqrt(half ** 2 + z ** 2 * extra)
            out["roc_auc_low"] = out["roc_auc"] - wider
            out["roc_auc_high"] = out["roc_auc"] + wider
            out["widened_by"] = wider - half
    return out


def decay_test(deploy_auc: float, deploy_se: float | None, y_true, proba, groups, max_decay: float,
               confidence: float = 0.95, min_weeks_rows: int = 2) -> dict:
    """Has the production model decayed? Realized ROC AUC on its matured served weeks
    (``y_true``, ``proba``, ``groups`` = customer ids, pooled, shape (n,)) against its
    deploy-time holdout ROC AUC (``deploy_auc`` with standard error ``deploy_se``).

    Alarm only when the drop is beyond ``max_decay`` and the data show a drop at all:
    the one-sided ``confidence`` lower bound of ``deploy_auc - realized`` above zero,
    with customer-grouped standard errors on both sides (a customer's weekly rows err
    together). Returns ``alarm``, ``decay``, ``realized_roc_auc``, ``standard_error`` and
    ``lower_bound``.
    """
    realized, se_realized = auc_standard_error(np.asarray(y_true, dtype=int), np.asarray(proba, dtype=float),
                                               groups=groups)
    se = math.sqrt((se_realized if math.isfinite(se_realized) else 0.0) ** 2
                   + (deploy_se if deploy_se is not None and math.isfinite(deploy_se) else 0.0) ** 2)
    decay = deploy_auc - realized
    lower = decay - norm.ppf(confidence) * se
    alarm = bool(math.isfinite(decay) and decay > max_decay and lower > 0)
    return {"alarm": alarm, "decay": decay, "realized_roc_auc": realized, "standard_error": se,
            "lower_bound": lower}


def calibration_verdict(y_true, proba) -> dict:
    """Is ``proba`` calibrated on these labelled rows beyond what chance explains? ECE
    against the 95th percentile of a calibrated model's ECE on as many rows:
    ``ece``, ``noise_p95``, ``reliable`` (True when within noise)."""
    y, p = np.asarray(y_true, dtype=int), np.asarray(proba, dtype=float)
    if not y.size:
        return {"ece": math.nan, "noise_p95": None, "reliable": True}
    ece = expected_calibration_error(y, p)
    p95 = ece_noise_floor(p).p95
    return {"ece": ece, "noise_p95": p95, "reliable": bool(ece <= p95)}
