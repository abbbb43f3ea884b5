"""The risk list follows production: after a kill at the promotion, and after a failed
upsert of the SQL table, the next run (with nothing new to train on) rescores it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from churn_assets.defs.definitions import ASSETS, CHECKS, build_resources
from churn_assets.defs.scores import RiskList
from churn_assets.settings import Settings
from churn_assets_tests.conftest import FIRST_WEEK, NEXT_WEEK, production_version, simulator
from churn_assets_tests.test_scores import POSTGRES, postgres_table  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("churn-assets"))

# `churn-assets materialize` in its own process, stopped right after the registry moved
# production (the pointer is written, nothing after it has run), to be killed there.
STOP_AT_PROMOTION = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from churn_assets import cli
    from churn_assets.storage.registry import ModelRegistry

    sentinel = Path(sys.argv[1])
    promote = ModelRegistry.promote
    def promote_then_stall(self, *args, **kwargs):
        pointer = promote(self, *args, **kwargs)
        sentinel.write_text(pointer["version"])
        time.sleep(600)
    ModelRegistry.promote = promote_then_stall
    sys.exit(cli.main(sys.argv[2:]))
""")


def cli_env(home: Path, config: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(CHURN_ASSETS_HOME=str(home), CHURN_ASSETS_CONFIG=str(config), PYTHONPATH=str(REPO))
    return env


def list_versions(home: Path) -> set[str]:
    return set(pd.read_parquet(home / "scores" / "churn_scores.parquet")["model_version"])


def test_a_kill_at_the_promotion_is_repaired_by_the_next_run_of_the_same_week(tmp_path):
    home, config = tmp_path / "home", tmp_path / "churn.toml"
    config.write_text('[source]\nkind = "simulator"\nn_customers = 1000\n')
    env = cli_env(home, config)
    fast = ["--families", "logistic_regression"]
    done = subprocess.run([CLI, "materialize", "--as-of", FIRST_WEEK, *fast], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list_versions(home) == {"v0001"}

    sentinel = tmp_path / "promoted"
    child = subprocess.Popen([sys.executable, "-c", STOP_AT_PROMOTION, str(sentinel), "materialize",
                              "--as-of", NEXT_WEEK, *fast], env=env, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not sentinel.exists():
            assert child.poll() is None, f"materialize exited with {child.returncode} before promoting"
            assert time.monotonic() < deadline, "materialize never reached the promotion"
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    # The bug's precondition: production moved, the list still holds the old version.
    assert production_version(home) == "v0002" and list_versions(home) == {"v0001"}

    # The same week again: no new records, nothing to retrain, and the list is repaired.
    rerun = subprocess.run([CLI, "materialize", "--as-of", NEXT_WEEK, *fast], env=env, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "records fetched: 0" in rerun.stdout and "chosen family" not in rerun.stdout
    assert re.search(r"risk list: \d+ customers scored by v0002 \(rescored: the list was scored by v0001,"
                     r" production is v0002\)", rerun.stdout), rerun.stdout
    assert production_version(home) == "v0002" and list_versions(home) == {"v0002"}
    state = json.loads((home / "scores" / "state.json").read_text())
    assert state["version"] == "v0002"
    # And the killed run is on record as failed, not left running.
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        statuses = [r.status for r in instance.get_runs()]
    assert statuses.count(dg.DagsterRunStatus.FAILURE) == 1 and dg.DagsterRunStatus.STARTED not in statuses


def refresh(home: Path, week: str, url_env: str, table: str) -> dg.ExecuteInProcessResult:
    resources = build_resources(Settings(home=home), source=simulator(week))
    resources["risk_list"] = RiskList(sql_url_env=url_env, sql_table=table)
    return dg.materialize(ASSETS + CHECKS, resources=resources, raise_on_error=False,
                          run_config={"ops": {"churn_model": {"config": {"families": ["logistic_regression"]}}}})


def table_versions(engine, table: str) -> set[str]:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.text(f'SELECT DISTINCT model_version FROM "{table}"'))}


def test_a_failed_upsert_after_a_deploy_is_repaired_by_the_next_run(home, postgres_table, monkeypatch):  # noqa: F811
    table, engine = postgres_table
    monkeypatch.setenv("CRM_DATABASE_URL", POSTGRES)
    assert refresh(home, FIRST_WEEK, "CRM_DATABASE_URL", table).success
    assert table_versions(engine, table) == {"v0001"}

    # The CRM's database is down when the next week deploys: the upsert fails.
    monkeypatch.setenv("CRM_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:9/test")
    failed = refresh(home, NEXT_WEEK, "CRM_DATABASE_URL", table)
    assert not failed.success and production_version(home) == "v0002"
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key.startswith("churn_scores.") and "upsert into" in failure.event_specific_data.error.message
    assert table_versions(engine, table) == {"v0001"}

    # Back up: the same week, nothing new to train on, and the table gets v0002.
    monkeypatch.setenv("CRM_DATABASE_URL", POSTGRES)
    repaired = refresh(home, NEXT_WEEK, "CRM_DATABASE_URL", table)
    assert repaired.success
    ran = {e.step_key for e in repaired.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert "churn_model" not in ran and "churn_scores.rescore_if_stale" in ran
    on_disk = pd.read_parquet(home / "scores" / "churn_scores.parquet")
    stored = pd.read_sql_table(table, engine)
    assert set(on_disk["model_version"]) == {"v0002"}
    current = stored[stored["customer_id"].isin(on_disk["customer_id"])]
    assert len(current) == len(on_disk) and set(current["model_version"]) == {"v0002"}
    # In sync now: the next run leaves the list alone.
    again = refresh(home, NEXT_WEEK, "CRM_DATABASE_URL", table)
    assert again.success and not [e for e in again.get_asset_materialization_events()
                                  if e.asset_key == dg.AssetKey("churn_scores")]


def test_a_run_with_nothing_to_train_and_nothing_in_production_still_succeeds(home):
    from churn_assets_tests.conftest import run_graph

    early = "2026-02-02"  # too little labelled history for a first model
    first = run_graph(home, simulator(early))
    assert not first.success  # clean_features: not enough labelled history yet
    again = run_graph(home, simulator(early))  # nothing new, nothing to train, no production
    assert again.success, [e.message for e in again.all_events if e.is_failure]
    assert production_version(home) is None and not (home / "scores").exists()
