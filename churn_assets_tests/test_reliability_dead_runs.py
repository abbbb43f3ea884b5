"""Issue 8, "nothing stuck": a refresh killed with SIGKILL in a persistent instance
no longer holds the refresh slot, is marked failed by run monitoring (driven directly, and
by a real ``dagster-daemon``), is alerted, and the schedule fires again. See
docs/reliability.md."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration

from churn_assets.cli import prepare_dagster_home
from churn_assets.defs.launch import run_refresh
from churn_assets.defs.liveness import PID_TAG
from churn_assets.defs.schedules import refresh_in_progress, weekly_refresh
from churn_assets.defs.sensors import churn_failure_alert
from churn_assets.settings import load_settings
from churn_assets_tests.conftest import production_version
from churn_assets_tests.ingestion_support import (FAST_TRAINING, FIRST_WEEK, TOKEN, TOKEN_ENV,
                                                  start_demo_api, stop_process)
from churn_assets_tests.test_reliability import REPO, sigkill


# --- 2. a killed run does not hold the refresh slot, and is alerted ----------------------

class DaemonContext:
    """What ``execute_run_monitoring_iteration`` needs from the daemon: the instance, and a
    workspace, which it uses only to resume runs (``max_resume_run_attempts: 0``)."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance

    def create_request_context(self):
        return None


def write_config(tmp_path: Path, base_url: str) -> Path:
    config = tmp_path / "churn.toml"
    config.write_text(f'[source]\nkind = "http"\nbase_url = "{base_url}"\nread_timeout = 300\n'
                      'page_size = 2000\n')
    return config


def start_materialize(tmp_path: Path, home: Path, config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CHURN_ASSETS_HOME": str(home),
           "CHURN_ASSETS_CONFIG": str(config)}
    env.pop("DAGSTER_HOME", None)
    return subprocess.Popen([sys.executable, "-m", "churn_assets.cli", "materialize",
                             "--as-of", FIRST_WEEK, "--families", "logistic_regression"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stalled_api_home(tmp_path: Path, monkeypatch):
    """A demo API whose next data request stalls for 5 minutes, a data directory and a
    config pointing at it: a refresh started now hangs inside raw_customers.
    Returns (server, home, config); the caller stops the server."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    server = start_demo_api(FIRST_WEEK)
    server.api.faults.queue[:] = ["stall"]
    server.api.faults.stall_seconds = 300
    return server, tmp_path / "home", write_config(tmp_path, server.url)


def kill_while_fetching(tmp_path: Path, monkeypatch):
    """A real ``churn-assets materialize`` stuck on a stalled API, killed with SIGKILL.
    Returns (server, home, dagster_home, run_id); the caller stops the server."""
    server, home, config = stalled_api_home(tmp_path, monkeypatch)
    monkeypatch.setenv("CHURN_ASSETS_HOME", str(home))
    monkeypatch.setenv("CHURN_ASSETS_CONFIG", str(config))
    child = start_materialize(tmp_path, home, config)
    try:
        deadline = time.monotonic() + 120
        while ("/v1/customers", "stall") not in server.api.requests:
            assert child.poll() is None, f"materialize exited with {child.returncode}"
            assert time.monotonic() < deadline, "materialize never reached the API"
            time.sleep(0.05)
        dagster_home = prepare_dagster_home(home)
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            [run] = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            assert run.tags[PID_TAG] == str(child.pid)
            assert refresh_in_progress(instance) == run.run_id  # alive: it holds the slot
        sigkill(child)
    finally:
        stop_process(child)
    return server, home, dagster_home, run.run_id


def test_killed_scheduled_refresh_is_failed_alerted_and_does_not_block_the_schedule(
        tmp_path, monkeypatch, webhook):
    server, home, dagster_home, run_id = kill_while_fetching(tmp_path, monkeypatch)
    try:
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
            # (a) Dagster still says STARTED, but nothing is in progress any more.
            assert refresh_in_progress(instance) is None

            # (b) One iteration of the daemon's run monitoring marks it failed; the daemon
            # runs one every poll_interval_seconds, which bounds the time to detection.
            assert instance.run_monitoring_enabled
            poll = instance.run_monitoring_settings["poll_interval_seconds"]
            assert poll <= 15
            started = time.monotonic()
            list(execute_run_monitoring_iteration(DaemonContext(instance), logging.getLogger("test")))
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
            print(f"dead run marked FAILED by one monitoring iteration in"
                  f" {time.monotonic() - started:.2f}s (iterations every {poll}s)")

            # (c) The failure alert fires for it, naming the step the process died in.
            failure = instance.get_records_for_run(run_id=run_id,
                                                   of_type=dg.DagsterEventType.RUN_FAILURE)
            context = dg.build_run_status_sensor_context(
                sensor_name="churn_failure_alert", dagster_instance=instance,
                dagster_event=failure.records[0].event_log_entry.dagster_event,
                dagster_run=instance.get_run_by_id(run_id)).for_run_failure()
            churn_failure_alert(context)
            [payload] = webhook.posts
            assert run_id in payload["text"] and "raw_customers" in payload["text"]
            assert "process died" in payload["text"], payload["text"]

            # (d) The next weekly tick requests a refresh again.
            settings = load_settings()
            tick = dg.build_schedule_context(
                instance=instance,
                scheduled_execution_time=dt.datetime(2026, 5, 11, 3, 0, tzinfo=dt.timezone.utc))
            result = weekly_refresh(settings).evaluate_tick(tick)
            assert len(result.run_requests) == 1, result.skip_message
    finally:
        server.stop()


def test_next_materialize_fails_the_dead_run_itself_without_a_daemon(tmp_path, monkeypatch):
    server, home, dagster_home, run_id = kill_while_fetching(tmp_path, monkeypatch)
    try:
        server.api.faults.queue.clear()
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            result = run_refresh(home, instance, FAST_TRAINING)
            assert result.success
            dead = instance.get_run_by_id(run_id)
            assert dead.status == dg.DagsterRunStatus.FAILURE
            failure = instance.get_records_for_run(run_id=run_id,
                                                   of_type=dg.DagsterEventType.RUN_FAILURE)
            message = failure.records[0].event_log_entry.dagster_event.message
            assert "is gone" in message and str(run_id) in message
        assert production_version(home) == "v0001"
    finally:
        server.stop()


def test_existing_dagster_yaml_gains_run_monitoring_and_keeps_user_settings(tmp_path):
    config = tmp_path / "dagster" / "dagster.yaml"
    config.parent.mkdir()
    # What churn-assets wrote before issue 8, with a user's edit.
    config.write_text("# mine\nrun_queue:\n  max_concurrent_runs: 2\ntelemetry:\n  enabled: false\n")
    prepare_dagster_home(tmp_path)
    text = config.read_text()
    assert text.startswith("# mine\nrun_queue:\n  max_concurrent_runs: 2\n")
    prepare_dagster_home(tmp_path)
    assert config.read_text() == text  # a second call adds nothing
    with dg.DagsterInstance.from_config(str(config.parent)) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_launcher.supports_check_run_worker_health
        assert instance.run_coordinator.get_run_queue_config().max_concurrent_runs == 2
    # A user who switched monitoring off keeps it off.
    config.write_text("run_monitoring:\n  enabled: false\n")
    prepare_dagster_home(tmp_path)
    with dg.DagsterInstance.from_config(str(config.parent)) as instance:
        assert not instance.run_monitoring_enabled


def ticks_of(instance: dg.DagsterInstance, name: str) -> list:
    for state in instance.all_instigator_state():
        if state.instigator_name == name:
            return instance.get_ticks(state.instigator_origin_id, state.selector_id)
    return []


def test_real_daemon_fails_the_killed_run_and_posts_the_alert(tmp_path, monkeypatch, webhook):
    """The whole chain in real processes: ``dagster-daemon run`` (run monitoring and the
    failure-alert sensor), a ``materialize`` killed with SIGKILL, a loopback webhook."""
    server, home, config = stalled_api_home(tmp_path, monkeypatch)
    config.write_text(config.read_text() + "[sensor]\nenabled = false\n")  # not the point here
    dagster_home = prepare_dagster_home(home)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CHURN_ASSETS_HOME": str(home),
           "CHURN_ASSETS_CONFIG": str(config), "DAGSTER_HOME": str(dagster_home)}
    daemon = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run",
                               "-m", "churn_assets"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child = None
    try:
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            deadline = time.monotonic() + 180
            while not ticks_of(instance, "churn_failure_alert"):  # the sensor's cursor is set
                assert daemon.poll() is None, f"dagster-daemon exited with {daemon.returncode}"
                assert time.monotonic() < deadline, "the failure sensor never ticked"
                time.sleep(0.5)
            child = start_materialize(tmp_path, home, config)
            deadline = time.monotonic() + 120
            while ("/v1/customers", "stall") not in server.api.requests:
                assert child.poll() is None and time.monotonic() < deadline, "no fetch"
                time.sleep(0.05)
            [run] = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            sigkill(child)
            killed_at = time.monotonic()
            poll = instance.run_monitoring_settings["poll_interval_seconds"]
            while instance.get_run_by_id(run.run_id).status != dg.DagsterRunStatus.FAILURE:
                # One poll interval, plus slack for a shared 2-core machine.
                assert time.monotonic() - killed_at < poll + 30, "run monitoring did not fail it"
                time.sleep(0.2)
            marked = time.monotonic() - killed_at
            while not webhook.posts:
                assert time.monotonic() - killed_at < poll + 90, "no alert was posted"
                time.sleep(0.2)
            alerted = time.monotonic() - killed_at
            print(f"kill -9 -> FAILURE {marked:.1f}s (poll {poll}s), -> Slack post {alerted:.1f}s")
            assert run.run_id in webhook.posts[0]["text"]
            assert "process died" in webhook.posts[0]["text"]
    finally:
        for proc in (child, daemon):
            if proc is not None:
                stop_process(proc, timeout=20)
        server.stop()
