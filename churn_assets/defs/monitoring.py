"""Health of the production model: data drift, realized decay, estimates before labels.

- ``data_drift``: a non-blocking ``WARN`` check on ``clean_features``. Reference = the
  weeks the production model was trained on (its manifest's train + validation window);
  current = the newest ``current_weeks`` snapshot weeks, including those whose labels
  are still open. PSI per feature, missing-rate change, PSI of the production model's
  scores, churn-rate change. Never blocks a deploy: drift is a reason to look, and the
  weekly retrain on the newest weeks is already the remedy.
- ``model_health``: realized metrics of the production model on the weeks matured since
  its deploy (decay against its deploy-time holdout AUC), CBPE estimates on the weeks
  whose labels are still open, and the realized value beside every earlier estimate
  once its labels matured. Everything goes to the append-only ``HealthLog``.
- ``model_health_sensor``: one ``churn_refresh`` per alarm (drift past ``psi_act`` or
  decay past ``max_auc_decay``) while the alarmed version is still in production.

Alarms are posted once per (version, reason) through ``defs.alerts.post_alert``; the
health log remembers which were raised, so a drift that persists for weeks is one
message, not one a week.
"""

import datetime as dt
import json
import math

import dagster as dg
import numpy as np
import pandas as pd

from churn_assets.core.markdown import md_table
from churn_assets.core.spec import LABEL, FeatureSpec, churn_label
from churn_assets.core.training import ModelingFrames
from churn_assets.defs.alerts import WEBHOOK_ENV, post_alert
from churn_assets.defs.resources import ChurnStorage, TrainingPlan
from churn_assets.defs.schedules import as_of_run_config, churn_refresh, refresh_in_progress
from churn_assets.health.drift import DriftThresholds
from churn_assets.health.plots import drift_bars, png_markdown, realized_performance_trend
from churn_assets.health.production import (drift_report, estimated_week, realized_week, sample_parts, sample_rows,
                                            week_start)
from churn_assets.settings import MonitoringSettings, Settings
from churn_assets.storage.health_log import HealthLog
from churn_assets.storage.registry import RegistryError

WEEK = "_week"
TRIGGER_TAG = "churn_assets/health_trigger"


class MonitoringPlan(dg.ConfigurableResource):
    """The ``[monitoring]`` settings the check and the asset need (docs/configuration.md)."""

    psi_watch: float = 0.1
    psi_act: float = 0.25
    max_auc_decay: float = 0.03
    decay_weeks: int = 4
    current_weeks: int = 1
    reference_sample_rows: int = 50_000
    score_sample_rows: int = 10_000
    rows_per_week: int = 20_000
    estimate_draws: int = 200

    @classmethod
    def from_settings(cls, settings: MonitoringSettings) -> "MonitoringPlan":
        return cls(**settings.model_dump(include=set(cls.model_fields)))

    def thresholds(self) -> DriftThresholds:
        return DriftThresholds(self.psi_watch, self.psi_act)


def health_log(storage: ChurnStorage) -> HealthLog:
    return HealthLog(storage.root / "health")


def _production(storage: ChurnStorage, context) -> tuple[str, dict, object] | None:
    """(version, manifest, predictor) of production, or None (none yet, or unloadable)."""
    registry = storage.registry()
    try:
        version = registry.production()
        if version is None:
            return None
        return version.version, version.manifest, registry.load(version)
    except RegistryError as exc:
        # Monitoring must not fail a refresh whose deploy step can replace the model.
        context.log.warning(f"production model unavailable for monitoring: {exc}")
        return None


def _history(storage: ChurnStorage, spec: FeatureSpec, since=None, until=None) -> pd.DataFrame:
    """Stored snapshots dated ``since``..``until`` with the week each belongs to.

    Only the week files in the range and the columns needed are read: at 50,000
    customers a week is 50,000 rows, and monitoring needs a handful of weeks.
    """
    columns = list(dict.fromkeys([*spec.key_columns, *spec.feature_columns, spec.target_column]))
    stored = storage.history().load(since=since, until=until, columns=columns)
    if stored is None or stored.empty:
        return _no_rows(spec)
    stored[WEEK] = week_start(stored[spec.timestamp_column]).to_numpy()
    return stored


def _no_rows(spec: FeatureSpec) -> pd.DataFrame:
    columns = [*spec.key_columns, *spec.feature_columns, spec.target_column, WEEK]
    return pd.DataFrame({c: pd.Series(dtype="datetime64[ns]" if c == spec.timestamp_column else object)
                         for c in dict.fromkeys(columns)})


def _reference(frames: ModelingFrames, storage: ChurnStorage, spec: FeatureSpec, span,
               cap: int) -> pd.DataFrame:
    """At most ``cap`` rows (``sample_rows``) of the production model's training window
    (``span`` = first, last date).

    Taken from ``clean_features``' frames when they hold most of those weeks (a weekly
    retrain shifts the window by one week, so 13 of 14 are there, already in memory);
    read from the history otherwise, e.g. when production is many weeks old.
    """
    ts = spec.timestamp_column
    lo, hi = pd.Timestamp(span[0]), pd.Timestamp(span[1])
    parts = [frames.train, frames.validation, frames.holdout]
    inside = [f[ts].dt.normalize().between(lo, hi).to_numpy() for f in parts]
    weeks = pd.concat([week_start(f[ts][k]) for f, k in zip(parts, inside)]).nunique()
    expected = (hi - lo).days // 7 + 1
    if weeks and weeks >= 0.75 * expected:
        return sample_parts(parts, cap, keep=inside)
    return sample_rows(_history(storage, spec, since=lo, until=hi), cap)


def _labelled(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """``frame`` with the 0/1 label; done after sampling, as the label rule is per value."""
    if LABEL in frame.columns:
        return frame
    return frame.assign(**{LABEL: churn_label(frame[spec.target_column], spec).to_numpy()})


def _deploy_auc(manifest: dict) -> float:
    value = (manifest.get("metrics") or {}).get("roc_auc")
    return float(value) if value is not None else math.nan


def health_message(reason: str, version: str, detail: str, as_of: str) -> dict:
    """Slack incoming-webhook JSON for a health warning (same shape as failure alerts)."""
    text = f"churn model health: {reason} on production {version} (data as of {as_of}): {detail}"
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Churn model {reason} warning"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*Production*\n`{version}`"},
                                       {"type": "mrkdwn", "text": f"*Data as of*\n{as_of}"}]},
        {"type": "section", "text": {"type": "mrkdwn", "text": detail[:2500]}},
    ]
    return {"text": text[:3000], "blocks": blocks}


def raise_alarm(log: HealthLog, context, reason: str, version: str | None, as_of: str, detail: str) -> bool:
    """Record the alarm and post it, once per (version, reason); True if it was new."""
    key = f"{version}:{reason}"
    if any(a.get("key") == key for a in log.alarms()):
        context.log.warning(f"{reason} persists on {version} (already alerted): {detail}")
        return False
    delivered = post_alert(health_message(reason, str(version), detail, as_of))
    if not delivered:
        context.log.warning(f"health alert not delivered (is {WEBHOOK_ENV} set and reachable?)")
    log.append({"kind": "alarm", "key": key, "reason": reason, "version": version, "as_of": as_of,
                "detail": detail, "delivered": delivered, "run_id": context.run.run_id})
    return True


@dg.asset_check(asset="clean_features", blocking=False, name="data_drift",
                description="Drift (PSI) of each feature, of the production model's scores and of the"
                            " churn rate: newest snapshot weeks against the production training window."
                            " WARN only; fails when a feature or the scores cross monitoring.psi_act.")
def data_drift(context: dg.AssetCheckExecutionContext, clean_features: ModelingFrames,
               storage: ChurnStorage, training_plan: TrainingPlan,
               monitoring: MonitoringPlan) -> dg.AssetCheckResult:
    spec = training_plan.feature_spec()
    production = _production(storage, context)
    version, manifest, predictor = production if production else (None, {}, None)
    window = manifest.get("data_window") or {}
    reference, reference_from = pd.DataFrame(), "clean_features training window (no production model)"
    if window.get("train") and window.get("validation"):
        reference = _reference(clean_features, storage, spec, (window["train"][0], window["validation"][1]),
                               monitoring.reference_sample_rows)
        reference_from = f"{version} training window {window['train'][0]} .. {window['validation'][1]}"
    if reference.empty:
        if version is not None:
            reference_from = f"clean_features training window ({version}'s weeks are not in the history)"
        reference = sample_parts([clean_features.train, clean_features.validation], monitoring.reference_sample_rows)
    reference = _labelled(reference, spec)
    stored_weeks = storage.history().weeks()
    since = stored_weeks[-monitoring.current_weeks] if stored_weeks else None
    current = _history(storage, spec, since=since)
    weeks = sorted(current[WEEK].unique())
    ref_scores = cur_scores = None
    if predictor is not None and len(current) and len(reference):
        # Scoring is the expensive part (a 250-tree booster); PSI over 10 bins needs far
        # fewer rows than the feature comparison to be stable to ~0.002.
        ref_scores = predictor.predict_proba(sample_rows(reference, monitoring.score_sample_rows, seed=1))
        cur_scores = predictor.predict_proba(sample_rows(current, monitoring.score_sample_rows, seed=1))
    report = drift_report(reference, current, list(spec.numeric_features), list(spec.categorical_features),
                          monitoring.thresholds(), ref_scores, cur_scores,
                          reference[LABEL].to_numpy(), clean_features.holdout[LABEL].to_numpy())
    as_of = str(clean_features.as_of.date())
    psi = {d.feature: d.psi for d in report.all}
    log = health_log(storage)
    log.append({"kind": "drift", "version": version, "as_of": as_of, "status": report.status,
                "max_psi": report.summary["max_psi"], "psi": psi, "current_weeks": weeks,
                "run_id": context.run.run_id})
    acting = [d.feature for d in report.features + ([report.prediction] if report.prediction else [])
              if d.status(monitoring.psi_watch, monitoring.psi_act) == "act"]
    if acting:
        detail = (f"PSI >= {monitoring.psi_act} for {', '.join(acting)} (newest weeks {', '.join(weeks)}"
                  f" vs {reference_from}); max PSI {report.summary['max_psi']:.3f}")
        raise_alarm(log, context, "drift", version, as_of, detail)
    metadata = {
        "status": report.status, "max_psi": float(report.summary["max_psi"]),
        "drift_table": dg.MetadataValue.md(md_table(report.table())),
        "drift_chart": dg.MetadataValue.md(png_markdown(
            drift_bars(report.all, monitoring.psi_watch, monitoring.psi_act), "PSI by column")),
        "reference": reference_from, "current_weeks": ", ".join(weeks),
        "reference_rows": len(reference), "current_rows": len(current),
        "production_version": str(version),
    }
    # One float per column, so the UI charts each one across runs.
    metadata.update({f"psi_{name}": float(value) for name, value in psi.items() if not math.isnan(value)})
    if report.target is not None:
        metadata["churn_rate_reference"] = float(report.target.details["reference_rate"])
        metadata["churn_rate_newest_labelled"] = float(report.target.details["current_rate"])
    passed = not acting
    description = (f"drift {report.status}: max PSI {report.summary['max_psi']:.3f}"
                   + (f"; act on {', '.join(acting)}" if acting else ""))
    return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.WARN,
                               description=description, metadata=metadata)


def _score_weeks(predictor, rows: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Week -> (labels, P(churn)) of ``predictor`` on ``rows``, in one predict call."""
    if rows.empty:
        return {}
    proba = predictor.predict_proba(rows)
    labels = rows[LABEL].to_numpy()
    return {week: (labels[index], proba[index]) for week, index in rows.groupby(WEEK).indices.items()}


def _realized_records(version: str, manifest: dict, predictor, rows: pd.DataFrame, run_id: str) -> list[dict]:
    base = {"kind": "realized", "version": version, "deploy_roc_auc": _deploy_auc(manifest),
            "deploy_metrics": manifest.get("metrics") or {}, "run_id": run_id}
    return [{**base, "week": week, **realized_week(y, p, predictor.threshold)}
            for week, (y, p) in sorted(_score_weeks(predictor, rows).items())]


@dg.asset(group_name="churn", kinds={"pandas"},
          description="Production model health: realized metrics per matured week against the"
                      " deploy-time AUC, estimated metrics (CBPE) on weeks whose labels are open.")
def model_health(context: dg.AssetExecutionContext, clean_features: ModelingFrames, storage: ChurnStorage,
                 training_plan: TrainingPlan, monitoring: MonitoringPlan) -> dg.MaterializeResult:
    production = _production(storage, context)
    if production is None:
        return dg.MaterializeResult(metadata={"status": "no model in production yet"})
    version, manifest, predictor = production
    spec = training_plan.feature_spec()
    ts = spec.timestamp_column
    cutoff, run_id = clean_features.label_cutoff, context.run.run_id
    log = health_log(storage)
    realized = log.keyed("realized")
    holdout_end = ((manifest.get("data_window") or {}).get("holdout") or [None, None])[1]
    holdout_end = pd.Timestamp(holdout_end) if holdout_end else cutoff - pd.Timedelta(weeks=monitoring.decay_weeks)
    cap = monitoring.rows_per_week
    # Which weeks are open is known from the week list alone, except for a week the
    # label cutoff falls inside: only its rows can say. Weeks older than the horizon are
    # never read again (a long-stale model or a deleted version must not make every run
    # re-read months of history; weekly runs never need it).
    horizon = cutoff - pd.Timedelta(weeks=max(8, monitoring.decay_weeks))
    six = pd.Timedelta(days=6)
    stored = [pd.Timestamp(w) for w in storage.history().weeks() if pd.Timestamp(w) + six >= horizon]
    loaded: dict[str, pd.DataFrame] = {}

    def week_rows(week: str) -> pd.DataFrame:
        # One week file at a time, sampled at once: the rest of it is never needed.
        if week not in loaded:
            start = pd.Timestamp(week)
            loaded[week] = sample_rows(_history(storage, spec, since=start, until=start + six), cap)
        return loaded[week]

    open_weeks = {f"{w:%Y-%m-%d}" for w in stored if w > cutoff}
    for w in stored:
        if w <= cutoff < w + six and (week_rows(f"{w:%Y-%m-%d}")[ts] > cutoff).any():
            open_weeks.add(f"{w:%Y-%m-%d}")
    matured_weeks = {f"{w:%Y-%m-%d}" for w in stored} - open_weeks
    # Weeks that start after the holdout's last snapshot: those the model never saw scored.
    since_weeks = {w for w in matured_weeks if pd.Timestamp(w) > holdout_end}

    def rows_of(weeks, after=None) -> pd.DataFrame:
        parts = [week_rows(w) for w in sorted(weeks)]
        frame = pd.concat(parts) if parts else _no_rows(spec)
        if after is not None:
            frame = frame[frame[ts] > after]
        return _labelled(frame, spec)

    records: list[dict] = []
    # 1. Decay: production on every week matured after its holdout, not yet recorded.
    todo = sorted(w for w in since_weeks if (version, w) not in realized)
    records += _realized_records(version, manifest, predictor, rows_of(todo, after=holdout_end), run_id)

    # 2. Earlier estimates (of any version) whose week has matured: record the truth beside them.
    registry = storage.registry()
    pending: dict[str, list[str]] = {}
    for (v, w) in log.keyed("estimate"):
        if v != version and w in matured_weeks and (v, w) not in realized:
            pending.setdefault(v, []).append(w)
    for other, weeks in sorted(pending.items()):
        try:
            entry = registry.get(other)
            records += _realized_records(other, entry.manifest, registry.load(entry), rows_of(weeks), run_id)
        except RegistryError as exc:
            context.log.warning(f"cannot score {other} on matured weeks {weeks}: {exc}")

    # 3. Estimates on weeks whose labels are still open: each week once, by the model in
    #    production when it arrived (the one that served it), plus the newest week by the
    #    current production model. Re-estimating every open week for every new version
    #    would score four weeks each run for a number nobody compares against.
    estimates = log.keyed("estimate")
    seen = {w for (_, w) in estimates}
    newest = max(open_weeks) if open_weeks else None
    wanted = sorted(w for w in open_weeks if w not in seen or (w == newest and (version, w) not in estimates))
    scored = _score_weeks(predictor, rows_of(wanted))
    for week, (_, proba) in sorted(scored.items()):
        records.append({"kind": "estimate", "version": version, "week": week, "as_of": str(cutoff.date()),
                        "deploy_roc_auc": _deploy_auc(manifest), "threshold": float(predictor.threshold),
                        "run_id": run_id, **estimated_week(proba, predictor.threshold, monitoring.estimate_draws)})
    log.append(*records)

    # 4. Decay verdict over the newest matured weeks since deploy (rows-weighted mean AUC).
    mine = sorted((r for (v, w), r in log.keyed("realized").items()
                   if v == version and w in since_weeks), key=lambda r: r["week"])[-monitoring.decay_weeks:]
    deploy_auc = _deploy_auc(manifest)
    realized_auc = _weighted([(r.get("roc_auc"), r.get("rows", 0)) for r in mine])
    realized_ece = _weighted([(r.get("ece"), r.get("rows", 0)) for r in mine])
    decay = deploy_auc - realized_auc
    decayed = bool(decay > monitoring.max_auc_decay)
    as_of = str(clean_features.as_of.date())
    if decayed:
        detail = (f"realized ROC AUC {realized_auc:.3f} over {len(mine)} matured week(s) since deploy"
                  f" ({mine[0]['week']} .. {mine[-1]['week']}) is {decay:.3f} below the deploy-time"
                  f" {deploy_auc:.3f} (allowed {monitoring.max_auc_decay})")
        raise_alarm(log, context, "decay", version, as_of, detail)
    return dg.MaterializeResult(metadata=_health_metadata(log, version, deploy_auc, realized_auc, decay,
                                                          realized_ece, len(mine), decayed))


def _weighted(pairs) -> float:
    pairs = [(float(v), float(n)) for v, n in pairs if v is not None and n and not math.isnan(float(v))]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else math.nan


def _health_metadata(log: HealthLog, version: str, deploy_auc: float, realized_auc: float, decay: float,
                     realized_ece: float, matured_weeks: int, decayed: bool) -> dict:
    served = log.served_weeks()
    newest = next((r for r in reversed(log.records("estimate")) if r.get("version") == version), None)
    both = [r for r in served if r["estimated_roc_auc"] is not None and r["realized_roc_auc"] is not None]
    table = [{"week": r["week"], "version": r["version"],
              **{k: "-" if r[k] is None else r[k] for k in ("estimated_roc_auc", "estimated_low", "estimated_high",
                                                            "realized_roc_auc", "deploy_roc_auc", "ece")}}
             for r in served[-16:]]
    metadata = {
        "status": "decay" if decayed else "ok", "production_version": version,
        "deploy_roc_auc": deploy_auc, "realized_roc_auc": realized_auc, "auc_decay": decay,
        "realized_ece": realized_ece, "matured_weeks_since_deploy": matured_weeks,
        "weeks": dg.MetadataValue.md(md_table(table)),
        "trend": dg.MetadataValue.md(png_markdown(realized_performance_trend(served), "ROC AUC by week")),
    }
    if newest is not None:
        metadata.update({
            "estimate_week": newest["week"], "estimated_roc_auc": _f(newest.get("roc_auc")),
            "estimated_roc_auc_low": _f(newest.get("roc_auc_low")),
            "estimated_roc_auc_high": _f(newest.get("roc_auc_high")),
            "expected_churn_rate": _f(newest.get("expected_churn_rate")),
            "estimated_precision": _f(newest.get("precision")), "estimated_recall": _f(newest.get("recall")),
        })
    if both:
        # How far past estimates were from the truth: the trust to put in today's estimate.
        errors = [abs(r["estimated_roc_auc"] - r["realized_roc_auc"]) for r in both]
        metadata["estimate_abs_error_mean"] = float(np.mean(errors))
        metadata["estimate_within_0_02_share"] = float(np.mean([e <= 0.02 for e in errors]))
    return metadata


def _f(value) -> float:
    return math.nan if value is None else float(value)


def model_health_sensor(settings: Settings) -> dg.SensorDefinition:
    options = settings.monitoring
    reasons = {r for r, on in (("drift", options.retrain_on_drift), ("decay", options.retrain_on_decay)) if on}

    @dg.sensor(name="model_health_sensor", job=churn_refresh,
               minimum_interval_seconds=options.sensor_interval_seconds,
               default_status=(dg.DefaultSensorStatus.RUNNING if options.sensor_enabled
                               else dg.DefaultSensorStatus.STOPPED),
               description="Refresh once per drift or decay alarm of the production model.")
    def model_health_sensor_fn(context: dg.SensorEvaluationContext, storage: ChurnStorage):
        from churn_assets.storage.pointer import manual_change_at, raised_before

        cursor = json.loads(context.cursor) if context.cursor else {}
        handled = list(cursor.get("handled", []))
        pending = [a for a in health_log(storage).alarms()
                   if a.get("reason") in reasons and a.get("key") not in handled]
        if not pending:
            return dg.SkipReason("no new drift or decay alarm")
        pointer = storage.registry().production_pointer() or {}
        # The operator's rollback, promotion or unpin answers every alarm raised before it:
        # an alarm about the version rolled back to must not undo the rollback by itself.
        changed_at = manual_change_at(pointer)
        overridden = [a["key"] for a in pending if raised_before(a.get("recorded_at"), changed_at)]
        live = [a for a in pending if a.get("version") == pointer.get("version") and a["key"] not in overridden]
        # An alarm about a version that is no longer in production was already answered.
        replaced = [a["key"] for a in pending if a not in live]
        if not live:
            why = (f"alarms {overridden} were raised before the operator changed production ({changed_at})"
                   if overridden else f"alarms {replaced} concern versions no longer in production")
            return dg.SensorResult(skip_reason=why, cursor=json.dumps({"handled": (handled + replaced)[-200:]}))
        running = refresh_in_progress(context.instance)
        if running:
            # Cursor unchanged: the alarm is looked at again once that refresh is done.
            return dg.SkipReason(f"refresh {running} is queued or running")
        alarm = live[-1]
        keys = [a["key"] for a in live]
        return dg.SensorResult(
            run_requests=[dg.RunRequest(
                run_key=f"health-{alarm['key']}",
                run_config=as_of_run_config(dt.datetime.now(dt.timezone.utc)),
                tags={TRIGGER_TAG: alarm["reason"], "churn_assets/alarmed_version": str(alarm["version"])})],
            cursor=json.dumps({"handled": (handled + replaced + keys)[-200:]}),
        )

    return model_health_sensor_fn
