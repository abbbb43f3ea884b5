"""churn_scores: the weekly churn-risk list, on disk and in PostgreSQL, and `churn-assets score`."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from churn_assets.core.scoring import REASON_COLUMNS, risk_deciles, score_customers
from churn_assets.storage.history import CustomerHistory
from churn_assets.storage.registry import ModelRegistry
from churn_assets_tests.conftest import (FIRST_WEEK, NEXT_WEEK, guarded_state, metadata_of,
                                         run_graph, simulator)

POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def scores_of(home: Path) -> pd.DataFrame:
    return pd.read_parquet(home / "scores" / "churn_scores.parquet")


def test_risk_deciles_rank_the_riskiest_tenth_first():
    probability = np.array([0.9, 0.1, 0.5, 0.5, 0.3, 0.8, 0.05, 0.7, 0.2, 0.6])
    deciles = risk_deciles(probability)
    assert deciles.tolist() == [1, 9, 5, 6, 7, 2, 10, 3, 8, 4]
    assert risk_deciles(np.linspace(0, 1, 1000)).tolist().count(1) == 100


def test_the_graph_writes_every_active_customers_score_with_the_production_model(home):
    result = run_graph(home, simulator(FIRST_WEEK))
    assert result.success
    scores = scores_of(home)
    registry = ModelRegistry(home / "registry")
    production = registry.production()
    assert set(scores["model_version"]) == {production.version}
    assert scores["customer_id"].is_unique
    assert set(scores["risk_decile"]) == set(range(1, 11))
    history = CustomerHistory(home / "history").load()
    newest = history.sort_values("snapshot_date").drop_duplicates("customer_id", keep="last")
    active = newest[newest["snapshot_date"] >= newest["snapshot_date"].max() - pd.Timedelta(days=14)]
    assert sorted(scores["customer_id"]) == sorted(active["customer_id"])
    # The probabilities are the production model's, on each customer's newest snapshot.
    predictor = registry.load(production)
    rows = active.set_index("customer_id").loc[scores["customer_id"]].reset_index()
    # Scored by the compiled batch scorer: the pipeline's numbers within 1e-9.
    assert np.abs(scores["churn_probability"] - predictor.predict_proba(rows)).max() < 1e-9
    assert (scores["churn_label"] == (scores["churn_probability"] >= predictor.threshold)).all()
    assert metadata_of(result, "churn_scores")["customers"] == len(scores)


def test_chunked_scoring_equals_scoring_at_once(home):
    assert run_graph(home, simulator(FIRST_WEEK)).success
    registry = ModelRegistry(home / "registry")
    predictor = registry.load(registry.production())
    raw = simulator(FIRST_WEEK).fetch(predictor.spec, None).records.head(997)
    whole = score_customers(predictor, raw, "v0001", "2026-05-04T03:00:00", chunk_rows=10**6)
    chunked = score_customers(predictor, raw, "v0001", "2026-05-04T03:00:00", chunk_rows=100)
    pd.testing.assert_frame_equal(whole, chunked)


@pytest.fixture
def postgres_table():
    table = f"churn_scores_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(POSTGRES)
    yield table, engine
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
    engine.dispose()


def test_scores_are_upserted_by_customer_into_postgresql(home, postgres_table, monkeypatch):
    table, engine = postgres_table
    monkeypatch.setenv("CRM_DATABASE_URL", POSTGRES)
    from churn_assets.defs.definitions import ASSETS, CHECKS, build_resources
    from churn_assets.defs.scores import RiskList
    from churn_assets.settings import Settings
    import dagster as dg

    # A table written by an older release, without the new columns: they are added.
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE TABLE "{table}" (customer_id TEXT PRIMARY KEY, churn_probability FLOAT)'))
    previous = None
    for week in (FIRST_WEEK, NEXT_WEEK):
        resources = build_resources(Settings(home=home), source=simulator(week))
        resources["risk_list"] = RiskList(sql_url_env="CRM_DATABASE_URL", sql_table=table)
        result = dg.materialize(ASSETS + CHECKS, resources=resources, raise_on_error=False)
        assert result.success
        stored = pd.read_sql_table(table, engine)
        on_disk = scores_of(home)
        assert stored["customer_id"].is_unique
        merged = on_disk.merge(stored, on="customer_id", suffixes=("", "_db"))
        assert len(merged) == len(on_disk)  # every customer of this week's list is in the table
        assert np.allclose(merged["churn_probability"], merged["churn_probability_db"])
        assert (merged["model_version_db"] == merged["model_version"]).all()
        for column in (*REASON_COLUMNS, "value_at_risk", "new_at_risk", "risk_change"):
            assert column in on_disk and column in stored, column
        assert (merged["reason_1_db"].fillna("") == merged["reason_1"].fillna("")).all()
        assert np.allclose(merged["reason_1_effect_db"], merged["reason_1_effect"], equal_nan=True)
        assert np.allclose(merged["value_at_risk_db"], merged["value_at_risk"], equal_nan=True)
        assert (merged["new_at_risk_db"] == merged["new_at_risk"]).all()
        # The simulator names monthly_spend as the value: value at risk = P(churn) x spend.
        history = CustomerHistory(home / "history").load().sort_values("snapshot_date")
        spend = history.drop_duplicates("customer_id", keep="last").set_index("customer_id")["monthly_spend"]
        np.testing.assert_allclose(on_disk["value_at_risk"],
                                   on_disk["churn_probability"] * spend.loc[on_disk["customer_id"]].to_numpy())
        metadata = metadata_of(result, "churn_scores")
        assert metadata["expected_churners_low"] <= metadata["expected_churners"] <= metadata["expected_churners_high"]
        assert metadata["new_at_risk"] == int(on_disk["new_at_risk"].sum())
        assert "decile_plot" in metadata and "| risk_decile |" in metadata["deciles"]
        if previous is None:  # the first list: everyone at risk is new, nothing to compare
            assert (on_disk["new_at_risk"] == (on_disk["churn_label"] == 1)).all()
            assert on_disk["risk_change"].isna().all()
        else:  # the second week against the first week's list
            before = previous.set_index("customer_id")
            known = on_disk["customer_id"].isin(before.index)
            assert known.any() and (~known).sum() == on_disk["risk_change"].isna().sum()
            was = before["churn_probability"].reindex(on_disk["customer_id"]).to_numpy()
            np.testing.assert_allclose(on_disk["risk_change"], on_disk["churn_probability"] - was)
            was_at_risk = before["churn_label"].reindex(on_disk["customer_id"]).to_numpy() == 1
            assert (on_disk["new_at_risk"] == ((on_disk["churn_label"] == 1) & ~was_at_risk)).all()
            assert metadata["previous_customers"] == len(previous)
        previous = on_disk
    with engine.connect() as conn:
        versions = {r[0] for r in conn.execute(sa.text(f'SELECT DISTINCT model_version FROM "{table}"'))}
    assert ModelRegistry(home / "registry").production().version in versions


def test_a_missing_database_variable_fails_clearly_and_leaves_the_registry_alone(home, monkeypatch):
    import dagster as dg

    from churn_assets.defs.definitions import ASSETS, CHECKS, build_resources
    from churn_assets.defs.scores import RiskList
    from churn_assets.settings import Settings

    assert run_graph(home, simulator(FIRST_WEEK)).success
    before = guarded_state(home)
    monkeypatch.delenv("NO_SUCH_CRM_URL", raising=False)
    resources = build_resources(Settings(home=home), source=simulator(FIRST_WEEK))
    resources["risk_list"] = RiskList(sql_url_env="NO_SUCH_CRM_URL")
    result = dg.materialize(ASSETS + CHECKS, resources=resources, selection="churn_scores",
                            raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "NO_SUCH_CRM_URL" in failure.event_specific_data.error.message
    assert guarded_state(home) == before


def test_cli_score_writes_what_the_output_extension_says(home, tmp_path):
    assert run_graph(home, simulator(FIRST_WEEK)).success
    registry = ModelRegistry(home / "registry")
    predictor = registry.load(registry.production())
    raw = simulator(FIRST_WEEK).fetch(predictor.spec, None).records.head(300)
    source = tmp_path / "customers.parquet"
    raw.to_parquet(source)
    out = tmp_path / "scores.parquet"
    cli = str(Path(sys.executable).with_name("churn-assets"))
    env = dict(os.environ, CHURN_ASSETS_HOME=str(home))
    env.pop("CHURN_ASSETS_CONFIG", None)

    def score(*args):
        return subprocess.run([cli, "score", "--input", str(source), *args], env=env,
                              capture_output=True, text=True, timeout=120)

    done = score("--output", str(out))
    assert done.returncode == 0, done.stderr
    written = pd.read_parquet(out)
    assert np.abs(written["churn_probability"] - predictor.predict_proba(raw)).max() < 1e-9
    # .csv is CSV (it used to be Parquet whatever the name), with the reasons asked for.
    as_csv = tmp_path / "x.csv"
    done = score("--output", str(as_csv), "--explain")
    assert done.returncode == 0, done.stderr
    assert "expected churners" in done.stdout and "value at risk" in done.stdout
    table = pd.read_csv(as_csv)
    for column in ("churn_probability", *REASON_COLUMNS, "value_at_risk", "new_at_risk", "risk_change"):
        assert column in table.columns, column
    assert np.abs(table["churn_probability"] - predictor.predict_proba(raw)).max() < 1e-9
    assert table["reason_1"].notna().any()
    # Against last week's list: the changes.
    previous = written.assign(churn_probability=written["churn_probability"] / 2, churn_label=0)
    previous.to_parquet(tmp_path / "previous.parquet")
    again = tmp_path / "again.parquet"
    done = score("--output", str(again), "--explain", "--previous", str(tmp_path / "previous.parquet"))
    assert done.returncode == 0, done.stderr
    changed = pd.read_parquet(again)
    np.testing.assert_allclose(changed["risk_change"], changed["churn_probability"] / 2)
    assert (changed["new_at_risk"] == (changed["churn_label"] == 1)).all()
    # Another extension is refused in one line, before anything is written.
    done = score("--output", str(tmp_path / "out.txt"))
    assert done.returncode == 2 and "write .csv or .parquet" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.txt").exists()
    bad = tmp_path / "bad.csv"
    raw.drop(columns=["plan"]).to_csv(bad, index=False)
    done = subprocess.run([cli, "score", "--input", str(bad), "--output", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "['plan']" in done.stderr and "Traceback" not in done.stderr
