"""The whole asset graph, in-process, against a temporary data directory."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from churn_assets.defs.definitions import ASSETS, CHECKS
from churn_assets.core.gate import GateRule
from churn_assets.storage.registry import ModelRegistry
from churn_assets.sources.simulation import SimulatorSettings, simulate

from churn_assets_tests.conftest import (
    FIRST_WEEK, NEXT_WEEK, PERMISSIVE_RULES, check_passed, gate_evaluation, history_snapshot, metadata_of,
    production_version, registry_snapshot, run_graph, simulator, with_shuffled_labels,
)


def test_bootstrap_then_weekly_refresh_compares_against_first_champion(home):
    first = run_graph(home, simulator(FIRST_WEEK))
    assert first.success
    assert check_passed(first) is True
    assert production_version(home) == "v0001"
    report = metadata_of(first, "evaluation_report")
    assert report["champion_version"] == "None"
    assert report["1_roc_auc"] > 0.70
    assert metadata_of(first, "deployed_model")["reason"].startswith("bootstrap")

    second = run_graph(home, simulator(NEXT_WEEK))
    assert second.success, second
    report = metadata_of(second, "evaluation_report")
    assert report["champion_version"] == "v0001"
    # The champion was re-scored now, on this run's holdout, not read from its manifest.
    v1 = ModelRegistry(home / "registry").get("v0001")
    assert report["1_roc_auc_champion"] != v1.manifest["metrics"]["roc_auc"]
    window = metadata_of(second, "clean_features")["data_window"]
    assert window["holdout"][1] > v1.manifest["data_window"]["holdout"][1]
    assert production_version(home) == "v0002"
    v2 = ModelRegistry(home / "registry").get("v0002")
    assert v2.manifest["champion_version"] == "v0001"
    for key in ("sha256", "metrics", "feature_spec", "data_window", "code_version", "model_family"):
        assert key in v2.manifest


def test_no_new_data_means_no_retrain_and_no_new_version(home):
    assert run_graph(home, simulator(FIRST_WEEK)).success
    before = registry_snapshot(home)
    again = run_graph(home, simulator(FIRST_WEEK))
    assert again.success
    skipped = {e.step_key for e in again.all_events if e.event_type_value == "STEP_SKIPPED"}
    assert {"churn_model", "deployed_model", "clean_features"} <= skipped
    assert registry_snapshot(home) == before


def test_retrain_on_unchanged_data_and_code_registers_no_new_version(home):
    assert run_graph(home, simulator(FIRST_WEEK)).success
    before = registry_snapshot(home)
    # Retrain from the stored clean_features: same data, config and code as production.
    rerun = run_graph(home, simulator(FIRST_WEEK), selection=dg.AssetSelection.assets("fitted_scaler").downstream())
    assert rerun.success
    assert metadata_of(rerun, "deployed_model")["new_version"] is False
    assert registry_snapshot(home) == before


def test_regressing_challenger_is_blocked_and_production_untouched(home):
    assert run_graph(home, simulator(FIRST_WEEK)).success
    registry_before = registry_snapshot(home)
    blocked = run_graph(home, simulator(NEXT_WEEK), assets=with_shuffled_labels())
    assert not blocked.success
    assert check_passed(blocked) is False
    evaluation = gate_evaluation(blocked)
    assert "roc_auc" in evaluation.description and "regressed" in evaluation.description
    failed = {e.step_key for e in blocked.all_events if e.event_type_value == "STEP_FAILURE"}
    assert "evaluation_report_deployment_gate" in failed or "deployed_model" not in {
        e.step_key for e in blocked.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert registry_snapshot(home) == registry_before
    assert production_version(home) == "v0001"


def test_deployed_model_alone_still_refuses_a_failed_verdict(home):
    assert run_graph(home, simulator(FIRST_WEEK)).success
    # Evaluate a bad challenger without deploying (the gate check is not in this run) ...
    evaluated = run_graph(home, simulator(NEXT_WEEK), assets=with_shuffled_labels(),
                          selection=dg.AssetSelection.assets(
                              "raw_customers", "clean_features", "fitted_scaler", "churn_model",
                              "evaluation_report").without_checks())
    assert evaluated.success
    registry_before = registry_snapshot(home)
    # ... then ask for deployed_model alone: no blocking check protects this run.
    alone = run_graph(home, simulator(NEXT_WEEK), selection=["deployed_model"])
    assert not alone.success
    failure = [e for e in alone.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "refused by the gate" in str(failure.event_specific_data.error)
    assert registry_snapshot(home) == registry_before


def test_improving_challenger_replaces_a_weak_champion(home):
    weak = run_graph(home, simulator(FIRST_WEEK), assets=with_shuffled_labels(), rules=PERMISSIVE_RULES)
    assert weak.success
    weak_auc = metadata_of(weak, "evaluation_report")["1_roc_auc"]
    better = run_graph(home, simulator(NEXT_WEEK), rules=PERMISSIVE_RULES)
    assert better.success
    report = metadata_of(better, "evaluation_report")
    assert report["1_roc_auc"] > report["1_roc_auc_champion"] + 0.1
    assert report["1_roc_auc_champion"] < weak_auc + 0.05  # the weak model is still weak
    assert production_version(home) == "v0002"


def test_bootstrap_below_a_floor_is_refused(home):
    result = run_graph(home, simulator(FIRST_WEEK), rules=[GateRule("roc_auc", floor=0.99)])
    assert not result.success
    assert check_passed(result) is False
    assert "below the floor 0.99" in gate_evaluation(result).description
    assert production_version(home) is None
    assert not (home / "registry" / "versions").exists() or not any((home / "registry" / "versions").iterdir())


def test_training_never_sees_provisional_labels(home):
    result = run_graph(home, simulator(FIRST_WEEK))
    assert result.success
    meta = metadata_of(result, "clean_features")
    assert meta["held_back_rows_label_window_open"] > 0
    cutoff = pd.Timestamp(FIRST_WEEK) - pd.Timedelta(days=28)
    assert pd.Timestamp(meta["data_window"]["holdout"][1]) <= cutoff
    # The labels the model trained on are the final ones: the same rows simulated a
    # year later (all label windows long closed) carry the same labels.
    model = ModelRegistry(home / "registry").load(ModelRegistry(home / "registry").production())
    train_end = pd.Timestamp(model.data_window["validation"][1])
    assert train_end <= cutoff
    late = simulate(SimulatorSettings(n_customers=1000), "2027-05-01")
    now = simulate(SimulatorSettings(n_customers=1000), FIRST_WEEK)
    keys = ["customer_id", "snapshot_date"]
    merged = now.merge(late, on=keys, suffixes=("_now", "_final"))
    provisional = merged[merged["snapshot_date"] > cutoff]
    final = merged[merged["snapshot_date"] <= cutoff]
    # The simulator really does correct recent labels later (the trap is real) ...
    assert (provisional["churned_within_28d_now"] != provisional["churned_within_28d_final"]).sum() > 20
    # ... and none of the rows the pipeline may train on will change.
    assert (final["churned_within_28d_now"] == final["churned_within_28d_final"]).all()


def test_history_upsert_is_idempotent_across_runs(home):
    assert run_graph(home, simulator(FIRST_WEEK)).success
    assert run_graph(home, simulator(NEXT_WEEK)).success
    history = pd.read_parquet(home / "history" / "weeks")
    assert not history.duplicated(["customer_id", "snapshot_date"]).any()
    expected = simulate(SimulatorSettings(n_customers=1000), NEXT_WEEK)
    assert len(history) == len(expected)
    # Labels corrected by the source after the first run replaced the provisional ones.
    merged = history.merge(expected, on=["customer_id", "snapshot_date"], suffixes=("", "_src"))
    assert (merged["churned_within_28d"].astype(str) == merged["churned_within_28d_src"].astype(str)).all()
    snapshot = history_snapshot(home)
    assert run_graph(home, simulator(NEXT_WEEK)).success
    weeks = lambda files: {k: v for k, v in files.items() if k.startswith("weeks/")}  # noqa: E731
    assert weeks(history_snapshot(home)) == weeks(snapshot)


def test_definitions_load_with_schedule_and_in_process_executor():
    import churn_assets

    # What `dagster -m churn_assets` finds: lazy definitions, built when the location loads.
    assert "definitions" in dir(churn_assets)
    defs = churn_assets.definitions()

    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert keys == {"raw_customers", "clean_features", "fitted_scaler", "churn_model",
                    "evaluation_report", "deployed_model", "churn_scores", "model_health", "backtest_report"}
    # The backtest's report is an external asset: only the churn_backtest job reports to it,
    # and no refresh (nor `--select '*'`) materializes it.
    refresh_keys = {k.to_user_string() for k in defs.resolve_job_def("churn_refresh").asset_layer.executable_asset_keys}
    assert "backtest_report" not in refresh_keys and "churn_model" in refresh_keys
    assert defs.resolve_job_def("churn_backtest") is not None
    schedule = defs.get_schedule_def("weekly_refresh")
    assert schedule.cron_schedule == "0 3 * * 1"
    assert defs.resolve_job_def("churn_refresh").executor_def.name == "in_process"
    checks = {c.name: c.asset_key.to_user_string() for c in repo.asset_graph.asset_check_keys}
    # The gate blocks deploys; drift only warns (never blocking on its own).
    assert checks == {"deployment_gate": "evaluation_report", "data_drift": "clean_features",
                      "production_decay": "model_health"}
    assert len(ASSETS) == 8 and len(CHECKS) == 2


def test_schedule_timezone_and_cron_come_from_settings(tmp_path):
    from churn_assets.defs.definitions import build_defs
    from churn_assets.settings import Settings

    defs = build_defs(Settings(home=tmp_path, schedule={"cron": "30 4 * * 2", "timezone": "America/New_York"}))
    schedule = defs.get_schedule_def("weekly_refresh")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 4 * * 2", "America/New_York")


def test_rereading_an_unchanged_export_does_not_retrain(home, tmp_path):
    from churn_assets.sources.file import FileSource

    export = tmp_path / "export.parquet"
    simulate(SimulatorSettings(n_customers=1000), FIRST_WEEK).to_parquet(export)
    assert run_graph(home, FileSource(path=str(export))).success
    before = registry_snapshot(home)
    again = run_graph(home, FileSource(path=str(export)))
    assert again.success
    skipped = {e.step_key for e in again.all_events if e.event_type_value == "STEP_SKIPPED"}
    assert {"fitted_scaler", "churn_model", "deployed_model"} <= skipped
    assert registry_snapshot(home) == before


def test_unknown_model_family_in_run_config_is_named(home):
    from churn_assets.defs.definitions import build_resources
    from churn_assets.settings import Settings

    result = dg.materialize(
        ASSETS + CHECKS, resources=build_resources(Settings(home=home), source=simulator(FIRST_WEEK)),
        run_config={"ops": {"churn_model": {"config": {"families": ["random_forest"]}}}},
        raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert failure.step_key == "churn_model"
    assert "random_forest" in str(failure.event_specific_data.error)
    assert registry_snapshot(home) == {}
