"""Production-model health: drift check, decay, estimates before labels, the health sensor.

Real refresh runs on the simulator, a real loopback webhook for the alerts, a real
Dagster instance for the sensor's "refresh in progress" guard.
"""

from __future__ import annotations

import json
import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from churn_assets.core.spec import load_spec
from churn_assets.defs.definitions import build_resources
from churn_assets.defs.monitoring import TRIGGER_TAG, model_health_sensor
from churn_assets.defs.schedules import churn_refresh
from churn_assets.health.production import sample_parts, sample_rows
from churn_assets.settings import Settings
from churn_assets.sources.simulator import SimulatorSource
from churn_assets.storage.health_log import HealthLog
from churn_assets_tests.conftest import FIRST_WEEK, NEXT_WEEK, metadata_of, run_graph

FAST_TRAINING = {"ops": {"churn_model": {"config": {"families": ["logistic_regression"]}}}}
# Monitoring without retraining: keeps the production model of the first run in place.
MONITOR_ONLY = ["raw_customers", "clean_features", "model_health"]
CUSTOMERS = 1000


class ShiftedSource(SimulatorSource):
    """The simulator with ``monthly_spend`` tripled on snapshots from ``shift_from`` on."""

    shift_from: str = "2100-01-01"

    def fetch(self, spec, watermark, as_of=None):
        batch = super().fetch(spec, watermark, as_of)
        rows = batch.records["snapshot_date"] >= pd.Timestamp(self.shift_from)
        batch.records.loc[rows, "monthly_spend"] = batch.records.loc[rows, "monthly_spend"] * 3
        return batch


class NoisyLabelSource(SimulatorSource):
    """The simulator whose labels become coin flips (same churn rate) from ``noise_from`` on:
    concept drift that leaves every feature distribution, hence every PSI, unchanged."""

    noise_from: str = "2100-01-01"

    def fetch(self, spec, watermark, as_of=None):
        batch = super().fetch(spec, watermark, as_of)
        frame = batch.records
        rows = frame["snapshot_date"] >= pd.Timestamp(self.noise_from)
        # Seeded by the record's key, so a re-sent record gets the same label again.
        key = pd.util.hash_pandas_object(frame[["customer_id", "snapshot_date"]], index=False).to_numpy()
        coin = (key % 1000 < 120).astype(np.int64)
        frame.loc[rows, "churned_within_28d"] = coin[rows.to_numpy()]
        return batch


def drift_evaluation(result: dg.ExecuteInProcessResult):
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == "data_drift")


def sensor_tick(home, instance, cursor=None):
    settings = Settings(home=home)
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources=build_resources(settings, SimulatorSource())) as context:
        return model_health_sensor(settings).evaluate_tick(context)


def test_health_log_is_append_only_and_survives_a_torn_line(tmp_path):
    log = HealthLog(tmp_path / "health")
    log.append({"kind": "estimate", "version": "v0001", "week": "2026-05-04", "roc_auc": 0.8, "rows": 10})
    with open(log.path, "ab") as fh:
        fh.write(b'{"kind": "realized", "vers')  # a crash mid-append
    log.append({"kind": "realized", "version": "v0001", "week": "2026-05-04", "roc_auc": float("nan")},
               {"kind": "realized", "version": "v0001", "week": "2026-05-11", "roc_auc": 0.7})
    rows = log.weeks()
    assert [(r["week"], r["estimated_roc_auc"], r["realized_roc_auc"]) for r in rows] == [
        ("2026-05-04", 0.8, None), ("2026-05-11", None, 0.7)]  # NaN is stored as null
    assert len(log.records()) == 3
    with pytest.raises(ValueError, match="kind"):
        log.append({"kind": "nonsense"})


def test_a_shifted_feature_ranks_first_fails_the_check_as_warn_and_triggers_one_refresh(tmp_path, webhook):
    home = tmp_path / "home"
    assert run_graph(home, SimulatorSource(n_customers=CUSTOMERS, as_of=FIRST_WEEK),
                     run_config=FAST_TRAINING).success
    webhook.posts.clear()
    shifted = ShiftedSource(n_customers=CUSTOMERS, as_of=NEXT_WEEK, shift_from=NEXT_WEEK)
    result = run_graph(home, shifted, selection=MONITOR_ONLY)
    assert result.success  # WARN: drift never fails or blocks the refresh

    evaluation = drift_evaluation(result)
    assert evaluation.severity == dg.AssetCheckSeverity.WARN and not evaluation.passed
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    features = load_spec("simulator").feature_columns
    psi = {f: meta[f"psi_{f}"] for f in features}
    assert max(psi, key=psi.get) == "monthly_spend" and psi["monthly_spend"] > 0.25
    # Every customer's tenure grows a week per week: against the deployed fit's ten weeks
    # it reads ~0.11, a "watch", never an "act"; nothing else moved.
    assert all(value < 0.15 for name, value in psi.items() if name != "monthly_spend"), psi
    assert all(value < 0.1 for name, value in psi.items() if name not in ("monthly_spend", "tenure_days")), psi
    table = meta["drift_table"].splitlines()
    assert table[2].startswith("| monthly_spend |")  # sorted by PSI, largest first
    assert "data:image/png;base64," in meta["drift_chart"]
    assert meta["current_weeks"] == NEXT_WEEK and meta["production_version"] == "v0001"

    assert len(webhook.posts) == 1
    assert "drift on production v0001" in webhook.posts[0]["text"]
    assert "monthly_spend" in webhook.posts[0]["text"]

    instance = dg.DagsterInstance.ephemeral()
    first = sensor_tick(home, instance)
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.tags[TRIGGER_TAG] == "drift" and request.job_name in (None, churn_refresh.name)
    # One degradation, one refresh: the next tick with the stored cursor asks nothing.
    again = sensor_tick(home, instance, cursor=first.cursor)
    assert again.run_requests == [] and "no new" in again.skip_message

    # The drift persists next run: no second alert, no second alarm.
    later = ShiftedSource(n_customers=CUSTOMERS, as_of="2026-05-18", shift_from=NEXT_WEEK)
    assert not drift_evaluation(run_graph(home, later, selection=MONITOR_ONLY)).passed
    assert len(webhook.posts) == 1
    assert len(HealthLog(home / "health").alarms()) == 1


def decay_evaluation(result: dg.ExecuteInProcessResult):
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == "production_decay")


def test_decay_is_recorded_alerted_and_refreshed_once_estimates_get_their_realized_value(tmp_path, webhook):
    home = tmp_path / "home"
    # Labels turn to noise after the first model's holdout (2026-04-06): it was deployed
    # on an honest holdout AUC and then stops ranking anything.
    noise = "2026-04-13"
    assert run_graph(home, NoisyLabelSource(n_customers=CUSTOMERS, as_of=FIRST_WEEK, noise_from=noise),
                     run_config=FAST_TRAINING).success
    webhook.posts.clear()
    # Three weeks on, no week the model served (from its as_of, 2026-05-04) has final
    # labels yet: earlier weeks share label windows with its own training rows, so they
    # are no evidence of decay. Nothing is judged; the open weeks are estimated.
    early = run_graph(home, NoisyLabelSource(n_customers=CUSTOMERS, as_of="2026-05-25", noise_from=noise),
                      selection=MONITOR_ONLY)
    assert early.success
    meta = metadata_of(early, "model_health")
    assert meta["status"] == "ok" and meta["matured_weeks_since_deploy"] == 0
    assert decay_evaluation(early).passed and "not judged yet" in decay_evaluation(early).description
    log = HealthLog(home / "health")
    estimated = {r["week"] for r in log.records("estimate")}
    assert estimated == {"2026-05-04", "2026-05-11", "2026-05-18", "2026-05-25"}  # labels still open
    assert 0 < meta["estimated_roc_auc_low"] <= meta["estimated_roc_auc"] <= meta["estimated_roc_auc_high"]
    assert webhook.posts == []

    # Two weeks later, 05-04 and 05-11 matured: two served weeks, enough to judge.
    result = run_graph(home, NoisyLabelSource(n_customers=CUSTOMERS, as_of="2026-06-08", noise_from=noise),
                       selection=MONITOR_ONLY)
    assert result.success  # WARN: decay never fails the refresh
    meta = metadata_of(result, "model_health")
    assert meta["production_version"] == "v0001" and meta["status"] == "decay"
    assert meta["matured_weeks_since_deploy"] == 2
    assert meta["deploy_roc_auc"] > 0.7 and abs(meta["realized_roc_auc"] - 0.5) < 0.08
    assert meta["auc_decay"] > 0.03
    assert "data:image/png;base64," in meta["trend"]
    check = decay_evaluation(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "decay" in check.description and "lower bound" in check.description
    # Features are untouched, so this is decay alone: the drift check stays quiet.
    assert drift_evaluation(result).passed
    assert len(webhook.posts) == 1
    assert "decay on production v0001" in webhook.posts[0]["text"]
    # The realized value now sits beside the estimates of the matured weeks.
    both = {r["week"]: r for r in log.weeks() if r["estimated_roc_auc"] is not None
            and r["realized_roc_auc"] is not None}
    assert {"2026-05-04", "2026-05-11"} <= set(both)
    assert all(r["version"] == "v0001" for r in both.values())
    # The newest matured week was served with probabilities the coin-flip labels make far
    # worse calibrated than chance explains: the open weeks get no trusted estimate.
    assert meta["estimate"].startswith("no reliable estimate") and math.isnan(meta["estimated_roc_auc"])
    assert "miscalibrated" in meta["calibration_newest_matured_week"]

    instance = dg.DagsterInstance.ephemeral()
    # A refresh about to start: the sensor waits and keeps the alarm for later.
    queued = instance.create_run_for_job(_refresh_job(home))  # NOT_STARTED: about to run
    waiting = sensor_tick(home, instance)
    assert waiting.run_requests == [] and queued.run_id in waiting.skip_message
    instance.report_run_canceled(queued)
    first = sensor_tick(home, instance)
    assert [r.tags[TRIGGER_TAG] for r in first.run_requests] == ["decay"]
    assert sensor_tick(home, instance, cursor=first.cursor).run_requests == []

    later = run_graph(home, NoisyLabelSource(n_customers=CUSTOMERS, as_of="2026-06-15", noise_from=noise),
                      selection=MONITOR_ONLY)
    assert later.success and not decay_evaluation(later).passed
    assert len(webhook.posts) == 1  # the same decay is not alerted twice

    # An alarm about a version no longer in production was answered by its replacement.
    log.append({"kind": "alarm", "key": "v0000:drift", "reason": "drift", "version": "v0000"})
    stale = sensor_tick(home, instance, cursor=first.cursor)
    assert stale.run_requests == [] and "no longer in production" in stale.skip_message
    assert "v0000:drift" in json.loads(stale.cursor)["handled"]


def _refresh_job(home):
    from churn_assets.defs.definitions import build_defs

    return build_defs(Settings(home=home)).resolve_job_def(churn_refresh.name)


def test_monitoring_settings_are_checked_when_loaded(tmp_path):
    from churn_assets.settings import CONFIG_ENV, SettingsError, load_settings

    config = tmp_path / "churn.toml"
    config.write_text("[monitoring]\npsi_wach = 0.2\n")
    with pytest.raises(SettingsError, match="monitoring.psi_wach: unknown key; did you mean 'psi_watch'"):
        load_settings({CONFIG_ENV: str(config)})
    config.write_text("[monitoring]\npsi_watch = 0.3\n")
    with pytest.raises(SettingsError, match=r"psi_watch \(0.3\) must not exceed psi_act \(0.25\)"):
        load_settings({CONFIG_ENV: str(config)})
    config.write_text("[monitoring]\npsi_act = 0.4\nmax_auc_decay = 0.05\nsensor_enabled = false\n")
    settings = load_settings({CONFIG_ENV: str(config)})
    assert (settings.monitoring.psi_act, settings.monitoring.max_auc_decay) == (0.4, 0.05)
    sensor = model_health_sensor(settings)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


@pytest.mark.parametrize("cap, seed", [(100, 0), (3000, 1), (3833, 2), (5000, 0), (0, 0)])
def test_sampling_the_parts_draws_the_rows_sampling_their_concatenation_draws(cap, seed):
    """The drift reference is sampled from train + validation (+ holdout) without
    concatenating them; the sample must stay the one the concatenation gave."""
    rng = np.random.default_rng(3)
    parts = [pd.DataFrame({"spend": rng.normal(size=n), "plan": rng.choice(["basic", "pro"], n)})
             for n in (1000, 0, 333, 2500)]
    expected = sample_rows(pd.concat(parts, ignore_index=True), cap, seed)
    sampled = sample_parts(parts, cap, seed)
    assert len(sampled) == min(cap or 3833, 3833) and sampled.equals(expected)
    # The production model's weeks are selected by masks, not copied out first.
    keep = [p["spend"].to_numpy() > -0.5 for p in parts]
    kept = [p[k] for p, k in zip(parts, keep)]
    expected = sample_rows(pd.concat(kept, ignore_index=True), cap, seed)
    assert sample_parts(parts, cap, seed, keep=keep).equals(expected)
    assert sample_parts(parts, cap, seed, keep=[keep[0], None, keep[2], keep[3]]).equals(
        sample_rows(pd.concat([kept[0], parts[1], kept[2], kept[3]], ignore_index=True), cap, seed))
