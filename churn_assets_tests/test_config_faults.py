"""Configuration faults a user hits: each is one line naming the file and the key, exit 2,
never a traceback, never a secret on the terminal, and never found only at run time.
docs/reliability.md ("Configuration") maps each case to its test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from churn_assets.settings import SettingsError, load_settings
from churn_assets.sources.simulation import SimulatorSettings, simulate
from churn_assets_tests.conftest import TELCO_CSV, guarded_state, simulator

CLI = str(Path(sys.executable).with_name("churn-assets"))


def run_cli(tmp_path: Path, *args: str, config: str | bytes, env: dict | None = None,
            unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    path = tmp_path / "churn.toml"
    path.write_bytes(config if isinstance(config, bytes) else config.encode())
    full = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", *unset)}
    full.update(CHURN_ASSETS_CONFIG=str(path), CHURN_ASSETS_HOME=str(tmp_path / "home"), **(env or {}))
    return subprocess.run([CLI, *args], env=full, capture_output=True, text=True, timeout=300)


def one_clear_error(done: subprocess.CompletedProcess, tmp_path: Path) -> str:
    """The error text of a command that must fail with exit 2, naming the file, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    assert "Traceback" not in done.stderr and "Error:" not in done.stderr.split("\n", 1)[0], done.stderr
    assert str(tmp_path / "churn.toml") in done.stderr, done.stderr
    return done.stderr


# -- secrets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url, secret", [("http://alice:Pa55-w0rd@crm.example", "Pa55-w0rd"),
                                         ("https://ghp_t0kenvalue123@crm.example/api", "ghp_t0kenvalue123")])
@pytest.mark.parametrize("command", ["check-config", "materialize"])
def test_credentials_in_base_url_are_refused_at_load_and_never_echoed(tmp_path, url, secret, command):
    done = run_cli(tmp_path, command, config=f'[source]\nkind = "http"\nbase_url = "{url}"\n')
    error = one_clear_error(done, tmp_path)
    assert "source.base_url: must not carry credentials" in error and "source.token_env" in error
    assert secret not in done.stdout + done.stderr
    assert "***@crm.example" in error  # which URL is meant, masked
    assert not (tmp_path / "home").exists()  # nothing ran


def test_a_refused_url_of_another_scheme_is_masked_too(tmp_path):
    with pytest.raises(SettingsError) as caught:
        load_settings({"CHURN_ASSETS_CONFIG": str(_write(tmp_path, '[source]\nkind = "http"\n'
                                                                   'base_url = "ftp://bob:hunter2@h"\n'))})
    assert "must be an http:// or https:// URL" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "ftp://bob:***@h" in str(caught.value)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "churn.toml"
    path.write_text(text)
    return path


# -- the file itself --------------------------------------------------------------------------

def test_a_config_file_that_is_not_utf8_is_one_line_naming_the_file(tmp_path):
    done = run_cli(tmp_path, "check-config", config='# caf\xe9 in Latin-1\n[window]\nholdout_weeks = 2\n'
                   .encode("latin-1"))
    error = one_clear_error(done, tmp_path)
    assert "not UTF-8 text" in error and "0xe9" in error


@pytest.mark.parametrize("literal", ["2026-5-4", "2026-05-44", "2026-02-30", "2026/05/04"])
def test_an_invalid_date_literal_says_it_is_a_date(tmp_path, literal):
    with pytest.raises(SettingsError) as caught:
        load_settings({"CHURN_ASSETS_CONFIG": str(_write(
            tmp_path, f'[source]\nkind = "simulator"\nas_of = {literal}\n'))})
    message = str(caught.value)
    assert "not valid TOML" in message and "line 3" in message
    assert f"as_of = {literal} is not a valid date" in message and "YYYY-MM-DD" in message


# -- keys in the wrong place ------------------------------------------------------------------

@pytest.mark.parametrize("text, key, hint", [
    ("[window]\nsnapshot_weeks = 3\n", "window.snapshot_weeks", "it belongs under [source] with kind = 'file'"),
    ("label_horizon_days = 14\n", "label_horizon_days", "it belongs in the feature spec"),
    ("numeric_features = ['age']\n", "numeric_features", "it belongs in the feature spec"),
    ("holdout_weeks = 3\n", "holdout_weeks", "it belongs under [window]"),
    ("[window]\nhome = 'data'\n", "window.home", "it belongs at the top level"),
    ("[source]\nkind = 'simulator'\npath = 'x.csv'\n", "source.path",
     "it belongs under [source] with kind = 'file' or [source] with kind = 'sql'"),
    ("[sensor]\npsi_act = 0.3\n", "sensor.psi_act", "it belongs under [monitoring]"),
])
def test_a_misplaced_key_says_where_it_belongs(tmp_path, text, key, hint):
    with pytest.raises(SettingsError) as caught:
        load_settings({"CHURN_ASSETS_CONFIG": str(_write(tmp_path, text))})
    message = str(caught.value)
    assert f": {key}: unknown key here; {hint}" in message, message
    assert "did you mean" not in message  # a near miss would point at the wrong key


# -- strict types -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, key", [
    ('[sensor]\nenabled = "yes"\n', "sensor.enabled"),
    ('[sensor]\nenabled = 1\n', "sensor.enabled"),
    ('[monitoring]\nretrain_on_drift = "false"\n', "monitoring.retrain_on_drift"),
    ('[window]\nholdout_weeks = "3"\n', "window.holdout_weeks"),
    ('[window]\nholdout_weeks = 3.0\n', "window.holdout_weeks"),
])
def test_values_are_not_converted_from_another_type(tmp_path, text, key):
    with pytest.raises(SettingsError) as caught:
        load_settings({"CHURN_ASSETS_CONFIG": str(_write(tmp_path, text))})
    assert f": {key}: Input should be a valid" in str(caught.value), caught.value


def test_quoted_dates_and_whole_numbers_for_floats_still_load(tmp_path):
    settings = load_settings({"CHURN_ASSETS_CONFIG": str(_write(
        tmp_path, '[source]\nkind = "simulator"\nas_of = "2026-05-04"\nstart_date = 2026-01-05\n'
                  '[sensor]\nenabled = true\n[monitoring]\npsi_act = 1\n'))})
    assert str(settings.source.as_of) == "2026-05-04" and settings.sensor.enabled is True
    assert settings.monitoring.psi_act == 1.0


# -- variables the file names -----------------------------------------------------------------

UNSET = "CHURN_TEST_NEVER_SET_VARIABLE"


@pytest.mark.parametrize("config, key", [
    (f'[dagster]\npostgres_url_env = "{UNSET}"\n', "dagster.postgres_url_env"),
    (f'[scores]\nsql_url_env = "{UNSET}"\n', "scores.sql_url_env"),
    (f'[source]\nkind = "http"\nbase_url = "http://127.0.0.1:9"\ntoken_env = "{UNSET}"\n', "source.token_env"),
    (f'[source]\nkind = "sql"\nurl_env = "{UNSET}"\ntable = "customers"\n', "source.url_env"),
])
@pytest.mark.parametrize("command", ["check-config", "materialize"])
def test_an_unset_variable_the_file_names_stops_every_command_before_any_work(tmp_path, config, key, command):
    done = run_cli(tmp_path, command, config=config, unset=(UNSET,))
    error = one_clear_error(done, tmp_path)
    assert f"{key}: the environment variable {UNSET} is not set" in error, error
    assert len(error.strip().splitlines()) == 2  # "configuration error:" and the one reason
    assert not (tmp_path / "home").exists()  # no instance, no history, no model


def test_check_config_lists_every_unset_variable(tmp_path):
    done = run_cli(tmp_path, "check-config", unset=("CHURN_T_A", "CHURN_T_B", "CHURN_T_C"), config=(
        '[source]\nkind = "http"\nbase_url = "http://127.0.0.1:9"\ntoken_env = "CHURN_T_A"\n'
        '[scores]\nsql_url_env = "CHURN_T_B"\n[dagster]\npostgres_url_env = "CHURN_T_C"\n'))
    error = one_clear_error(done, tmp_path)
    for key, name in (("source.token_env", "CHURN_T_A"), ("scores.sql_url_env", "CHURN_T_B"),
                      ("dagster.postgres_url_env", "CHURN_T_C")):
        assert f"{key}: the environment variable {name} is not set" in error


def test_a_run_started_elsewhere_stops_at_its_first_step_when_the_risk_list_cannot_be_written(tmp_path, monkeypatch):
    # The daemon's scheduled runs do not pass through the CLI: the first step checks it,
    # so no model is deployed whose risk list cannot be written.
    import dagster as dg

    from churn_assets.defs.definitions import ASSETS, CHECKS, build_resources
    from churn_assets.settings import Settings

    monkeypatch.delenv(UNSET, raising=False)
    home = tmp_path / "home"
    settings = Settings(home=home, scores={"sql_url_env": UNSET})
    result = dg.materialize(ASSETS + CHECKS, resources=build_resources(settings, source=simulator("2026-05-04", 300)),
                            raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failures] == ["raw_customers"]
    assert f"{UNSET} ([scores] sql_url_env) is not set" in failures[0].event_specific_data.error.message
    assert guarded_state(home) == {"history": {}, "registry": {}}


# -- the feature spec against the source ------------------------------------------------------

def _simulated(n: int = 30) -> pd.DataFrame:
    return simulate(SimulatorSettings(n_customers=n), "2026-02-02")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_check_config_names_spec_columns_a_file_lacks(tmp_path, suffix):
    export = tmp_path / f"export{suffix}"
    frame = _simulated().drop(columns=["customer_id", "plan"])
    frame.to_csv(export, index=False) if suffix == ".csv" else frame.to_parquet(export)
    done = run_cli(tmp_path, "check-config", config=f'[source]\nkind = "file"\npath = "{export.name}"\n')
    error = one_clear_error(done, tmp_path)
    assert "spec: feature spec 'simulator' needs columns the source does not have: 'customer_id', 'plan'" in error


def test_check_config_names_spec_columns_a_sql_table_lacks(tmp_path):
    database = tmp_path / "crm.db"
    engine = sa.create_engine(f"sqlite:///{database}")
    _simulated().drop(columns=["age"]).to_sql("customers", engine, index=False)
    engine.dispose()
    done = run_cli(tmp_path, "check-config",
                   config=f'[source]\nkind = "sql"\npath = "{database.name}"\ntable = "customers"\n')
    error = one_clear_error(done, tmp_path)
    assert "needs columns the source does not have: 'age' " in error


def test_check_config_names_spec_columns_the_api_lacks_from_its_first_page(tmp_path):
    from churn_assets_tests.ingestion_support import TOKEN, TOKEN_ENV, start_demo_api

    server = start_demo_api("2026-05-04")
    try:
        done = run_cli(tmp_path, "check-config", env={TOKEN_ENV: TOKEN},
                       config=f'spec = "telco"\n[source]\nkind = "http"\nbase_url = "{server.url}"\n')
        requests_made = list(server.api.requests)
    finally:
        server.stop()
    error = one_clear_error(done, tmp_path)
    assert "feature spec 'telco' needs columns the source does not have: 'customerID', 'Churn'" in error
    assert TOKEN not in done.stdout + done.stderr
    assert len(requests_made) == 1  # one page, not the whole history


def test_check_config_passes_a_source_that_matches_its_spec(tmp_path):
    export = tmp_path / "export.csv"
    _simulated().assign(loyalty_tier="gold").to_csv(export, index=False)
    done = run_cli(tmp_path, "check-config", config=f'[source]\nkind = "file"\npath = "{export.name}"\n')
    assert done.returncode == 0, done.stderr
    assert "configuration OK" in done.stdout
    assert "source columns the spec does not use: loyalty_tier" in done.stdout
    telco = run_cli(tmp_path, "check-config", config=f'spec = "telco"\n[source]\nkind = "file"\n'
                                                     f'path = "{TELCO_CSV}"\nsnapshot_weeks = 10\n')
    assert telco.returncode == 0, telco.stderr


def test_an_unreachable_api_is_named_by_check_config_in_seconds(tmp_path):
    done = run_cli(tmp_path, "check-config", env={"CHURN_ASSETS_API_TOKEN": "x"},
                   config='[source]\nkind = "http"\nbase_url = "http://127.0.0.1:9"\n')
    error = one_clear_error(done, tmp_path)
    assert "source: cannot read a sample to compare with the feature spec: customer API:" in error
