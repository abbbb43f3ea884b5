"""The graph on Dagster's own engines: a PostgreSQL instance and a real Celery worker.

A ``churn-assets materialize`` launcher hands each step to a Celery worker process over
the machine's Redis; runs and events live in a fresh PostgreSQL database; the model the
worker deploys is then served. The same again with the data directory on object storage
(moto's S3 server): the launcher and the worker share nothing but the bucket, the
broker and the database. Everything runs on loopback.
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
from churn_assets_tests.test_object_storage import keys, moto_endpoint, s3  # noqa: F401 (fixtures)

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
    queue = f"churn-test-{uuid.uuid4().hex[:12]}"
    home = tmp_path / "home"
    config = tmp_path / "churn.toml"
    config.write_text('[source]\nkind = "simulator"\nn_customers = 600\n\n'
                      '[dagster]\nexecutor = "celery"\ncelery_broker_env = "CHURN_TEST_BROKER"\n'
                      f'postgres_url_env = "CHURN_TEST_INSTANCE_URL"\ncelery_queue = "{queue}"\n')
    settings = load_settings({"CHURN_ASSETS_CONFIG": str(config), "CHURN_ASSETS_HOME": str(home)})
    # What churn-assets does before any run (the worker needs the instance config first).
    dagster_home = prepare_dagster_home(settings.home, settings.dagster.postgres_url_env)
    assert "env: CHURN_TEST_INSTANCE_URL" in (dagster_home / "dagster.yaml").read_text()
    # The worker's own Celery app (the broker goes under execution: config:) is written
    # by start_worker; the worker listens on this test's queue only.
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "CHURN_ASSETS_HOME": str(home),
           "CHURN_ASSETS_CONFIG": str(config), "CHURN_TEST_INSTANCE_URL": postgres_database,
           "CHURN_TEST_BROKER": REDIS, "OMP_NUM_THREADS": "1",
           # dagster-celery starts the `celery` program of this environment.
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    worker = start_worker(tmp_path, env, queue)
    try:
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
        sent = [e.dagster_event.message for e in events if e.dagster_event
                and "Submitting celery task" in (e.dagster_event.message or "")]
        assert sent and all(f'to queue "{queue}"' in m for m in sent), sent  # [dagster] celery_queue

        status, body = ready_of_a_server_on(home / "registry", tmp_path / "server.log")
        assert status == 200 and body["model_version"] == "v0001", body
    finally:
        stop_group(worker)


def ready_of_a_server_on(registry, log: Path) -> tuple[int, dict]:
    """``/ready`` of a real prediction server on ``registry`` once it has loaded a model
    (or after 30 s); the server is stopped before returning."""
    server = ServerProcess(registry, log, workers=1)
    try:
        server.wait_healthy()
        deadline = time.monotonic() + 30
        while http_json(server.port, "GET", "/ready")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        return http_json(server.port, "GET", "/ready")
    finally:
        server.stop()


def start_worker(tmp_path: Path, env: dict, queue: str) -> subprocess.Popen:
    """A dagster-celery worker on REDIS listening on ``queue``, ready to take tasks (the
    launcher waits forever). Each test has its own queue: a worker of another run on the
    same broker (a concurrent CI, a stray worker) never takes its steps."""
    worker_yaml = tmp_path / "celery.yaml"
    worker_yaml.write_text(f"execution:\n  config:\n    broker: {REDIS}\n    backend: {REDIS}\n")
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(worker_yaml),
             "-q", queue, "--name", "churn-test-worker", "--", "--concurrency", "1"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while b"ready." not in log.read_bytes():
        if worker.poll() is not None or time.monotonic() > deadline:
            stop_group(worker)
            raise AssertionError(log.read_text()[-3000:])
        time.sleep(0.5)
    return worker


# The launcher of the object-storage test: Dagster's own execute_job on the instance in
# DAGSTER_HOME, as a run process started by a run launcher would do it. (`churn-assets
# materialize` keeps its instance and log under the data directory, which must be local.)
LAUNCH = """
import sys
import dagster as dg
from churn_assets.defs.launch import refresh_job, refresh_run_config
from churn_assets.defs.schedules import REFRESH_TAG
with dg.DagsterInstance.get() as instance:
    result = dg.execute_job(dg.reconstructable(refresh_job), instance=instance, tags={REFRESH_TAG: "true"},
                            run_config=refresh_run_config("2026-05-04", ["logistic_regression"]))
    sys.exit(0 if result.success else 1)
"""


def test_celery_worker_runs_the_graph_with_its_home_on_object_storage_and_the_model_is_served(
        tmp_path, postgres_database, s3):
    endpoint, bucket, client = s3
    queue = f"churn-test-{uuid.uuid4().hex[:12]}"
    home = f"s3://{bucket}/churn"
    config = tmp_path / "churn.toml"
    config.write_text('[source]\nkind = "simulator"\nn_customers = 600\n\n'
                      '[dagster]\nexecutor = "celery"\ncelery_broker_env = "CHURN_TEST_BROKER"\n'
                      f'postgres_url_env = "CHURN_TEST_INSTANCE_URL"\ncelery_queue = "{queue}"\n')
    assert str(load_settings({"CHURN_ASSETS_CONFIG": str(config), "CHURN_ASSETS_HOME": home}).home) == home
    # The instance stays local to the launcher (Dagster reads DAGSTER_HOME from a folder),
    # its runs and events in PostgreSQL; the data directory is the bucket.
    dagster_home = prepare_dagster_home(tmp_path / "instance", "CHURN_TEST_INSTANCE_URL")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "CHURN_ASSETS_HOME": home,
           "CHURN_ASSETS_CONFIG": str(config), "CHURN_TEST_INSTANCE_URL": postgres_database,
           "CHURN_TEST_BROKER": REDIS, "OMP_NUM_THREADS": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    assert env["AWS_ENDPOINT_URL"] == endpoint  # the worker and the server reach moto the standard way
    worker = start_worker(tmp_path, env, queue)
    try:
        launcher = subprocess.run([sys.executable, "-c", LAUNCH], env=env, cwd=Path.cwd(),
                                  capture_output=True, text=True, timeout=300)
        assert launcher.returncode == 0, launcher.stderr[-4000:] + (tmp_path / "worker.log").read_text()[-3000:]
        os.environ["CHURN_TEST_INSTANCE_URL"] = postgres_database
        try:
            with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
                assert type(instance.run_storage).__name__ == "PostgresRunStorage"
                (run,) = instance.get_runs()
                assert run.status == dg.DagsterRunStatus.SUCCESS
                events = instance.all_logs(run.run_id)
        finally:
            del os.environ["CHURN_TEST_INSTANCE_URL"]
        kinds = {}
        for e in events:
            if e.dagster_event:
                kinds.setdefault(e.dagster_event.event_type_value, set()).add(e.dagster_event.pid)
        launcher_pids = kinds["PIPELINE_START"] | kinds["PIPELINE_SUCCESS"]
        assert not (kinds["STEP_START"] & launcher_pids), (kinds["STEP_START"], launcher_pids)
        started = {e.step_key for e in events if e.dagster_event
                   and e.dagster_event.event_type_value == "STEP_START"}
        in_worker = {e.step_key for e in events if e.dagster_event
                     and "in celery worker" in (e.dagster_event.message or "")}
        assert {"raw_customers", "churn_model", "deployed_model"} <= started <= in_worker

        # The worker wrote everything to the bucket; the launcher's folder got nothing.
        stored = keys(client, bucket, "churn/")
        for expected in ("churn/registry/production.json", "churn/registry/versions/v0001/model.joblib",
                         "churn/history/state.json", "churn/artifacts/churn_model.joblib",
                         "churn/dagster_storage/clean_features", "churn/scores/churn_scores.parquet"):
            assert expected in stored, (expected, stored)
        assert not any(Path.cwd().iterdir())

        # Served straight from the bucket: the server polls the pointer object.
        status, body = ready_of_a_server_on(f"{home}/registry", tmp_path / "server.log")
        assert status == 200 and body["model_version"] == "v0001", body
    finally:
        stop_group(worker)
