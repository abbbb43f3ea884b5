"""``model_health``: the production model between deploys, and its ``production_decay`` check.

Per refresh: the realized metrics of the production model on every week it has served
whose labels matured (weeks from its ``served_from`` day on: earlier weeks share label
windows with its own training rows), the realized value beside every earlier estimate,
and the label-free estimate of the weeks whose labels are still open
(``health.production.estimate_week``: label noise, calibrator uncertainty, and the
errors earlier estimates made). The decay test (``health.production.decay_test``)
compares the realized ROC AUC of at least two matured served weeks with the deploy-time
holdout ROC AUC, with customer-grouped standard errors on both sides; a decay is a WARN
on the ``production_decay`` check, an alarm (once per version) and, through
``model_health_sensor``, a refresh.
"""

import math

import dagster as dg
import numpy as np
import pandas as pd

from churn_assets.core.markdown import md_table
from churn_assets.core.spec import LABEL
from churn_assets.core.training import ModelingFrames
from churn_assets.defs.monitoring import (WEEK, MonitoringPlan, _deploy_auc, _history, _labelled, _no_rows,
                                          _production, health_log, raise_alarm)
from churn_assets.defs.resources import ChurnStorage, TrainingPlan
from churn_assets.health.plots import png_markdown, realized_performance_trend
from churn_assets.health.production import calibration_verdict, decay_test, estimate_week, realized_week
from churn_assets.storage.health_log import HealthLog
from churn_assets.storage.registry import RegistryError

DECAY_CHECK = "production_decay"
# How far back an unchecked estimate is still looked for: a year of weekly snapshots.
OLDEST_PENDING_WEEKS = 52
MIN_DECAY_WEEKS = 2


def _score_weeks(predictor, rows: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Week -> (labels, P(churn), row positions) of ``predictor`` on ``rows``, one predict call."""
    if rows.empty:
        return {}
    proba = predictor.predict_proba(rows)
    labels = rows[LABEL].to_numpy()
    return {week: (labels[index], proba[index], index) for week, index in rows.groupby(WEEK).indices.items()}


def _realized_records(version: str, manifest: dict, predictor, rows: pd.DataFrame, run_id: str) -> list[dict]:
    base = {"kind": "realized", "version": version, "deploy_roc_auc": _deploy_auc(manifest),
            "deploy_metrics": manifest.get("metrics") or {}, "run_id": run_id}
    return [{**base, "week": week, **realized_week(y, p, predictor.threshold),
             "ece_noise_p95": calibration_verdict(y, p)["noise_p95"]}
            for week, (y, p, _) in sorted(_score_weeks(predictor, rows).items())]


def served_from(manifest: dict, fallback: pd.Timestamp) -> pd.Timestamp:
    """The first snapshot day whose labels the version's training rows do not reach: its
    ``served_from`` (its as_of), or for older manifests the day after its holdout."""
    if manifest.get("served_from"):
        return pd.Timestamp(manifest["served_from"])
    holdout_end = ((manifest.get("data_window") or {}).get("holdout") or [None, None])[1]
    return pd.Timestamp(holdout_end) + pd.Timedelta(days=1) if holdout_end else fallback


def _residuals(log: HealthLog) -> list[tuple[float, float]]:
    """(realized - estimated, interval half-width) of every estimated week whose truth is known."""
    out = []
    for row in log.served_weeks():
        est, real, low, high = (row.get(k) for k in ("estimated_roc_auc", "realized_roc_auc",
                                                      "estimated_low", "estimated_high"))
        if None not in (est, real, low, high):
            out.append((real - est, (high - low) / 2))
    return out


def _calibration_check(log: HealthLog) -> dict | None:
    """Were the probabilities served on the newest matured week calibrated? That week's
    ECE, by the model that served it, against what a calibrated model shows on as many
    rows (recorded with each realized week); None before any such week. A weekly loop
    replaces its model before any week it served matures, so the question is asked of
    the week, not of the version."""
    realized = log.keyed("realized")
    served = [realized.get((r["version"], r["week"])) for r in log.served_weeks()]
    served = sorted((r for r in served if r and r.get("ece_noise_p95") is not None and r.get("ece") is not None),
                    key=lambda r: r["week"])
    if not served:
        return None
    newest = served[-1]
    return {"week": newest["week"], "ece": newest["ece"], "noise_p95": newest["ece_noise_p95"],
            "reliable": bool(newest["ece"] <= newest["ece_noise_p95"])}


@dg.asset(group_name="churn", kinds={"pandas"},
          description="Production model health: realized metrics per matured served week against the"
                      " deploy-time holdout, label-free estimates on weeks whose labels are open.",
          check_specs=[dg.AssetCheckSpec(DECAY_CHECK, asset="model_health",
                                         description="The production model's realized ROC AUC on at least two"
                                                     " matured served weeks is clearly below its deploy-time"
                                                     " holdout ROC AUC (customer-grouped one-sided test)."
                                                     " WARN only.")])
def model_health(context: dg.AssetExecutionContext, clean_features: ModelingFrames, storage: ChurnStorage,
                 training_plan: TrainingPlan, monitoring: MonitoringPlan) -> dg.MaterializeResult:
    production = _production(storage, context)
    if production is None:
        return dg.MaterializeResult(
            metadata={"status": "no model in production yet"},
            check_results=[dg.AssetCheckResult(check_name=DECAY_CHECK, passed=True,
                                               severity=dg.AssetCheckSeverity.WARN,
                                               description="no model in production yet")])
    version, manifest, predictor = production
    spec = training_plan.feature_spec()
    ts = spec.timestamp_column
    cutoff, run_id = clean_features.label_cutoff, context.run.run_id
    log = health_log(storage)
    realized = log.keyed("realized")
    first_served = served_from(manifest, cutoff - pd.Timedelta(weeks=monitoring.decay_weeks))
    cap = monitoring.rows_per_week
    # Which weeks are open is known from the week list alone, except for a week the
    # label cutoff falls inside: only its rows can say. Weeks are read back to the oldest
    # estimate still waiting for its truth (at most a year), else ``max(8, decay_weeks)``:
    # a long-stale model must not make every run re-read months of history.
    six = pd.Timedelta(days=6)
    pending = [pd.Timestamp(w) for (v, w), _ in log.keyed("estimate").items() if (v, w) not in realized and w]
    horizon = cutoff - pd.Timedelta(weeks=max(8, monitoring.decay_weeks))
    if pending:
        horizon = max(min(horizon, min(pending)), cutoff - pd.Timedelta(weeks=OLDEST_PENDING_WEEKS))
    stored = [pd.Timestamp(w) for w in storage.history().weeks() if pd.Timestamp(w) + six >= horizon]
    loaded: dict[str, pd.DataFrame] = {}

    def week_rows(week: str) -> pd.DataFrame:
        # One week file at a time, sampled at once: the rest of it is never needed.
        if week not in loaded:
            start = pd.Timestamp(week)
            rows = _history(storage, spec, since=start, until=start + six)
            loaded[week] = rows if cap <= 0 or len(rows) <= cap else rows.sample(n=cap, random_state=0)
        return loaded[week]

    open_weeks = {f"{w:%Y-%m-%d}" for w in stored if w > cutoff}
    for w in stored:
        if w <= cutoff < w + six and (week_rows(f"{w:%Y-%m-%d}")[ts] > cutoff).any():
            open_weeks.add(f"{w:%Y-%m-%d}")
    matured_weeks = {f"{w:%Y-%m-%d}" for w in stored} - open_weeks
    served_weeks = {w for w in matured_weeks if pd.Timestamp(w) >= first_served.normalize() - pd.Timedelta(
        days=first_served.day_of_week)}

    def rows_of(weeks, after=None) -> pd.DataFrame:
        parts = [week_rows(w) for w in sorted(weeks)]
        frame = pd.concat(parts) if parts else _no_rows(spec)
        if after is not None:
            frame = frame[frame[ts] >= after]
        return _labelled(frame, spec)

    records: list[dict] = []
    # 1. Realized: production on every matured week it served, not yet recorded, with
    #    the ECE a calibrated model would show on as many rows beside its own.
    todo = sorted(w for w in served_weeks if (version, w) not in realized)
    records += _realized_records(version, manifest, predictor, rows_of(todo, after=first_served), run_id)

    # 2. Earlier estimates (of any version) whose week has matured: the truth beside them.
    registry = storage.registry()
    waiting: dict[str, list[str]] = {}
    for (v, w) in log.keyed("estimate"):
        if v != version and w in matured_weeks and (v, w) not in realized:
            waiting.setdefault(v, []).append(w)
    for other, weeks in sorted(waiting.items()):
        try:
            entry = registry.get(other)
            records += _realized_records(other, entry.manifest, registry.load(entry), rows_of(weeks), run_id)
        except RegistryError as exc:
            context.log.warning(f"cannot score {other} on matured weeks {weeks}: {exc}")
    log.append(*records)

    # 3. Estimates on weeks whose labels are still open: each week once, by the model in
    #    production when it arrived (the one that served it), plus the newest week by the
    #    current production model. The interval carries the errors of earlier estimates;
    #    a model whose newest matured week is miscalibrated gets no trusted estimate.
    estimates = log.keyed("estimate")
    seen = {w for (_, w) in estimates}
    newest = max(open_weeks) if open_weeks else None
    wanted = sorted(w for w in open_weeks if w not in seen or (w == newest and (version, w) not in estimates))
    residuals = _residuals(log)
    calibrated = _calibration_check(log)
    estimated = []
    for week in wanted:
        rows = rows_of([week])
        if rows.empty:
            continue
        value = estimate_week(predictor, rows, monitoring.estimate_draws, residuals=residuals)
        reliable = calibrated is None or calibrated["reliable"]
        estimated.append({"kind": "estimate", "version": version, "week": week, "as_of": str(cutoff.date()),
                          "deploy_roc_auc": _deploy_auc(manifest), "threshold": float(predictor.threshold),
                          "run_id": run_id, "reliable": reliable, **value})
    log.append(*estimated)

    # 4. Decay: the newest matured served weeks pooled, against the deploy-time holdout.
    mine = sorted(w for w in served_weeks)[-monitoring.decay_weeks:]
    verdict, detail = None, "fewer than two matured weeks served since deploy: not judged yet"
    if len(mine) >= MIN_DECAY_WEEKS:
        pooled = rows_of(mine, after=first_served)
        scored = _score_weeks(predictor, pooled)
        if scored:
            y = np.concatenate([s[0] for s in scored.values()])
            p = np.concatenate([s[1] for s in scored.values()])
            groups = np.concatenate([pooled[spec.id_column].to_numpy()[s[2]] for s in scored.values()])
            deploy_se = (manifest.get("holdout_uncertainty") or {}).get("roc_auc_se")
            verdict = decay_test(_deploy_auc(manifest), deploy_se, y, p, groups, monitoring.max_auc_decay)
            detail = (f"realized ROC AUC {verdict['realized_roc_auc']:.3f} over {len(mine)} matured week(s)"
                      f" served since deploy ({mine[0]} .. {mine[-1]}) vs deploy-time holdout"
                      f" {_deploy_auc(manifest):.3f}: decay {verdict['decay']:+.3f}, one-sided 95% lower bound"
                      f" {verdict['lower_bound']:+.3f} (allowed {monitoring.max_auc_decay})")
    decayed = bool(verdict and verdict["alarm"])
    if decayed:
        raise_alarm(log, context, "decay", version, str(clean_features.as_of.date()), detail)
    metadata = _health_metadata(log, version, manifest, verdict, len(mine), decayed, calibrated)
    check = dg.AssetCheckResult(
        check_name=DECAY_CHECK, passed=not decayed, severity=dg.AssetCheckSeverity.WARN,
        description=("decay: " if decayed else "no decay: ") + detail,
        metadata={"production_version": version,
                  **({} if verdict is None else {k: float(v) for k, v in verdict.items() if k != "alarm"})})
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


def _f(value) -> float:
    return math.nan if value is None else float(value)


def _health_metadata(log: HealthLog, version: str, manifest: dict, verdict: dict | None, matured_weeks: int,
                     decayed: bool, calibrated: dict | None) -> dict:
    served = log.served_weeks()
    newest = next((r for r in reversed(log.records("estimate")) if r.get("version") == version), None)
    both = [r for r in served if r["estimated_roc_auc"] is not None and r["realized_roc_auc"] is not None]
    table = [{"week": r["week"], "version": r["version"],
              **{k: "-" if r[k] is None else round(r[k], 4) for k in (
                  "estimated_roc_auc", "estimated_low", "estimated_high", "realized_roc_auc", "deploy_roc_auc",
                  "ece")}}
             for r in served[-16:]]
    metadata = {
        "status": "decay" if decayed else "ok", "production_version": version,
        "deploy_roc_auc": _deploy_auc(manifest),
        "realized_roc_auc": math.nan if verdict is None else verdict["realized_roc_auc"],
        "auc_decay": math.nan if verdict is None else verdict["decay"],
        "matured_weeks_since_deploy": matured_weeks,
        "weeks": dg.MetadataValue.md(md_table(table)),
        "trend": dg.MetadataValue.md(png_markdown(realized_performance_trend(served), "ROC AUC by week")),
    }
    if calibrated is not None:
        metadata["calibration_newest_matured_week"] = (
            f"{calibrated['week']}: ECE {calibrated['ece']:.4f}, a calibrated model would stay below"
            f" {calibrated['noise_p95']:.4f} (95%): {'ok' if calibrated['reliable'] else 'miscalibrated'}")
    if newest is not None:
        reliable = newest.get("reliable", True)
        metadata.update({
            "estimate_week": newest["week"],
            "estimate": (f"{newest['roc_auc']:.3f} ({100 * newest.get('confidence', 0.9):.0f}% interval"
                         f" {newest['roc_auc_low']:.3f} .. {newest['roc_auc_high']:.3f})" if reliable else
                         "no reliable estimate: the model's newest matured week is miscalibrated beyond noise"),
            "estimated_roc_auc": _f(newest.get("roc_auc")) if reliable else math.nan,
            "estimated_roc_auc_low": _f(newest.get("roc_auc_low")) if reliable else math.nan,
            "estimated_roc_auc_high": _f(newest.get("roc_auc_high")) if reliable else math.nan,
            "expected_churn_rate": _f(newest.get("expected_churn_rate")),
        })
    if both:
        # How far past estimates were from the truth, and how often their intervals held.
        errors = [abs(r["estimated_roc_auc"] - r["realized_roc_auc"]) for r in both]
        inside = [r["estimated_low"] <= r["realized_roc_auc"] <= r["estimated_high"] for r in both
                  if r["estimated_low"] is not None and r["estimated_high"] is not None]
        metadata["estimate_abs_error_mean"] = float(np.mean(errors))
        metadata["estimate_interval_coverage"] = float(np.mean(inside)) if inside else math.nan
        metadata["estimates_checked"] = len(both)
    return metadata

