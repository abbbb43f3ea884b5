"""The SQL source, incrementally, against a real SQLite file and a real PostgreSQL server.

PostgreSQL must answer on 127.0.0.1:5432 (trust auth, database ``test``); CI starts one
with .ci/ensure_postgres.sh. Without it these tests fail rather than skip.
"""

from __future__ import annotations

import json
import uuid

import pandas as pd
import pytest
import sqlalchemy as sa

from churn_assets.defs.sourcing import source_from_settings
from churn_assets.settings import Settings, SettingsError, load_settings
from churn_assets.sources.simulation import SimulatorSettings, simulate
from churn_assets.sources.base import SourceError
from churn_assets.sources.sql import SqlSource
from churn_assets.core.spec import load_spec
from churn_assets_tests.ingestion_support import (CUSTOMERS, FIRST_WEEK, NEXT_WEEK, guarded_state,
                                                  run_refresh, step_failures)

SPEC = load_spec("simulator")
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def customers(as_of: str) -> pd.DataFrame:
    return simulate(SimulatorSettings(n_customers=CUSTOMERS), as_of)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """(url, table) of an empty place for a customer table; PostgreSQL gets a throwaway schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'crm.db'}", "customers"
        return
    schema = f"churn_test_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield POSTGRES_URL, f"{schema}.customers"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def write_table(url: str, table: str, frame: pd.DataFrame) -> None:
    """The company's database after its own nightly upsert: the whole table as of now."""
    schema, _, name = table.rpartition(".")
    engine = sa.create_engine(url)
    try:
        frame.to_sql(name, engine, schema=schema or None, if_exists="replace", index=False)
    finally:
        engine.dispose()


def registry_versions(home) -> list[str]:
    return sorted(p.name for p in (home / "registry" / "versions").iterdir())


def test_incremental_idempotent_refreshes(database, tmp_path):
    url, table = database
    home = tmp_path / "home"
    write_table(url, table, customers(FIRST_WEEK))

    first = run_refresh(home, SqlSource(url=url, table=table, chunk_size=1500, as_of=FIRST_WEEK))
    assert first.success, step_failures(first)
    history = pd.read_parquet(home / "history" / "weeks")
    assert len(history) == len(customers(FIRST_WEEK))
    state = json.loads((home / "history" / "state.json").read_text())
    assert pd.Timestamp(state["watermark"]) == pd.Timestamp(FIRST_WEEK)
    assert registry_versions(home) == ["v0001"]

    # Nothing changed at the source: a normal, quiet run that trains nothing.
    before = guarded_state(home)
    quiet = run_refresh(home, SqlSource(url=url, table=table, as_of=FIRST_WEEK))
    assert quiet.success
    observed = [e.event_specific_data.asset_observation.metadata["status"].value
                for e in quiet.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert any("no new customer records" in text for text in observed), observed
    assert not quiet.asset_materializations_for_node("churn_model")
    assert guarded_state(home) == before

    # A week later: new snapshots, and old rows whose churn label flipped (updated_at moved).
    later = customers(NEXT_WEEK)
    write_table(url, table, later)
    new = SqlSource(url=url, table=table, as_of=NEXT_WEEK)
    assert new.count_new(SPEC, state["watermark"]).count == int(
        (later["updated_at"] > pd.Timestamp(FIRST_WEEK)).sum())
    second = run_refresh(home, new)
    assert second.success, step_failures(second)
    history = pd.read_parquet(home / "history" / "weeks")
    keys = ["customer_id", "snapshot_date"]
    assert not history.duplicated(keys).any()
    assert len(history) == len(later)
    merged = later.merge(history, on=keys, suffixes=("", "_stored"))
    assert (merged["churned_within_28d"].astype(str) == merged["churned_within_28d_stored"].astype(str)).all()
    assert pd.Timestamp(json.loads((home / "history" / "state.json").read_text())["watermark"]) \
        == later["updated_at"].max()

    # Re-running the same week from scratch (watermark lost) replaces, never duplicates.
    (home / "history" / "state.json").unlink()
    versions = registry_versions(home)
    again = run_refresh(home, new)
    assert again.success, step_failures(again)
    assert len(pd.read_parquet(home / "history" / "weeks")) == len(later)
    assert registry_versions(home) == versions  # same data, same model: no new version


def test_query_source_and_watermark_filter(tmp_path):
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    frame = customers(FIRST_WEEK)
    write_table(url, "customers", frame)
    source = SqlSource(url=url, query="SELECT * FROM customers WHERE plan IS NOT NULL;", chunk_size=999)
    since = "2026-04-20"
    batch = source.fetch(SPEC, since)
    expected = frame[(frame["updated_at"] > pd.Timestamp(since)) & frame["plan"].notna()]
    assert len(batch.records) == len(expected) > 0
    assert batch.records["updated_at"].is_monotonic_increasing
    assert source.count_new(SPEC, since).count == len(expected)
    assert source.count_new(SPEC, batch.watermark).count == 0


@pytest.mark.parametrize("options, phrase", [
    ({"table": "no_such_table"}, "no table 'no_such_table'"),
    ({"table": "customers", "updated_at_column": "modified"}, "has no column 'modified'"),
    ({"query": "SELEC broken"}, "check source.table / source.query"),
])
def test_sql_mistakes_are_named(tmp_path, options, phrase):
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    write_table(url, "customers", customers(FIRST_WEEK).head(50))
    with pytest.raises(SourceError, match=phrase):
        SqlSource(url=url, **options).fetch(SPEC, None)


def test_password_never_shown():
    source = SqlSource(url="postgresql+psycopg2://churn:hunter2@127.0.0.1:1/test", table="t")
    assert "hunter2" not in repr(source) and "hunter2" not in source.describe()
    with pytest.raises(SourceError) as caught:
        source.fetch(SPEC, None)
    assert "hunter2" not in str(caught.value)


def test_config_builds_sql_and_http_sources(tmp_path, monkeypatch):
    config = tmp_path / "churn.toml"
    config.write_text('[source]\nkind = "sql"\npath = "crm.db"\ntable = "customers"\n')
    settings = load_settings({"CHURN_ASSETS_CONFIG": str(config)})
    built = source_from_settings(settings.source)
    assert isinstance(built, SqlSource) and built.url == f"sqlite:///{tmp_path / 'crm.db'}"
    config.write_text('[source]\nkind = "http"\nbase_url = "http://127.0.0.1:8765"\n')
    monkeypatch.setenv("CHURN_ASSETS_API_TOKEN", "t")
    source = source_from_settings(load_settings({"CHURN_ASSETS_CONFIG": str(config)}).source)
    assert source.bearer_token() == "t" and source.token_env == "CHURN_ASSETS_API_TOKEN"
    config.write_text('[source]\nkind = "sql"\ntable = "customers"\n')
    with pytest.raises(SettingsError, match="url_env"):
        load_settings({"CHURN_ASSETS_CONFIG": str(config)})
    assert Settings(home=tmp_path).sensor.enabled is None
