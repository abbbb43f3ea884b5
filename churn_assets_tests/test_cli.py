"""The churn-assets command keeps Dagster's run history without DAGSTER_HOME being set."""

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg


def test_materialize_persists_the_dagster_instance_under_the_data_directory(tmp_path):
    config = tmp_path / "churn.toml"
    config.write_text('[source]\nkind = "simulator"\nn_customers = 200\nas_of = "2026-02-02"\n')
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(CHURN_ASSETS_HOME=str(tmp_path / "home"), CHURN_ASSETS_CONFIG=str(config))
    cli = Path(sys.executable).with_name("churn-assets")
    for _ in range(2):
        done = subprocess.run([str(cli), "materialize", "--select", "raw_customers"], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    dagster_home = tmp_path / "home" / "dagster"
    assert (dagster_home / "dagster.yaml").read_text().count("max_concurrent_runs: 1") == 1
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)


def test_info_never_prints_a_database_password(tmp_path):
    config = tmp_path / "churn.toml"
    config.write_text('[source]\nkind = "sql"\nurl = "postgresql+psycopg2://churn:s3cr3t-pw@db:5432/crm"\n'
                      'table = "customers"\n')
    env = dict(os.environ, CHURN_ASSETS_CONFIG=str(config), CHURN_ASSETS_HOME=str(tmp_path))
    done = subprocess.run([str(Path(sys.executable).with_name("churn-assets")), "info"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "s3cr3t-pw" not in done.stdout + done.stderr
    assert "postgresql+psycopg2://churn:***@db:5432/crm" in done.stdout


def test_prediction_server_modules_do_not_import_dagster():
    # Every serving worker used to import the Dagster definitions through the package
    # __init__: seconds of start-up and a quarter-million objects for the GC to walk.
    probe = ("import sys, churn_assets.serving.app, churn_assets.serving.server; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster')[:3])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_two_materialize_at_once_run_one_refresh_and_the_second_says_why(tmp_path, monkeypatch):
    from churn_assets_tests.ingestion_support import TOKEN, TOKEN_ENV, start_demo_api

    server = start_demo_api("2026-05-04")
    server.api.faults.queue[:] = ["stall"]  # the first refresh hangs inside raw_customers
    server.api.faults.stall_seconds = 120
    config = tmp_path / "churn.toml"
    config.write_text(f'[source]\nkind = "http"\nbase_url = "{server.url}"\n'
                      f'token_env = "{TOKEN_ENV}"\nread_timeout = 120\n')
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(CHURN_ASSETS_HOME=str(home), CHURN_ASSETS_CONFIG=str(config), **{TOKEN_ENV: TOKEN})
    cli = str(Path(sys.executable).with_name("churn-assets"))
    command = [cli, "materialize", "--as-of", "2026-05-04", "--families", "logistic_regression"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while server.api.requests[:1] != [("/v1/customers", "stall")] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.api.requests[:1] == [("/v1/customers", "stall")], "first refresh never started"
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 3, second.stderr[-2000:]
        assert "a refresh is already running" in second.stderr and "Traceback" not in second.stderr
    finally:
        server.api.release.set()
        out, err = first.communicate(timeout=300)
        server.stop()
    assert first.returncode == 0, err[-3000:]
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_runs()
    assert [(r.job_name, r.status) for r in runs] == [("churn_refresh", dg.DagsterRunStatus.SUCCESS)]
    assert runs[0].tags.get("churn_assets/refresh") == "true"
