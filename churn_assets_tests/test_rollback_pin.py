"""A rollback sticks: it survives refreshes and health-sensor ticks until `churn-assets unpin`.

The CLI commands run in this process against a temporary data directory and a
persistent Dagster instance, exactly as `churn-assets` would (test_cli_report.py's
fixture); the sensor is evaluated against that instance as the daemon would.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import dagster as dg
import pandas as pd

from churn_assets.defs.outcome import OUTCOME_TAG
from churn_assets.storage.candidates import CandidateLog
from churn_assets.storage.health_log import HealthLog
from churn_assets_tests.conftest import FIRST_WEEK, NEXT_WEEK, production_version
from churn_assets_tests.test_cli_report import FAST, churn_env, run_cli  # noqa: F401 - fixture
from churn_assets_tests.test_monitoring import sensor_tick

THIRD_WEEK = "2026-05-18"


def list_versions(home) -> set[str]:
    return set(pd.read_parquet(home / "scores" / "churn_scores.parquet")["model_version"])


def run_tags(home, run_id: str) -> dict:
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        return dict(instance.get_run_by_id(run_id).tags)


def materialize(capsys, week: str) -> tuple[int, str, str, str]:
    code, out, err = run_cli(capsys, "materialize", "--as-of", week, *FAST)
    return code, out, err, re.search(r"^run (\S+): ", out, flags=re.M).group(1)


def test_a_rollback_survives_a_refresh_and_a_sensor_tick_until_unpin(churn_env, capsys):  # noqa: F811
    home, _ = churn_env
    for week in (FIRST_WEEK, NEXT_WEEK):
        assert materialize(capsys, week)[0] == 0
    assert production_version(home) == "v0002"
    # v0001 had raised a decay alarm while it served; the operator rolls back to it anyway.
    raised = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)).isoformat(timespec="seconds")
    HealthLog(home / "health").append({"kind": "alarm", "key": "v0001:decay", "reason": "decay",
                                       "version": "v0001", "detail": "realized ROC AUC fell",
                                       "recorded_at": raised})
    code, out, err = run_cli(capsys, "rollback", "--to", "v0001")
    assert code == 0, err
    assert production_version(home) == "v0001" and list_versions(home) == {"v0001"}

    # The alarm predates the operator's choice: no refresh starts by itself.
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        tick = sensor_tick(home, instance)
    assert tick.run_requests == [] and "raised before the operator changed production" in tick.skip_message

    # A week later the refresh trains and evaluates, the challenger passes, and is held.
    code, out, err, run_id = materialize(capsys, THIRD_WEEK)
    assert code == 0, err
    assert production_version(home) == "v0001" and list_versions(home) == {"v0001"}
    assert "production: v0001 stays; the challenger passed the gate but is held: production pinned by" in out
    assert run_tags(home, run_id)[OUTCOME_TAG] == "no_change"
    [held] = [c for c in CandidateLog(home / "registry").read().entries if c.get("held")]
    assert held["run_id"] == run_id and held["gate"]["passed"] is True
    assert re.fullmatch(r"held: production pinned by the operator at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC",
                        held["verdict"])
    code, out, _ = run_cli(capsys, "versions")
    assert "= held " in out and re.search(r"^production: v0001 since .*, pinned by ", out, flags=re.M)
    listing = json.loads(run_cli(capsys, "versions", "--json")[1])
    assert listing["pinned"]["by"].endswith("(churn-assets rollback)")

    # Still no refresh from the old alarm, however many ticks.
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert sensor_tick(home, instance, cursor=tick.cursor).run_requests == []

    code, out, err = run_cli(capsys, "unpin")
    assert code == 0 and "no longer pinned" in out and "may promote" in out, err
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert sensor_tick(home, instance).run_requests == []  # unpin is a manual change too
    # Unpinned, the same week again: nothing new arrived, but the held challenger's data
    # was never decided on, so it is trained again and promoted.
    code, out, err, run_id = materialize(capsys, THIRD_WEEK)
    assert code == 0, err
    assert production_version(home) == "v0003" and list_versions(home) == {"v0003"}
    assert run_tags(home, run_id)[OUTCOME_TAG] == "deployed"


def test_a_promotion_by_hand_pins_and_rescores(churn_env, capsys):  # noqa: F811
    home, _ = churn_env
    for week in (FIRST_WEEK, NEXT_WEEK):
        assert materialize(capsys, week)[0] == 0
    code, out, err = run_cli(capsys, "promote", "v0001")
    assert code == 0, err
    assert "production is now v0001 (was v0002), pinned by " in out and "(churn-assets promote)" in out
    assert list_versions(home) == {"v0001"}
    code, _, err = run_cli(capsys, "promote", "v0001")
    assert code == 2 and "already in production and pinned" in err
    code, _, err = run_cli(capsys, "promote", "v0042")
    assert code == 2 and "no model version 'v0042'" in err and "Traceback" not in err
    card = run_cli(capsys, "card")[1]
    assert card.splitlines()[2].startswith("> In production since ") and "no refresh replaces it" in card
    assert run_cli(capsys, "card", "v0002")[1].splitlines()[2] == "> Not in production (production is v0001)."


def test_sensor_still_answers_alarms_raised_after_the_manual_change(tmp_path):
    from churn_assets.storage.registry import ModelRegistry
    from churn_assets_tests.test_registry import TinyModel

    home = tmp_path / "home"
    registry = ModelRegistry(home / "registry")
    for i in range(2):
        registry.promote(registry.register(TinyModel(i), {"fingerprint": f"f{i}"}).version, reason="test")
    registry.rollback(to="v0001", pinned_by="alice")
    HealthLog(home / "health").append({"kind": "alarm", "key": "v0001:drift", "reason": "drift",
                                       "version": "v0001"})
    with dg.DagsterInstance.ephemeral() as instance:
        tick = sensor_tick(home, instance)
    assert [r.tags["churn_assets/alarmed_version"] for r in tick.run_requests] == ["v0001"]
