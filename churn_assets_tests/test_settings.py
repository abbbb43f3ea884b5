"""Configuration mistakes fail at load time, naming the file, the key and the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from churn_assets.settings import Settings, SettingsError, load_settings

CLI = str(Path(sys.executable).with_name("churn-assets"))


def load(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "churn.toml"
    config.write_text(text)
    return load_settings({"CHURN_ASSETS_CONFIG": str(config), "CHURN_ASSETS_HOME": str(tmp_path / "h")})


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, text)
    message = str(caught.value)
    assert str(tmp_path / "churn.toml") in message, message  # the file is always named
    return message


@pytest.mark.parametrize("text, key, hint", [
    ("[window]\nholdout_week = 4\n", "window.holdout_week", "did you mean 'holdout_weeks'"),
    ("[source]\nkind = 'simulator'\nn_customer = 500\n", "source.n_customer", "did you mean 'n_customers'"),
    ("[source]\nkind = 'file'\npath = 'x.csv'\nsnapshot_week = 3\n", "source.snapshot_week", "did you mean 'snapshot_weeks'"),
    ("[source]\nkind = 'http'\nbase_url = 'http://127.0.0.1:1'\ntoken = 'abc'\n", "source.token", "unknown key"),
    ("[[gate.rules]]\nmetric = 'roc_auc'\nflor = 0.7\n", "gate.rules.0.flor", "did you mean 'floor'"),
    ("[schedule]\ncorn = '0 3 * * 1'\n", "schedule.corn", "did you mean 'cron'"),
    ("[sensor]\nmin_new_record = 5\n", "sensor.min_new_record", "did you mean 'min_new_records'"),
    ("colour = 'blue'\n", "colour", "unknown key"),
])
def test_unknown_key_in_each_section_is_named_with_a_suggestion(tmp_path, text, key, hint):
    (tmp_path / "x.csv").write_text("a\n1\n")
    message = error_of(tmp_path, text)
    assert f": {key}: " in message and hint in message, message


@pytest.mark.parametrize("text, key, reason", [
    ("[window]\ntraining_window_weeks = 'twelve'\n", "window.training_window_weeks", "valid integer"),
    ("[[gate.rules]]\nmetric = 'roc_auc'\nfloor = 'high'\n", "gate.rules.0.floor", "valid number"),
    ("[source]\nkind = 'simulator'\nas_of = 'next tuesday'\n", "source.as_of", "date"),
    ("[source]\nkind = 'simulator'\nn_customers = -5\n", "source.n_customers", "greater than or equal"),
])
def test_wrong_type_is_named(tmp_path, text, key, reason):
    message = error_of(tmp_path, text)
    assert f": {key}: " in message and reason in message, message


@pytest.mark.parametrize("text, key, reason", [
    ("[window]\ntraining_window_weeks = 2\nvalidation_weeks = 2\n", "window", "must exceed validation_weeks"),
    ("[window]\nholdout_weeks = -1\n", "window.holdout_weeks", "greater than or equal to 1"),
    ("[[gate.rules]]\nmetric = 'roc_au'\nfloor = 0.5\n", "gate.rules.0.metric", "did you mean 'roc_auc'"),
    ("[[gate.rules]]\nmetric = 'roc_auc'\nfloor = nan\n", "gate.rules.0.floor", "finite"),
    ("[[gate.rules]]\nmetric = 'roc_auc'\nmax_regression = inf\n", "gate.rules.0.max_regression", "finite"),
    ("[[gate.rules]]\nmetric = 'roc_auc'\n", "gate.rules.0", "neither floor nor max_regression"),
    ("[gate]\nrules = []\n", "gate.rules", "at least 1"),
    ("[schedule]\ncron = '0 3 * *'\n", "schedule.cron", "5 fields"),
    ("[schedule]\ncron = '0 25 * * 1'\n", "schedule.cron", "hour 25"),
    ("[schedule]\ntimezone = 'Mars/Olympus'\n", "schedule.timezone", "unknown timezone"),
    ("[source]\nkind = 'ftp'\n", "source", "unknown source kind 'ftp'"),
    ("[source]\nkind = 'sql'\ntable = 't'\n", "source", "exactly one of url, url_env"),
    ("[source]\nkind = 'http'\nbase_url = 'https://user:pw@api.example'\n", "source.base_url", "token_env"),
    ("[source]\nkind = 'file'\npath = 'missing/*.csv'\n", "source.path", "no file matches"),
    ("spec = 'nosuch'\n", "spec", "no feature spec 'nosuch'"),
    ("spec = 'broken.json'\n", "spec", "not valid JSON"),
])
def test_impossible_values_are_named(tmp_path, text, key, reason):
    (tmp_path / "broken.json").write_text("{not json")
    message = error_of(tmp_path, text)
    assert f": {key}: " in message and reason in message, message


def test_bad_toml_and_missing_file(tmp_path):
    assert "not valid TOML" in error_of(tmp_path, "[window\n")
    with pytest.raises(SettingsError, match="no such file"):
        load_settings({"CHURN_ASSETS_CONFIG": str(tmp_path / "nope.toml")})


def test_relative_paths_resolve_against_the_file_and_env_overrides(tmp_path):
    config = tmp_path / "conf" / "telco.toml"
    config.parent.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "telco.csv").write_text("customerID\n1\n")
    config.write_text('spec = "telco"\n[source]\nkind = "file"\npath = "../data/telco.csv"\n'
                      'as_of = "2026-01-05"\n[schedule]\ntimezone = "Europe/Berlin"\n')
    settings = load_settings({"CHURN_ASSETS_CONFIG": str(config), "CHURN_ASSETS_HOME": str(tmp_path / "h")})
    assert settings.source.path == str((tmp_path / "data" / "telco.csv").resolve())
    assert str(settings.source.as_of) == "2026-01-05"
    assert settings.schedule.timezone == "Europe/Berlin"
    assert settings.home == tmp_path / "h"
    assert load_settings({"CHURN_ASSETS_CONFIG": str(config),
                          "CHURN_ASSETS_TIMEZONE": "UTC"}).schedule.timezone == "UTC"


def run_cli(tmp_path: Path, *args: str, config_text: str) -> subprocess.CompletedProcess:
    config = tmp_path / "churn.toml"
    config.write_text(config_text)
    env = dict(os.environ, CHURN_ASSETS_CONFIG=str(config), CHURN_ASSETS_HOME=str(tmp_path / "home"))
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [["check-config"], ["materialize"], ["info"], ["versions"]])
def test_cli_reports_a_config_error_in_one_message_with_exit_2_and_runs_nothing(tmp_path, command):
    done = run_cli(tmp_path, *command, config_text="[window]\nholdout_week = 4\n")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "window.holdout_week: unknown key; did you mean 'holdout_weeks'?" in done.stderr
    assert str(tmp_path / "churn.toml") in done.stderr
    assert not (tmp_path / "home").exists()  # nothing ran, nothing was written


def test_check_config_accepts_a_good_file(tmp_path):
    # The telco spec with the telco export (check-config compares the spec with the source).
    from churn_assets_tests.conftest import TELCO_CSV

    done = run_cli(tmp_path, "check-config", config_text=f'spec = "telco"\n[source]\nkind = "file"\n'
                   f'path = "{TELCO_CSV}"\nsnapshot_weeks = 10\n[window]\nholdout_weeks = 3\n')
    assert done.returncode == 0, done.stderr
    assert "configuration OK" in done.stdout and "'telco'" in done.stdout


def test_help_texts_describe_every_option():
    import argparse

    from churn_assets.cli import build_parser

    parser = build_parser()
    assert "``" not in parser.format_help()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"churn-assets {name} {action.option_strings[0]} has no help"


def test_a_spec_error_inside_a_run_fails_once_and_is_not_retried(tmp_path):
    import dagster as dg

    from churn_assets.defs.definitions import ASSETS, CHECKS, build_resources
    from churn_assets.defs.resources import TrainingPlan
    from churn_assets_tests.conftest import guarded_state, simulator

    home = tmp_path / "home"
    resources = build_resources(Settings(home=home), source=simulator("2026-05-04"))
    resources["training_plan"] = TrainingPlan(spec=str(tmp_path / "deleted-spec.json"))
    result = dg.materialize(ASSETS + CHECKS, resources=resources, raise_on_error=False)
    assert not result.success
    kinds = [e.event_type_value for e in result.all_events if e.step_key == "raw_customers"]
    assert "STEP_UP_FOR_RETRY" not in kinds and kinds.count("STEP_FAILURE") == 1
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no feature spec" in failure.event_specific_data.error.message
    assert guarded_state(home) == {"history": {}, "registry": {}}


def test_a_bad_as_of_in_run_config_fails_once_and_writes_nothing(tmp_path):
    import dagster as dg

    from churn_assets.defs.definitions import ASSETS, CHECKS, build_resources
    from churn_assets_tests.conftest import simulator

    resources = build_resources(Settings(home=tmp_path / "home"), source=simulator("2026-05-04"))
    result = dg.materialize(ASSETS + CHECKS, resources=resources, raise_on_error=False,
                            run_config={"ops": {"raw_customers": {"config": {"as_of": "2026-13-45"}}}})
    assert not result.success
    kinds = [e.event_type_value for e in result.all_events if e.step_key == "raw_customers"]
    assert "STEP_UP_FOR_RETRY" not in kinds and kinds.count("STEP_FAILURE") == 1
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "as_of must be a date YYYY-MM-DD, not '2026-13-45'" in failure.event_specific_data.error.message
    assert not (tmp_path / "home" / "history").exists()


def test_cli_refuses_a_bad_as_of_before_anything_runs(tmp_path):
    done = run_cli(tmp_path, "materialize", "--as-of", "next monday", config_text="")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--as-of" in done.stderr and "YYYY-MM-DD" in done.stderr
    assert not (tmp_path / "home").exists()


def test_a_refresh_makes_the_data_directory_private_whatever_the_umask(tmp_path):
    import stat

    from churn_assets_tests.conftest import run_graph, simulator

    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        assert run_graph(home, simulator("2026-05-04", n_customers=300),
                         selection=["raw_customers"]).success
    finally:
        os.umask(old)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_two_refreshes_in_one_process_each_use_the_settings_of_their_time(tmp_path, monkeypatch):
    # Dagster caches a reconstructable job's definition per process: without clearing it,
    # the second refresh would run with the first one's settings (its source, its home).
    import dagster as dg

    from churn_assets.cli import prepare_dagster_home
    from churn_assets.defs.launch import refresh_run_config, run_refresh

    for name, customers in (("a", 200), ("b", 300)):
        home = tmp_path / name
        config = tmp_path / f"{name}.toml"
        config.write_text(f'[source]\nkind = "simulator"\nn_customers = {customers}\n')
        monkeypatch.setenv("CHURN_ASSETS_CONFIG", str(config))
        monkeypatch.setenv("CHURN_ASSETS_HOME", str(home))
        with dg.DagsterInstance.from_config(str(prepare_dagster_home(home))) as instance:
            result = run_refresh(home, instance, refresh_run_config("2026-02-02"), "raw_customers")
            assert result.success
            [materialization] = result.get_asset_materialization_events()
            described = materialization.materialization.metadata["source"].value
        assert f"{customers} customers" in described, described


def test_file_source_as_of_leaves_out_later_snapshots_and_sets_the_label_horizon(tmp_path):
    from churn_assets.core.spec import load_spec
    from churn_assets.sources.file import FileSource
    from churn_assets.sources.simulation import SimulatorSettings, simulate

    spec = load_spec("simulator")
    export = tmp_path / "export.parquet"
    simulate(SimulatorSettings(n_customers=200), "2026-04-06").to_parquet(export)
    latest = FileSource(path=str(export)).fetch(spec, None)
    assert latest.as_of == latest.records["snapshot_date"].max()  # default: the latest snapshot

    replay = FileSource(path=str(export), as_of="2026-03-02").fetch(spec, None)
    assert replay.as_of == pd.Timestamp("2026-03-02")
    assert replay.records["snapshot_date"].max() <= pd.Timestamp("2026-03-02")
    assert 0 < len(replay.records) < len(latest.records)
    assert "snapshots after 2026-03-02 left out" in replay.description
    # The run's as_of wins over the configured one.
    run = FileSource(path=str(export), as_of="2026-03-02").fetch(spec, None, as_of=pd.Timestamp("2026-02-02"))
    assert run.records["snapshot_date"].max() <= pd.Timestamp("2026-02-02")
