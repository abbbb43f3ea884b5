"""The HTTP source against a real demo API on loopback, with faults injected server-side.

Every failing case starts from a home that already holds a history, a watermark and a
production model, with a new week waiting at the API, and proves the failed refresh left
all of them byte for byte as they were.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from churn_assets.sources.base import SourceError, TransientSourceError
from churn_assets.core.spec import load_spec
from churn_assets_tests.ingestion_support import (FIRST_WEEK, NEXT_WEEK, TOKEN, TOKEN_ENV,
                                                  copy_home, guarded_state, http_source,
                                                  run_refresh, start_demo_api, step_failures)

SPEC = load_spec("simulator")


@pytest.fixture(scope="module")
def baseline_home(tmp_path_factory) -> Path:
    """A home after one good refresh at FIRST_WEEK (history, watermark, production v0001)."""
    home = tmp_path_factory.mktemp("baseline")
    server = start_demo_api(FIRST_WEEK)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_ENV, TOKEN)
        try:
            result = run_refresh(home, http_source(server))
        finally:
            server.stop()
    assert result.success, step_failures(result)
    assert json.loads((home / "registry" / "production.json").read_text())["version"] == "v0001"
    return home


@dataclass
class World:
    home: Path
    server: object
    before: dict

    @property
    def api(self):
        return self.server.api

    def data_requests(self) -> list:
        return [outcome for path, outcome in self.api.requests if path == "/v1/customers"]


@pytest.fixture
def world(baseline_home, tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    home = copy_home(baseline_home, tmp_path / "home")
    server = start_demo_api(NEXT_WEEK)  # a new week is waiting at the API
    try:
        yield World(home, server, guarded_state(home))
    finally:
        server.stop()


def assert_failed_cleanly(world: World, result, step: str, *phrases: str) -> str:
    assert not result.success
    failures = step_failures(result)
    assert step in failures, failures
    for phrase in phrases:
        assert phrase in failures[step], failures[step]
    assert guarded_state(world.home) == world.before, "a failed refresh changed stored state"
    return failures[step]


def test_two_server_errors_then_success_recovers(world):
    world.api.faults.queue[:] = ["500", "500"]
    result = run_refresh(world.home, http_source(world.server))
    assert result.success, step_failures(result)
    assert world.data_requests()[:3] == ["500", "500", 200]
    state = json.loads((world.home / "history" / "state.json").read_text())
    assert state["watermark"].startswith(NEXT_WEEK)


def test_429_waits_at_least_retry_after(world):
    world.api.faults.queue[:] = ["429"]
    world.api.faults.retry_after = 2
    started = time.monotonic()
    batch = http_source(world.server).fetch(SPEC, None)
    assert time.monotonic() - started >= 2.0
    assert world.data_requests()[:2] == ["429", 200]
    assert len(batch.records) == len(world.api.frame(NEXT_WEEK))


def test_stalled_read_times_out_clearly_in_bounded_time(world):
    world.api.faults.queue[:] = ["stall"] * 20
    source = http_source(world.server, read_timeout=0.5, read_retries=1)
    started = time.monotonic()
    with pytest.raises(TransientSourceError, match="read timeout") as caught:
        source.fetch(SPEC, None)
    # Two attempts of 0.5 s and one short backoff; generous margin for a loaded machine.
    assert time.monotonic() - started < 10
    assert "stalled" in str(caught.value)
    result = run_refresh(world.home, source)
    assert_failed_cleanly(world, result, "raw_customers", "read timeout")


def test_malformed_json_fails_without_retrying(world):
    world.api.faults.queue[:] = ["malformed"]
    result = run_refresh(world.home, http_source(world.server))
    assert_failed_cleanly(world, result, "raw_customers", "malformed JSON")
    assert world.data_requests() == ["malformed"]  # a broken contract is not retried


@pytest.mark.parametrize("fault, phrase", [("truncate", "cut short"),
                                           ("skip-page", "a page was lost")])
def test_truncated_or_missing_page_stores_nothing(world, fault, phrase):
    world.api.faults.queue[:] = [fault] * 200  # stays broken across the RetryPolicy's tries
    result = run_refresh(world.home, http_source(world.server, page_size=200))  # several pages
    assert_failed_cleanly(world, result, "raw_customers", phrase)
    # Transient: the asset's RetryPolicy tried again (3 attempts) before giving up.
    attempts = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(attempts) == 2


def test_one_transient_fault_is_retried_by_the_retry_policy(world):
    world.api.faults.queue[:] = ["truncate"]  # the session cannot retry a body cut short
    result = run_refresh(world.home, http_source(world.server))
    assert result.success, step_failures(result)
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert [e.step_key for e in retries] == ["raw_customers"]
    state = json.loads((world.home / "history" / "state.json").read_text())
    assert state["watermark"].startswith(NEXT_WEEK)


def test_bad_token_fails_fast_and_never_shows_the_token(world, monkeypatch, capsys, caplog):
    wrong = "wrong-" + TOKEN
    monkeypatch.setenv(TOKEN_ENV, wrong)
    instance = dg.DagsterInstance.ephemeral()
    result = run_refresh(world.home, http_source(world.server), instance)
    message = assert_failed_cleanly(world, result, "raw_customers", "HTTP 401", TOKEN_ENV)
    assert world.data_requests() == [401]  # no retries, by the session or by Dagster
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    logs = [repr(entry) for entry in instance.all_logs(result.run_id)]  # every event, raw
    assert len(logs) > 5
    seen = "\n".join([message, *logs, repr(http_source(world.server)), caplog.text,
                      *capsys.readouterr()])
    assert wrong not in seen and TOKEN not in seen


@pytest.mark.parametrize("change, column", [({"rename": {"sessions_last_30d": "sessions_30d"}},
                                             "sessions_last_30d"),
                                            ({"drop": ["plan"]}, "plan")])
def test_renamed_or_missing_column_is_named_by_validation(world, change, column):
    for key, value in change.items():
        setattr(world.api.faults, key, value)
    result = run_refresh(world.home, http_source(world.server))
    assert_failed_cleanly(world, result, "clean_features", f"column '{column}' is missing")


def test_unreachable_api_is_transient(world):
    world.server.stop()
    source = http_source(world.server, connect_timeout=0.5, max_retries=1)
    with pytest.raises(TransientSourceError, match="connection to"):
        source.fetch(SPEC, None)


def test_unknown_path_fails_with_what_to_fix(world):
    source = http_source(world.server, base_url=world.server.url + "/nope")
    with pytest.raises(SourceError, match="check source.base_url") as caught:
        source.fetch(SPEC, None)
    assert not isinstance(caught.value, TransientSourceError)


def test_count_endpoint_matches_what_a_fetch_returns(world):
    source = http_source(world.server)
    frame = world.api.frame(NEXT_WEEK)
    found = source.count_new(SPEC, FIRST_WEEK)
    assert found.count == int((frame["updated_at"] > pd.Timestamp(FIRST_WEEK)).sum()) > 0
    assert found.count == len(source.fetch(SPEC, FIRST_WEEK).records)
    assert pd.Timestamp(found.newest) == frame["updated_at"].max()


def test_bad_request_is_permanent_and_says_what_to_fix(world):
    source = http_source(world.server, page_size=10**6)  # over the API's maximum
    with pytest.raises(SourceError, match="HTTP 400.*check source.page_size") as caught:
        source.fetch(SPEC, None)
    assert not isinstance(caught.value, TransientSourceError)
    assert world.data_requests() == [400]
