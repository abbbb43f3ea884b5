"""The asset pages orient: evaluation_report opens with who is compared and the verdict,
numbers are rounded, few plain floats are charted (the gate's first), and deployed_model
shows the registry's history and the card of the version really in production."""

from __future__ import annotations

import math
import re
import shutil

import dagster as dg

from churn_assets.defs.reporting import trend_points
from churn_assets.storage.registry import ModelRegistry
from churn_assets_tests.conftest import (
    FIRST_WEEK,
    NEXT_WEEK,
    metadata_of,
    production_version,
    run_graph,
    simulator,
    with_shuffled_labels,
)

THIRD_WEEK = "2026-05-18"
CHARTED = ["1_roc_auc", "1_roc_auc_champion", "1_roc_auc_delta", "2_pr_auc", "2_pr_auc_champion",
           "2_pr_auc_delta", "3_brier_skill", "3_brier_skill_champion", "3_brier_skill_delta",
           "4_ece", "4_ece_champion", "4_ece_delta"]


def materialization(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    """The metadata entries themselves (``metadata_of`` gives their values)."""
    for event in result.get_asset_materialization_events():
        if event.asset_key == dg.AssetKey(asset):
            return dict(event.materialization.metadata)
    raise KeyError(asset)


def long_floats(value, where: str = "") -> list[str]:
    """Every float in ``value`` (plain or inside JSON) with more than four decimals, and
    every float written unformatted (seven or more decimals) in its text; inline PNGs are
    left out. (The gate's reasons write numbers to three significant digits, "-0.00223".)"""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, float):
        return [f"{where}={value!r}"] if math.isfinite(value) and round(value, 4) != value else []
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in long_floats(v, f"{where}.{k}")]
    if isinstance(value, (list, tuple)):
        return [x for i, v in enumerate(value) for x in long_floats(v, f"{where}[{i}]")]
    if isinstance(value, str):
        text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", value)
        return [f"{where}: {m}" for m in re.findall(r"\d+\.\d{7,}", text)]
    return []


def test_evaluation_report_opens_with_the_versions_and_the_verdict(two_runs):
    _, first, second = two_runs
    for result in (first, second):
        assert next(iter(materialization(result, "evaluation_report"))) == "summary"
    first_line = metadata_of(first, "evaluation_report")["summary"]
    assert re.fullmatch(r"\*\*challenger \w+ \(would be v0001\) vs champion none \(bootstrap\):"
                        r" passes the gate\*\*", first_line), first_line
    summary = metadata_of(second, "evaluation_report")["summary"]
    assert re.fullmatch(r"\*\*challenger \w+ \(would be v0002\) vs champion v0001 in production:"
                        r" passes the gate\*\*", summary), summary


def test_no_metadata_float_has_more_than_four_decimals(two_runs):
    _, first, second = two_runs
    found = []
    for result in (first, second):
        for asset in ("evaluation_report", "deployed_model"):
            found += long_floats(metadata_of(result, asset), asset)
    assert found == []
    meta = metadata_of(second, "evaluation_report")
    assert meta["comparisons"]["roc_auc"]["ci_low"] == round(meta["comparisons"]["roc_auc"]["ci_low"], 4)
    assert isinstance(meta["best_recent"], dict) and isinstance(meta["data_window"], dict)


def test_only_the_gate_metrics_are_charted_and_they_sort_first(two_runs):
    _, _, second = two_runs
    entries = materialization(second, "evaluation_report")
    charted = sorted(k for k, v in entries.items() if isinstance(v, (dg.FloatMetadataValue, dg.IntMetadataValue)))
    floats = sorted(k for k, v in entries.items() if isinstance(v, dg.FloatMetadataValue))
    assert floats == CHARTED
    # The UI orders charts by key: the ROC AUC chart comes first, the row counts last.
    assert charted[:len(CHARTED)] == CHARTED
    assert set(charted[len(CHARTED):]) == {"holdout_rows", "compared_rows", "training_rows"}


def test_refused_challenger_is_summarised_with_its_rule_in_words(two_runs, tmp_path):
    source_home, _, _ = two_runs
    home = tmp_path / "home"
    shutil.copytree(source_home, home)
    blocked = run_graph(home, simulator(THIRD_WEEK), assets=with_shuffled_labels())
    assert not blocked.success and production_version(home) == "v0002"
    summary = metadata_of(blocked, "evaluation_report")["summary"]
    assert "(would have been v0003) vs champion v0002 in production: refused: ROC AUC is" in summary, summary
    assert "than the champion's by" in summary


def test_after_a_rollback_the_pages_follow_the_version_in_production(two_runs, tmp_path):
    source_home, _, _ = two_runs
    home = tmp_path / "home"
    shutil.copytree(source_home, home)
    registry = ModelRegistry(home / "registry")
    registry.rollback(to="v0001", pinned_by="tester")
    third = run_graph(home, simulator(THIRD_WEEK))
    assert third.success and production_version(home) == "v0001"

    # The champion compared is the version rolled back to, not the newest registered.
    report = metadata_of(third, "evaluation_report")
    assert report["champion_version"] == "v0001" and report["prospective_version"] == "v0003"
    assert re.fullmatch(r"\*\*challenger \w+ \(would have been v0003\) vs champion v0001 in production:"
                        r" passes the gate; held: v0001 is pinned in production \(`churn-assets unpin`\)\*\*",
                        report["summary"]), report["summary"]

    deployed = metadata_of(third, "deployed_model")
    assert deployed["held"] and deployed["card_version"] == "v0001"
    card = deployed["model_card"]
    assert card.startswith("# Model card: churn model v0001\n\n> In production since ")
    assert "pinned by tester" in card.splitlines()[2]

    history = deployed["history"]
    rows = [line for line in history.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows[:2]] == ["| **v0001** (production, pinned)", "| **v0002**"]
    assert re.match(r"\| - \(held, run \w{8}\)", rows[2])
    assert "v0001 rolled back from v0002, pinned by tester" in rows[0]
    assert "rolled back (production went to v0001)" in rows[1]
    as_of = [r.split(" | ")[1].replace("\u2011", "-") for r in rows]  # hyphens that do not wrap
    assert as_of == [FIRST_WEEK, NEXT_WEEK, THIRD_WEEK]
    assert "| ROC AUC [95% CI] |" in history
    assert re.search(r"\| 0\.\d{4} \[0\.\d{4}, 0\.\d{4}\] \|", rows[1])
    assert "passed against v0001; ROC AUC" in rows[1] and "(95% CI " in rows[1]

    # The trend marks production and the rollback.
    points = trend_points(registry)
    assert [p["production"] for p in points] == [True, False, False]
    assert points[1].get("rollbacks") == ["v0001"] and [p["as_of"] for p in points] == [
        FIRST_WEEK, NEXT_WEEK, THIRD_WEEK]


def test_every_ece_shown_has_its_noise_floor_beside_it(two_runs):
    """The card and `versions` put each ECE beside what a perfectly calibrated model would
    show on as many rows, with the verdict, as evaluation_report does."""
    from churn_assets.defs.history_text import format_history
    from churn_assets.defs.reporting import production_card, registry_history

    home, _, _ = two_runs
    registry = ModelRegistry(home / "registry")
    version, card = production_card(registry)
    assert version == "v0002"
    floor = re.search(r"\| challenger \| (0\.\d{4}) \| (0\.\d{4}) \| (0\.\d{4}) \| (within noise|above noise: "
                      r"miscalibrated) \|", card)
    assert floor, card
    ece, mean, p95 = (float(x) for x in floor.groups()[:3])
    assert mean < p95 and (ece <= p95) == (floor.group(4) == "within noise")
    assert re.search(r"\| champion \| 0\.\d{4} \| 0\.\d{4} \| 0\.\d{4} \|", card)
    text = format_history(registry_history(registry))
    lines = [line for line in text.splitlines() if "a calibrated model:" in line]
    assert len(lines) >= 2, text  # v0001 and v0002
    assert all(len(line) <= 120 for line in text.splitlines()), text
    assert re.search(r"ECE 0\.\d{4}, (within noise|above noise: miscalibrated) \(a calibrated model: 0\.\d{4},"
                     r" 95th percentile 0\.\d{4}\)", text)


def test_the_card_names_the_evaluated_and_the_deployed_fit_weeks(two_runs):
    from churn_assets.defs.reporting import production_card

    home, _, _ = two_runs
    _, card = production_card(ModelRegistry(home / "registry"))
    spans = dict(re.findall(r"^\| (train \(the evaluated fit\)|embargo \(label horizon, unused\)|validation|holdout"
                            r"|the deployed fit's weeks) \| (\S+ → \S+) \|$", card, flags=re.M))
    assert set(spans) == {"train (the evaluated fit)", "embargo (label horizon, unused)", "validation", "holdout",
                          "the deployed fit's weeks"}, card
    # The deployed fit ends where the holdout ends (the newest weeks with final labels).
    assert spans["the deployed fit's weeks"].split(" → ")[1] == spans["holdout"].split(" → ")[1]
