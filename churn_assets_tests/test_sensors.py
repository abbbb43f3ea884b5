"""The new-data sensor and the one-refresh-at-a-time guarantee, on real sources and runs."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from churn_assets.cli import prepare_dagster_home
from churn_assets.defs.definitions import build_defs, build_resources
from churn_assets.defs.schedules import REFRESH_TAG, weekly_refresh
from churn_assets.defs.sensors import new_data_sensor
from churn_assets.settings import Settings
from churn_assets.sources.simulation import SimulatorSettings, simulate
from churn_assets.sources.sql import SqlSource
from churn_assets_tests.ingestion_support import (CUSTOMERS, FAST_TRAINING, FIRST_WEEK, NEXT_WEEK,
                                                  TOKEN, TOKEN_ENV, run_refresh, start_demo_api,
                                                  step_failures)


def write_table(url: str, as_of: str) -> pd.DataFrame:
    frame = simulate(SimulatorSettings(n_customers=CUSTOMERS), as_of)
    engine = sa.create_engine(url)
    frame.to_sql("customers", engine, if_exists="replace", index=False)
    engine.dispose()
    return frame


def schedule_tick(instance):
    monday = dt.datetime(2026, 5, 11, 3, 0, tzinfo=dt.timezone.utc)
    return dg.build_schedule_context(instance=instance, scheduled_execution_time=monday)


def tick(settings: Settings, source, instance, cursor=None):
    sensor = new_data_sensor(settings)
    # A context manager: resources with a lifetime (the thread budget) are torn down after.
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources=build_resources(settings, source)) as context:
        return sensor.evaluate_tick(context)


def test_sensor_requests_one_refresh_above_threshold_and_advances_cursor(tmp_path):
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    write_table(url, FIRST_WEEK)
    home = tmp_path / "home"
    assert run_refresh(home, SqlSource(url=url, table="customers", as_of=FIRST_WEEK)).success
    later = write_table(url, NEXT_WEEK)
    new = int((later["updated_at"] > pd.Timestamp(FIRST_WEEK)).sum())
    source = SqlSource(url=url, table="customers")
    instance = dg.DagsterInstance.ephemeral()

    below = tick(Settings(home=home, sensor={"min_new_records": new + 1}), source, instance)
    assert below.run_requests == [] and below.cursor is None
    assert f"{new} new records" in below.skip_message

    settings = Settings(home=home, sensor={"min_new_records": new})
    above = tick(settings, source, instance)
    assert len(above.run_requests) == 1
    cursor = json.loads(above.cursor)
    assert pd.Timestamp(cursor["requested_up_to"]) == later["updated_at"].max()
    assert cursor["new_records"] == new

    # The next tick, with the stored cursor, does not ask again for the same data.
    again = tick(settings, source, instance, cursor=above.cursor)
    assert again.run_requests == [] and "already requested" in again.skip_message


def test_no_refresh_starts_while_one_is_running(tmp_path, monkeypatch):
    """A real refresh hangs on a stalled API; the schedule and the sensor both hold off,
    and the sensor asks again once it has finished."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    server = start_demo_api(FIRST_WEEK)
    server.api.faults.queue[:] = ["stall"]
    server.api.faults.stall_seconds = 120
    settings = Settings(home=tmp_path / "home", sensor={"min_new_records": 1},
                        source={"kind": "http", "base_url": server.url, "read_timeout": 120})
    defs = build_defs(settings)
    (tmp_path / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dagster"))
    results = []
    refresh = threading.Thread(target=lambda: results.append(defs.resolve_job_def("churn_refresh")
                               .execute_in_process(instance=instance, run_config=FAST_TRAINING,
                                                   raise_on_error=False)))
    try:
        refresh.start()
        deadline = time.monotonic() + 60
        while server.api.requests[:1] != [("/v1/customers", "stall")] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.api.requests[:1] == [("/v1/customers", "stall")], "refresh never reached the API"
        running = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert [r.tags.get(REFRESH_TAG) for r in running] == ["true"]

        schedule = weekly_refresh(settings).evaluate_tick(schedule_tick(instance))
        assert schedule.run_requests == []
        sensor = tick(settings, defs.resources["customer_source"], instance)
        assert sensor.run_requests == [] and "queued or running" in sensor.skip_message
    finally:
        server.api.release.set()  # the stalled page is now served
        refresh.join(timeout=120)
        server.stop()
    assert results and results[0].success, step_failures(results[0])

    server = start_demo_api(NEXT_WEEK)
    try:
        settings = settings.model_copy(update={"source": settings.source.model_copy(
            update={"base_url": server.url})})
        after = tick(settings, build_defs(settings).resources["customer_source"], instance)
        assert len(after.run_requests) == 1
        schedule = weekly_refresh(settings).evaluate_tick(schedule_tick(instance))
        assert len(schedule.run_requests) == 1
        # The tick's own date travels as run config: a long-lived code server never goes stale.
        assert schedule.run_requests[0].run_config == {
            "ops": {"raw_customers": {"config": {"as_of": "2026-05-11"}}}}
    finally:
        server.stop()


def test_instance_config_allows_one_refresh_at_a_time(tmp_path):
    dagster_home = prepare_dagster_home(tmp_path)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        queue = instance.run_coordinator.get_run_queue_config()
    assert queue.max_concurrent_runs == 1
    assert [(limit["key"], limit["limit"]) for limit in queue.tag_concurrency_limits] == [(REFRESH_TAG, 1)]
