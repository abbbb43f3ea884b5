"""The run-failure alert: a real loopback webhook receives Slack JSON for a failed run;
a dead webhook leaves the failure visible."""

from __future__ import annotations

import json
import logging
import socket

import dagster as dg
import pytest

from churn_assets.defs.alerts import WEBHOOK_ENV
from churn_assets.defs.outcome import OUTCOME_TAG
from churn_assets.core.gate import GateRule
from churn_assets.defs.sensors import churn_failure_alert
from churn_assets.settings import Settings
from churn_assets.sources.simulator import SimulatorSource
from churn_assets_tests.ingestion_support import (CUSTOMERS, FAST_TRAINING, FIRST_WEEK, TOKEN,
                                                  TOKEN_ENV, http_source, start_demo_api)


def alert_for(instance: dg.DagsterInstance, run_id: str) -> None:
    """Evaluate the failure sensor on a real failed run, as the daemon would."""
    run = instance.get_run_by_id(run_id)
    failure = instance.get_records_for_run(run_id=run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    event = failure.records[0].event_log_entry.dagster_event
    context = dg.build_run_status_sensor_context(
        sensor_name="churn_failure_alert", dagster_event=event, dagster_instance=instance,
        dagster_run=run).for_run_failure()
    churn_failure_alert(context)


def failed_refresh(tmp_path, monkeypatch):
    """A refresh that fails at ingestion: the API refuses the token."""
    from churn_assets_tests.ingestion_support import run_refresh

    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    server = start_demo_api()
    instance = dg.DagsterInstance.ephemeral()
    try:
        result = run_refresh(tmp_path / "home", http_source(server), instance)
    finally:
        server.stop()
    assert not result.success
    return instance, result.run_id


def test_failed_run_posts_slack_json(tmp_path, monkeypatch, webhook, caplog):
    instance, run_id = failed_refresh(tmp_path, monkeypatch)
    with caplog.at_level(logging.ERROR, logger="churn_assets.defs.alerts"):
        alert_for(instance, run_id)
    assert len(webhook.posts) == 1
    payload = webhook.posts[0]
    assert set(payload) == {"text", "blocks"}
    assert run_id in payload["text"] and "raw_customers" in payload["text"]
    assert "HTTP 401" in payload["text"] and TOKEN_ENV in payload["text"]
    fields = json.dumps(payload["blocks"])
    assert run_id in fields and "raw_customers" in fields
    assert "not-the-token" not in json.dumps(payload) and TOKEN not in json.dumps(payload)
    assert any(run_id in record.getMessage() for record in caplog.records)  # the log line
    assert payload["text"].startswith("churn refresh failed") and instance.get_run_by_id(run_id).tags[OUTCOME_TAG] == "failed"


def test_dead_webhook_leaves_the_failure_visible(tmp_path, monkeypatch, caplog):
    instance, run_id = failed_refresh(tmp_path, monkeypatch)
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(WEBHOOK_ENV, f"http://127.0.0.1:{port}/hook")
    with caplog.at_level(logging.ERROR, logger="churn_assets.defs.alerts"):
        alert_for(instance, run_id)  # must not raise
    messages = [record.getMessage() for record in caplog.records]
    assert any("alert webhook" in m and "failed" in m for m in messages), messages
    assert any(run_id in m and "HTTP 401" in m for m in messages), messages
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    failures = instance.get_records_for_run(run_id=run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    assert [r.event_log_entry.step_key for r in failures.records] == ["raw_customers"]


def test_blocked_gate_is_alerted_in_plain_words(tmp_path, webhook):
    from churn_assets.defs.definitions import ASSETS, CHECKS, build_resources

    settings = Settings(home=tmp_path / "home").with_rules(
        [GateRule("roc_auc", floor=0.999)])  # no model clears this
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        ASSETS + CHECKS, instance=instance, raise_on_error=False, run_config=FAST_TRAINING,
        resources=build_resources(settings, SimulatorSource(n_customers=CUSTOMERS, as_of=FIRST_WEEK)))
    assert not result.success
    alert_for(instance, result.run_id)
    text = webhook.posts[0]["text"]
    # A refusal is a decision, worded as one: the rule in words and what stays in production.
    assert text.startswith("churn refresh refused the new model: run ") and "failed" not in text, text
    assert "ROC AUC is 0." in text and "below the floor of 0.999; nothing is in production yet" in text
    assert webhook.posts[0]["blocks"][0]["text"]["text"] == "Churn model refused by the deployment gate"
    assert instance.get_run_by_id(result.run_id).tags[OUTCOME_TAG] == "refused"
    assert not (tmp_path / "home" / "registry" / "production.json").exists()
