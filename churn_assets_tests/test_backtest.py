"""The backtest: replaying the weekly policy, and the honesty of what it measures."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churn_assets.core.encoding import fit_preprocessor
from churn_assets.core.evaluation import evaluate_holdout
from churn_assets.core.spec import LABEL, load_spec
from churn_assets.core.training import WindowPlan, make_classifier, split_by_time, train_challenger
from churn_assets.core.validation import validate_records
from churn_assets.health.backtest import POLICIES, BacktestPlan, replay
from churn_assets.sources.simulation import SimulatorSettings, simulate
from churn_assets_tests.conftest import FIRST_WEEK, guarded_state, run_graph, simulator

SPEC = load_spec("simulator")
ROOT = Path(__file__).resolve().parents[1]


def simulated(end: str, realized_weeks: int = 4, n_customers: int = 1000, **scenario):
    data_as_of = pd.Timestamp(end) + pd.Timedelta(weeks=realized_weeks, days=SPEC.label_horizon_days)
    settings = SimulatorSettings(n_customers=n_customers, **scenario)
    return validate_records(simulate(settings, data_as_of), SPEC), data_as_of


@functools.cache
def short_replay():
    records, known_on = simulated("2026-07-13")
    plan = BacktestPlan(pd.Timestamp("2026-06-22"), pd.Timestamp("2026-07-13"), families=("logistic_regression",))
    return replay(records, SPEC, plan, known_on)


def test_the_json_carries_the_keys_scripts_read():
    result = json.loads(json.dumps(short_replay(), default=str))
    assert [w["as_of"] for w in result["weeks"]] == ["2026-06-22", "2026-06-29", "2026-07-06", "2026-07-13"]
    first = result["weeks"][0]
    for key in ("as_of", "decision", "production_version", "challenger_family", "holdout_roc_auc",
                "realized_roc_auc", "estimated_roc_auc", "estimate_low", "estimate_high"):
        assert key in first, key
    assert first["decision"] == "bootstrap"
    assert {w["decision"] for w in result["weeks"][1:]} <= {"deployed", "refused", "no_change"}
    assert set(result["policies"]) == set(POLICIES)
    for policy in result["policies"].values():
        assert set(policy) >= {"mean_realized_roc_auc", "worst_week_roc_auc", "deploys"}
        assert 0.6 < policy["mean_realized_roc_auc"] < 0.9
    assert result["policies"]["always_deploy"]["deploys"] == 4
    assert result["policies"]["never_retrain"]["deploys"] == 1
    summary = result["summary"]
    assert set(summary) >= {"holdout_bias", "estimate_coverage", "estimate_mae"}
    assert set(summary["holdout_bias"]) == {"logistic_regression"}
    for week in result["weeks"]:
        # Realized: the mean over the four following weeks, all with final labels by now.
        assert week["realized_roc_auc"] is not None
        assert week["estimate_low"] < week["estimated_roc_auc"] < week["estimate_high"]


def test_the_estimate_interval_holds_on_a_fixed_seed():
    """Eight weeks of the default simulator (3,000 customers, seed 7): the label-free
    estimate of each week served next against its realized ROC AUC. Intervals that hold
    only by being wide would be useless: their mean half-width is bounded too."""
    records, known_on = simulated("2026-08-24", n_customers=3000)
    plan = BacktestPlan(pd.Timestamp("2026-07-06"), pd.Timestamp("2026-08-24"), families=("logistic_regression",))
    result = replay(records, SPEC, plan, known_on)
    summary = result["summary"]
    assert summary["estimated_weeks"] == 8
    assert summary["estimate_coverage"] >= 0.75, summary
    assert summary["estimate_mae"] <= 0.02, summary
    widths = [(w["estimate_high"] - w["estimate_low"]) / 2 for w in result["weeks"]]
    assert np.mean(widths) <= 0.04, widths
    # The deploy-time holdout predicts what the deployed model then achieves.
    assert abs(summary["holdout_bias"]["logistic_regression"]["mean"]) <= 0.015, summary


def memorisable_history(n_customers: int = 600, weeks: int = 34, seed: int = 3) -> pd.DataFrame:
    """Weekly snapshots where churn is a coin flip unrelated to every feature, but each
    customer's static columns identify them: whoever learns a customer's label from one
    snapshot knows the label of that customer's other snapshots in the same 28 days."""
    rng = np.random.default_rng(seed)
    static = {"age": rng.uniform(18, 80, n_customers), "seats": rng.integers(1, 500, n_customers).astype(float),
              "discount_share": rng.uniform(0, 1, n_customers),
              "tenure_days": rng.uniform(0, 2000, n_customers)}
    churn_week = rng.integers(1, weeks + 20, n_customers) + rng.random(n_customers)
    rows = []
    for week in range(weeks):
        alive = np.flatnonzero(churn_week > week)
        label = (churn_week[alive] <= week + 4).astype(int)  # churns within 28 days
        rows.append(pd.DataFrame({
            "customer_id": [f"C{i:05d}" for i in alive],
            "snapshot_date": pd.Timestamp("2026-01-05") + pd.Timedelta(weeks=week),
            "updated_at": pd.Timestamp("2026-01-05") + pd.Timedelta(weeks=week),
            **{k: v[alive] for k, v in static.items()},
            "monthly_spend": 10.0, "sessions_last_30d": rng.poisson(5, len(alive)).astype(float),
            "orders_last_30d": 1.0, "avg_order_value": 50.0, "days_since_last_order": 3.0,
            "support_tickets_last_90d": 0.0, "country": "us", "plan": "basic", "payment_method": "paypal",
            "acquisition_channel": "organic", "churned_within_28d": label}))
    return validate_records(pd.concat(rows, ignore_index=True), SPEC)


def test_memorising_customers_no_longer_pays_off_on_the_holdout():
    """A flexible model can recognise the customers it trained on. The old refit learned
    the validation weeks, whose churn events reach into the holdout: memorising them
    scored well there and nowhere else. The evaluated fit ends one label horizon before
    validation, so the holdout no longer rewards memory."""
    records = memorisable_history()
    as_of = pd.Timestamp("2026-01-05") + pd.Timedelta(weeks=33)
    frames = split_by_time(records, SPEC, WindowPlan(), as_of)
    preprocessor = fit_preprocessor(SPEC, [frames.train, frames.validation])
    predictor, _ = train_challenger(frames, SPEC, preprocessor, ["hist_gradient_boosting"], 0, "test", "now")
    honest = evaluate_holdout(frames.holdout, SPEC, predictor).challenger["roc_auc"]
    # What the holdout said before: a fit on every row before the holdout.
    before = pd.concat([frames.train, frames.embargo, frames.validation], ignore_index=True)
    leaky = make_classifier("hist_gradient_boosting", 0).fit(preprocessor.transform(before), before[LABEL])
    leaked = leaky.predict_proba(preprocessor.transform(frames.holdout))[:, 1]
    from sklearn.metrics import roc_auc_score

    y = frames.holdout[LABEL].to_numpy()
    assert roc_auc_score(y, leaked) > 0.68, roc_auc_score(y, leaked)  # the fixture really rewards memory
    assert abs(honest - 0.5) < 0.08, honest  # nothing to learn, and nothing claimed


@pytest.mark.parametrize("scenario", ["concept_shift", "new_category", "missing_feature"])
def test_each_scenario_changes_what_it_names_and_the_backtest_reports_recovery(scenario):
    start = "2026-07-06"
    records, known_on = simulated("2026-09-14", n_customers=1000, scenario=scenario, scenario_start=start)
    stable, _ = simulated("2026-09-14", n_customers=1000)
    ts = SPEC.timestamp_column
    before, after = records[records[ts] < start], records[records[ts] >= start]
    # Weeks before the start are the stable simulator's, row for row; only labels whose
    # 28 days reach past the start can differ.
    same = [c for c in records.columns if c not in ("updated_at", "churned_within_28d", LABEL)]
    pd.testing.assert_frame_equal(before[same].reset_index(drop=True),
                                  stable[stable[ts] < start][same].reset_index(drop=True))
    settled = pd.Timestamp(start) - pd.Timedelta(days=SPEC.label_horizon_days)
    assert (records[records[ts] < settled][LABEL].to_numpy() == stable[stable[ts] < settled][LABEL].to_numpy()).all()
    if scenario == "new_category":
        assert not (before["payment_method"] == "crypto").any()
        assert (after["payment_method"] == "crypto").mean() > 0.05
    if scenario == "missing_feature":
        gone = after[after[ts] < pd.Timestamp(start) + pd.Timedelta(weeks=2)]
        assert gone["sessions_last_30d"].isna().all() and len(gone)
        assert after[after[ts] >= pd.Timestamp(start) + pd.Timedelta(weeks=2)]["sessions_last_30d"].notna().all()
    plan = BacktestPlan(pd.Timestamp("2026-06-15"), pd.Timestamp("2026-09-14"),
                        families=("logistic_regression",), scenario=scenario, event_date=pd.Timestamp(start))
    result = replay(records, SPEC, plan, known_on)
    recovery = result["summary"]["recovery"]
    assert set(recovery) == set(POLICIES)
    if scenario == "concept_shift":
        # The old model keeps serving the old regime: the retrained policies get back to
        # the new regime's level, the frozen one never does.
        assert recovery["always_deploy"]["weeks_to_recover"] is not None
        assert recovery["gate"]["weeks_to_recover"] is not None
        assert recovery["never_retrain"]["weeks_to_recover"] is None
        assert recovery["never_retrain"]["worst_after"] < recovery["never_retrain"]["baseline"] - 0.03


def test_a_backtest_leaves_production_untouched(tmp_path):
    """``churn-assets backtest`` on a data directory with a deployed model, a history and a
    risk list: every byte of them is as it was."""
    home = tmp_path / "home"
    assert run_graph(home, simulator(FIRST_WEEK), run_config={
        "ops": {"churn_model": {"config": {"families": ["logistic_regression"]}}}}).success
    scores = home / "scores" / "churn_scores.parquet"
    before = guarded_state(home), scores.read_bytes(), sorted(p.name for p in home.iterdir())
    config = tmp_path / "churn.toml"
    config.write_text('[source]\nkind = "simulator"\nn_customers = 1000\n')
    env = dict(os.environ, CHURN_ASSETS_HOME=str(home), CHURN_ASSETS_CONFIG=str(config), OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "churn_assets.cli", "backtest", "--from", "2026-06-15",
                           "--to", "2026-06-22", "--families", "logistic_regression", "--json",
                           str(out / "bt.json"), "--report", str(out / "bt.md"), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "gate" in done.stdout and "always_deploy" in done.stdout
    assert (guarded_state(home), scores.read_bytes(), sorted(p.name for p in home.iterdir())) == before
    result = json.loads((out / "bt.json").read_text())
    assert [w["as_of"] for w in result["weeks"]] == ["2026-06-15", "2026-06-22"]
    report = (out / "bt.md").read_text()
    assert "| gate |" in report and "bt_backtest_realized.png" in report
    assert (out / "bt_backtest_realized.png").read_bytes().startswith(b"\x89PNG")


def test_bad_backtest_dates_are_one_line(tmp_path):
    env = dict(os.environ, CHURN_ASSETS_HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-m", "churn_assets.cli", "backtest", "--from", "2026-07-01",
                           "--to", "2026-06-01"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip() == "churn-assets backtest: the backtest ends (2026-06-01) before it starts (2026-07-01)"
    assert not (tmp_path / "home").exists()
