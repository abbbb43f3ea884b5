"""Issue 8, "nothing lost": refreshes killed with SIGKILL in real subprocesses, a refused
challenger, and credentials that must never reach the run log or an alert. Dead runs in a
persistent instance: test_reliability_dead_runs.py. docs/reliability.md maps each case
to its test."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
from pydantic import ValidationError

from churn_assets.core.gate import GateRule
from churn_assets.defs.alerts import post_alert
from churn_assets.defs.resources import ChurnStorage
from churn_assets.defs.sensors import churn_failure_alert
from churn_assets.sources.http import HttpSource
from churn_assets.storage.registry import ModelRegistry
from churn_assets_tests.conftest import production_version, run_graph, simulator
from churn_assets_tests.ingestion_support import (CUSTOMERS, FAST_TRAINING, FIRST_WEEK, NEXT_WEEK, TOKEN,
                                                  TOKEN_ENV, http_source, step_failures, stop_process)

REPO = Path(__file__).resolve().parents[1]
WEEKS = [FIRST_WEEK, NEXT_WEEK, "2026-05-18", "2026-05-25"]

# A refresh in its own process. "stall" swaps churn_model for one that touches a
# sentinel file and hangs: clean_features has stored the batch and moved the watermark,
# training has not finished. "plain" runs the real graph, to be killed at random moments.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import dagster as dg
    from churn_assets.defs.definitions import ASSETS, CHECKS
    from churn_assets_tests.conftest import run_graph, simulator
    from churn_assets_tests.ingestion_support import CUSTOMERS, FAST_TRAINING

    home, as_of, mode, sentinel = sys.argv[1:5]
    assets = ASSETS + CHECKS
    if mode == "stall":
        @dg.asset(name="churn_model", group_name="churn", io_manager_key="model_io_manager")
        def churn_model(clean_features, fitted_scaler):
            Path(sentinel).write_text("clean_features done")
            time.sleep(600)
        assets = [churn_model if set(getattr(a, "keys", ())) == {dg.AssetKey("churn_model")} else a
                  for a in assets]
    Path(sentinel + ".ready").write_text("imports done")
    run_graph(Path(home), simulator(as_of, CUSTOMERS), assets=assets, run_config=FAST_TRAINING)
""")


def start_child(home: Path, as_of: str, mode: str, sentinel: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(home), as_of, mode, str(sentinel)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(path: Path, child: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert child.poll() is None, f"child exited with {child.returncode} before {path.name}"
        assert time.monotonic() < deadline, f"{path.name} not written within {timeout}s"
        time.sleep(0.05)


def sigkill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL


def refresh(home: Path, as_of: str, rules=None) -> dg.ExecuteInProcessResult:
    return run_graph(home, simulator(as_of, CUSTOMERS), rules=rules, run_config=FAST_TRAINING)


def ran(result: dg.ExecuteInProcessResult, step: str) -> bool:
    return step in {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}


def raw_records(result: dg.ExecuteInProcessResult) -> int | None:
    for event in result.get_asset_materialization_events():
        if event.asset_key == dg.AssetKey("raw_customers"):
            return event.materialization.metadata["records"].value
    return None


def watermark(home: Path) -> str | None:
    return ChurnStorage(home=str(home)).history().state().get("watermark")


def stage(home: Path) -> tuple:
    """(watermark, evaluated runs, last decision): how far a refresh got before it died."""
    runs, last = home / "decisions" / "runs", home / "decisions" / "last_decision.json"
    return (watermark(home), len(list(runs.glob("*.json"))) if runs.exists() else 0,
            last.read_text() if last.exists() else None)


def promoted_fingerprints(home: Path) -> list[str]:
    """Fingerprints of the models promoted, in order: what each week deployed."""
    registry = ModelRegistry(home / "registry")
    events = (home / "registry" / "events.jsonl").read_text().splitlines()
    return [registry.get(json.loads(line)["version"]).manifest["fingerprint"]
            for line in events if json.loads(line)["event"] == "promote"]


# --- 1. a crash after clean_features loses nothing -------------------------------------

def test_kill_after_clean_features_then_same_week_rerun_retrains_and_deploys(tmp_path):
    home = tmp_path / "home"
    assert refresh(home, FIRST_WEEK).success
    assert production_version(home) == "v0001"
    watermark_before = watermark(home)

    sentinel = tmp_path / "clean_features.done"
    child = start_child(home, NEXT_WEEK, "stall", sentinel)
    try:
        wait_for(sentinel, child, timeout=240)
        sigkill(child)
    finally:
        stop_process(child)
    # The bug's precondition: the week's batch is stored and the watermark has moved ...
    assert watermark(home) != watermark_before
    assert production_version(home) == "v0001"

    # ... so the source has nothing new for the same week, and the run still retrains.
    rerun = refresh(home, NEXT_WEEK)
    assert rerun.success
    assert raw_records(rerun) == 0
    assert ran(rerun, "churn_model") and ran(rerun, "deployed_model")
    assert production_version(home) == "v0002"

    # Decided now: the next no-new-data run skips training again.
    again = refresh(home, NEXT_WEEK)
    assert again.success and not ran(again, "churn_model")
    assert production_version(home) == "v0002"


def reached(phase: str, home: Path, before: tuple) -> bool:
    now = stage(home)
    return {"start": True, "stored": now[0] != before[0], "evaluated": now[1] > before[1]}[phase]


def test_random_kills_over_weeks_end_where_a_clean_run_ends(tmp_path):
    clean_home, killed_home = tmp_path / "clean", tmp_path / "killed"
    for week in WEEKS:
        assert refresh(clean_home, week).success
    expected = promoted_fingerprints(clean_home)
    assert len(expected) == len(WEEKS)  # every clean week deployed: the loop tests something

    # Each week's first run is killed at a random moment after a random milestone: the
    # run started, the batch was stored (watermark moved), training began (evaluation
    # recorded). Milestones rather than bare delays, so that on a loaded machine the
    # kills still land across the whole run, not only in its slow start-up.
    rng = random.Random(8)
    kills = []
    for week in WEEKS:
        phase, delay = rng.choice(["start", "stored", "evaluated"]), rng.uniform(0.0, 3.0)
        sentinel = tmp_path / f"ready-{week}"
        before = stage(killed_home)
        child = start_child(killed_home, week, "plain", sentinel)
        try:
            wait_for(Path(f"{sentinel}.ready"), child, timeout=240)
            deadline = time.monotonic() + 240
            while not reached(phase, killed_home, before) and child.poll() is None:
                assert time.monotonic() < deadline, f"{phase} not reached"
                time.sleep(0.02)
            time.sleep(delay)
            killed = child.poll() is None
            if killed:
                sigkill(child)
            after = stage(killed_home)
            where = ("decided" if after[2] != before[2] else "evaluated, undecided" if after[1] > before[1]
                     else "stored, not evaluated" if after[0] != before[0] else "nothing stored")
            kills.append((week, phase, round(delay, 1), killed, where))
        finally:
            stop_process(child)
        # The same week's schedule tick again: nothing new in the source for most kills.
        assert refresh(killed_home, week).success
    print("kills (week, milestone, seconds after it, killed, how far it got):", kills)
    # The seed really kills mid-run, at least once in the window the bug lived in.
    assert sum(k[3] for k in kills) >= 2, kills
    assert any(k[4] in ("evaluated, undecided", "stored, not evaluated") for k in kills), kills
    assert promoted_fingerprints(killed_home) == expected
    assert (ModelRegistry(killed_home / "registry").production().manifest["fingerprint"]
            == ModelRegistry(clean_home / "registry").production().manifest["fingerprint"])
    assert production_version(killed_home) == production_version(clean_home)


def test_refused_challenger_is_not_retrained_on_unchanged_history(tmp_path):
    home = tmp_path / "home"
    assert refresh(home, FIRST_WEEK).success
    strict = [GateRule("roc_auc", floor=0.999)]  # no model clears this
    refused = refresh(home, NEXT_WEEK, rules=strict)
    assert not refused.success and ran(refused, "churn_model")
    decision = json.loads((home / "decisions" / "last_decision.json").read_text())
    assert decision["outcome"] == "refused" and decision["run_id"] == refused.run_id

    again = refresh(home, NEXT_WEEK, rules=strict)
    assert again.success, "a covered week is a normal, successful run"
    assert not ran(again, "churn_model") and not ran(again, "clean_features")
    assert production_version(home) == "v0001"

    # Under different gate rules the refusal no longer stands: the same data is retried.
    relaxed = refresh(home, NEXT_WEEK)
    assert relaxed.success and ran(relaxed, "churn_model")
    assert production_version(home) == "v0002"


# --- 3. credentials in a URL never reach state, run logs or Slack ------------------------

SECRET = "s3cr3t-" + TOKEN[-8:]


def test_http_source_refuses_credentials_in_base_url_and_names_token_env():
    for url in (f"https://bob:{SECRET}@crm.example.com/api", f"https://{SECRET}@crm.example.com/api"):
        with pytest.raises(ValidationError) as refused:
            HttpSource(base_url=url, token_env="CRM_API_TOKEN")
        message = str(refused.value)
        assert "CRM_API_TOKEN" in message and SECRET not in message, message
    plain = HttpSource(base_url=f"https://crm.example.com/api?token={SECRET}")
    assert SECRET not in plain.describe() and SECRET not in repr(plain)


class LeakyApi(BaseHTTPRequestHandler):
    """An API whose error body quotes a URL with credentials (as some proxies do)."""

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        body = json.dumps({"error": f"moved to https://admin:{SECRET}@internal.example/api"
                                    f"?password={SECRET}&token={SECRET}"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_password_in_an_error_never_reaches_the_run_log_or_slack(tmp_path, monkeypatch,
                                                                    webhook, caplog):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    api = ThreadingHTTPServer(("127.0.0.1", 0), LeakyApi)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    instance = dg.DagsterInstance.ephemeral()
    try:
        result = run_graph(tmp_path / "home", http_source(f"http://127.0.0.1:{api.server_address[1]}"),
                           instance=instance, run_config=FAST_TRAINING)
    finally:
        api.shutdown()
        api.server_close()
    assert not result.success
    failures = step_failures(result)
    assert "HTTP 404" in failures["raw_customers"] and "admin:***@" in failures["raw_customers"]
    logged = json.dumps([str(entry) for entry in instance.all_logs(result.run_id)])
    assert SECRET not in logged

    with caplog.at_level(logging.ERROR, logger="churn_assets.defs.alerts"):
        failure = instance.get_records_for_run(run_id=result.run_id,
                                               of_type=dg.DagsterEventType.RUN_FAILURE)
        churn_failure_alert(dg.build_run_status_sensor_context(
            sensor_name="churn_failure_alert", dagster_instance=instance,
            dagster_event=failure.records[0].event_log_entry.dagster_event,
            dagster_run=instance.get_run_by_id(result.run_id)).for_run_failure())
    [payload] = webhook.posts
    assert "HTTP 404" in payload["text"] and SECRET not in json.dumps(payload)
    assert caplog.records and not any(SECRET in r.getMessage() for r in caplog.records)


def test_any_alert_payload_is_masked_before_it_is_posted(webhook, caplog):
    # Other alerts (model health) build their own payloads; post_alert masks them too.
    payload = {"text": f"cannot reach postgresql+psycopg2://churn:{SECRET}@db:5432/crm",
               "blocks": [{"type": "section", "text": {"type": "mrkdwn",
                                                       "text": f"see https://x/?api_key={SECRET}"}}]}
    with caplog.at_level(logging.ERROR, logger="churn_assets.defs.alerts"):
        assert post_alert(payload)
    assert SECRET not in json.dumps(webhook.posts) and "churn:***@db" in webhook.posts[0]["text"]
    assert not any(SECRET in r.getMessage() for r in caplog.records)
