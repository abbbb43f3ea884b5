"""The graph on Dagster's own engines: a PostgreSQL instance and a real Celery worker.

A ``churn-assets materialize`` launcher hands each step to a Celery worker process over
the machine's Redis; runs and events live in a fresh PostgreSQL database; the model the
worker deploys is then served. Everything runs on loopback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from churn_assets.cli import prepare_dagster_home
from churn_assets.defs.definitions import build_executor
from churn_assets.settings import Settings, SettingsError, load_settings
from churn_assets_tests.serving_support import ServerProcess, http_json

BIN = Path(sys.executable).parent
POSTGRES_ADMIN = "dbname=test user=postgres host=127.0.0.1 port=5432"
REDIS = "redis://127.0.0.1:6379/7"


def test_executor_comes_from_settings(tmp_path):
    assert build_executor(Settings()).name == "in_process"
    assert build_executor(Settings(dagster={"executor": "multiprocess"})).name == "multiprocess"
    assert build_executor(Settings(dagster={"executor": "celery"})).name == "celery"
    config = tmp_path / "churn.toml"
    config.write_text('[dagster]\nexecutor = "celery"\ncelery_broker_env = ""\n')
    with pytest.raises(SettingsError, match="dagster: executor = 'celery' needs celery_broker_env"):
        load_settings({"CHURN_ASSETS_CONFIG": str(config)})
    config.write_text('[dagster]\nexecutor = "threads"\n')
    with pytest.raises(SettingsError, match="dagster.executor"):
        load_settings({"CHURN_ASSETS_CONFIG": str(config)})


@pytest.fixture
def postgres_database():
    name = f"churn_instance_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(POSTGRES_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def test_celery_worker_runs_the_steps_on_a_postgres_instance_and_the_model_is_served(
        tmp_path, postgres_database):
    home = tmp_path / "home"
    config = tmp_path / "churn.toml"
    config.write_text('[source]\nkind = "simulator"\nn_customers = 600\n\n'
                      '[dagster]\nexecutor = "celery"\ncelery_broker_env = "CHURN_TEST_BROKER"\n'
                      'postgres_url_env = "CHURN_TEST_INSTANCE_URL"\n')
    settings = load_settings({"CHURN_ASSETS_CONFIG": str(config), "CHURN_ASSETS_HOME": str(home)})
    # What churn-assets does before any run (the worker needs the instance config first).
    dagster_home = prepare_dagster_home(settings.home, settings.dagster.postgres_url_env)
    assert "env: CHURN_TEST_INSTANCE_URL" in (dagster_home / "dagster.yaml").read_text()
    # The worker's own Celery app: the broker goes under execution: config: (dagster-celery).
    worker_yaml = tmp_path / "celery.yaml"
    worker_yaml.write_text(f"execution:\n  config:\n    broker: {REDIS}\n    backend: {REDIS}\n")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "CHURN_ASSETS_HOME": str(home),
           "CHURN_ASSETS_CONFIG": str(config), "CHURN_TEST_INSTANCE_URL": postgres_database,
           "CHURN_TEST_BROKER": REDIS, "OMP_NUM_THREADS": "1",
           # dagster-celery starts the `celery` program of this environment.
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([sys.executable, "-c", f"import redis; redis.Redis.from_url('{REDIS}').flushdb()"],
                   check=True, timeout=30)
    worker_log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen(
        [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(worker_yaml),
         "--name", "churn-test-worker", "--", "--concurrency", "1"],
        cwd=tmp_path, env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    server = None
    try:
        # The launcher waits for workers forever; make sure one is up before launching.
        deadline = time.monotonic() + 90
        while b"ready." not in (tmp_path / "worker.log").read_bytes():
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.5)
        launcher = subprocess.run(
            [str(BIN / "churn-assets"), "materialize", "--as-of", "2026-05-04",
             "--families", "logistic_regression"],
            env=env, capture_output=True, text=True, timeout=300)
        assert launcher.returncode == 0, launcher.stderr[-4000:] + (tmp_path / "worker.log").read_text()[-3000:]

        os.environ["CHURN_TEST_INSTANCE_URL"] = postgres_database
        try:
            with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
                assert type(instance.run_storage).__name__ == "PostgresRunStorage"
                runs = instance.get_runs()
                assert [(r.job_name, r.status) for r in runs] == [("churn_refresh", dg.DagsterRunStatus.SUCCESS)]
                events = instance.all_logs(runs[0].run_id)
        finally:
            del os.environ["CHURN_TEST_INSTANCE_URL"]
        def pids(kind: str) -> set:
            return {e.dagster_event.pid for e in events
                    if e.dagster_event and e.dagster_event.event_type_value == kind}

        launcher_pids = pids("PIPELINE_START") | pids("PIPELINE_SUCCESS")
        step_pids = pids("STEP_START")
        assert launcher_pids and step_pids and not (step_pids & launcher_pids), (step_pids, launcher_pids)
        started = {e.step_key for e in events if e.dagster_event
                   and e.dagster_event.event_type_value == "STEP_START"}
        assert {"raw_customers", "churn_model", "deployed_model"} <= started
        in_worker = {e.step_key for e in events if e.dagster_event
                     and "in celery worker" in (e.dagster_event.message or "")}
        assert started <= in_worker, started - in_worker
        assert "churn-test-worker" in (tmp_path / "worker.log").read_text()

        server = ServerProcess(home / "registry", tmp_path / "server.log", workers=1)
        server.wait_healthy()
        deadline = time.monotonic() + 30
        while http_json(server.port, "GET", "/ready")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, body = http_json(server.port, "GET", "/ready")
        assert status == 200 and body["model_version"] == "v0001", body
    finally:
        if server is not None:
            server.stop()
        stop_group(worker)
        worker_log.close()
