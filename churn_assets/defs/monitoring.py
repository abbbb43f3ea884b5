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
import pandas as pd

from churn_assets.core.markdown import md_table
from churn_assets.core.spec import LABEL, FeatureSpec, churn_label
from churn_assets.core.training import ModelingFrames
from churn_assets.defs.alerts import WEBHOOK_ENV, post_alert
from churn_assets.defs.resources import ChurnStorage, TrainingPlan
from churn_assets.defs.schedules import as_of_run_config, churn_refresh, refresh_in_progress
from churn_assets.health.drift import DriftThresholds
from churn_assets.health.plots import drift_bars, png_markdown
from churn_assets.health.production import (drift_report, sample_parts, sample_rows,
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
    parts = frames.frames
    inside = [f[ts].dt.normalize().between(lo, hi).to_numpy() for f in parts]
    weeks = pd.concat([week_start(f[ts][k]) for f, k in zip(parts, inside)]).nunique()
    expected = (hi - lo).days // 7 + 1
    if weeks and weeks >= 0.75 * expected:
        return sample_parts(parts, cap, keep=inside)
    return sample_rows(_history(storage, spec, since=lo, until=hi), cap)


def _first_served_week(storage: ChurnStorage, spec: FeatureSpec, manifest: dict) -> pd.DataFrame:
    """The stored snapshot week starting on the production model's ``served_from`` day
    (its as_of; older manifests: the week after its holdout); empty if not stored."""
    day = manifest.get("served_from") or ((manifest.get("data_window") or {}).get("holdout") or [None, None])[1]
    if not day:
        return _no_rows(spec)
    start = pd.Timestamp(day) + (pd.Timedelta(0) if manifest.get("served_from") else pd.Timedelta(days=1))
    start = start - pd.Timedelta(days=start.day_of_week)
    return _history(storage, spec, since=start, until=start + pd.Timedelta(days=6))


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
    # The weeks the served model learned from: its deployed fit's (``serving``), or for
    # older models, refit on train and validation, those.
    span = window.get("serving") or (
        [window["train"][0], window["validation"][1]] if window.get("train") and window.get("validation") else None)
    if span:
        reference = _reference(clean_features, storage, spec, span, monitoring.reference_sample_rows)
        reference_from = f"{version} training window {span[0]} .. {span[1]}"
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
    score_reference = "none (no production model)"
    if predictor is not None and len(current):
        # Scores are compared with the production model's scores on the first week it
        # served: rows it never trained on. Its scores on its own training window would
        # be in-sample, sharper than anything it will see again. Scoring is the expensive
        # part (a 250-tree booster); PSI over 10 bins is stable to ~0.002 at 10,000 rows.
        first = _first_served_week(storage, spec, manifest)
        if len(first):
            ref_scores = predictor.predict_proba(sample_rows(first, monitoring.score_sample_rows, seed=1))
            cur_scores = predictor.predict_proba(sample_rows(current, monitoring.score_sample_rows, seed=1))
            score_reference = f"{version}'s scores on the first week it served ({first[WEEK].iloc[0]})"
    report = drift_report(reference, current, list(spec.numeric_features), list(spec.categorical_features),
                          monitoring.thresholds(), ref_scores, cur_scores,
                          reference[LABEL].to_numpy(), clean_features.holdout[LABEL].to_numpy(),
                          category_aliases=spec.category_aliases)
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
        "score_reference": score_reference,
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
